"""Posts tagged in order of length (issue 15): mner-tag writes the same records in input order with and
without it, an interrupted or killed run leaves complete records in input order only and resumes to the
same file, the summary reports the padding, and mner-serve's batches still answer the right requests.

The pipeline is the real Pipeline with fake runners (test_pipeline.fake_pipeline: a word-piece per
character, a window of 64 pieces), so tags do not depend on what a post is batched with.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_pipeline import fake_pipeline

import mner.runtime
from mner.runtime import cli
from mner.runtime.batching import DEFAULT_SORT_WINDOW, PaddingCount, padded_pieces, text_windows
from mner.runtime.pipeline import TAGGING_FAILED, Post, TagResult
from mner.runtime.serve_batcher import Batcher, Metrics, ServeConfig
from mner.runtime.tagfile import PipelineFailed, tag_conll, tag_jsonl
from runtime_samples import jpeg

BATCH, WINDOW = 4, 12
PICTURE = base64.b64encode(jpeg(32, 32, 0)).decode()


def lines() -> list[bytes]:
    """36 lines, three windows of 12: each window opens with its longest post (so nothing of a window can be
    written before its last batch), then posts of mixed lengths, a few error lines and a picture."""
    texts = ["Kawhi Leonard " * 6, "ok", "Toronto Raptors fans tonight", "a b", "RT @user : Paris is lovely",
             "hi", "word " * 30, "x", "at the game with friends", "yes", "New York", "Leonard"]  # fmt: skip
    out = []
    for window in range(3):
        for k, text in enumerate(texts):
            number = 12 * window + k
            post = {"id": f"p{number}", "text": text if k else text + " " * window}
            if k == 3:
                post["image_base64"] = PICTURE
            out.append(json.dumps(post).encode())
    out[5] = b"not json"
    out[16] = json.dumps({"id": "p16", "text": "   "}).encode()  # an error the pipeline gives
    return out


@pytest.fixture
def posts(tmp_path) -> Path:
    path = tmp_path / "posts.jsonl"
    path.write_bytes(b"\n".join(lines()) + b"\n")
    return path


@pytest.fixture
def reference(posts, tmp_path) -> bytes:
    """The output of a run in input order."""
    output = tmp_path / "reference.jsonl"
    tag_jsonl(fake_pipeline(batch_size=BATCH), posts, output, progress=False, sort_window=1)
    return output.read_bytes()


def record_lines(data: bytes) -> list[int]:
    return [json.loads(line)["line"] for line in data.splitlines()]


def test_sorted_runs_write_the_records_of_an_unsorted_run_in_input_order(posts, reference, tmp_path):
    assert record_lines(reference) == list(range(1, 37))
    for window in (BATCH, WINDOW, DEFAULT_SORT_WINDOW):
        pipeline = fake_pipeline(batch_size=BATCH)
        tag = pipeline.tag
        calls = []
        pipeline.tag = lambda batch: calls.append([p.text for p in batch]) or tag(batch)
        output = tmp_path / f"sorted-{window}.jsonl"
        tag_jsonl(pipeline, posts, output, progress=False, sort_window=window)
        assert output.read_bytes() == reference, window
        if window == WINDOW:  # each window's posts went in order of word-pieces, the one with a picture last
            assert len(calls) == 9  # three calls a window: 11, 12 and 12 posts to tag
            for start in range(0, 9, 3):
                texts = [text for call in calls[start : start + 3] for text in call]
                keys = [(text == "a b", sum(text_windows(pipeline, text))) for text in texts]
                assert keys == sorted(keys) and texts[-1] == "a b"


def test_the_summary_says_how_much_of_the_tagger_pieces_were_real_and_what_input_order_gives(tmp_path):
    # No error lines: an unsorted run's batches are then the ones the ordered run's input-order figure assumes.
    posts = tmp_path / "posts.jsonl"
    posts.write_bytes(b"\n".join(line for line in lines() if line != b"not json") + b"\n")
    summaries = {}
    for window in (1, WINDOW):
        pipeline = fake_pipeline(batch_size=BATCH)
        pipeline.padding = PaddingCount()
        summary = tag_jsonl(pipeline, posts, tmp_path / f"out-{window}.jsonl", progress=False, sort_window=window)
        summary.padding = pipeline.padding
        summaries[window] = summary
    unsorted, ordered = summaries[1], summaries[WINDOW]
    assert unsorted.unsorted_padding == 0 and ordered.unsorted_padding > 0
    assert ordered.padding.real == unsorted.padding.real
    assert ordered.padding.padded + ordered.unsorted_padding == unsorted.padding.padded  # simulated exactly
    text = ordered.format("out.jsonl")
    real, before = 100 * ordered.padding.ratio, 100 * unsorted.padding.ratio
    assert f"; tagger pieces {real:.1f} % real ({before:.1f} % in input order)" in text and real > before
    assert f"; tagger pieces {before:.1f} % real\n" in unsorted.format("out.jsonl") + "\n"


def interrupting(pipeline, at: int, how: str):
    """``pipeline`` whose ``at``-th tag call is interrupted (Ctrl-C) or fails for every post (a device lost)."""
    tag, calls = pipeline.tag, []

    def tag_until(batch):
        calls.append(len(batch))
        if len(calls) == at:
            if how == "interrupt":
                raise KeyboardInterrupt
            return [TagResult(error=f"{TAGGING_FAILED}: RuntimeError: device lost") for _ in batch]
        return tag(batch)

    pipeline.tag = tag_until
    return pipeline


@pytest.mark.parametrize("how", ["interrupt", "pipeline fails"])
@pytest.mark.parametrize("at", [2, 3, 4, 6, 9])
def test_an_interrupted_sorted_run_leaves_a_prefix_in_input_order_and_resumes_to_the_same_file(
        posts, reference, tmp_path, how, at):  # fmt: skip
    output = tmp_path / "out.jsonl"
    with pytest.raises(KeyboardInterrupt if how == "interrupt" else PipelineFailed):
        tag_jsonl(interrupting(fake_pipeline(batch_size=BATCH), at, how), posts, output, progress=False,
                  sort_window=WINDOW)  # fmt: skip
    # Three batches a window, whose first line is its longest: a window's records are written at its last batch
    # only, so a run stopped in the second window has the first one's and no more (no hole, nothing torn).
    written = record_lines(output.read_bytes())
    assert written == list(range(1, 1 + 12 * ((at - 1) // 3)))
    summary = tag_jsonl(fake_pipeline(batch_size=BATCH), posts, output, progress=False, sort_window=WINDOW)
    assert output.read_bytes() == reference
    assert summary.skipped == len(written)


# mner-tag's own entry point in a child process, its pipeline the fake one, which kills its own process
# (SIGKILL: no cleanup, no flush) at the MNER_TEST_KILL_AT-th tag call.
DRIVER = """
import os, signal, sys
from test_pipeline import fake_pipeline
from mner.runtime import cli
from mner.runtime.pipeline import Pipeline

