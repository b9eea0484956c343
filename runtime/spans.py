"""Word tags -> entities with character offsets into the caller's original text.

Offsets are Python ``str`` indices (Unicode code points) into the text exactly as it
was passed in -- no normalisation, no stripping -- so ``text[start:end] ==
entity.text`` always holds, for emoji, zero-width joiners, combining marks, URLs and
any whitespace between an entity's words (which stays in ``entity.text`` as it was).
A client that counts UTF-16 units (JavaScript) must convert.

An entity's ``score`` is the smallest CRF marginal probability among its words' tags
(the marginals are computed under the same allowed-tag constraints as the decode).
The probability that the model assigns the whole span its tags is at most this
value; one unsure word makes the entity unsure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from mner.runtime.tags import entities_from_bio
from mner.runtime.text import Word


@dataclass(frozen=True)
class Entity:
    type: str  # "PER", "LOC", ...
    text: str  # == original_text[start:end]
    start: int  # code-point offset of the first character
    end: int  # one past the last character
    score: float  # in [0, 1]

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict, which deep-copies field by field: ~10x slower, and a large mner-serve
        # response (16,384 words, ~14,000 entities) is built on the event loop.
        return {"type": self.type, "text": self.text, "start": self.start, "end": self.end, "score": self.score}


def entities_from_words(text: str, words: Sequence[Word], tags: Sequence[str], scores: Sequence[float]) -> list[Entity]:
    """Entities of ``text`` given its words (from ``split_words(text)``), one BIO tag and one marginal per word."""
    if not len(words) == len(tags) == len(scores):
        raise ValueError(f"need one tag and one score per word, got {len(words)} words, {len(tags)} tags, {len(scores)} scores")
    entities = []
    for entity_type, first, last in entities_from_bio(list(tags)):  # last is exclusive
        start, end = words[first].start, words[last - 1].end
        span = text[start:end]
        if span[: len(words[first].text)] != words[first].text or span[-len(words[last - 1].text) :] != words[last - 1].text:
            raise ValueError(f"words do not belong to this text: {words[first].text!r}..{words[last - 1].text!r} "
                             f"is not at [{start}, {end}) of {text!r}")  # fmt: skip
        score = round(float(min(scores[first:last])), 4)
        entities.append(Entity(entity_type, span, start, end, score))
    return entities
