import random
import warnings

import pytest

from mner.train.metrics import evaluate_entities, format_report

seqeval_metrics = pytest.importorskip("seqeval.metrics")


def test_hand_computed_scores():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "I-ORG"], ["B-ORG", "B-PER"]]
    result = evaluate_entities(gold, pred)
    assert result["micro"] == {"precision": 0.5, "recall": 2 / 3, "f1": pytest.approx(4 / 7), "support": 3}
    assert result["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert result["per_type"]["ORG"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert result["per_type"]["PER"]["precision"] == 0.5
    assert list(result["per_type"]) == ["LOC", "ORG", "PER"]


def test_partial_span_is_a_miss():
    result = evaluate_entities([["B-PER", "I-PER"]], [["B-PER", "O"]])
    assert result["micro"]["f1"] == 0.0


def test_no_entities_anywhere_scores_zero():
    result = evaluate_entities([["O", "O"]], [["O", "O"]])
    assert result["micro"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert result["per_type"] == {}


def test_length_mismatches_raise():
    with pytest.raises(ValueError, match="gold has 2 posts but pred has 1"):
        evaluate_entities([["O"], ["O"]], [["O"]])
    with pytest.raises(ValueError, match="post 1: gold has 2 tags but pred has 1"):
        evaluate_entities([["O"], ["O", "O"]], [["O"], ["O"]])


def test_non_bio_tags_raise():
    with pytest.raises(ValueError, match="BIO tag"):
        evaluate_entities([["X"]], [["O"]])


def random_corpus(rng, vocabulary):
    gold, pred = [], []
    for _ in range(rng.randint(1, 6)):
        n = rng.randint(0, 10)
        gold.append([rng.choice(vocabulary) for _ in range(n)])
        # mostly copy gold so that scores are not all zero
        pred.append([tag if rng.random() < 0.6 else rng.choice(vocabulary) for tag in gold[-1]])
    return gold, pred


def test_agrees_with_seqeval_on_random_ill_formed_sequences():
    rng = random.Random(1)
    vocabulary = ["O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-MISC", "B-ORG"]
    checked = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval's zero-division warnings
        for _ in range(300):
            gold, pred = random_corpus(rng, vocabulary)
            result = evaluate_entities(gold, pred)
            micro = result["micro"]
            assert micro["precision"] == pytest.approx(seqeval_metrics.precision_score(gold, pred))
            assert micro["recall"] == pytest.approx(seqeval_metrics.recall_score(gold, pred))
            assert micro["f1"] == pytest.approx(seqeval_metrics.f1_score(gold, pred))
            if not any(any(tag != "O" for tag in s) for s in gold + pred):
                continue  # seqeval's report has no rows to compare
            report = seqeval_metrics.classification_report(gold, pred, output_dict=True)
            types = {name for name in report if not name.endswith(" avg")}
            assert set(result["per_type"]) == types
            for name in types:
                ours = result["per_type"][name]
                for key, theirs in [("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")]:
                    assert ours[key] == pytest.approx(float(report[name][theirs])), (name, key, gold, pred)
                assert ours["support"] == int(report[name]["support"])
            checked += 1
    assert checked > 250


def test_format_report_lists_every_type_and_micro():
    result = evaluate_entities([["B-PER", "O", "B-LOC"]], [["B-PER", "O", "O"]])
    lines = format_report(result).splitlines()
    assert lines[0].split() == ["type", "precision", "recall", "f1", "support"]
    assert [line.split()[0] for line in lines[1:]] == ["LOC", "PER", "micro"]
    assert lines[-1].split() == ["micro", "100.00", "50.00", "66.67", "2"]
