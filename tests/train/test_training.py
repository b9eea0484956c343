"""Training end to end on a small synthetic corpus: best.pt, determinism, resume, eval, checkpoints, convert."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mner.runtime.tags import TagScheme
from mner.runtime.text import AUG_UNKNOWN_ROW
from mner.train import trainer as trainer_module
from mner.train.checkpoint import load_checkpoint, save_checkpoint
from mner.train.cli import eval_command, train_command
from mner.train.convert import convert_reference_checkpoint, reference_key_map
from mner.train.sample import write_sample_corpus
from mner.train.trainer import TrainArgs, train

SMALL = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
         "augmentation_dim": 16}  # fmt: skip

def write_corpus(directory: Path, seed: int = 0) -> Path:
    return write_sample_corpus(directory, seed=seed, sizes={"train": 48, "valid": 16, "test": 16})


def quick_args(tmp_path: Path, data: Path, name: str, **overrides) -> TrainArgs:
    values = dict(data_dir=data, out_dir=tmp_path / name, preset="tiny", epochs=2, batch_size=8, seed=7,
                  device="cpu", model_overrides=dict(SMALL))  # fmt: skip
    values.update(overrides)
    return TrainArgs(**values)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("trained")
    summary = train(quick_args(out, corpus, "run", epochs=3))
    return out / "run", summary


def state_of(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).model.state_dict()


def test_training_writes_a_self_contained_best_pt(trained):
    out, summary = trained
    assert (out / "best.pt").is_file() and (out / "last.pt").is_file()
    assert len(summary["history"]) == 3
    assert summary["history"][-1]["loss"] < summary["history"][0]["loss"]
    checkpoint = load_checkpoint(out / "best.pt")
    assert checkpoint.scheme.entity_types == ("LOC", "MISC", "ORG", "PER")
    assert checkpoint.config.hidden_size == 32
    payload = checkpoint.payload
    assert set(payload["data_hashes"]) == {"train", "valid", "test"}
    assert payload["metrics"]["test"]["micro"]["f1"] == summary["test"]["micro"]["f1"]
    assert payload["versions"]["torch"] == torch.__version__.split("+")[0]
    assert payload["train_args"]["preset"] == "tiny"
    # The augmentation table travels inside the weights.
    table = checkpoint.model.augmentation_table
    assert table.shape[0] == checkpoint.config.augmentation_rows and table[0].abs().sum() == 0


def test_training_is_deterministic_for_a_seed(tmp_path, corpus, trained):
    out, _ = trained
    again = tmp_path / "again"
    train(quick_args(tmp_path, corpus, "again", epochs=3))
    first, second = state_of(out / "best.pt"), state_of(again / "best.pt")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_resume_continues_exactly(tmp_path, corpus, monkeypatch):
    full = quick_args(tmp_path, corpus, "full")
    train(full)

    calls = {"n": 0}
    real_f1 = trainer_module.f1_of

    def interrupted_f1(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # epoch 2's evaluation: epoch 1's last.pt is on disk
            raise KeyboardInterrupt
        return real_f1(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "f1_of", interrupted_f1)
    with pytest.raises(KeyboardInterrupt):
        train(quick_args(tmp_path, corpus, "resumed"))
    monkeypatch.setattr(trainer_module, "f1_of", real_f1)
    train(quick_args(tmp_path, corpus, "resumed", resume=True))
    full_last = torch.load(tmp_path / "full" / "last.pt", weights_only=False)["model"]
    resumed_last = torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)["model"]
    assert full_last.keys() == resumed_last.keys()
    assert all(torch.equal(full_last[k], resumed_last[k]) for k in full_last)
    first, second = state_of(tmp_path / "full" / "best.pt"), state_of(tmp_path / "resumed" / "best.pt")
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_training_with_images_uses_cached_features(tmp_path, corpus, stand_in_encoders):
    # Stand-in encoders (tests/conftest.py) with ResNet's and RetinaNet's interfaces: the subject is the feature
    # cache and the masks; training through the real ones is tests/benchmarks/test_demo.py's.
    images = corpus / "images"
    args = quick_args(tmp_path, corpus, "images", epochs=1, images_dir=images, grid_arch="resnet50", detector_size=128)
    summary = train(args)
    cached = list((tmp_path / "images" / "features").rglob("*.npz"))
    with_image = sum(1 for _ in images.glob("*.jpg"))
    assert 0 < len(cached) <= with_image
    features = trainer_module.split_features(args, trainer_module.read_conll(corpus / "test.txt"), load_checkpoint(
        tmp_path / "images" / "best.pt").config)
    assert 0 < features.image_mask.sum() < len(features.image_mask)  # some test posts have images, some not
    assert features.grid[features.image_mask == 0].max() == 0
    result = CliRunner().invoke(eval_command, ["--ckpt", str(tmp_path / "images" / "best.pt"), "--data",
                                               str(corpus / "test.txt"), "--images", str(images), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.output[result.output.index("{"):])["micro"]["f1"] == pytest.approx(summary["test"]["micro"]["f1"])


def test_char_cnn_ablation_trains_evaluates_and_refuses_export(tmp_path, corpus):
    from mner.export.pipeline import export_bundle
    from mner.train.chars import CLS, CONTINUATION, SEP, char_ids

    summary = train(quick_args(tmp_path, corpus, "chars", epochs=1, model_overrides={**SMALL, "char_cnn": True}))
    checkpoint = load_checkpoint(tmp_path / "chars" / "best.pt")
    vocab = checkpoint.payload["char_vocab"]
    assert checkpoint.config.char_cnn and checkpoint.config.char_vocab_size == 5 + len(vocab)
    encoded = checkpoint.text_encoder.encode(["Obama", "visits", "Tahoe"])
    ids = char_ids(encoded, ["Obama", "visits", "Tahoe"], vocab, 12)
    assert ids[0].tolist() == [CLS] * 12 and ids[-1].tolist() == [SEP] * 12
    first = encoded.word_positions[0]
    assert ids[first, :5].tolist() == [vocab[c] for c in "Obama"] and ids[first, 5:].tolist() == [0] * 7
    continuation = [i for i, role in enumerate(encoded.roles) if role == 2]
    assert all(ids[i].tolist() == [CONTINUATION] * 12 for i in continuation)
    result = CliRunner().invoke(eval_command, ["--ckpt", str(tmp_path / "chars" / "best.pt"), "--data",
                                               str(corpus / "test.txt"), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.output[result.output.index("{"):])["micro"]["f1"] == pytest.approx(summary["test"]["micro"]["f1"])
    with pytest.raises(ValueError, match="char-CNN ablation"):
        export_bundle(ckpt=tmp_path / "chars" / "best.pt", out=tmp_path / "bundle", stages="tagger")
    assert not (tmp_path / "bundle").exists()


def test_resume_validation(tmp_path, corpus):
    with pytest.raises(ValueError, match="--resume: .*last.pt does not exist"):
        train(quick_args(tmp_path, corpus, "nothing", resume=True))


def test_train_argument_validation(tmp_path, corpus):
    with pytest.raises(ValueError, match="unknown preset"):
        train(quick_args(tmp_path, corpus, "x", preset="huge"))
    with pytest.raises(ValueError, match="epochs and batch size must be >= 1"):
        train(quick_args(tmp_path, corpus, "x", epochs=0))
    with pytest.raises(ValueError, match="valid.txt is missing"):
        empty = tmp_path / "partial"
        empty.mkdir()
        (empty / "train.txt").write_text((corpus / "train.txt").read_text())
        train(quick_args(tmp_path, empty, "x"))


def test_save_load_gives_identical_emissions(trained, tmp_path):
    out, _ = trained
    checkpoint = load_checkpoint(out / "best.pt")
    copy = tmp_path / "copy.pt"
    save_checkpoint(copy, checkpoint.model, checkpoint.scheme, checkpoint.text_encoder, note="copy")
    reloaded = load_checkpoint(copy)
    encoded = checkpoint.text_encoder.batch(checkpoint.text_encoder.encode_many([["Obama", "visits", "Paris"], ["RT"]]))
    config = checkpoint.config
    inputs = dict(
        input_ids=torch.from_numpy(encoded["input_ids"]),
        attention_mask=torch.from_numpy(encoded["attention_mask"]),
        aug_ids=torch.from_numpy(encoded["aug_ids"]),
        grid=torch.zeros(2, config.grid_cells, config.grid_dim),
        image_mask=torch.zeros(2, dtype=torch.long),
        object_ids=torch.zeros(2, config.num_objects, dtype=torch.long),
    )
    with torch.no_grad():
        first, _ = checkpoint.model(**inputs)
        second, _ = reloaded.model(**inputs)
    assert torch.equal(first, second)
    assert reloaded.payload["note"] == "copy"
    assert reloaded.text_encoder.aug_vocab == checkpoint.text_encoder.aug_vocab


def test_load_checkpoint_rejects_bad_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"classifier.weight": torch.zeros(2, 2)}, foreign)
    with pytest.raises(ValueError, match="not an mner checkpoint.*mner-convert"):
        load_checkpoint(foreign)


def test_cli_describe_and_eval(trained, corpus):
    out, summary = trained
    runner = CliRunner()
    result = runner.invoke(train_command, ["--describe", "--preset", "tiny"])
    assert result.exit_code == 0, result.output
    assert "txt2img_attention" in result.output and "total" in result.output
    result = runner.invoke(eval_command, ["--ckpt", str(out / "best.pt"), "--data", str(corpus / "test.txt"), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output[result.output.index("{"):])
    assert metrics["micro"]["f1"] == pytest.approx(summary["test"]["micro"]["f1"])
    result = runner.invoke(train_command, ["--preset", "tiny"])
    assert result.exit_code != 0 and "--data and --output are required" in result.output


# --- mner-convert ------------------------------------------------------------------------------------

REFERENCE_LABELS = ["O", "B-MISC", "I-MISC", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "X", "[CLS]", "[SEP]"]


def to_reference(model_state: dict[str, torch.Tensor], permutation: np.ndarray) -> dict[str, torch.Tensor]:
    """Write our weights under the reference's names and label order (inverse of mner-convert)."""
    names = [
        *(f"bert.{k}" for k in (
            "embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
            "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias")),
        "object_embeddings.weight", "vismap2text.weight", "vismap2text.bias", "vismap2text_v2.weight",
        "vismap2text_v2.bias", "maug_linear.weight", "maug_linear.bias", "fus1_w1", "fus1_w2", "fus1_bias", "fus2_w1",
        "fus2_w2", "fus2_bias", "fus3_linear.weight", "fus3_linear.bias", "fusion_w", "fusion_bias",
        "classifier.weight", "classifier.bias", "aux_classifier.weight", "aux_classifier.bias",
        "crf.start_transitions", "crf.end_transitions", "crf.transitions",
        "aux_crf.start_transitions", "aux_crf.end_transitions", "aux_crf.transitions",
    ]  # fmt: skip
    parts = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
             "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm"]  # fmt: skip
    blocks = ["self_attention", "self_attention_v2", "img2img_attention", "img2img_attention_v2", "obj2obj_attention",
              "obj2obj_attention_v2", "txt2img_attention", "img2txt_attention", "txt2txt_attention",
              "obj2txt_attention", "txt2obj_attention", "txt2obj_attention_v2"]  # fmt: skip
    names += [f"bert.encoder.layer.0.{p}.{k}" for p in parts for k in ("weight", "bias")]
    names += [f"{b}.layer.0.{p}.{k}" for b in blocks for p in parts for k in ("weight", "bias")]
    inverse = np.argsort(permutation)  # reference row r holds our tag inverse[r]
    reference = {}
    for name in names:
        value = model_state[reference_key_map(name)].clone()
        if name.startswith("classifier.") or name in ("crf.start_transitions", "crf.end_transitions"):
            value = value[torch.from_numpy(inverse)]
        elif name == "crf.transitions":
            value = value[torch.from_numpy(inverse)][:, torch.from_numpy(inverse)]
        reference[name] = value
    # keys their code has but the best configuration never uses
    reference["bert.pooler.dense.weight"] = torch.zeros(4, 4)
    reference["bert.embeddings.char_cnn_linear.weight"] = torch.zeros(4, 4)
    reference["fus_cat_linear.weight"] = torch.zeros(4, 4)
    return reference


