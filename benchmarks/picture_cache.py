"""What the picture cache saves per picture: a repeated picture (a hit) against a new one (a miss).

    python -m mner.benchmarks.picture_cache BUNDLE [--posts 8] [--repeats 5] [--threads N] [--json out.json]

BUNDLE must have the detector and vision stages. The pictures are real photographs: matplotlib's sample photos
(and scikit-image's, where it is installed), cropped and flipped into ``--posts`` distinct JPEGs (distinct bytes,
so each is a miss the first time). Each repeat opens a fresh ``Pipeline.from_bundle`` (ONNX Runtime, CPU), tags
the batch once (every picture a miss: decoded, detector and vision run, features remembered) and then again
(every picture a hit: hashed and looked up only), and, with ``picture_cache_bytes=0``, once more the second time
(what the same retweets cost without the cache). Reported: milliseconds per post (the whole ``Pipeline.tag``
call divided by the posts), its steps from ``StageClock``, and the SHA-256 of the bytes alone per picture.
The entities of hits and misses are checked to be the same.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from mner.runtime.pipeline import Pipeline, Post, StageClock

TEXT = "RT @user : Kawhi Leonard and Grace Hopper in Toronto with a present"


def photos(count: int) -> list[bytes]:
    """``count`` distinct JPEGs cut from real photographs shipped with matplotlib (and scikit-image if present)."""
    import matplotlib  # noqa: PLC0415

    folder = Path(matplotlib.get_data_path()) / "sample_data"
    sources = [cv2.imread(str(folder / name)) for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")]
    try:
        from skimage import data  # noqa: PLC0415

        sources += [cv2.cvtColor(getattr(data, name)(), cv2.COLOR_RGB2BGR) for name in ("astronaut", "coffee", "chelsea")]
    except ImportError:
        pass
    out = []
    for k in range(count):
        picture = sources[k % len(sources)]
        height, width = picture.shape[:2]
        cut = k // len(sources)  # each pass over the sources crops a little more, and flips every other time
        crop = picture[cut * height // 20 :, cut * width // 20 :]
        out.append(cv2.imencode(".jpg", crop[:, ::-1] if cut % 2 else crop, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    if len({hashlib.sha256(p).digest() for p in out}) != count:
        raise RuntimeError(f"the {count} cut photographs are not all distinct")
    return out


def timed(pipeline: Pipeline, posts: list[Post]) -> tuple[float, dict[str, float], list]:
    pipeline.clock = StageClock()
    started = time.perf_counter()
    results = pipeline.tag(posts)
    seconds = time.perf_counter() - started
    return seconds, pipeline.clock.reset(), [(r.entities, r.objects) for r in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--posts", type=int, default=8, help="posts per batch, each with its own picture")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    pictures = photos(args.posts)
    posts = [Post(TEXT, picture) for picture in pictures]
    rows: dict[str, list[float]] = {"miss": [], "hit": [], "no cache, repeated": []}
    steps: dict[str, list[dict[str, float]]] = {key: [] for key in rows}
    for _ in range(args.repeats):
        with Pipeline.from_bundle(args.bundle, batch_size=args.posts, threads=args.threads, verify=False) as cached, \
                Pipeline.from_bundle(args.bundle, batch_size=args.posts, threads=args.threads, verify=False,
                                     picture_cache_bytes=0) as plain:  # fmt: skip
            plain.tag(posts[:1])  # warm both up on a picture that is then forgotten / never repeated
            cached.tag([Post(TEXT, photos(args.posts + 1)[-1])])
            for key, pipeline in (("miss", cached), ("hit", cached), ("no cache, repeated", plain)):
                seconds, clock, found = timed(pipeline, posts)
                rows[key].append(seconds / len(posts) * 1000)
                steps[key].append({step: s / len(posts) * 1000 for step, s in clock.items()})
                if key == "miss":
                    expected = found
                if found != expected:
                    raise RuntimeError(f"{key}: the entities differ from the misses'")
            stats = cached.picture_cache.stats()
            if stats.hits != len(posts):
                raise RuntimeError(f"expected {len(posts)} hits in the second pass, the cache says {stats}")
    started = time.perf_counter()
    for picture in pictures:
        hashlib.sha256(picture).digest()
    hash_ms = (time.perf_counter() - started) / len(pictures) * 1000
    report = {
        "bundle": str(args.bundle), "posts": args.posts, "repeats": args.repeats,
        "picture_bytes_mean": int(np.mean([len(p) for p in pictures])), "sha256_ms_per_picture": hash_ms,
        "ms_per_post_median": {key: statistics.median(values) for key, values in rows.items()},
        "steps_ms_per_post_median": {key: {step: statistics.median(s.get(step, 0.0) for s in runs) for step in
                                           ("images", "detector", "vision", "encode", "tagger", "decode")}
                                     for key, runs in steps.items()},
    }  # fmt: skip
    print(json.dumps(report, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
