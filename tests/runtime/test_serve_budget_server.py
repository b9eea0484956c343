"""mner-serve's cost budget and fair scheduling on a real server process on 127.0.0.1 (the tiny bundle
test_exported_bundle exports): requests over a limit get 422 "over budget" naming it, and a short request
sent while the largest legal request is being tagged is answered long before that one finishes.
benchmarks/fairness.py measures the latencies (p99 idle vs loaded); here only their order is asserted."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from test_exported_bundle import exported, jpeg  # noqa: F401 -- `exported` is a fixture

from mner.benchmarks.fairness import SHORT, largest_picture_request, largest_text_request
from mner.benchmarks.loadtest import Connection, free_port, post_body, start_server, stop_server
from mner.runtime.serve_batcher import ServeConfig

LIMITS = ("--max-post-pieces", "300", "--max-request-pieces", "700", "--max-request-pixels", "10000")


def request(port: int, path: str, body: bytes):
    return asyncio.run(Connection(port).request("POST", path, body))


def batch(*posts: bytes) -> bytes:
    return json.dumps({"posts": [json.loads(post) for post in posts]}).encode()


@pytest.fixture(scope="module")
def limited(exported):  # noqa: F811
    port = free_port()
    process = start_server(exported.bundle, port, "--drain-s", "0", *LIMITS)  # stopped at once: no 5 idle seconds
    yield port
    stop_server(process)


def assert_over_budget(reply, limit: str, value: int, message: str) -> None:
    assert reply.status == 422, reply.body
    error = reply.json()["error"]
    assert error["kind"] == "over budget" and (error["limit"], error["value"]) == (limit, value), error
    assert message in error["message"] and str(value) in error["message"], error["message"]


def test_a_post_over_max_post_pieces_is_refused_alone_or_in_a_batch(limited):
    over = " ".join(["a"] * 301)  # "a" is one word-piece
    assert_over_budget(request(limited, "/v1/tag", post_body(over)), "max_post_pieces", 300,
                       "the post has 301 word-pieces (")  # fmt: skip
    reply = request(limited, "/v1/tag/batch", batch(post_body("Obama in Paris"), post_body(over)))
    assert_over_budget(reply, "max_post_pieces", 300, "posts[1] has 301 word-pieces (")
    assert request(limited, "/v1/tag", post_body(" ".join(["a"] * 300))).status == 200  # at the limit


def test_a_request_over_max_request_pieces_is_refused_whole(limited):
    posts = [post_body(" ".join(["a"] * 250))] * 3
    assert_over_budget(request(limited, "/v1/tag/batch", batch(*posts)), "max_request_pieces", 700,
                       "posts[0]..posts[2] have 750 word-pieces, over the limit of 700 per request")  # fmt: skip
    reply = request(limited, "/v1/tag/batch", batch(*posts[:2]))
    assert reply.status == 200 and len(reply.json()["results"]) == 2


def test_pictures_over_max_request_pixels_are_refused(limited):
    picture = jpeg(80, 80, seed=3)  # 6,400 pixels
    assert_over_budget(request(limited, "/v1/tag/batch", batch(post_body("Paris", picture), post_body("Rome", picture))),
                       "max_request_pixels", 10000, "posts[0]..posts[1] have pictures of 12800 pixels")  # fmt: skip
    assert_over_budget(request(limited, "/v1/tag", post_body("Paris", jpeg(100, 120, seed=4))), "max_request_pixels",
                       10000, "the post has a picture of 12000 pixels")  # fmt: skip
    reply = request(limited, "/v1/tag", post_body("Paris", picture))
    assert reply.status == 200 and reply.json()["objects"] is not None


@pytest.fixture(scope="module")
def defaults(exported):  # noqa: F811
    port = free_port()
    # the default limits: the largest legal request is large; stopped at once (no 5 s drain) at the module's end
    process = start_server(exported.bundle, port, "--drain-s", "0")
    yield port
    stop_server(process)


@pytest.mark.parametrize("kind", ["text", "pictures"])
def test_short_requests_are_answered_while_the_largest_legal_request_is_tagged(defaults, exported, kind):  # noqa: F811
    config = ServeConfig()
    if kind == "text":  # 4 posts of 4,096 one-piece words: 16,384 pieces, ~530 windows
        large, *_ = largest_text_request(exported.bundle, config.max_post_pieces, config.max_request_pieces,
                                         config.max_text_chars, config.max_request_posts)  # fmt: skip
    else:  # 4 flat 12-MP PNGs: 48 MP of decoding
        large, *_ = largest_picture_request(config.max_request_pixels, 40_000_000, config.max_request_posts)

    async def scenario():
        connection = Connection(defaults, timeout=120)
        started = time.perf_counter()
        task = asyncio.create_task(connection.request("POST", "/v1/tag/batch", large))
        await asyncio.sleep(0.3)  # being read, counted and tagged
        shorts, short = [], Connection(defaults, timeout=120)
        while not task.done() and len(shorts) < 5:
            sent = time.perf_counter()
            reply = await short.request("POST", "/v1/tag", SHORT)
            shorts.append((reply.status, time.perf_counter() - sent, task.done()))
        reply = await task
        large_seconds = time.perf_counter() - started
        await asyncio.gather(connection.close(), short.close())
        return reply, large_seconds, shorts

    reply, large_seconds, shorts = asyncio.run(scenario())
    assert reply.status == 200 and len(reply.json()["results"]) == 4
    assert len(shorts) == 5, f"only {len(shorts)} short requests were answered during {large_seconds:.1f} s"
    assert all(status == 200 and not large_done for status, _, large_done in shorts), shorts
    slowest = max(seconds for _, seconds, _ in shorts)
    assert slowest < large_seconds / 4, f"a short request took {slowest:.2f} s, the largest {large_seconds:.2f} s"
