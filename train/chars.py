"""Character ids for the char-CNN ablation, laid out as the reference lays them out.

Vocabulary: [PAD]=0, [UNK]=1, [X]=2 (a word's later word-pieces), [XC]=3 ([CLS]),
[XS]=4 ([SEP]), then the training words' characters by descending count. A word's
first piece carries the word's first ``width`` characters; every other position is
filled with its structural id.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

import numpy as np

from mner.runtime.tags import Role
from mner.runtime.text import EncodedText

PAD, UNKNOWN, CONTINUATION, CLS, SEP = range(5)
SPECIALS = ("[PAD]", "[UNK]", "[X]", "[XC]", "[XS]")


def build_char_vocab(words: Iterable[str]) -> dict[str, int]:
    """Characters of `words` -> ids from 5 up, most frequent first (ties: first seen first)."""
    counts = Counter(char for word in words for char in word)
    return {char: index + len(SPECIALS) for index, (char, _) in enumerate(counts.most_common())}


def char_ids(encoded: EncodedText, words: Sequence[str], vocab: dict[str, int], width: int) -> np.ndarray:
    """(n, width) int64 character ids for every position of one encoded post."""
    if len(words) < encoded.n_words:
        raise ValueError(f"{encoded.n_words} encoded words but only {len(words)} words given")
    by_role = np.array([PAD, PAD, CONTINUATION, CLS, SEP], dtype=np.int64)  # indexed by Role
    ids = np.repeat(by_role[encoded.roles][:, None], width, axis=1)  # (n, width)
    for word, position in zip(words, encoded.word_positions):
        chars = [vocab.get(char, UNKNOWN) for char in word[:width]]
        ids[position] = PAD
        ids[position, : len(chars)] = chars
    assert (ids[encoded.roles == Role.PAD] == PAD).all()
    return ids
