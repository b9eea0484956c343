"""mner-eval --decoding constrained|reference, and the authors' scoring (metrics.evaluate_reference)."""

import json
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mner.runtime.decode import decode_words
from mner.runtime.tags import bio_violations
from mner.train import trainer as trainer_module
from mner.train.cli import eval_command
from mner.train.metrics import REFERENCE_SCORER, evaluate_entities, evaluate_reference
from mner.train.sample import write_sample_corpus
from mner.train.trainer import TrainArgs, evaluate_checkpoint, train

seqeval_metrics = pytest.importorskip("seqeval.metrics")

SMALL = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
         "augmentation_dim": 16}  # fmt: skip
EMPTIED = "\u200b"  # a zero-width space: BERT's cleaning leaves nothing of it


# --- evaluate_reference: the authors' scorer -------------------------------------------------------


def test_reference_scoring_reads_non_bio_tags_as_seqeval_does():
    gold = [["B-PER", "I-PER", "O", "O", "B-LOC"], ["O", "B-ORG", "O"], ["O", "O", "O"]]
    # Posts 1 and 2: an X right before an entity tag is an entity of type "_" (a false positive);
    # post 3: an X before O vanishes. Every gold entity is found.
    pred = [["B-PER", "I-PER", "O", "X", "B-LOC"], ["X", "B-ORG", "O"], ["O", "X", "O"]]
    result = evaluate_reference(gold, pred)
    assert result["scorer"] == REFERENCE_SCORER
    assert result["per_type"]["_"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert result["per_type"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert result["micro"]["precision"] == pytest.approx(3 / 5) and result["micro"]["recall"] == 1.0
    # Our own scoring takes BIO tags only.
    with pytest.raises(ValueError, match="expected a BIO tag"):
        evaluate_entities(gold, pred)


def test_reference_scoring_names_padding_as_the_authors_did():
    result = evaluate_reference([["B-PER", "O"]], [["<pad>", "B-PER"]])
    assert "AD" in result["per_type"]  # their "PAD", which seqeval reads as prefix P, type AD


def test_reference_scoring_is_seqeval_on_random_sequences():
    rng = random.Random(0)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    for _ in range(20):
        gold = [[rng.choice(tags) for _ in range(rng.randint(1, 12))] for _ in range(10)]
        pred = [[rng.choice(tags + ["X", "[CLS]", "[SEP]"]) for _ in post] for post in gold]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = seqeval_metrics.classification_report(gold, pred, output_dict=True)
        result = evaluate_reference(gold, pred)
        assert result["micro"]["f1"] == pytest.approx(report["micro avg"]["f1-score"])
        assert result["micro"]["support"] == report["micro avg"]["support"]


def test_reference_scoring_without_entities_is_zero():
    result = evaluate_reference([["O", "O"]], [["O", "X"]])
    assert result["micro"]["f1"] == 0.0 and result["micro"]["support"] == 0


def test_reference_scoring_validates_lengths():
    with pytest.raises(ValueError, match="gold has 1 posts but pred has 2"):
        evaluate_reference([["O"]], [["O"], ["O"]])
    with pytest.raises(ValueError, match="post 0: gold has 1 tags but pred has 2"):
        evaluate_reference([["O"]], [["O", "O"]])


# --- mner-eval end to end on a tiny trained model --------------------------------------------------


def add_emptied_words(path: Path) -> int:
    """Insert an O-tagged word that BERT's cleaning empties after the first word of every post."""
    lines, added, first_token = [], 0, True
    for line in path.read_text(encoding="utf-8").splitlines():
        lines.append(line)
        if line and not line.startswith("IMGID:") and first_token:
            lines.append(f"{EMPTIED}\tO")
            added, first_token = added + 1, False
        if not line:
            first_token = True
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return added


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    corpus = write_sample_corpus(tmp_path_factory.mktemp("corpus"), seed=3, sizes={"train": 32, "valid": 8, "test": 12})
    added = add_emptied_words(corpus / "test.txt")
    out = tmp_path_factory.mktemp("trained") / "run"
    train(TrainArgs(data_dir=corpus, out_dir=out, preset="tiny", epochs=1, batch_size=8, seed=7, device="cpu",
                    model_overrides=dict(SMALL)))  # fmt: skip
    return out / "best.pt", corpus / "test.txt", added


def test_reference_mode_decodes_unconstrained_and_drops_emptied_words(trained, monkeypatch):
    checkpoint, test_file, added = trained
    seen = {}
    real_decode = decode_words

    def recording_decode(*args, **kwargs):
        decoded = real_decode(*args, **kwargs)
        seen.setdefault(kwargs.get("decoding", "constrained"), []).append((args, decoded))
        return decoded

    def recording_score(name, real):
        def score(gold, pred):
            seen[name] = (gold, pred)
            return real(gold, pred)

        return score

    monkeypatch.setattr(trainer_module, "decode_words", recording_decode)
    monkeypatch.setattr(trainer_module, "evaluate_reference", recording_score("reference_scored", evaluate_reference))
    monkeypatch.setattr(trainer_module, "evaluate_entities", recording_score("constrained_scored", evaluate_entities))

    reference = evaluate_checkpoint(checkpoint, test_file, device="cpu", decoding="reference")
    constrained = evaluate_checkpoint(checkpoint, test_file, device="cpu")
    assert reference["decoding"] == "reference" and reference["scorer"] == REFERENCE_SCORER
    assert constrained["decoding"] == "constrained" and "scorer" not in constrained

    # Reference: every word tag is the unconstrained Viterbi path's tag at the word's first piece.
    for (emissions, lengths, roles, scheme, crf), decoded in seen["reference"]:
        from mner.runtime.viterbi import viterbi_decode

        tags, _ = viterbi_decode(emissions, lengths, crf.start, crf.end, crf.transitions)
        assert decoded.word_tags == [[scheme.tags[t] for t in row[r == 1]] for row, r in zip(tags, roles)]
    # The emptied words vanish from input and scoring in reference mode only.
    reference_gold, _ = seen["reference_scored"]
    constrained_gold, constrained_pred = seen["constrained_scored"]
    assert sum(map(len, constrained_gold)) - sum(map(len, reference_gold)) == added > 0
    assert all(not bio_violations(tags) for tags in constrained_pred)


def test_mner_eval_decoding_option(trained):
    checkpoint, test_file, _ = trained
    runner = CliRunner()
    results = {}
    for decoding in ("constrained", "reference"):
        result = runner.invoke(eval_command, ["--ckpt", str(checkpoint), "--data", str(test_file), "--device", "cpu",
                                              "--decoding", decoding, "--json"])  # fmt: skip
        assert result.exit_code == 0, result.output
        results[decoding] = json.loads(result.output[result.output.index("{") :])
        assert results[decoding]["decoding"] == decoding
    default = runner.invoke(eval_command, ["--ckpt", str(checkpoint), "--data", str(test_file), "--device", "cpu"])
    assert default.exit_code == 0, default.output
    assert "decoding: constrained" in default.output
    [micro] = [line for line in default.output.splitlines() if line.startswith("micro")]
    assert micro.split()[3] == f"{100 * results['constrained']['micro']['f1']:.2f}"
    bad = runner.invoke(eval_command, ["--ckpt", str(checkpoint), "--data", str(test_file), "--decoding", "viterbi"])
    assert bad.exit_code == 2 and "'viterbi' is not one of 'constrained', 'reference'" in bad.output


def test_evaluate_checkpoint_rejects_an_unknown_decoding(tmp_path):
    with pytest.raises(ValueError, match=r"decoding must be one of \('constrained', 'reference'\), got 'greedy'"):
        evaluate_checkpoint(tmp_path / "best.pt", tmp_path / "test.txt", decoding="greedy")


def test_reference_mode_on_the_real_data_if_present():
    """Sanity of the reference path on TWITTER-2017 gold against itself: perfect scores, no quirk types."""
    test_file = Path(__file__).resolve().parents[3] / "shared" / "data" / "twitter2017" / "test.txt"
    if not test_file.is_file():
        pytest.skip(f"{test_file} is absent")
    from mner.train.data import read_conll

    gold = [post.tags for post in read_conll(test_file)]
    result = evaluate_reference(gold, gold)
    assert result["micro"]["f1"] == 1.0 and set(result["per_type"]) == {"LOC", "MISC", "ORG", "PER"}
    assert result["micro"] == evaluate_entities(gold, gold)["micro"]
