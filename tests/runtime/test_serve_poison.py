"""mner-serve's app on 127.0.0.1 (uvicorn in a thread of this process) over a pipeline whose tagger raises for
one input: the request holding it gets a 500 naming the exception, the requests batched with it their 200.
test_odd_text.py runs the real mner-serve process on a real bundle."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import uvicorn
from test_pipeline import fake_pipeline
from test_pipeline_errors import POISON, poisoned_tagger

from mner.benchmarks.loadtest import Connection, free_port, post_body, scrape
from mner.runtime.serve import create_app
from mner.runtime.serve_batcher import ServeConfig
from mner.runtime.tagfile import result_record

GOOD = ["Obama in Paris", "Merkel in Berlin", "Kawhi Leonard visits Toronto"]


@pytest.fixture()
def port():
    app = create_app(fake_pipeline(tagger=poisoned_tagger()), ServeConfig(max_batch=16, max_wait_ms=1000))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)  # no signal handlers off the main thread
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start within 30 s"
    yield port
    server.should_exit = True
    thread.join(30)


async def send_together(port: int, bodies: list[bytes]):
    return await asyncio.gather(*(Connection(port).request("POST", "/v1/tag", body) for body in bodies))


def test_the_request_whose_tagging_raises_gets_500_and_the_requests_batched_with_it_200(port):
    before = scrape(port)
    replies = asyncio.run(send_together(port, [post_body(GOOD[0]), post_body(POISON), *map(post_body, GOOD[1:])]))
    after = scrape(port)
    failed = replies[1]
    assert failed.status == 500 and failed.headers["x-error-kind"] == "internal"
    assert failed.json()["error"] == {"kind": "internal", "message": "tagging failed: RuntimeError: the tagger cannot take piece Q"}
    alone = fake_pipeline()
    for reply, text in zip([replies[0], *replies[2:]], GOOD):
        assert reply.status == 200, reply.body
        assert reply.json() == result_record(alone.tag([text])[0], with_tags=False)
    assert after["mner_batch_size_count"] - before["mner_batch_size_count"] == 1  # all four in one batch
    assert after["mner_batch_size_sum"] - before["mner_batch_size_sum"] == len(GOOD) + 1
    assert asyncio.run(Connection(port).request("POST", "/v1/tag", post_body("Paris"))).status == 200
