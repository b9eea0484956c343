"""mner.runtime.windows: overlapping windows whose keep ranges partition the words."""

import numpy as np
import pytest

from mner.runtime.windows import Window, plan_windows


def check_plan(counts, budget, overlap=None):
    windows = plan_windows(counts, budget, overlap)
    n = len(counts)
    capped = [min(max(c, 1), budget) for c in counts]
    assert windows[0].start == 0 and windows[-1].end == n
    assert [w.keep_start for w in windows] == [0] + [w.keep_end for w in windows[:-1]]  # a partition, in order
    assert windows[-1].keep_end == n
    for previous, window in zip(windows, windows[1:]):
        assert window.start > previous.start and window.end > previous.end  # always progress
    for window in windows:
        assert window.start <= window.keep_start < window.keep_end <= window.end  # never an empty keep range
        assert sum(capped[window.start : window.end]) <= budget
    return windows


@pytest.mark.parametrize("seed", range(40))
def test_random_piece_counts_give_a_valid_plan(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 9, size=int(rng.integers(1, 300))).tolist()
    if seed % 4 == 0:
        counts[int(rng.integers(len(counts)))] = 500  # one word longer than any window
    budget = int(rng.integers(8, 80))
    overlap = None if seed % 3 else int(rng.integers(0, budget))
    check_plan(counts, budget, overlap)


def test_uniform_words_give_the_expected_windows():
    windows = check_plan([1] * 25, budget=10)  # overlap 5
    assert windows == [Window(0, 10, 0, 7), Window(5, 15, 7, 12), Window(10, 20, 12, 17), Window(15, 25, 17, 25)]


def test_a_kept_word_has_context_on_both_sides():
    counts = [2] * 200
    for window in check_plan(counts, budget=62)[1:-1]:
        assert sum(counts[window.start : window.keep_start]) >= 14
        assert sum(counts[window.keep_end : window.end]) >= 14


def test_a_text_that_fits_is_one_window_and_no_overlap_means_disjoint_windows():
    assert plan_windows([3, 4, 5], budget=12) == [Window(0, 3, 0, 3)]
    windows = check_plan([1] * 9, budget=3, overlap=0)
    assert [(w.start, w.end) for w in windows] == [(0, 3), (3, 6), (6, 9)]
    assert all((w.keep_start, w.keep_end) == (w.start, w.end) for w in windows)
    assert plan_windows([], budget=5) == []


def test_over_long_words_stand_alone():
    windows = check_plan([1, 100, 1, 1, 100], budget=10)
    assert any((w.start, w.end) == (4, 5) for w in windows)


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="budget"):
        plan_windows([1], budget=0)
    with pytest.raises(ValueError, match="overlap"):
        plan_windows([1], budget=4, overlap=4)
    with pytest.raises(ValueError, match="overlap"):
        plan_windows([1], budget=4, overlap=-1)