def test_convert_round_trips_a_reference_state_dict(tmp_path):
    from transformers import BertConfig

    from mner.train.convert import label_permutation
    from mner.train.model import MGCMT, ModelConfig

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Obama", "visits", "Paris", "##s", "R", "##T"]
    bert_dir = tmp_path / "bert"
    bert_dir.mkdir()
    (bert_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    bert_config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    (bert_dir / "bert_config.json").write_text(bert_config.to_json_string())

    scheme = TagScheme(("LOC", "MISC", "ORG", "PER"))
    config = ModelConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64, augmentation_rows=6)  # fmt: skip
    torch.manual_seed(0)
    ours = MGCMT(config).eval()
    table = torch.randn(6, 200)
    table[0] = 0
    ours.set_augmentation_table(table)
    permutation = label_permutation(REFERENCE_LABELS, scheme)
    weights = tmp_path / "pytorch_model.bin"
    torch.save(to_reference(ours.state_dict(), permutation), weights)
    np.save(tmp_path / "tweet_aug.npy", table.numpy())
    (tmp_path / "words.txt").write_text("[PAD]\n[UNK]\nObama\nvisits\nParis\nRT\n")

    report = convert_reference_checkpoint(
        weights_path=weights, bert_dir=bert_dir, aug_table_path=tmp_path / "tweet_aug.npy",
        reference_labels=REFERENCE_LABELS, out_path=tmp_path / "best.pt", word_vocab_path=tmp_path / "words.txt",
    )  # fmt: skip
    assert sorted(report.unmapped) == ["bert.embeddings.char_cnn_linear.weight", "bert.pooler.dense.weight",
                                       "fus_cat_linear.weight"]  # fmt: skip
    assert report.missing == []
    converted = load_checkpoint(tmp_path / "best.pt")
    assert converted.text_encoder.aug_row("Paris") == 4 and converted.text_encoder.aug_row("Unknown") == 1
    state = converted.model.state_dict()
    for key, value in ours.state_dict().items():
        assert torch.equal(state[key], value), key


