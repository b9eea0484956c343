"""The tag scheme: BIO entity tags laid out the way the MGCMT reference lays them out.

The reference (IIE4MNER, run_mtmner_crf.py) numbers its CRF labels from 1, keeps 0
for padding and appends three structural labels after the entity tags:

    0 "<pad>", 1 "O", then per entity type "B-<type>", "I-<type>", then "X"
    (a word's non-first word-piece), "[CLS]", "[SEP]"

so with 4 types there are 13 tags. Keeping the layout keeps the paper's CRF (its
transitions between X/[CLS]/[SEP] and entity tags) and makes its start/stop labels
([CLS]/[SEP]) ordinary tags. The auxiliary span task uses the same layout over the
type-less tags O/B/I.

Entity types are kept sorted, so the same data always yields the same tag ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum
from typing import Iterable, Sequence

import numpy as np

PAD = "<pad>"
OUTSIDE = "O"
CONTINUATION = "X"
CLS = "[CLS]"
SEP = "[SEP]"
AUX_TAGS = (PAD, OUTSIDE, "B", "I", CONTINUATION, CLS, SEP)

FORMAT_VERSION = 1


class Role(IntEnum):
    """What a position of an encoded sequence holds (stored as int8 arrays)."""

    PAD = 0  # beyond the sequence's length
    WORD = 1  # the first word-piece of a word: the position the word's tag lives at
    CONTINUATION = 2  # a later word-piece of the same word
    CLS = 3
    SEP = 4


def parse_bio(tag: str) -> tuple[str, str | None]:
    """Split a BIO tag into (prefix, type): "B-PER" -> ("B", "PER"), "O" -> ("O", None).

    Raises ValueError on anything that is not "O", "B-<type>" or "I-<type>".
    """
    if tag == OUTSIDE:
        return OUTSIDE, None
    prefix, dash, entity_type = tag.partition("-")
    if prefix not in ("B", "I") or not dash or not entity_type:
        raise ValueError(f"expected a BIO tag ('O', 'B-<type>' or 'I-<type>'), got {tag!r}")
    return prefix, entity_type


@dataclass(frozen=True)
class TagScheme:
    """The model's tag list for a set of entity types (sorted on construction)."""

    entity_types: tuple[str, ...]

    def __post_init__(self) -> None:
        types = tuple(self.entity_types)
        if not types:
            raise ValueError("a TagScheme needs at least one entity type, got none")
        for entity_type in types:
            if not isinstance(entity_type, str) or not entity_type or any(c.isspace() for c in entity_type):
                raise ValueError(f"entity types must be non-empty strings without whitespace, got {entity_type!r}")
        if len(set(types)) != len(types):
            raise ValueError(f"entity types must be distinct, got {types}")
        object.__setattr__(self, "entity_types", tuple(sorted(types)))

    @classmethod
    def from_bio_tags(cls, tags: Iterable[str]) -> TagScheme:
        """The scheme whose types are every type named after "B-"/"I-" in `tags`."""
        types = {entity_type for entity_type in (parse_bio(tag)[1] for tag in tags) if entity_type is not None}
        return cls(tuple(types))

    @property
    def tags(self) -> list[str]:
        entity_tags = [f"{prefix}-{t}" for t in self.entity_types for prefix in ("B", "I")]
        return [PAD, OUTSIDE, *entity_tags, CONTINUATION, CLS, SEP]

    @property
    def num_tags(self) -> int:
        return 2 * len(self.entity_types) + 5

    @property
    def index(self) -> dict[str, int]:
        return {tag: i for i, tag in enumerate(self.tags)}

    @property
    def aux_tags(self) -> list[str]:
        return list(AUX_TAGS)

    @property
    def aux_index(self) -> dict[str, int]:
        return {tag: i for i, tag in enumerate(AUX_TAGS)}

    def aux_table(self) -> np.ndarray:
        """(T,) int64: the auxiliary tag id of every tag id."""
        aux_index = self.aux_index
        return np.array([aux_index[tag.split("-", 1)[0] if "-" in tag else tag] for tag in self.tags], dtype=np.int64)

    def to_aux(self, tag_id):
        """The auxiliary id of a tag id (B-x -> B, I-x -> I, others by name); ints or int arrays."""
        table = self.aux_table()
        ids = np.asarray(tag_id)
        if not np.issubdtype(ids.dtype, np.integer) or ids.size and (ids.min() < 0 or ids.max() >= len(table)):
            raise ValueError(f"tag ids must be integers in [0, {len(table)}), got {tag_id!r}")
        aux = table[ids]
        return int(aux) if aux.ndim == 0 else aux

    def allowed_mask(self, roles: np.ndarray) -> np.ndarray:
        """(..., T) bool: which tags each position may take, given its Role (any shape of int array).

        A word's first piece may take O or any B-/I- tag, a continuation piece only X,
        [CLS] only [CLS], [SEP] only [SEP]. Padding rows are all True: the decoder never
        reads them, and an all-True row keeps a decoder that does see them finite.
        """
        roles = np.asarray(roles)
        if not np.issubdtype(roles.dtype, np.integer) or roles.size and (roles.min() < 0 or roles.max() > max(Role)):
            raise ValueError(f"roles must be integers in [0, {int(max(Role))}] (see tags.Role), got {roles!r}")
        index = self.index
        table = np.zeros((len(Role), self.num_tags), dtype=bool)  # (roles, T)
        table[Role.PAD, :] = True
        table[Role.WORD, index[OUTSIDE] : index[CONTINUATION]] = True  # O and every B-/I- tag
        table[Role.CONTINUATION, index[CONTINUATION]] = True
        table[Role.CLS, index[CLS]] = True
        table[Role.SEP, index[SEP]] = True
        return table[roles]

    def bio_follow_mask(self) -> np.ndarray:
        """(T, T) bool: may the next word take tag j (column) after a word tagged i (row)?

        BIO's rule: I-x only continues an entity of type x, so it may follow B-x or I-x and
        nothing else (not O, not another type). Rows of the non-word tags (<pad>, X, [CLS],
        [SEP]) are the row of O, "no entity open": what a post may start with. Columns of
        non-word tags are all True; where they may stand is the allowed mask's business.
        """
        index = self.index
        follow = np.ones((self.num_tags, self.num_tags), dtype=bool)  # (from, to)
        for entity_type in self.entity_types:
            inside, begin = index[f"I-{entity_type}"], index[f"B-{entity_type}"]
            follow[:, inside] = False
            follow[[begin, inside], inside] = True
        return follow

    def to_json(self) -> dict:
        """A JSON-ready dict for checkpoints and bundles (the tag lists are stored to be checked on load)."""
        return {
            "format_version": FORMAT_VERSION,
            "entity_types": list(self.entity_types),
            "tags": self.tags,
            "aux_tags": self.aux_tags,
        }

    @classmethod
    def from_json(cls, data: dict | str) -> TagScheme:
        """Rebuild from `to_json()`'s dict (or its JSON text); raises ValueError if the lists disagree."""
        if isinstance(data, str):
            data = json.loads(data)
        if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION or "entity_types" not in data:
            raise ValueError(f"expected a tag scheme dict with format_version {FORMAT_VERSION}, got {data!r}")
        scheme = cls(tuple(data["entity_types"]))
        if data.get("tags", scheme.tags) != scheme.tags or data.get("aux_tags", scheme.aux_tags) != scheme.aux_tags:
            raise ValueError(
                f"stored tag lists {data.get('tags')} / {data.get('aux_tags')} do not match the layout "
                f"{scheme.tags} / {scheme.aux_tags} this version builds for types {scheme.entity_types}"
            )
        return scheme


