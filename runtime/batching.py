"""Less padding: posts ordered by length before batches are cut, and what the padding costs.

The tagger runs each call padded to its longest window, so a batch of one long post and
seven short ones is mostly padding. ``Pipeline`` already orders the windows *inside* a
batch by length before it cuts tagger calls (so mner-serve's batches, one pipeline batch
each, are ordered there). What it cannot choose is which posts share a batch: that is the
caller's order. ``mner-tag`` and ``mner-bench`` therefore order the posts of each window
of ``DEFAULT_SORT_WINDOW`` posts by ``sort_key`` before cutting batches
(``length_order``), and put the results back in input order.

The key is the post's word-piece count as the pipeline will count it (``post_windows``:
its splitter and tokenizer, ~0.1-0.2 ms a tweet, a few per cent of tagging it), with posts
without a picture first. Characters are no proxy for pieces in tweets (URLs, hashtags,
emoji): on TWITTER-2017 test at batch 8, sorting by characters leaves 82 % of the
tagger's pieces real, sorting by pieces 99 % (input order: 69 %). Posts with pictures go
together because a batch without any gives the tagger one grid cell instead of 49 and
runs neither detector nor vision.

What the padding costs: ``Pipeline.padding`` (a ``PaddingCount``, None by default)
counts the real pieces (attention mask ones) and the padded pieces (windows x sequence)
of every tagger call. What it would cost in another order, exactly: ``post_windows``
gives a post's window lengths as the pipeline plans them and ``padded_pieces`` cuts
batches into tagger calls as the pipeline does (a test checks one against the other).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from mner.runtime.windows import plan_windows

if TYPE_CHECKING:
    from mner.runtime.pipeline import Pipeline

DEFAULT_SORT_WINDOW = 1024  # posts ordered together; about what a kill can cost (~1 min of tagging on 2 cores)
PICTURE_BYTES_PER_WINDOW = 256 << 20  # a window also ends once its posts hold this many bytes of pictures


def sort_key(windows: Sequence[int], has_picture: bool) -> tuple[bool, int]:
    """What posts are ordered by: posts without a picture first, then by word-pieces (``post_windows``)."""
    return has_picture, sum(windows)


def length_order(keys: Sequence, window: int) -> list[int]:
    """Indices of the posts in tagging order: each run of ``window`` posts sorted by ``keys``
    (stably: equal keys keep input order), the runs in input order. ``window`` 1 keeps input order."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int (1: input order), got {window!r}")
    order: list[int] = []
    for start in range(0, len(keys), window):
        order += sorted(range(start, min(start + window, len(keys))), key=keys.__getitem__)
    return order


@dataclass
class PaddingCount:
    """Word-pieces the tagger was given: ``real`` ones (attention mask 1) of ``padded`` ones (windows x sequence)."""

    real: int = 0
    padded: int = 0
    windows: int = 0  # rows of the tagger calls
    calls: int = 0

    def add(self, attention_mask: np.ndarray) -> None:
        """Count one tagger call's (B, L) attention mask."""
        self.real += int(np.count_nonzero(attention_mask))
        self.padded += int(attention_mask.size)
        self.windows += int(attention_mask.shape[0])
        self.calls += 1

    @property
    def ratio(self) -> float | None:
        """real / padded: 1.0 is no padding at all; None before any call."""
        return self.real / self.padded if self.padded else None

    def to_json(self) -> dict:
        return {"real_pieces": self.real, "padded_pieces": self.padded, "windows": self.windows,
                "tagger_calls": self.calls, "ratio": self.ratio}  # fmt: skip


def post_windows(pipeline: Pipeline, words: Sequence[str]) -> list[int]:
    """Lengths ([CLS] and [SEP] included) of the tagger windows ``pipeline`` makes of a post of these
    words, as ``Pipeline._encode`` plans them: one window of all pieces where they fit, else
    ``plan_windows``'s (each word's pieces cut to a window's budget). No words, no windows."""
    if not words:
        return []
    budget = pipeline.encoder.max_length - 2
    encoding = pipeline.encoder.tokenizer.encode(list(words), is_pretokenized=True, add_special_tokens=False)
    counts = np.bincount([i for i in encoding.word_ids if i is not None], minlength=len(words))
    pieces = np.maximum(counts, 1)  # a word the tokenizer empties is one [UNK]
    if pieces.sum() <= budget:
        return [int(pieces.sum()) + 2]
    clipped = np.minimum(pieces, budget)
    return [int(clipped[w.start : w.end].sum()) + 2 for w in plan_windows(counts.tolist(), budget)]


def text_windows(pipeline: Pipeline, text: str) -> list[int]:
    """``post_windows`` of a raw text, split by the pipeline's splitter."""
    return post_windows(pipeline, [word.text for word in pipeline.split(text)])


def padded_pieces(batches: Sequence[Sequence[Sequence[int]]], most: int, min_sequence: int = 1,
                  chunk_pieces: int | None = None) -> PaddingCount:  # fmt: skip
    """The padding of tagging these batches (each a list of posts, each post its window lengths) as
    ``Pipeline._run_tagger`` does: a batch's windows sorted by length and cut into calls of at most
    ``most`` windows (and, with ``chunk_pieces``, at most that many padded pieces), each call
    padded to its longest window and to at least ``min_sequence``."""
    count = PaddingCount()
    for batch in batches:
        calls: list[list[int]] = [[]]
        for length in sorted(length for post in batch for length in post):
            call = calls[-1]
            over = chunk_pieces is not None and (len(call) + 1) * max(length, min_sequence) > chunk_pieces
            if call and (len(call) == most or over):
                calls.append(call := [])
            call.append(length)
        for call in calls:
            if call:
                count.real += sum(call)
                count.padded += len(call) * max(call[-1], min_sequence)
                count.windows += len(call)
                count.calls += 1
    return count


def simulated_padding(windows: Sequence[Sequence[int]], order: Sequence[int], batch_size: int, most: int,
                      min_sequence: int = 1) -> PaddingCount:  # fmt: skip
    """``padded_pieces`` of the posts (``windows``: each post's window lengths) taken in ``order`` and
    cut into batches of ``batch_size`` posts."""
    posts = [windows[i] for i in order]
    return padded_pieces([posts[i : i + batch_size] for i in range(0, len(posts), batch_size)], most, min_sequence)