def test_convert_rejects_foreign_files(tmp_path):
    not_weights = tmp_path / "x.bin"
    torch.save({"foo": torch.zeros(1)}, not_weights)
    with pytest.raises(ValueError, match="not an MSCMT state_dict"):
        convert_reference_checkpoint(weights_path=not_weights, bert_dir=tmp_path, aug_table_path=tmp_path / "t.npy",
                                     reference_labels=REFERENCE_LABELS, out_path=tmp_path / "o.pt",
                                     word_vocab_path=None, vocab_data_dir=tmp_path)  # fmt: skip


# --- label sets: TWITTER-2015's OTHER -----------------------------------------------------------------

OTHER_POSTS = [
    ("1", [("RT", "O"), ("Obama", "B-PER"), ("visits", "O"), ("Paris", "B-LOC"), ("\xa0", "O")]),
    ("2", [("Coachella", "B-OTHER"), ("with", "O"), ("NBA", "B-ORG"), ("\u200b", "O")]),
]


def write_other_folder(directory: Path) -> Path:
    """train/valid/test in TWITTER-2015's label set (OTHER, not MISC), with a lone U+00A0 word."""
    directory.mkdir(parents=True, exist_ok=True)
    text = "".join(f"IMGID:{i}\n" + "".join(f"{w}\t{t}\n" for w, t in post) + "\n" for i, post in OTHER_POSTS)
    for name in ("train.txt", "valid.txt", "test.txt"):
        (directory / name).write_text(text, encoding="utf-8")
    return directory


