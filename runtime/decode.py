"""Emissions -> word tags: CRF Viterbi over word-pieces, then one tag per word.

Shared by training-time evaluation and the runtime, so both decode alike. Two decodings:

``"constrained"`` (the default, and the only one the runtime uses): the best path among
those that give every word a well-formed BIO tag. A word's first piece may take only
O/B-x/I-x, every other position only its structural tag (X, [CLS], [SEP]), and between
consecutive *words* BIO holds: no I-x first, after O, or after another type's B-y/I-y.

The last rule cannot be put on the CRF's own tags: a word's continuation pieces (X) sit
between it and the next word, so a constraint on adjacent positions cannot see that
O -> X -> I-PER jumps from O into an entity. The decoder therefore runs on an expanded
tag set where X remembers the last word tag: one X state per word tag (X after O is the
CRF's own X, X after B-x or I-x is a new state). A state scores exactly as the tag it
stands for (same emission, same learnt transitions), and a move the BIO rule forbids gets
``FORBIDDEN_SCORE``. Each well-formed path over the CRF's tags is exactly one path over
the expanded states, with the same score, and an ill-formed one is no allowed path at
all; so Viterbi on the expanded states is the exact best well-formed path, and
forward-backward on them gives the exact marginals under the same constraints. With 4
entity types the tag set grows from 13 to 21 (the native kernel pads both to the next
multiple of 8: 16 and 24).

``"reference"``: the authors' decoding (IIE4MNER's ``crf.decode``): Viterbi over all
positions with no constraint at all, so a word's first piece may come out X, [CLS],
[SEP] or <pad> and the word tags need not be BIO. For reproducing their figures only
(``mner-eval --decoding reference``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from mner.runtime.tags import CONTINUATION, OUTSIDE, Role, TagScheme
from mner.runtime.viterbi import crf_marginals_scaled, viterbi_decode

Decoding = Literal["constrained", "reference"]
DECODINGS: tuple[str, ...] = ("constrained", "reference")

# The score of a ruled-out emission or move. Finite, because the CRF functions accept only
# finite scores; so far below any real path score that an allowed path always wins, and its
# probability is exactly 0 in float64. float32 holds 3.4e38, so a path of a few thousand
# such scores stays finite.
FORBIDDEN_SCORE = -1.0e30


@dataclass(frozen=True)
class CRFParameters:
    """The CRF of a trained model, as the host decoder takes it (float32).

    Treat the arrays as read-only: the BIO lattice built from them is cached per scheme.
    """

    start: np.ndarray  # (T,)
    end: np.ndarray  # (T,)
    transitions: np.ndarray  # (T, T), [i, j] = from i to j
    _lattices: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_npz(cls, path) -> "CRFParameters":
        with np.load(path) as data:
            missing = {"start", "end", "transitions"} - set(data.files)
            if missing:
                raise ValueError(f"{path}: CRF file lacks {sorted(missing)}; it holds {sorted(data.files)}")
            return cls(*(np.asarray(data[k], dtype=np.float32) for k in ("start", "end", "transitions")))

    def save_npz(self, path) -> None:
        np.savez(path, start=self.start, end=self.end, transitions=self.transitions)

    def bio_lattice(self, scheme: TagScheme) -> "BioLattice":
        """The expanded-state CRF that decodes only well-formed BIO words (built once per scheme)."""
        lattice = self._lattices.get(scheme)
        if lattice is None:
            lattice = self._lattices[scheme] = BioLattice.build(scheme, self)
        return lattice


@dataclass(frozen=True)
class BioLattice:
    """The CRF over expanded states in which X remembers the last word tag (see the module docstring).

    States 0..T-1 are the scheme's tags (the CRF's X is "X after O or after no word");
    state T + k is "X after the k-th entity tag" (B-/I- tags in the scheme's order).
    """

    state_tag: np.ndarray  # (S,) int64: the scheme tag each state stands for
    start: np.ndarray  # (S,) float32
    end: np.ndarray  # (S,) float32
    transitions: np.ndarray  # (S, S) float32, FORBIDDEN_SCORE where BIO forbids the move
    role_allowed: np.ndarray  # (len(Role), S) bool: the states a position of each Role may take
    num_tags: int  # T; the states from T on are the extra X states
    continuation: int  # the scheme's X

    @classmethod
    def build(cls, scheme: TagScheme, crf: CRFParameters) -> "BioLattice":
        num_tags = scheme.num_tags
        for name, array, shape in (("start", crf.start, (num_tags,)), ("end", crf.end, (num_tags,)),
                                   ("transitions", crf.transitions, (num_tags, num_tags))):  # fmt: skip
            if np.shape(array) != shape:
                raise ValueError(f"CRF {name} must be {shape} for the {num_tags} tags of {scheme.tags}, got {np.shape(array)}")
        index = scheme.index
        outside, continuation = index[OUTSIDE], index[CONTINUATION]
        entity_tags = np.arange(outside + 1, continuation)  # every B-/I- tag
        state_tag = np.concatenate([np.arange(num_tags), np.full(len(entity_tags), continuation)])
        # The word tag a state remembers: a word tag itself, X-after-e its e, everything else O.
        memory = np.full(len(state_tag), outside)
        memory[entity_tags] = entity_tags
        memory[num_tags:] = entity_tags
        is_word = (state_tag >= outside) & (state_tag < continuation)
        is_continuation = state_tag == continuation
        follow = scheme.bio_follow_mask()  # (T, T)

        def successors(remembered: np.ndarray) -> np.ndarray:
            """(n, S) bool: the states that may come after a state remembering each word tag."""
            allowed = np.ones((len(remembered), len(state_tag)), dtype=bool)
            allowed[:, is_word] = follow[remembered][:, state_tag[is_word]]
            allowed[:, is_continuation] = remembered[:, None] == memory[is_continuation][None, :]
            return allowed

        transitions = np.asarray(crf.transitions, dtype=np.float32)[state_tag[:, None], state_tag[None, :]]
        transitions = np.where(successors(memory), transitions, np.float32(FORBIDDEN_SCORE))
        start = np.where(successors(np.array([outside]))[0], np.asarray(crf.start, dtype=np.float32)[state_tag],
                         np.float32(FORBIDDEN_SCORE))  # fmt: skip
        role_allowed = scheme.allowed_mask(np.arange(len(Role)))[:, state_tag]
        return cls(
            state_tag=state_tag,
            start=start.astype(np.float32),
            end=np.asarray(crf.end, dtype=np.float32)[state_tag],
            transitions=np.ascontiguousarray(transitions, dtype=np.float32),
            role_allowed=role_allowed,
            num_tags=num_tags,
            continuation=continuation,
        )

    def decode(self, emissions: np.ndarray, lengths: np.ndarray, roles: np.ndarray) -> np.ndarray:
        """(B, L) int32 scheme tag ids of the best well-formed path, -1 at padding."""
        expanded = emissions[..., self.state_tag]  # (B, L, S)
        states, _ = viterbi_decode(expanded, lengths, self.start, self.end, self.transitions,
                                   allowed=self.role_allowed[roles])  # fmt: skip
        return np.where(states >= 0, self.state_tag[states], -1).astype(np.int32)

    def marginals(self, emissions: np.ndarray, lengths: np.ndarray, roles: np.ndarray) -> np.ndarray:
        """(B, L, T) float32 posteriors of the scheme's tags over well-formed paths; 0 at padding."""
        expanded = np.where(self.role_allowed[roles], emissions[..., self.state_tag], np.float32(FORBIDDEN_SCORE))
        state_marginals = crf_marginals_scaled(expanded.astype(np.float32), lengths, self.start, self.end, self.transitions)
        marginals = state_marginals[..., : self.num_tags].copy()  # (B, L, T)
        marginals[..., self.continuation] += state_marginals[..., self.num_tags :].sum(axis=-1)
        return marginals


@dataclass
class DecodedBatch:
    word_tags: list[list[str]]  # per sequence, one tag per word
    word_scores: list[np.ndarray] | None  # per sequence, each word's tag's marginal under the same constraints


def decode_words(
    emissions: np.ndarray,
    lengths: np.ndarray,
    roles: np.ndarray,
    scheme: TagScheme,
    crf: CRFParameters,
    with_scores: bool = False,
    decoding: Decoding = "constrained",
) -> DecodedBatch:
    """Decode (B, L, T) emissions into per-word tags, read at each word's first piece.

    roles (B, L) int8 (tags.Role) say which positions start a word. ``"constrained"``
    (default) gives well-formed BIO tags, always; ``"reference"`` decodes as the authors
    did, without constraints, so a word may get X, [CLS], [SEP] or <pad> (module docstring).
    """
    if decoding not in DECODINGS:
        raise ValueError(f"decoding must be one of {DECODINGS}, got {decoding!r}")
    emissions, roles = _checked(emissions, roles, scheme)
    marginals = None
    if decoding == "reference":
        tags, _ = viterbi_decode(emissions, lengths, crf.start, crf.end, crf.transitions)
        if with_scores:
            marginals = crf_marginals_scaled(emissions, lengths, crf.start, crf.end, crf.transitions)  # (B, L, T)
    else:
        lattice = crf.bio_lattice(scheme)
        tags = lattice.decode(emissions, lengths, roles)
        if with_scores:
            marginals = lattice.marginals(emissions, lengths, roles)  # (B, L, T)
    names = scheme.tags
    word_tags, word_scores = [], [] if with_scores else None
    for b in range(emissions.shape[0]):
        positions = np.flatnonzero(roles[b] == Role.WORD)
        word_tags.append([names[t] for t in tags[b, positions]])
        if marginals is not None:
            word_scores.append(marginals[b, positions, tags[b, positions]])
    return DecodedBatch(word_tags=word_tags, word_scores=word_scores)


def _checked(emissions: np.ndarray, roles: np.ndarray, scheme: TagScheme) -> tuple[np.ndarray, np.ndarray]:
    """(emissions as contiguous float32 (B, L, T), roles (B, L)), or ValueError saying what does not fit."""
    emissions = np.ascontiguousarray(emissions, dtype=np.float32)
    roles = np.asarray(roles)
    if emissions.ndim != 3 or emissions.shape[2] != scheme.num_tags:
        raise ValueError(f"emissions must be (B, L, {scheme.num_tags}) for the tags {scheme.tags}, got {emissions.shape}")
    if roles.shape != emissions.shape[:2]:
        raise ValueError(f"roles must be {emissions.shape[:2]} like the emissions' (B, L), got {roles.shape}")
    _check_roles(roles)
    return emissions, roles


def constrained_marginals(
    emissions: np.ndarray, lengths: np.ndarray, roles: np.ndarray, scheme: TagScheme, crf: CRFParameters
) -> np.ndarray:
    """(B, L, T) posterior of every tag at every position over the paths ``"constrained"`` decodes from."""
    emissions, roles = _checked(emissions, roles, scheme)
    return crf.bio_lattice(scheme).marginals(emissions, lengths, roles)


def _check_roles(roles: np.ndarray) -> None:
    # The lattice indexes a table with the roles: a negative one would wrap around silently.
    if not np.issubdtype(roles.dtype, np.integer) or roles.size and (roles.min() < 0 or roles.max() > max(Role)):
        raise ValueError(f"roles must be integers in [0, {int(max(Role))}] (see tags.Role), got {roles!r}")