def entities_from_bio(tags: list[str]) -> list[tuple[str, int, int]]:
    """Entities as (type, start_word, end_word_exclusive), with conlleval's rules.

    An entity starts at B-x, or at I-x that does not continue an entity of type x
    (after O, or after another type), and ends before anything that does not continue it.
    This is seqeval's default (non-strict) mode.
    """
    entities = []
    current: tuple[str, int] | None = None  # (type, start) of the open entity
    for position, tag in enumerate(tags):
        prefix, entity_type = parse_bio(tag)
        if current is not None and (prefix != "I" or entity_type != current[0]):
            entities.append((current[0], current[1], position))
            current = None
        if prefix == "B" or (prefix == "I" and current is None):
            current = (entity_type, position)
    if current is not None:
        entities.append((current[0], current[1], len(tags)))
    return entities


def bio_violations(tags: Sequence[str]) -> list[int]:
    """Positions whose tag breaks BIO: an I-x that does not continue an entity of type x.

    That is I-x first, after O, or after B-y/I-y of another type. conlleval reads such
    an I-x as the start of an entity, so the entities are still defined; the sequence is
    just not well-formed. Raises ValueError on anything that is not a BIO tag.
    """
    violations = []
    previous_type: str | None = None  # the open entity's type, None outside entities
    for position, tag in enumerate(tags):
        prefix, entity_type = parse_bio(tag)
        if prefix == "I" and entity_type != previous_type:
            violations.append(position)
        previous_type = entity_type
    return violations


def repair_bio(tags: Sequence[str]) -> list[str]:
    """The tags with every I-x that does not continue an entity of type x made B-x.

    conlleval already reads such an I-x as the start of an entity, so the entities do not
    change: only their spelling becomes well-formed. For sequences stitched from windows
    decoded apart, where each window's tags are well-formed but a seam may not be.
    """
    repaired = list(tags)
    for position in bio_violations(repaired):
        repaired[position] = "B-" + repaired[position][2:]
    return repaired