def fake_reference_checkpoint(tmp_path: Path, scheme: TagScheme, reference_labels: list[str], rows: int):
    """Our random model written as the authors' files (weights, BERT dir, table): (model, paths)."""
    from transformers import BertConfig

    from mner.train.convert import label_permutation
    from mner.train.model import MGCMT, ModelConfig

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Obama", "visits", "Paris", "##s", "R", "##T"]
    bert_dir = tmp_path / "bert"
    bert_dir.mkdir()
    (bert_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    bert_config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    (bert_dir / "bert_config.json").write_text(bert_config.to_json_string())
    config = ModelConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64, augmentation_rows=rows)  # fmt: skip
    torch.manual_seed(0)
    ours = MGCMT(config).eval()
    table = torch.randn(rows, 200)
    table[0] = 0
    ours.set_augmentation_table(table)
    weights = tmp_path / "pytorch_model.bin"
    torch.save(to_reference(ours.state_dict(), label_permutation(reference_labels, scheme)), weights)
    np.save(tmp_path / "tweet_aug.npy", table.numpy())
    return ours, {"--weights": weights, "--bert": bert_dir, "--aug-table": tmp_path / "tweet_aug.npy"}


def test_reference_label_list_takes_the_fourth_type_from_the_data():
    from mner.train.convert import REFERENCE_LABELS, reference_labels_for

    assert reference_labels_for({"PER", "LOC", "ORG", "MISC"}) == list(REFERENCE_LABELS)
    assert reference_labels_for({"PER", "LOC", "ORG", "OTHER"}) == [
        "O", "B-OTHER", "I-OTHER", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "X", "[CLS]", "[SEP]"]  # fmt: skip
    assert reference_labels_for({"PER"}) == list(REFERENCE_LABELS)
    with pytest.raises(ValueError, match=r"PER, ORG, LOC and one more.*\['MISC', 'OTHER'\] beyond"):
        reference_labels_for({"PER", "MISC", "OTHER"})


