"""mner.runtime.batching: the order posts are tagged in, and the padding that order costs.

The simulation (``padded_pieces``) is checked against what the pipeline counts on a fake tagger
(``Pipeline.padding``), so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

import numpy as np
import pytest

from mner.runtime.batching import (DEFAULT_SORT_WINDOW, PaddingCount, length_order, padded_pieces, post_windows,
                                   simulated_padding, sort_key, text_windows)  # fmt: skip
from test_pipeline import fake_pipeline

# The fake tokenizer makes one piece of each character (tests/runtime/test_pipeline.py), its window is 64
# pieces: these posts are 3 to 200 pieces, the longest three of many windows.
TEXTS = ["ab cd", "a much longer post with words", "x", "Kawhi Leonard in Toronto", "word " * 40, "hi there",
         "RT @user : Paris", "w " * 70, "Toronto Raptors fans", "ok", "a" * 130, "at the game tonight"]  # fmt: skip


def test_length_order_sorts_each_window_stably_and_keeps_windows_in_input_order():
    assert length_order([3, 1, 2, 1, 5, 0], 3) == [1, 2, 0, 5, 3, 4]
    assert length_order([3, 1, 2, 1, 5, 0], 6) == [5, 1, 3, 2, 0, 4]
    assert length_order([2, 2, 2, 1], 4) == [3, 0, 1, 2]  # equal keys keep input order
    assert length_order([3, 1, 2], 1) == [0, 1, 2]
    assert length_order([], DEFAULT_SORT_WINDOW) == []


@pytest.mark.parametrize("window", [0, -1, 1.5, True, "8", None])
def test_length_order_refuses_a_window_that_is_not_a_positive_int(window):
    with pytest.raises(ValueError, match=r"window must be a positive int \(1: input order\), got"):
        length_order([1, 2], window)


def test_sort_key_puts_posts_without_a_picture_first_then_fewer_pieces():
    keys = [sort_key([30], True), sort_key([10, 40], False), sort_key([12], False), sort_key([], False)]
    assert sorted(range(4), key=keys.__getitem__) == [3, 2, 1, 0]


def test_padding_count_of_a_known_mask():
    count = PaddingCount()
    assert count.ratio is None
    count.add(np.array([[1, 1, 0], [1, 0, 0]]))
    count.add(np.array([[1, 1, 1, 1]]))
    assert (count.real, count.padded, count.windows, count.calls) == (7, 10, 3, 2)
    assert count.ratio == pytest.approx(0.7)
    assert count.to_json() == {"real_pieces": 7, "padded_pieces": 10, "windows": 3, "tagger_calls": 2, "ratio": 0.7}


def test_padded_pieces_of_a_known_set():
    # batch 1: windows 3 and 5, one call padded to 5; batch 2: windows 2, 7, 10 sorted, calls of at most two:
    # [2, 7] padded to 7 and [10] alone, every call padded to at least 4 pieces
    batches = [[[5], [3]], [[10], [2, 7]]]
    count = padded_pieces(batches, most=2, min_sequence=4)
    assert (count.real, count.padded, count.windows, count.calls) == (27, 2 * 5 + 2 * 7 + 10, 5, 3)
    # at most 12 padded pieces a call: [2] alone (padded to the minimum, 4), [7] alone, [10] alone
    count = padded_pieces(batches, most=2, min_sequence=4, chunk_pieces=12)
    assert (count.real, count.padded, count.calls) == (27, 10 + 4 + 7 + 10, 4)
    assert padded_pieces([], most=8).ratio is None


def test_simulated_padding_cuts_batches_from_the_order_given():
    windows = [[10], [2], [10], [2]]
    assert simulated_padding(windows, [0, 1, 2, 3], batch_size=2, most=2).padded == 40  # each batch padded to 10
    assert simulated_padding(windows, [1, 3, 0, 2], batch_size=2, most=2).padded == 24  # short ones together
    assert simulated_padding(windows, [1, 3, 0, 2], batch_size=2, most=2).real == 24


def test_post_windows_counts_as_the_pipeline_does():
    pipeline = fake_pipeline()
    assert post_windows(pipeline, []) == [] and text_windows(pipeline, "   ") == []
    assert post_windows(pipeline, ["Kawhi", "Leonard"]) == [5 + 7 + 2]  # a piece a character, [CLS] and [SEP]
    long = text_windows(pipeline, "word " * 40)  # 160 pieces: windows of at most 62 pieces, overlapping
    assert len(long) > 1 and max(long) <= 64
    results = pipeline.tag(TEXTS)
    assert [len(text_windows(pipeline, text)) for text in TEXTS] == [r.windows for r in results]


@pytest.mark.parametrize("chunk_pieces", [None, 100])
@pytest.mark.parametrize("window", [1, 5, len(TEXTS)])
def test_the_simulation_equals_what_the_pipeline_counts(window, chunk_pieces):
    pipeline = fake_pipeline(batch_size=3, chunk_pieces=chunk_pieces)
    windows = [text_windows(pipeline, text) for text in TEXTS]
    order = length_order([sort_key(w, False) for w in windows], window)
    pipeline.padding = PaddingCount()
    for start in range(0, len(order), 3):
        pipeline.tag([TEXTS[i] for i in order[start : start + 3]])
    posts = [windows[i] for i in order]
    batches = [posts[i : i + 3] for i in range(0, len(posts), 3)]
    assert pipeline.padding == padded_pieces(batches, most=3, chunk_pieces=chunk_pieces)
    if chunk_pieces is None:
        assert pipeline.padding == simulated_padding(windows, order, batch_size=3, most=3)


def test_ordering_by_length_pads_less_than_input_order():
    pipeline = fake_pipeline()
    windows = [text_windows(pipeline, text) for text in TEXTS]
    unsorted = simulated_padding(windows, range(len(TEXTS)), batch_size=4, most=4)
    ordered = simulated_padding(windows, length_order([sum(w) for w in windows], len(TEXTS)), batch_size=4, most=4)
    assert ordered.real == unsorted.real and ordered.padded < unsorted.padded


def test_a_pipeline_counts_nothing_unless_asked():
    pipeline = fake_pipeline()
    assert pipeline.padding is None
    pipeline.tag(["Kawhi Leonard"])  # no count to add to, and nothing fails
    assert pipeline.padding is None
