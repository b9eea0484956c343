"""mner.runtime.serve_batcher's fair scheduling, on a stub pipeline whose steps the test releases one by one:
a large request is cut into bounded batches, batches are tagged in interleaved steps, a short request is
answered after at most about one step of a large one, and a stream of short requests cannot starve it.
test_serve_budget.py checks the same on a real server process."""

from __future__ import annotations

import asyncio
import threading

import pytest

from mner.runtime.pipeline import Post, TagResult
from mner.runtime.serve_batcher import Batcher, Metrics, ServeConfig
from mner.runtime.serve_budget import PostCost


class SteppedPipeline:
    """A post "label n" takes n steps; each step logs the label of the batch's first post, then (when
    gated) waits for a permit: the log's length is the steps started. A post's result carries its text."""

    def __init__(self, gated: bool = False) -> None:
        self.gate = threading.Semaphore(0) if gated else None
        self.log: list[str] = []  # one label per step
        self.batches: list[list[str]] = []  # the texts of each batch

    def tag(self, posts):
        return [TagResult(tags=[post.text]) for post in posts]

    def tag_steps(self, posts):
        texts = [post.text for post in posts]
        self.batches.append(texts)
        return self._steps(texts)

    def _steps(self, texts):
        for k in range(sum(int(text.split()[1]) for text in texts)):
            if k:
                yield
            self.log.append(texts[0].split()[0])
            if self.gate is not None:
                assert self.gate.acquire(timeout=30), "the test never released this step"
        return [TagResult(tags=[text]) for text in texts]


