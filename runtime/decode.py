"""Emissions -> word tags: constrained Viterbi over word-pieces, then one tag per word.

Shared by training-time evaluation and the runtime, so both decode alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mner.runtime.tags import Role, TagScheme
from mner.runtime.viterbi import crf_marginals, viterbi_decode


FORBIDDEN_SCORE = -1.0e9  # emission of a tag the allowed-tag mask rules out, for marginals


@dataclass(frozen=True)
class CRFParameters:
    """The CRF of a trained model, as the host decoder takes it (float32)."""

    start: np.ndarray  # (T,)
    end: np.ndarray  # (T,)
    transitions: np.ndarray  # (T, T), [i, j] = from i to j

    @classmethod
    def from_npz(cls, path) -> "CRFParameters":
        with np.load(path) as data:
            missing = {"start", "end", "transitions"} - set(data.files)
            if missing:
                raise ValueError(f"{path}: CRF file lacks {sorted(missing)}; it holds {sorted(data.files)}")
            return cls(*(np.asarray(data[k], dtype=np.float32) for k in ("start", "end", "transitions")))

    def save_npz(self, path) -> None:
        np.savez(path, start=self.start, end=self.end, transitions=self.transitions)


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
) -> DecodedBatch:
    """Decode (B, L, T) emissions into per-word BIO tags.

    roles (B, L) int8 (tags.Role) say which positions start a word; the allowed-tag
    mask keeps a word's first piece to O/B-x/I-x and every other position to its
    structural tag, so a non-entity tag is never predicted for a word.
    """
    emissions = np.ascontiguousarray(emissions, dtype=np.float32)
    roles = np.asarray(roles)
    if roles.shape != emissions.shape[:2]:
        raise ValueError(f"roles must be {emissions.shape[:2]} like the emissions' (B, L), got {roles.shape}")
    allowed = scheme.allowed_mask(roles)  # (B, L, T)
    tags, _ = viterbi_decode(emissions, lengths, crf.start, crf.end, crf.transitions, allowed=allowed)
    marginals = None
    if with_scores:
        # Posteriors under the same constraints as the path: a forbidden tag gets a score
        # so low (finite, so the validation accepts it) that its probability is exactly 0.
        masked = np.where(allowed, emissions, FORBIDDEN_SCORE).astype(np.float32)
        marginals = crf_marginals(masked, lengths, crf.start, crf.end, crf.transitions)  # (B, L, T)
    names = scheme.tags
    word_tags, word_scores = [], [] if with_scores else None
    for b in range(emissions.shape[0]):
        positions = np.flatnonzero(roles[b] == Role.WORD)
        word_tags.append([names[t] for t in tags[b, positions]])
        if marginals is not None:
            word_scores.append(marginals[b, positions, tags[b, positions]])
    return DecodedBatch(word_tags=word_tags, word_scores=word_scores)
