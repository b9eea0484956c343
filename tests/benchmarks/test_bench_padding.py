"""mner-bench's ordering by length and its padding figures (issue 15), on the real Pipeline with fake runners
(tests/runtime/test_pipeline.fake_pipeline: a word-piece per character, tags independent of the batch)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mner.benchmarks import cli as bench_cli
from mner.benchmarks.bench import BenchPost, WindowPaddedTagger, measure_pipeline, run_bench, summarise_run
from mner.benchmarks.report import _padding_section
from mner.runtime.batching import DEFAULT_SORT_WINDOW

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))  # test_pipeline and its neighbours
from test_pipeline import fake_pipeline  # noqa: E402

WORDS = [["Kawhi", "Leonard"] * 6, ["ok"], ["Toronto", "Raptors", "fans"], ["hi"], ["word"] * 20, ["x", "y"],
         ["at", "the", "game", "tonight"], ["New", "York"], ["a"] * 40, ["yes"]]  # fmt: skip
POSTS = [BenchPost(words, ["O"] * len(words), None) for words in WORDS]


def measure(sort_window: int, batch_size: int = 3, pad_to_window: bool = False) -> dict:
    pipeline = fake_pipeline()
    if pad_to_window:
        pipeline.tagger = WindowPaddedTagger(pipeline.tagger, pipeline.encoder.max_length, pipeline.encoder.pad_id).activate()
    return measure_pipeline(pipeline, POSTS, batch_size, warmup=1, min_batches=2, sort_window=sort_window)


def test_ordered_batches_give_the_same_tags_in_input_order_and_pad_less():
    unsorted, ordered = measure(1), measure(DEFAULT_SORT_WINDOW)
    assert ordered["tags"] == unsorted["tags"] and len(ordered["tags"]) == len(POSTS)
    assert [len(tags) for tags in ordered["tags"]] == [len(words) for words in WORDS]
    assert ordered["posts"] == unsorted["posts"]  # the same batch sizes: batch_plan holds for both
    measured, before = ordered["padding"]["measured"], ordered["padding"]["input_order"]
    assert before == unsorted["padding"]["measured"] == unsorted["padding"]["input_order"]  # simulated exactly
    assert measured["real_pieces"] == before["real_pieces"] and measured["padded_pieces"] < before["padded_pieces"]
    assert measured["ratio"] > before["ratio"]
    assert (ordered["sort_window"], summarise_run(ordered)["padding"]) == (DEFAULT_SORT_WINDOW, ordered["padding"])


def test_the_reference_padded_to_the_window_counts_every_window_whole():
    padding = measure(1, pad_to_window=True)["padding"]["measured"]
    assert padding["padded_pieces"] == 64 * padding["windows"] and padding["ratio"] < 0.5


def test_the_report_has_a_padding_table_and_old_reports_have_none():
    run = summarise_run(measure(DEFAULT_SORT_WINDOW))
    report = {"settings": {"sort_window": DEFAULT_SORT_WINDOW}, "backends": {"ort": {"batches": {"3": run}}}}
    lines = _padding_section(report)
    measured, before = run["padding"]["measured"], run["padding"]["input_order"]
    assert lines[1] == "## Padding"
    assert lines[-1] == (f"| ort | 3 | by length, windows of {DEFAULT_SORT_WINDOW} | {measured['real_pieces']} | "
                         f"{measured['padded_pieces']} | {100 * measured['ratio']:.1f} % | {100 * before['ratio']:.1f} % |")  # fmt: skip
    del run["padding"]
    assert _padding_section(report) == []


def test_a_sort_window_that_is_not_a_positive_int_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"sort_window must be a positive int \(1: input order\), got 0"):
        run_bench(tmp_path, ["ort"], [1], sort_window=0, progress=False)


def test_the_command_line_default_is_the_library_s():
    assert bench_cli.SORT_WINDOW == DEFAULT_SORT_WINDOW
