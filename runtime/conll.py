"""CoNLL + IMGID files and entity-level P/R/F1, torch-free, for ``mner-tag --conll``.

The format and the scoring rules are the training side's (``mner.train.data.read_conll``
and ``mner.train.metrics.evaluate_entities``): one post per block, an optional
``IMGID:<id>`` line (the picture is ``<id>.jpg``), one ``token<TAB>tag`` line per word;
an entity counts as found only when its type, first and last word all match
(conlleval / seqeval's default mode). They live here as well because the runtime must
not import train/ (it imports torch).

Every word is read as the file has it. A token field is the text before the line's one
TAB; it must not be empty, and is otherwise kept untouched, even when Python calls it
whitespace: a published TWITTER-2015 dev file has a token line that is a lone U+00A0
(``"\xa0<TAB>O"``), a word with its own tag. Only a line holding nothing but ASCII
whitespace (spaces, tabs) separates posts; ``str.strip()`` would also strip U+00A0 and
so cannot tell "\xa0<TAB>O" from a blank line by itself, and a line that is a lone
U+00A0 without a TAB is malformed, not a separator. Words like these, and words BERT's
text cleaning empties (U+00AD, U+200B, U+FFFD ...), keep their slot and their tag;
``mner.runtime.text`` says what the model sees for them ([UNK]). Each file that has
any gets one warning with their count and a few examples.
"""

from __future__ import annotations

import logging
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from mner.runtime.tags import entities_from_bio, parse_bio
from mner.runtime.text import bert_cleaning_empties

logger = logging.getLogger(__name__)

IMAGE_PREFIX = "IMGID:"
_BLANK = string.whitespace  # ASCII only: a line of these separates posts; "\xa0<TAB>O" is a word
_EXAMPLES = 5  # odd words named in the warning


@dataclass(frozen=True)
class ConllPost:
    image_id: str | None
    words: list[str]
    tags: list[str]
    # line number of the post's first line (its IMGID line, or its first token); not part of equality
    line: int = field(default=0, compare=False)


SPLIT_FILES = {"train": "train.txt", "valid": "valid.txt", "test": "test.txt"}  # a TWITTER-format data folder


def data_file(data: str | Path, split: str = "test") -> Path:
    """The CoNLL file ``--data`` means: ``data`` itself when it is a file, else ``<data>/<split>.txt``.

    One meaning of ``--data`` on every command: TWITTER-format data, a folder holding
    train.txt, valid.txt and test.txt, or one such file (then ``split`` is not used).
    """
    if split not in SPLIT_FILES:
        raise ValueError(f"split must be one of {', '.join(SPLIT_FILES)}; got {split!r}")
    path = Path(data)
    if path.is_dir():
        chosen = path / SPLIT_FILES[split]
        if not chosen.is_file():
            raise ValueError(f"--data {path} is a folder without {SPLIT_FILES[split]} (the {split} split); "
                             f"give a folder with train.txt, valid.txt and test.txt, or one CoNLL file")  # fmt: skip
        return chosen
    if not path.is_file():
        raise ValueError(f"--data {path}: no such file or folder")
    return path


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

    odd_words: list[str] = []
    # utf-8-sig drops a byte-order mark; newline=None turns \r\n and \r into \n, so no
    # line (and no token) holds a line break.
    with open(path, encoding="utf-8-sig", newline=None) as lines:
        for number, line in enumerate(lines, start=1):
            line = line.rstrip("\n")
            if not line.strip(_BLANK):
                close_block()
            elif line.startswith(IMAGE_PREFIX):
                close_block()
                image_id, first_line = line[len(IMAGE_PREFIX) :].strip(), number
                if not image_id:
                    raise ValueError(f"{path}:{number}: {IMAGE_PREFIX} line without an image id")
            else:
                # Trailing ASCII whitespace after the tag is dropped; the token is kept as is.
                fields = line.rstrip(_BLANK).split("\t")
                if len(fields) != 2 or not fields[0] or not fields[1]:
                    raise ValueError(f"{path}:{number}: expected 'token<TAB>tag' with a non-empty token, got {line!r}")
                try:
                    parse_bio(fields[1])
                except ValueError as error:
                    raise ValueError(f"{path}:{number}: {error}") from None
                if not words and image_id is None:
                    first_line = number
                if _is_odd(fields[0]):
                    odd_words.append(fields[0])
                words.append(fields[0])
                tags.append(fields[1])
    close_block()
    if odd_words:
        # ascii(): the examples are invisible or look like a space when printed as they are
        examples = ", ".join(ascii(word) for word, _ in Counter(odd_words).most_common(_EXAMPLES))
        count = "1 word is" if len(odd_words) == 1 else f"{len(odd_words)} words are"
        logger.warning(
            "%s: %s whitespace to Python or emptied by BERT's text cleaning (e.g. %s); each keeps its slot and its "
            "tag, and the model sees [UNK] for a word the cleaning empties", path, count, examples,
        )  # fmt: skip
    return posts


def _is_odd(word: str) -> bool:
    """A word that holds whitespace or that BERT's cleaning empties (see the module docstring)."""
    if word.isascii() and word.isprintable() and " " not in word:
        return False  # fast path: an ASCII letter, digit or mark survives cleaning
    return any(c.isspace() for c in word) or bert_cleaning_empties(word)


def entity_types(posts: Iterable[ConllPost]) -> set[str]:
    """Every entity type the posts' tags name ("B-PER" and "I-PER" name PER)."""
    return {entity_type for post in posts for tag in post.tags if (entity_type := parse_bio(tag)[1]) is not None}


def check_entity_types(posts: Iterable[ConllPost], known: Iterable[str], data: str, model: str) -> None:
    """Raise ValueError naming both sets when the posts' tags name a type the model does not know.

    The model could never predict such a type, so scoring would quietly give it 0 (a
    TWITTER-2015 file, whose fourth type is OTHER, scored by a MISC model) instead of
    saying that data and model disagree about the label set.
    """
    found, known = entity_types(posts), set(known)
    unknown = found - known
    if unknown:
        raise ValueError(
            f"{data} has entity types {sorted(found)} but {model} knows {sorted(known)}: {sorted(unknown)} could "
            "never be predicted; use a model trained on data with these types (mner-convert: --vocab-from-data)"
        )


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