def from_bundle(cls, bundle, *, batch_size=32, on_bad_image="error", **options):
    pipeline = fake_pipeline(batch_size=batch_size, on_bad_image=on_bad_image)
    tag, calls = pipeline.tag, []
    def tag_or_die(batch):
        calls.append(len(batch))
        if len(calls) == int(os.environ.get("MNER_TEST_KILL_AT", "0")):
            os.kill(os.getpid(), signal.SIGKILL)
        return tag(batch)
    pipeline.tag = tag_or_die
    return pipeline

Pipeline.from_bundle = classmethod(from_bundle)
cli.tag_command(sys.argv[1:], prog_name="mner-tag")
"""


def test_kill_9_mid_window_then_rerun_gives_the_records_of_an_uninterrupted_run(posts, reference, tmp_path):
    (tmp_path / "manifest.json").write_text('{"format": "a fake bundle"}\n')
    package_root = Path(mner.runtime.__file__).parents[2]
    path = os.pathsep.join(p for p in (str(package_root), str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p)
    output = tmp_path / "out.jsonl"
    command = [sys.executable, "-c", DRIVER, "--engine", str(tmp_path), "--input", str(posts), "--output", str(output),
               "--batch-size", str(BATCH), "--sort-window", str(WINDOW), "--no-progress"]  # fmt: skip
    killed = subprocess.run(command, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": path, "MNER_TEST_KILL_AT": "8"})  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    assert record_lines(output.read_bytes()) == list(range(1, 25))  # two windows; the third's first batch was lost
    again = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": path})
    assert again.returncode == cli.EXIT_ERROR_RECORDS, again.stderr
    assert "24 already done" in again.stderr and "% real" in again.stderr
    assert output.read_bytes() == reference


def test_conll_posts_are_ordered_too_and_scored_in_input_order(tmp_path):
    words = [["Kawhi", "Leonard"] * 5, ["ok"], ["Toronto", "Raptors"], ["hi"], ["at", "the", "game"], ["x"]]
    conll = tmp_path / "data.txt"
    conll.write_text("".join(f"IMGID:{i}\n" + "".join(f"{w}\tO\n" for w in post) + "\n" for i, post in enumerate(words)))
    outputs = {}
    for window in (1, 6):
        pipeline = fake_pipeline(batch_size=2)
        output = tmp_path / f"out-{window}.jsonl"
        summary = tag_conll(pipeline, conll, output, progress=False, sort_window=window)
        outputs[window] = (output.read_bytes(), summary.metrics)
    assert outputs[1] == outputs[6]
    assert [json.loads(line)["id"] for line in outputs[6][0].splitlines()] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("window", [0, -3, 2.0, True])
def test_a_sort_window_that_is_not_a_positive_int_is_refused(posts, tmp_path, window):
    with pytest.raises(ValueError, match="sort_window must be a positive int"):
        tag_jsonl(fake_pipeline(), posts, tmp_path / "out.jsonl", progress=False, sort_window=window)
    with pytest.raises(ValueError, match="sort_window must be a positive int"):
        tag_conll(fake_pipeline(), posts, tmp_path / "out.jsonl", progress=False, sort_window=window)


def test_the_command_line_default_is_the_library_s():
    assert cli.DEFAULT_SORT_WINDOW == DEFAULT_SORT_WINDOW


# --------------------------------------------------------------------------- mner-serve's batches


def test_the_server_s_batch_is_ordered_by_length_inside_and_answers_each_request_its_own_posts():
    requests = [["Kawhi Leonard in Toronto " * 2, "ok"], ["x", "word " * 11, "hi there"], ["New York", "a " * 20],
                ["yes"]]  # fmt: skip
    pipeline = fake_pipeline(batch_size=16, chunk_pieces=64)  # calls of at most 64 padded pieces, as mner-serve's
    pipeline.padding = PaddingCount()
    batcher = Batcher(pipeline, Metrics(), ServeConfig(max_batch=16, max_wait_ms=500))

    async def submit_together():
        futures = [batcher.submit([Post(text) for text in texts])[0] for texts in requests]
        return await asyncio.gather(*futures)

    batcher.start()
    try:
        outcomes = asyncio.run(submit_together())
    finally:
        batcher.close(timeout=10)
    alone = fake_pipeline()
    for texts, results in zip(requests, outcomes):
        expected = alone.tag(texts)
        assert [(r.tags, r.entities) for r in results] == [(r.tags, r.entities) for r in expected]
    # One batch (the batcher takes a post of each request in turn), its windows ordered by length before
    # the tagger calls were cut: what padded_pieces gives, and less than cutting them in arrival order.
    arrival = [text for k in range(3) for texts in requests for text in texts[k : k + 1]]
    windows = [text_windows(pipeline, text) for text in arrival]
    assert pipeline.padding == padded_pieces([windows], most=16, chunk_pieces=64)
    calls, padded = [[]], 0
    for length in [length for post in windows for length in post]:
        if calls[-1] and (len(calls[-1]) + 1) * max(length, *calls[-1]) > 64:
            calls.append([])
        calls[-1].append(length)
    assert pipeline.padding.padded < sum(len(call) * max(call) for call in calls)
