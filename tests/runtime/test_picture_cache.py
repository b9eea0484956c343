"""runtime.picture_cache and the pipeline's use of it: a repeated picture skips decoding, detector and vision.

The LRU itself (bytes bound, order, counters, read-only copies, threads), then the pipeline on the fake runners
of test_pipeline (stage calls and decodes counted), then real photos (matplotlib's sample photographs, and a
re-encoding of one) through the exported tiny bundle: the same results with the cache as without it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from mner.runtime import pipeline as pipeline_module
from mner.runtime.cli import PICTURE_CACHE_MIB as TAG_CLI_MIB
from mner.runtime.cli import tag_command
from mner.runtime.picture_cache import (DEFAULT_PICTURE_CACHE_BYTES, ENTRY_OVERHEAD, CacheStats, PictureCache,
                                        PictureFeatures, format_stats, picture_key)
from mner.runtime.pipeline import Pipeline, Post
from mner.runtime.serve_cli import PICTURE_CACHE_MIB as SERVE_CLI_MIB
from runtime_samples import jpeg
from test_exported_bundle import exported  # noqa: F401 -- a fixture
from test_pipeline import fake_pipeline

GRID_BYTES = 49 * 8 * 4 + 5 * 8  # a fake pipeline's grid (49, 8) float32 and 5 object ids


def features(value: float, cells: int = 49, dim: int = 8) -> PictureFeatures:
    return PictureFeatures(np.full((cells, dim), value, np.float32), np.arange(5, dtype=np.int64))


def entry_bytes(cells: int = 49, dim: int = 8) -> int:
    return cells * dim * 4 + 5 * 8 + ENTRY_OVERHEAD


# --------------------------------------------------------------------------- the LRU


def test_the_least_recently_used_picture_goes_first_when_the_bytes_are_over_the_bound():
    cache = PictureCache(2 * entry_bytes())
    cache.put(b"a", features(1))
    cache.put(b"b", features(2))
    assert cache.get(b"a").grid[0, 0] == 1  # a is now the most recently used
    cache.put(b"c", features(3))
    assert b"b" not in cache and b"a" in cache and b"c" in cache
    assert cache.get(b"b") is None
    assert cache.stats() == CacheStats(hits=1, misses=1, evictions=1, entries=2, bytes=2 * entry_bytes(),
                                       capacity_bytes=2 * entry_bytes())  # fmt: skip

    cache = PictureCache(3 * entry_bytes())
    for key in (b"a", b"b", b"c"):
        cache.put(key, features(1))
    cache.put(b"big", features(4, dim=16))  # worth ~1.7 small ones: the two least recently used go
    assert list(cache._entries) == [b"c", b"big"] and cache.stats().evictions == 2
    assert cache.stats().bytes == entry_bytes() + entry_bytes(dim=16) <= cache.capacity_bytes


def test_an_entry_larger_than_the_bound_is_not_kept_and_replacing_a_key_counts_its_bytes_once():
    cache = PictureCache(entry_bytes() + 10)
    cache.put(b"huge", features(1, dim=9))
    assert cache.stats().entries == 0 and cache.stats().bytes == 0
    cache.put(b"a", features(1))
    cache.put(b"a", features(2))
    assert cache.stats().entries == 1 and cache.stats().bytes == entry_bytes() and cache.get(b"a").grid[0, 0] == 2


def test_errors_are_entries_whose_bytes_count_their_text_and_the_overhead():
    cache = PictureCache(4 * ENTRY_OVERHEAD)
    cache.put(b"bad", PictureFeatures(None, None, "not an image"))
    assert cache.get(b"bad").error == "not an image" and cache.stats().bytes == ENTRY_OVERHEAD + len("not an image")
    for k in range(20):  # a flood of distinct broken pictures stays within the bound
        cache.put(bytes([k]), PictureFeatures(None, None, "corrupt"))
    assert cache.stats().entries == 3 and cache.stats().bytes <= 4 * ENTRY_OVERHEAD


def test_the_cache_keeps_read_only_copies():
    grid = np.zeros((49, 8), np.float32)
    batch = np.zeros((4, 49, 8), np.float32)
    cache = PictureCache(1 << 20)
    cache.put(b"a", PictureFeatures(batch[1], np.zeros(5, np.int64)))
    batch[1] = 7  # the batch array the row came from changes afterwards
    kept = cache.get(b"a")
    assert kept.grid.base is None and not kept.grid.any()
    with pytest.raises(ValueError, match="read-only"):
        kept.grid[0, 0] = 1
    assert grid.flags.writeable


def test_what_the_cache_refuses():
    for bad in (0, -1, True, 1.5, None):
        with pytest.raises(ValueError, match="capacity_bytes must be a positive int"):
            PictureCache(bad)
    cache = PictureCache(1 << 20)
    with pytest.raises(ValueError, match="a grid and object ids, or an error and neither"):
        cache.put(b"x", PictureFeatures(None, None, None))
    with pytest.raises(ValueError, match="a grid and object ids, or an error and neither"):
        cache.put(b"x", PictureFeatures(np.zeros((49, 8), np.float32), np.zeros(5, np.int64), "both"))
    with pytest.raises(ValueError, match="a grid and object ids, or an error and neither"):
        cache.put(b"x", PictureFeatures(np.zeros((49, 8), np.float32), None))


def test_the_key_is_the_sha256_of_the_bytes_as_received():
    data = jpeg(20, 30, 0)
    assert picture_key(data) == hashlib.sha256(data).digest()
    assert picture_key(data) != picture_key(data + b"\0")


def test_counters_stay_consistent_under_threads():
    cache = PictureCache(8 * entry_bytes())
    gets_per_thread, threads = 400, 4

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(gets_per_thread):
            key = bytes([int(rng.integers(16))])
            if cache.get(key) is None:
                cache.put(key, features(float(key[0])))

    workers = [threading.Thread(target=work, args=(seed,)) for seed in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    stats = cache.stats()
    assert stats.hits + stats.misses == gets_per_thread * threads
    assert stats.entries == len(cache._entries) <= 8 and stats.bytes == stats.entries * entry_bytes()
    assert all(cache.get(key).grid[0, 0] == key[0] for key in list(cache._entries))


def test_the_summary_line():
    assert format_stats(CacheStats(3, 1, 0, 2, 3 << 20, 64 << 20)) == \
        "picture cache: 3 hits, 1 misses (75% hits), 0 evictions, 2 pictures in 3.0 of 64 MiB"  # fmt: skip
    assert "misses," in format_stats(CacheStats(0, 0, 0, 0, 0, 1 << 20))


def test_the_command_lines_default_is_the_librarys():
    assert DEFAULT_PICTURE_CACHE_BYTES == TAG_CLI_MIB << 20 == SERVE_CLI_MIB << 20


# --------------------------------------------------------------------------- the pipeline (fake runners)


@pytest.fixture()
def decoded(monkeypatch):
    """The pictures the pipeline decodes, as a list of byte strings."""
    seen: list[bytes] = []
    original = pipeline_module.preprocess_images

    def counting(images, **options):
        seen.extend(images)
        return original(images, **options)

    monkeypatch.setattr(pipeline_module, "preprocess_images", counting)
    return seen


def stage_batches(pipeline: Pipeline) -> dict[str, list[int]]:
    """Wrap the detector and vision runners' infer to record each call's batch size."""
    sizes: dict[str, list[int]] = {"detector": [], "vision": []}
    for runner in (pipeline.detector, pipeline.vision):
        def infer(feed, _infer=runner.infer, _name=runner.stage.name):
            sizes[_name].append(len(feed["images"]))
            return _infer(feed)

        runner.infer = infer
    return sizes


RED, BLUE = np.zeros((40, 60, 3), np.uint8), np.zeros((40, 60, 3), np.uint8)
RED[..., 2], BLUE[..., 0] = 255, 255  # BGR: the fake detector says "person" for red, "car" for blue
RED_JPEG, BLUE_PNG = cv2.imencode(".jpg", RED)[1].tobytes(), cv2.imencode(".png", BLUE)[1].tobytes()


def test_a_repeated_picture_is_neither_decoded_nor_run_and_tags_the_same(decoded):
    pipeline = fake_pipeline(batch_size=8)
    sizes = stage_batches(pipeline)
    first = pipeline.tag([Post("Obama in Paris", RED_JPEG), Post("Kawhi in Toronto", BLUE_PNG)])
    assert sizes == {"detector": [2], "vision": [2]} and decoded == [RED_JPEG, BLUE_PNG]
    again = pipeline.tag([Post("Obama in Paris", RED_JPEG), Post("Kawhi in Toronto", BLUE_PNG), Post("no picture")])
    assert sizes == {"detector": [2], "vision": [2]} and len(decoded) == 2, "the retweets ran nothing"
    assert [r.objects for r in again[:2]] == [r.objects for r in first] == [["person"], ["car"]]
    assert [(r.tags, r.scores, r.entities) for r in again[:2]] == [(r.tags, r.scores, r.entities) for r in first]
    assert pipeline.picture_cache.stats() == CacheStats(2, 2, 0, 2, 2 * (GRID_BYTES + ENTRY_OVERHEAD), DEFAULT_PICTURE_CACHE_BYTES)
    mixed = pipeline.tag([Post("new one", jpeg(30, 30, 5)), Post("Obama in Paris", RED_JPEG)])  # a hit beside a miss
    assert sizes == {"detector": [2, 1], "vision": [2, 1]} and mixed[1].objects == ["person"]
    assert [(r.tags, r.scores) for r in mixed[1:]] == [(r.tags, r.scores) for r in first[:1]]


def test_copies_of_one_picture_in_a_batch_are_decoded_and_run_once(decoded):
    pipeline = fake_pipeline(batch_size=8)
    sizes = stage_batches(pipeline)
    results = pipeline.tag([Post("a", RED_JPEG), Post("b", BLUE_PNG), Post("c", RED_JPEG), Post("d", RED_JPEG)])
    assert decoded == [RED_JPEG, BLUE_PNG] and sizes == {"detector": [2], "vision": [2]}
    assert [r.objects for r in results] == [["person"], ["car"], ["person"], ["person"]]
    assert pipeline.picture_cache.stats()[:4] == (0, 4, 0, 2)  # four looked up before any was remembered


def test_an_unusable_picture_is_remembered_with_its_error(decoded):
    broken = RED_JPEG[:60]
    for policy in ("error", "text-only"):
        decoded.clear()
        pipeline = fake_pipeline(on_bad_image=policy)
        first = pipeline.tag([Post("Obama in Paris", broken)])
        second = pipeline.tag([Post("Obama in Paris", broken)])
        assert decoded == [broken], "the second copy was not decoded again"
        assert (second[0].error, second[0].image_error) == (first[0].error, first[0].image_error)
        assert (first[0].error if policy == "error" else first[0].image_error)
        assert pipeline.picture_cache.stats()[:2] == (1, 1)


def test_without_the_cache_every_picture_is_decoded_and_run(decoded):
    pipeline = fake_pipeline(picture_cache_bytes=0)
    sizes = stage_batches(pipeline)
    assert pipeline.picture_cache is None
    for _ in range(2):
        pipeline.tag([Post("a", RED_JPEG), Post("b", RED_JPEG)])
    assert sizes == {"detector": [2, 2], "vision": [2, 2]} and len(decoded) == 4
    assert fake_pipeline(detector=None, vision=None).picture_cache is None  # no picture stages, nothing to keep


def test_the_pipeline_refuses_a_nonsense_size():
    for bad in (-1, True, 1.5, "64"):
        with pytest.raises(ValueError, match=r"picture_cache_bytes must be an int >= 0 \(0: no cache\)"):
            fake_pipeline(picture_cache_bytes=bad)


def test_a_small_cache_evicts_and_then_runs_the_picture_again():
    pipeline = fake_pipeline(picture_cache_bytes=GRID_BYTES + ENTRY_OVERHEAD)  # room for one picture
    sizes = stage_batches(pipeline)
    for picture in (RED_JPEG, BLUE_PNG, RED_JPEG, RED_JPEG):
        pipeline.tag([Post("x", picture)])
    assert sizes["vision"] == [1, 1, 1] and pipeline.picture_cache.stats()[:4] == (1, 3, 2, 1)


def test_prepared_pictures_carry_the_features_of_a_hit_and_fill_the_cache_on_a_miss(decoded):
    """mner-serve's route: prepare_image on the picture thread, then tag."""
    pipeline = fake_pipeline()
    sizes = stage_batches(pipeline)
    miss = pipeline.prepare_image(RED_JPEG)
    assert miss.vision is not None and miss.features is None and miss.key == picture_key(RED_JPEG)
    (expected,) = pipeline.tag([Post("Obama in Paris", miss)])
    hit = pipeline.prepare_image(RED_JPEG)
    assert hit.vision is None and hit.detector is None and hit.features is not None and len(decoded) == 1
    (result,) = pipeline.tag([Post("Obama in Paris", hit)])
    assert (result.tags, result.scores, result.objects) == (expected.tags, expected.scores, expected.objects)
    assert sizes["vision"] == [1] and pipeline.picture_cache.stats()[:2] == (1, 1)
    bad = pipeline.prepare_image(RED_JPEG[:60])
    assert bad.error and pipeline.prepare_image(RED_JPEG[:60]).error == bad.error and len(decoded) == 2