def test_convert_with_vocab_from_data_names_the_data_s_fourth_type(tmp_path):
    from mner.train.cli import convert_command
    from mner.train.convert import reference_labels_for, reference_vocabulary

    data = write_other_folder(tmp_path / "twitter2015")
    vocab = reference_vocabulary(data)
    # Their vocabulary parse turns the "\xa0<TAB>O" line into the word "O" (their table follows it).
    assert "\xa0" not in vocab and "O" in vocab and "\u200b" in vocab
    scheme = TagScheme(("LOC", "ORG", "OTHER", "PER"))
    # The authors' 2015 model: OTHER in their MISC slot (rows 2 and 3 of their classifier).
    ours, files = fake_reference_checkpoint(tmp_path, scheme, reference_labels_for(scheme.entity_types),
                                            rows=max(vocab.values()) + 1)  # fmt: skip
    arguments = [part for option, path in files.items() for part in (option, str(path))]
    result = CliRunner().invoke(convert_command, [*arguments, "--vocab-from-data", str(data), "-o",
                                                  str(tmp_path / "best.pt")])  # fmt: skip
    assert result.exit_code == 0, result.output
    converted = load_checkpoint(tmp_path / "best.pt")
    assert converted.scheme.entity_types == ("LOC", "ORG", "OTHER", "PER")
    state = converted.model.state_dict()
    for key, value in ours.state_dict().items():  # the OTHER rows came from their MISC slot
        assert torch.equal(state[key], value), key

    # An explicit MISC label list disagrees with the data: refused, naming both sets (--out: the old spelling).
    labels = "O,B-MISC,I-MISC,B-PER,I-PER,B-ORG,I-ORG,B-LOC,I-LOC,X,[CLS],[SEP]"
    result = CliRunner().invoke(convert_command, [*arguments, "--vocab-from-data", str(data), "--labels", labels,
                                                  "--out", str(tmp_path / "misc.pt")])  # fmt: skip
    assert result.exit_code == 1
    assert "the labels name the entity types ['LOC', 'MISC', 'ORG', 'PER']" in result.output
    assert "has ['LOC', 'ORG', 'OTHER', 'PER'] (['OTHER'] missing)" in result.output
    assert not (tmp_path / "misc.pt").exists()


