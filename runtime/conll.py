"""CoNLL + IMGID files and entity-level P/R/F1, torch-free, for ``mner-tag --conll``.

The format and the scoring rules are the training side's (``mner.train.data.read_conll``
and ``mner.train.metrics.evaluate_entities``): one post per block, an optional
``IMGID:<id>`` line (the picture is ``<id>.jpg``), one ``token<TAB>tag`` line per word;
an entity counts as found only when its type, first and last word all match
(conlleval / seqeval's default mode). They live here as well because the runtime must
not import train/ (it imports torch).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mner.runtime.tags import entities_from_bio, parse_bio

IMAGE_PREFIX = "IMGID:"


@dataclass(frozen=True)
class ConllPost:
    image_id: str | None
    words: list[str]
    tags: list[str]
    # line number of the post's first line (its IMGID line, or its first token); not part of equality
    line: int = field(default=0, compare=False)


def read_conll(path: str | Path) -> list[ConllPost]:
    """Every post of a CoNLL file; raises ValueError naming the file and line of a malformed line."""
    path = Path(path)
    posts: list[ConllPost] = []
    image_id: str | None = None
    words: list[str] = []
    tags: list[str] = []
    first_line = 0

    def close_block() -> None:
        nonlocal image_id, words, tags
        if words:
            posts.append(ConllPost(image_id, words, tags, first_line))
        elif image_id is not None:
            raise ValueError(f"{path}:{first_line}: {IMAGE_PREFIX}{image_id} is followed by no token lines")
        image_id, words, tags = None, [], []

    # utf-8-sig drops a byte-order mark; newline=None turns \r\n into \n.
    with open(path, encoding="utf-8-sig", newline=None) as lines:
        for number, line in enumerate(lines, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                close_block()
            elif line.startswith(IMAGE_PREFIX):
                close_block()
                image_id, first_line = line[len(IMAGE_PREFIX) :].strip(), number
                if not image_id:
                    raise ValueError(f"{path}:{number}: {IMAGE_PREFIX} line without an image id")
            else:
                fields = line.rstrip().split("\t")
                if len(fields) != 2 or not fields[0] or not fields[1] or any(c.isspace() for c in fields[0]):
                    raise ValueError(f"{path}:{number}: expected 'token<TAB>tag' with a token without whitespace, got {line!r}")
                try:
                    parse_bio(fields[1])
                except ValueError as error:
                    raise ValueError(f"{path}:{number}: {error}") from None
                if not words and image_id is None:
                    first_line = number
                words.append(fields[0])
                tags.append(fields[1])
    close_block()
    return posts


def evaluate_entities(gold: list[list[str]], pred: list[list[str]]) -> dict:
    """{"micro": scores, "per_type": {type: scores}}, scores = {"precision", "recall", "f1", "support"}."""
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} posts but pred has {len(pred)}")
    gold_counts, pred_counts, true_counts = Counter(), Counter(), Counter()
    for i, (gold_tags, pred_tags) in enumerate(zip(gold, pred)):
        if len(gold_tags) != len(pred_tags):
            raise ValueError(f"post {i}: gold has {len(gold_tags)} tags but pred has {len(pred_tags)}")
        gold_entities, pred_entities = set(entities_from_bio(gold_tags)), set(entities_from_bio(pred_tags))
        gold_counts.update(e[0] for e in gold_entities)
        pred_counts.update(e[0] for e in pred_entities)
        true_counts.update(e[0] for e in gold_entities & pred_entities)
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
    """``evaluate_entities``' result as a text table (scores in percent)."""
    rows = [*result["per_type"].items(), ("micro", result["micro"])]
    width = max(len("type"), *(len(name) for name, _ in rows))
    lines = [f"{'type':<{width}}  {'precision':>9}  {'recall':>6}  {'f1':>6}  {'support':>7}"]
    for name, s in rows:
        lines.append(f"{name:<{width}}  {100 * s['precision']:9.2f}  {100 * s['recall']:6.2f}  {100 * s['f1']:6.2f}  {s['support']:7d}")
    return "\n".join(lines)
