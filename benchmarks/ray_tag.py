"""mner-tag --ray against single-process mner-tag on the same shards: posts/s with 1, 2, ... actors.

    python -m mner.benchmarks.ray_tag --engine BUNDLE -o OUTDIR [--posts 4000] [--shards 8] [--actors 1,2] \\
        [--batch-size 16] [--ray-cpus N]

The posts are TWITTER-2017's test posts (``--data``, read with ``runtime.conll``), words joined by spaces as
raw tweets, in file order, cycled to ``--posts`` and dealt into ``--shards`` JSONL shards (ids unique).
Then, one after the other on this machine:

- single process: ``Pipeline.from_bundle`` (ONNX Runtime's own threads, one per core), then
  ``tagfile.tag_jsonl`` on each shard: what ``mner-tag`` does;
- for each actor count A of ``--actors``: ``ray_tag.tag_ray`` into a fresh output folder on a local Ray of
  ``--ray-cpus`` CPUs (default: all), A actors of ``--ray-cpus``/A CPUs each (ONNX Runtime's threads per actor
  the same), Ray started and stopped by each run as ``mner-tag --ray`` does.

Each is timed twice: wall time from start to the last record (what a user waits for), and the job's time
(single process: tag_jsonl alone, the bundle loaded; Ray: ``tag_ray`` on a Ray already started, so the
actors' start-up and their loading of the bundle are in it, Ray's own start is not; on a cluster Ray is
up before the job). Every Ray run's records are checked against the single process's (equal per shard,
else the command fails). Written: ``ray_tag.json`` and ``ray_tag.md`` in ``-o``, with the command and the machine.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import click

from mner.runtime import clikit

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "twitter2017" / "test.txt"


def write_shards(data: Path, folder: Path, posts: int, shards: int) -> list[Path]:
    """``posts`` posts of ``data`` (cycled) dealt into ``shards`` JSONL files under ``folder``."""
    from mner.runtime.conll import read_conll  # noqa: PLC0415

    texts = [" ".join(post.words) for post in read_conll(data)]
    if not texts:
        raise click.ClickException(f"--data {data} holds no posts")
    folder.mkdir(parents=True, exist_ok=True)
    lines: list[list[str]] = [[] for _ in range(shards)]
    for i in range(posts):
        lines[i % shards].append(json.dumps({"id": i, "text": texts[i % len(texts)]}))
    paths = []
    for k, shard in enumerate(lines):
        path = folder / f"part-{k:04d}.jsonl"
        path.write_text("".join(line + "\n" for line in shard))
        paths.append(path)
    return paths


def single_process(bundle: Path, shards: list[Path], out: Path, batch_size: int) -> dict:
    from mner.runtime.batching import DEFAULT_SORT_WINDOW  # noqa: PLC0415
    from mner.runtime.pipeline import Pipeline  # noqa: PLC0415
    from mner.runtime.tagfile import tag_jsonl  # noqa: PLC0415

    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    posts = 0
    with Pipeline.from_bundle(bundle, batch_size=batch_size) as pipeline:
        tagging = time.perf_counter()
        for shard in shards:
            # mner-tag's --sort-window for a file, as tag_ray's: the same batches of like lengths on both sides
            posts += tag_jsonl(pipeline, shard, out / f"{shard.name}.out", progress=False,
                               sort_window=DEFAULT_SORT_WINDOW).lines  # fmt: skip
        ended = time.perf_counter()
    return {"posts": posts, "wall_s": ended - started, "tagging_s": ended - tagging}


def on_ray(bundle: Path, inputs: Path, out: Path, actors: int, cpus: int, batch_size: int) -> dict:
    import ray  # noqa: PLC0415

    from mner.runtime.ray_tag import tag_ray  # noqa: PLC0415

    per_actor = cpus / actors
    started = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        tagging = time.perf_counter()  # tag_ray finds Ray started and uses it: from here, the job alone
        summary = tag_ray(bundle, inputs, out, actors=actors, cpus_per_actor=per_actor, batch_size=batch_size,
                          threads=max(1, int(per_actor)), progress=False)  # fmt: skip
        ended = time.perf_counter()
    finally:
        ray.shutdown()
    return {"posts": summary.posts, "wall_s": ended - started, "ray_start_s": tagging - started,
            "tagging_s": ended - tagging, "cpus_per_actor": per_actor}


def same_records(reference: Path, out: Path, shards: list[Path]) -> None:
    for shard in shards:
        (written,) = out.glob(f"{shard.name}.*.jsonl")
        if written.read_bytes() != (reference / f"{shard.name}.out").read_bytes():
            raise click.ClickException(f"{written} differs from single-process mner-tag's records of {shard}")


@clikit.command()
@click.option("--engine", "bundle", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=DEFAULT_DATA,
              show_default="../shared/data/twitter2017/test.txt")
@click.option("--posts", type=click.IntRange(min=1), default=4000)
@click.option("--shards", type=click.IntRange(min=1), default=8)
@click.option("--actors", default="1,2", help="Comma-separated actor counts.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16)
@click.option("--ray-cpus", type=click.IntRange(min=1), help="Local Ray's CPUs. Default: all of this machine's.")
def main(bundle, output, data, posts, shards, actors, batch_size, ray_cpus) -> None:
    """Time mner-tag --ray with 1, 2, ... actors against single-process mner-tag on the same shards."""
    logging.basicConfig(level=logging.WARNING)
    counts = [int(a) for a in actors.split(",") if a.strip()]
    cpus = ray_cpus or os.cpu_count() or 1
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mner-ray-bench-") as work:
        work = Path(work)
        paths = write_shards(data, work / "in", posts, shards)
        runs = {"single process": single_process(bundle, paths, work / "single", batch_size)}
        for count in counts:
            runs[f"ray, {count} actor{'s' * (count > 1)}"] = result = on_ray(bundle, work / "in", work / f"ray-{count}",
                                                                             count, cpus, batch_size)  # fmt: skip
            same_records(work / "single", work / f"ray-{count}", paths)
            result["records_equal"] = True
    base = runs["single process"]
    for run in runs.values():
        run["posts_per_s_wall"] = run["posts"] / run["wall_s"]
        run["posts_per_s_tagging"] = run["posts"] / run["tagging_s"]
        run["vs_single_tagging"] = run["posts_per_s_tagging"] / base["posts_per_s_tagging"]
    import platform  # noqa: PLC0415

    report = {"command": shlex.join(["python", "-m", "mner.benchmarks.ray_tag", *sys.argv[1:]]),
              "bundle": str(bundle), "posts": posts, "shards": shards, "batch_size": batch_size, "ray_cpus": cpus,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "runs": runs}  # fmt: skip
    (output / "ray_tag.json").write_text(json.dumps(report, indent=2) + "\n")
    rows = [f"| {name} | {run['posts']} | {run['wall_s']:.1f} | {run['posts_per_s_wall']:.1f} | "
            f"{run['posts_per_s_tagging']:.1f} | {run['vs_single_tagging']:.2f}x |" for name, run in runs.items()]  # fmt: skip
    (output / "ray_tag.md").write_text(
        f"# mner-tag --ray vs single-process mner-tag\n\n`{report['command']}`\n\n"
        f"Bundle `{bundle}`; {posts} posts in {shards} shards; batch {batch_size}; local Ray of {cpus} CPUs on a "
        f"{os.cpu_count()}-CPU machine. Every Ray run's records equal single-process mner-tag's, shard by shard.\n\n"
        "| run | posts | wall s | posts/s (wall) | posts/s (job) | vs single (job) |\n|---|---|---|---|---|---|\n"
        + "\n".join(rows) + "\n"
    )  # fmt: skip
    click.echo((output / "ray_tag.md").read_text())


if __name__ == "__main__":
    main()