async def until(condition, seconds: float = 10) -> None:
    for _ in range(int(seconds / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("timed out waiting for the worker")


def started(pipeline, **config) -> Batcher:
    batcher = Batcher(pipeline, Metrics(), ServeConfig(**{"max_wait_ms": 0, **config}))
    batcher.start()
    return batcher


def test_a_short_request_is_answered_after_at_most_one_more_step_of_a_large_one():
    pipeline = SteppedPipeline(gated=True)
    batcher = started(pipeline, max_batch=4)

    async def scenario():
        # 8 posts of 12 windows: each post a batch of its own (12 > max_batch), 3 steps each (a chunk of 4 windows)
        large = [Post("large 3") for _ in range(8)]
        large_future, _ = batcher.submit(large, [PostCost(pieces=700, windows=12)] * 8)
        pipeline.gate.release(3)
        await until(lambda: len(pipeline.log) == 4)  # its fourth step started
        short_future, _ = batcher.submit([Post("short 1")])
        pipeline.gate.release(2)  # the large request's step in progress, and the short one's
        short = await asyncio.wait_for(short_future, 10)
        assert [r.tags for r in short] == [["short 1"]] and not large_future.done()
        pipeline.gate.release(1000)
        assert len(await large_future) == 8

    try:
        asyncio.run(scenario())
    finally:
        batcher.close(timeout=10)
    assert pipeline.log.index("short") == 4  # right after the step in progress when it came
    assert pipeline.log.count("large") == 24 and pipeline.batches[0] == ["large 3"]


def test_a_request_is_cut_into_bounded_batches_taken_in_turn_and_answered_once_in_order():
    pipeline = SteppedPipeline()
    batcher = Batcher(pipeline, Metrics(), ServeConfig(max_batch=4, max_wait_ms=0))

    async def scenario():
        a = [Post(f"a{i} 1") for i in range(10)]
        b = [Post(f"b{i} 1") for i in range(3)]
        futures = [batcher.submit(a)[0], batcher.submit(b)[0]]
        batcher.start()  # both are waiting when the worker starts
        return await asyncio.gather(*futures)

    try:
        results_a, results_b = asyncio.run(scenario())
    finally:
        batcher.close(timeout=10)
    assert [r.tags[0] for r in results_a] == [f"a{i} 1" for i in range(10)]
    assert [r.tags[0] for r in results_b] == [f"b{i} 1" for i in range(3)]
    assert all(len(batch) <= 4 for batch in pipeline.batches)
    assert sum(map(len, pipeline.batches)) == 13
    last_b = max(k for k, batch in enumerate(pipeline.batches) if any(t.startswith("b") for t in batch))
    last_a = max(k for k, batch in enumerate(pipeline.batches) if any(t.startswith("a") for t in batch))
    assert last_b < last_a, "b's posts share batches with a's rather than waiting for all of a"
    for batch in pipeline.batches:  # each request's posts stay together and in order within a batch
        assert batch == sorted(batch, key=lambda t: (t[0], int(t.split()[0][1:])))
    assert batcher.depth == 0


def test_batches_are_bounded_in_posts_pieces_and_pixels_and_a_larger_post_is_a_batch_of_its_own():
    pipeline = SteppedPipeline()
    batcher = started(pipeline, max_batch=3, max_step_pieces=20, max_batch_pixels=10)

    async def scenario():
        await batcher.submit([Post(f"t{i} 1") for i in range(4)])[0]  # no costs given: posts only
        await batcher.submit([Post(f"w{i} 1") for i in range(4)], [PostCost(pieces=6, windows=1)] * 4)[0]  # 8 each
        await batcher.submit([Post("l0 1"), Post("l1 1")], [PostCost(pieces=60, windows=2), PostCost(pieces=5)])[0]
        await batcher.submit([Post(f"p{i} 1") for i in range(5)], [PostCost(pixels=4)] * 4 + [PostCost(pixels=50)])[0]

    try:
        asyncio.run(scenario())
    finally:
        batcher.close(timeout=10)
    assert pipeline.batches == [["t0 1", "t1 1", "t2 1"], ["t3 1"], ["w0 1", "w1 1"], ["w2 1", "w3 1"], ["l0 1"], ["l1 1"],
                                ["p0 1", "p1 1"], ["p2 1", "p3 1"], ["p4 1"]]  # fmt: skip


def test_a_short_request_starts_the_next_batch_rather_than_joining_a_large_requests_next_post():
    pipeline = SteppedPipeline(gated=True)
    batcher = started(pipeline, max_batch=8, max_batch_pixels=10)

    async def scenario():
        large, _ = batcher.submit([Post(f"large{i} 1") for i in range(4)], [PostCost(pixels=12)] * 4)  # each over the cap
        await until(lambda: len(pipeline.log) == 1)  # its first batch's step started
        short, _ = batcher.submit([Post("short 1")])
        pipeline.gate.release(1000)
        await asyncio.gather(large, short)

    try:
        asyncio.run(scenario())
    finally:
        batcher.close(timeout=10)
    assert pipeline.batches[:3] == [["large0 1"], ["short 1"], ["large1 1"]]


def test_a_stream_of_short_requests_cannot_starve_a_long_one():
    pipeline = SteppedPipeline(gated=True)
    batcher = started(pipeline, max_batch=1)  # each short request a batch of its own

    async def scenario():
        long_future, _ = batcher.submit([Post("long 12")])
        pipeline.gate.release(1)
        await until(lambda: len(pipeline.log) == 2)
        shorts = [batcher.submit([Post("short 1")])[0] for _ in range(6)]
        pipeline.gate.release(1000)
        await asyncio.gather(long_future, *shorts)

    try:
        asyncio.run(scenario())
    finally:
        batcher.close(timeout=10)
    assert pipeline.log.count("long") == 12 and pipeline.log.count("short") == 6
    before_done = pipeline.log[: max(k for k, label in enumerate(pipeline.log) if label == "long")]
    assert ["short", "short"] not in [before_done[k : k + 2] for k in range(len(before_done) - 1)], pipeline.log


def test_a_request_that_timed_out_is_not_tagged_and_leaves_the_queue():
    pipeline = SteppedPipeline(gated=True)
    batcher = started(pipeline, max_batch=2)

    async def scenario():
        first, _ = batcher.submit([Post("first 2")])
        pipeline.gate.release(1)
        await until(lambda: len(pipeline.log) == 2)
        gone, abandoned = batcher.submit([Post("gone 1"), Post("gone 1"), Post("gone 1")])
        abandoned.set()  # what a 504 does
        assert batcher.depth == 3
        pipeline.gate.release(1000)
        await first
        after, _ = batcher.submit([Post("after 1")])
        await after

    try:
        asyncio.run(scenario())
    finally:
        batcher.close(timeout=10)
    assert "gone" not in pipeline.log and pipeline.log[-1] == "after"
    assert batcher.depth == 0


def test_close_answers_every_request_already_submitted():
    pipeline = SteppedPipeline()
    batcher = Batcher(pipeline, Metrics(), ServeConfig(max_batch=2, max_wait_ms=0))

    async def scenario():
        futures = [batcher.submit([Post(f"r{i} 2")] * 3)[0] for i in range(4)]
        batcher.start()
        await asyncio.to_thread(batcher.close, 10)
        return await asyncio.gather(*futures)

    assert [len(results) for results in asyncio.run(scenario())] == [3] * 4
    with pytest.raises(RuntimeError, match="shutting down"):
        asyncio.run(_submit_one(batcher))


async def _submit_one(batcher: Batcher):
    return batcher.submit([Post("late 1")])


def test_serve_config_refuses_a_post_limit_over_the_request_limit_and_non_positive_budgets():
    with pytest.raises(ValueError, match="max_post_pieces .* must not exceed max_request_pieces"):
        ServeConfig(max_post_pieces=5000, max_request_pieces=4000)
    for name in ("max_post_pieces", "max_request_pieces", "max_request_pixels", "max_batch_pixels"):
        with pytest.raises(ValueError, match=f"{name} must be a positive int"):
            ServeConfig(**{name: 0})


class PicturePipeline(SteppedPipeline):
    """Decoding a picture waits until the test lets it finish; tagging records what image each post carried."""

    def __init__(self) -> None:
        super().__init__()
        self.decoding = threading.Event()
        self.decoded = threading.Event()
        self.images: list = []

    def prepare_image(self, data):
        self.decoding.set()
        assert self.decoded.wait(30), "the test never let the picture decode"
        return ("prepared", bytes(data))

    def tag_steps(self, posts):
        self.images += [post.image for post in posts]
        return super().tag_steps(posts)


def test_pictures_are_decoded_off_the_worker_which_tags_other_requests_meanwhile():
    pipeline = PicturePipeline()
    batcher = started(pipeline)

    async def scenario():
        posts, costs = [Post("photo 1", b"PNG bytes"), Post("caption 1")], [PostCost(pixels=12_000_000), PostCost()]
        photo, _ = batcher.submit(posts, costs)
        await until(pipeline.decoding.is_set)
        short, _ = batcher.submit([Post("short 1")])
        assert [r.tags for r in await asyncio.wait_for(short, 10)] == [["short 1"]]
        assert not photo.done()
        pipeline.decoded.set()
        assert [r.tags[0] for r in await asyncio.wait_for(photo, 10)] == ["photo 1", "caption 1"]

    try:
        asyncio.run(scenario())
    finally:
        batcher.close(timeout=10)
    assert pipeline.log == ["short", "photo", "caption"]  # the 12-MP photo is a batch of its own
    assert pipeline.images == [None, ("prepared", b"PNG bytes"), None]