def test_a_stage_that_raises_leaves_nothing_in_the_cache():
    failures = []

    def once(stage: str) -> None:
        if stage == "vision" and not failures:
            failures.append(stage)
            raise RuntimeError("out of memory, once")

    pipeline = fake_pipeline(image_hook=once)
    puts = []
    original = pipeline.picture_cache.put
    pipeline.picture_cache.put = lambda key, features: (puts.append(key), original(key, features))
    # The batch fails; its posts are tagged again one by one.
    results = pipeline.tag([Post("Obama in Paris", RED_JPEG), Post("Kawhi in Toronto", BLUE_PNG)])
    assert failures and all(r.ok for r in results) and [r.objects for r in results] == [["person"], ["car"]]
    assert puts == [picture_key(RED_JPEG), picture_key(BLUE_PNG)]  # by the retries that worked, not the failed run


# --------------------------------------------------------------------------- real photos, the exported bundle


def sample_photos() -> list[bytes]:
    """Real photographs matplotlib ships (a JPEG portrait and a PNG of a product photo), and the JPEG re-encoded
    as PNG (same pixels, other bytes: a miss)."""
    matplotlib = pytest.importorskip("matplotlib", reason="the sample photos come with matplotlib")
    folder = Path(matplotlib.get_data_path()) / "sample_data"
    photos = [(folder / name).read_bytes() for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")]
    as_png = cv2.imencode(".png", cv2.imdecode(np.frombuffer(photos[0], np.uint8), cv2.IMREAD_COLOR))[1].tobytes()
    return [*photos, as_png]


def test_real_photos_give_the_same_results_with_and_without_the_cache(exported):  # noqa: F811
    photos = sample_photos()
    texts = ["Grace Hopper at Harvard", "RT @navy : Grace Hopper at Harvard", "New present from Paris !",
             "Kawhi Leonard in Toronto", "RT : New present from Paris !", "Admiral Hopper"]  # fmt: skip
    # Batches of 3: a repeat within the first batch, repeats across batches, and the PNG copy of the JPEG.
    posts = [Post(text, photos[k]) for k, text in zip((0, 1, 0, 2, 1, 0), texts)] + [Post("no picture here")]
    with Pipeline.from_bundle(exported.bundle, batch_size=3, verify=False) as cached, \
            Pipeline.from_bundle(exported.bundle, batch_size=3, verify=False, picture_cache_bytes=0) as plain:  # fmt: skip
        expected = plain.tag(posts)
        for attempt in range(2):
            results = cached.tag(posts)
            for got, want in zip(results, expected):
                assert got.ok and (got.entities, got.tags, got.objects) == (want.entities, want.tags, want.objects)
                assert got.scores == want.scores
        stats = cached.picture_cache.stats()
    assert stats.entries == 3 and stats.misses == 4 and stats.hits == 8  # the first batch's 3 and the PNG copy miss


def test_mner_tag_says_what_the_cache_did_and_writes_the_same_records_without_it(exported, tmp_path):  # noqa: F811
    hopper, present, _ = sample_photos()
    (tmp_path / "hopper.jpg").write_bytes(hopper)
    (tmp_path / "present.png").write_bytes(present)
    posts = [{"id": "a", "text": "Grace Hopper at Harvard", "image": "hopper.jpg"},
             {"id": "b", "text": "RT @navy : Grace Hopper at Harvard", "image": "hopper.jpg"},
             {"id": "c", "text": "A present from Paris", "image": "present.png"}, {"id": "d", "text": "No picture"}]  # fmt: skip
    source = tmp_path / "posts.jsonl"
    source.write_text("".join(json.dumps(post) + "\n" for post in posts))
    runs = {}
    for mib in ("64", "0"):  # batches of one post: the second Hopper is a hit whatever order they are tagged in
        output = tmp_path / f"tagged-{mib}.jsonl"
        result = CliRunner().invoke(tag_command, ["--engine", str(exported.bundle), "--input", str(source), "--output",
                                                  str(output), "--no-progress", "--no-verify", "--batch-size", "1",
                                                  "--picture-cache-mib", mib])  # fmt: skip
        assert result.exit_code == 0, result.output
        runs[mib] = (result.output, output.read_text())
    assert "picture cache: 1 hits, 2 misses (33% hits), 0 evictions, 2 pictures in 0.8 of 64 MiB" in runs["64"][0]
    assert "picture cache" not in runs["0"][0]
    assert runs["64"][1] == runs["0"][1]
    result = CliRunner().invoke(tag_command, ["--engine", str(exported.bundle), "--input", str(source), "--output",
                                              str(tmp_path / "x.jsonl"), "--picture-cache-mib", "-1"])  # fmt: skip
    assert result.exit_code == 2 and "-1 is not in the range x>=0" in result.output
