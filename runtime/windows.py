"""Overlapping windows over a post too long for the tagger, and which window each word's tag comes from.

The tagger sees at most ``max_length`` word-pieces ([CLS] and [SEP] included). A
longer post is cut at word boundaries into windows of at most ``budget =
max_length - 2`` pieces; consecutive windows overlap by up to ``overlap`` pieces,
so every word is tagged with context on both sides. Each word takes its tag from
exactly one window: the overlap of two windows is split at its middle word, so a
word's tag comes from a window where it sits at least about ``overlap / 2`` pieces
away from a cut edge (never closer than the text's own ends allow).

    words   0 1 2 3 4 5 6 7 8 9
    win 0   [0 1 2 3 4 5)            keeps 0..3
    win 1         [3 4 5 6 7 8)      keeps 4..6
    win 2               [6 7 8 9)    keeps 7..9

A single word longer than the budget is cut at piece level by the encoder, like the
reference's truncation (its tag lives at its first piece, which is always kept).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Window:
    start: int  # first word of the window
    end: int  # one past its last word
    keep_start: int  # the words [keep_start, keep_end) take their tags from this window
    keep_end: int


def plan_windows(piece_counts: Sequence[int], budget: int, overlap: int | None = None) -> list[Window]:
    """Windows covering words with these piece counts; their keep ranges partition the words.

    ``budget`` is the pieces a window may hold; ``overlap`` (default ``budget // 2``) the
    most pieces two consecutive windows share.
    """
    if budget < 1:
        raise ValueError(f"budget must be >= 1 word-piece, got {budget}")
    overlap = budget // 2 if overlap is None else overlap
    if not 0 <= overlap < budget:
        raise ValueError(f"overlap must be in [0, budget = {budget}), got {overlap}")
    counts = [min(max(int(c), 1), budget) for c in piece_counts]  # an over-long word is cut to the budget
    n = len(counts)
    if n == 0:
        return []
    spans: list[tuple[int, int]] = []
    start, previous_end = 0, 0
    while True:
        end, total = start, 0
        while end < n and total + counts[end] <= budget:
            total += counts[end]
            end += 1
        assert end > start, "every word fits a window on its own"
        spans.append((start, end))
        if end == n:
            break
        # Step back from `end` for context, keeping room for word `end` itself (so the next
        # window reaches past this one) and never before the end of the window before this
        # one (so keep ranges stay ordered).
        lower = max(start + 1, previous_end)
        room = min(overlap, budget - counts[end])
        next_start, context = end, 0
        while next_start - 1 >= lower and context + counts[next_start - 1] <= room:
            next_start -= 1
            context += counts[next_start]
        previous_end, start = end, next_start

    cuts = [0] + [(spans[k + 1][0] + spans[k][1]) // 2 for k in range(len(spans) - 1)] + [n]
    windows = [Window(s, e, cuts[k], cuts[k + 1]) for k, (s, e) in enumerate(spans)]
    assert all(w.start <= w.keep_start <= w.keep_end <= w.end for w in windows), windows
    return windows
