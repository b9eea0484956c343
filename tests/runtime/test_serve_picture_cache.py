"""mner-serve's picture cache as an operator sees it: --picture-cache-mib and the mner_picture_cache_* metrics of
a real server process on 127.0.0.1 (the tiny bundle test_exported_bundle exports), fed a real photograph."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from test_exported_bundle import exported  # noqa: F401 -- a fixture

from mner.benchmarks.loadtest import Connection, free_port, post_body, scrape, start_server, stop_server
from mner.runtime.picture_cache import ENTRY_OVERHEAD
from mner.runtime.serve import _PictureCacheCollector, startup_line
from mner.runtime.serve_batcher import ServeConfig
from mner.runtime.serve_limits import HttpLimits
from test_pipeline import fake_pipeline

GRID_BYTES = 49 * 2048 * 4 + 5 * 8  # the tiny bundle's grid and object ids per picture


def post(port: int, path: str, body: bytes):
    return asyncio.run(Connection(port).request("POST", path, body, "application/json"))


def test_metrics_count_hits_misses_and_bytes_of_a_real_server(exported):  # noqa: F811
    matplotlib = pytest.importorskip("matplotlib", reason="the sample photos come with matplotlib")
    folder = Path(matplotlib.get_data_path()) / "sample_data"
    hopper, present = ((folder / name).read_bytes() for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png"))
    port = free_port()
    server = start_server(exported.bundle, port, "--no-verify", "--drain-s", "0", "--picture-cache-mib", "3")
    try:
        assert scrape(port)["mner_picture_cache_misses_total"] == 1  # the warm-up picture
        first = post(port, "/v1/tag", post_body("Grace Hopper at Harvard", hopper))
        retweet = post(port, "/v1/tag", post_body("RT @navy : Grace Hopper at Harvard", hopper))
        assert first.status == retweet.status == 200
        assert first.json()["objects"] == retweet.json()["objects"]
        batch = post(port, "/v1/tag/batch", json.dumps({"posts": [json.loads(post_body(text, picture)) for text, picture in
                     (("Grace Hopper", hopper), ("A present", present), ("Hopper again", hopper))]}).encode())  # fmt: skip
        assert batch.status == 200 and [r["objects"] for r in batch.json()["results"]][::2] == [first.json()["objects"]] * 2
        metrics = scrape(port)
    finally:
        log = stop_server(server)
    assert metrics["mner_picture_cache_hits_total"] == 3, log[-2000:]
    assert metrics["mner_picture_cache_misses_total"] == 3  # warm-up, the first Hopper, the present
    assert metrics["mner_picture_cache_evictions_total"] == 0 and metrics["mner_picture_cache_entries"] == 3
    assert metrics["mner_picture_cache_bytes"] == 3 * (GRID_BYTES + ENTRY_OVERHEAD)
    assert metrics["mner_picture_cache_capacity_bytes"] == 3 << 20
    assert "--picture-cache-mib 3 " in log


def test_without_a_cache_the_series_are_there_at_zero_capacity():
    pipeline = fake_pipeline(picture_cache_bytes=0)
    samples = {family.name: family.samples[0].value for family in _PictureCacheCollector(pipeline).collect()}
    assert samples == {"mner_picture_cache_hits": 0, "mner_picture_cache_misses": 0, "mner_picture_cache_evictions": 0,
                       "mner_picture_cache_entries": 0, "mner_picture_cache_bytes": 0,
                       "mner_picture_cache_capacity_bytes": 0}  # fmt: skip
    message, fields = startup_line(pipeline, ServeConfig(), HttpLimits(), None, host="127.0.0.1", port=1, ready=True)
    assert fields["limits"]["picture_cache_mib"] == 0 and "--picture-cache-mib 0" in message
    message, fields = startup_line(fake_pipeline(), ServeConfig(), HttpLimits(), None, host="127.0.0.1", port=1, ready=True)
    assert fields["limits"]["picture_cache_mib"] == 64
