"""Entity-level precision, recall and F1 with conlleval's rules (seqeval's default mode).

An entity counts as found only when type, first word and last word all match.
"""

from __future__ import annotations

from collections import Counter

from mner.runtime.tags import entities_from_bio


def evaluate_entities(gold: list[list[str]], pred: list[list[str]]) -> dict:
    """Micro-averaged and per-type scores over sentences of BIO tags.

    Returns {"micro": scores, "per_type": {type: scores}} where scores are
    {"precision", "recall", "f1", "support"} and support counts gold entities.
    A ratio with a zero denominator is 0, as in seqeval. Per-type entries cover
    every type seen in gold or pred, sorted.
    """
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} sentences but pred has {len(pred)}")
    gold_counts, pred_counts, true_counts = Counter(), Counter(), Counter()
    for i, (gold_tags, pred_tags) in enumerate(zip(gold, pred)):
        if len(gold_tags) != len(pred_tags):
            raise ValueError(f"sentence {i}: gold has {len(gold_tags)} tags but pred has {len(pred_tags)}")
        gold_entities = set(entities_from_bio(gold_tags))
        pred_entities = set(entities_from_bio(pred_tags))
        gold_counts.update(entity[0] for entity in gold_entities)
        pred_counts.update(entity[0] for entity in pred_entities)
        true_counts.update(entity[0] for entity in gold_entities & pred_entities)
    types = sorted(gold_counts.keys() | pred_counts.keys())
    return {
        "micro": _scores(sum(true_counts.values()), sum(pred_counts.values()), sum(gold_counts.values())),
        "per_type": {t: _scores(true_counts[t], pred_counts[t], gold_counts[t]) for t in types},
    }


def _scores(true_positives: int, predicted: int, support: int) -> dict:
    precision = true_positives / predicted if predicted else 0.0
    recall = true_positives / support if support else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def format_report(result: dict) -> str:
    """`evaluate_entities`' result as a text table (scores in percent)."""
    rows = [(name, scores) for name, scores in result["per_type"].items()] + [("micro", result["micro"])]
    width = max(len("type"), *(len(name) for name, _ in rows))
    lines = [f"{'type':<{width}}  {'precision':>9}  {'recall':>6}  {'f1':>6}  {'support':>7}"]
    for name, s in rows:
        percentages = f"{100 * s['precision']:9.2f}  {100 * s['recall']:6.2f}  {100 * s['f1']:6.2f}"
        lines.append(f"{name:<{width}}  {percentages}  {s['support']:7d}")
    return "\n".join(lines)
