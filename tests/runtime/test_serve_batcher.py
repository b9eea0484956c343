"""mner.runtime.serve_batcher: requests coalesced into one pipeline call; should that call raise, only the
request that fails alone gets the exception. A stub pipeline; test_serve.py runs the real server."""

from __future__ import annotations

import asyncio
import logging

from mner.runtime.pipeline import Post, TagResult
from mner.runtime.serve_batcher import Batcher, Metrics, ServeConfig


class RaisingPipeline:
    """Tags a post as its text's length; raises for any call holding a post whose text is "boom"."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def tag(self, posts):
        self.calls.append([post.text for post in posts])
        if any(post.text == "boom" for post in posts):
            raise RuntimeError("cannot take boom")
        return [TagResult(tags=["O"] * len(post.text)) for post in posts]

    def tag_steps(self, posts):  # the batcher's entry point: here all in one step
        yield from ()
        return self.tag(posts)


async def submit_together(batcher: Batcher, requests: list[list[str]]):
    futures = [batcher.submit([Post(text) for text in texts])[0] for texts in requests]
    return await asyncio.gather(*futures, return_exceptions=True)


def test_a_request_that_raises_gets_the_exception_and_the_requests_batched_with_it_their_results(caplog):
    pipeline = RaisingPipeline()
    batcher = Batcher(pipeline, Metrics(), ServeConfig(max_batch=16, max_wait_ms=500))
    batcher.start()
    try:
        with caplog.at_level(logging.WARNING, logger="mner.runtime.serve_batcher"):
            outcomes = asyncio.run(submit_together(batcher, [["ab"], ["boom", "x"], ["abc", "abcd"]]))
    finally:
        batcher.close(timeout=10)
    assert pipeline.calls[0] == ["ab", "boom", "x", "abc", "abcd"]  # one batch, then each request alone
    assert pipeline.calls[1:] == [["ab"], ["boom", "x"], ["abc", "abcd"]]
    assert [len(r.tags) for r in outcomes[0]] == [2] and [len(r.tags) for r in outcomes[2]] == [3, 4]
    assert isinstance(outcomes[1], RuntimeError) and str(outcomes[1]) == "cannot take boom"
    assert any("tagging them one by one" in r.getMessage() for r in caplog.records)


def test_a_lone_request_that_raises_is_not_tried_twice():
    pipeline = RaisingPipeline()
    batcher = Batcher(pipeline, Metrics(), ServeConfig(max_wait_ms=0))
    batcher.start()
    try:
        (outcome,) = asyncio.run(submit_together(batcher, [["boom"]]))
    finally:
        batcher.close(timeout=10)
    assert isinstance(outcome, RuntimeError) and pipeline.calls == [["boom"]]