def test_mner_eval_refuses_data_whose_types_the_checkpoint_does_not_know(trained, tmp_path):
    out, _ = trained  # a MISC checkpoint
    data = write_other_folder(tmp_path / "twitter2015")
    result = CliRunner().invoke(eval_command, ["--ckpt", str(out / "best.pt"), "--data", str(data / "test.txt")])
    assert result.exit_code == 1
    assert f"{data / 'test.txt'} has entity types ['LOC', 'ORG', 'OTHER', 'PER']" in result.output
    assert f"checkpoint {out / 'best.pt'} knows ['LOC', 'MISC', 'ORG', 'PER']" in result.output


# --- words that are whitespace to Python or that BERT's cleaning empties ---------------------------------

ODD_WORDS = ["\xa0", "\xad", "\u200b", "\ufffd"]


def add_odd_words(data: Path) -> dict[str, int]:
    """Give every other post of each split one odd word (tagged O, as in TWITTER-2015/2017); count per split."""
    added = {}
    for split in ("train", "valid", "test"):
        path = data / f"{split}.txt"
        blocks = path.read_text(encoding="utf-8").strip("\n").split("\n\n")
        for i in range(0, len(blocks), 2):
            lines = blocks[i].split("\n")
            lines.insert(1 + (i // 2) % (len(lines) - 1), f"{ODD_WORDS[(i // 2) % len(ODD_WORDS)]}\tO")
            blocks[i] = "\n".join(lines)
        path.write_text("\n\n".join(blocks) + "\n\n", encoding="utf-8")
        added[split] = (len(blocks) + 1) // 2
    return added


def test_mner_train_and_eval_keep_every_odd_word(tmp_path, monkeypatch, caplog):
    from mner.runtime.conll import read_conll

    import dataclasses

    from mner.train import model as model_module

    # The command line has no size options: narrow its tiny preset to SMALL for speed.
    monkeypatch.setitem(model_module.PRESETS, "tiny", dataclasses.replace(model_module.PRESETS["tiny"], **SMALL))
    data = write_sample_corpus(tmp_path / "data", seed=3, sizes={"train": 24, "valid": 8, "test": 8})
    added = add_odd_words(data)
    with caplog.at_level("WARNING", logger="mner.runtime.conll"):
        result = CliRunner().invoke(train_command, ["--data", str(data), "--out", str(tmp_path / "run"), "--preset",
                                                    "tiny", "--epochs", "1", "--batch-size", "8", "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 0, result.output
    warnings = [r.getMessage() for r in caplog.records if r.name == "mner.runtime.conll"]
    for split, count in added.items():  # one warning per file, with its count
        [warning] = [w for w in warnings if w.startswith(str(data / f"{split}.txt"))]
        assert f"{count} words are whitespace to Python or emptied" in warning

    # What the model saw for them: [UNK] with the unknown augmentation row, whatever row
    # word2vec gave their text.
    encoder = load_checkpoint(tmp_path / "run" / "best.pt").text_encoder
    encoded = encoder.encode(["Paris", *ODD_WORDS])
    firsts = encoded.input_ids[encoded.word_positions[1:]]
    assert [encoder.tokenizer.id_to_token(int(i)) for i in firsts] == ["[UNK]"] * len(ODD_WORDS)
    assert (encoded.aug_ids[encoded.word_positions[1:]] == AUG_UNKNOWN_ROW).all()

    scored = {}
    real_evaluate = trainer_module.evaluate_entities

    def recording_evaluate(gold, pred):
        scored["gold"], scored["pred"] = gold, pred
        return real_evaluate(gold, pred)

    monkeypatch.setattr(trainer_module, "evaluate_entities", recording_evaluate)
    result = CliRunner().invoke(eval_command, ["--ckpt", str(tmp_path / "run" / "best.pt"), "--data",
                                               str(data / "test.txt"), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    posts = read_conll(data / "test.txt")
    assert sum(word in ODD_WORDS for post in posts for word in post.words) == added["test"]
    assert scored["gold"] == [post.tags for post in posts]  # every word is scored, the odd ones included
    assert [len(tags) for tags in scored["pred"]] == [len(post.words) for post in posts]
