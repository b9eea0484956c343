"""Head-of-line blocking in mner-serve: a short request's latency idle vs while the largest legal request is in flight.

    python -m mner.benchmarks.fairness --engine BUNDLE --repeats 3 --short-requests 200 \\
        --output benchmarks/results/fairness.md

A server process is started on 127.0.0.1 (a free port) with the given limits. For each
kind of largest legal request (by the server's limits, ``ServeConfig`` defaults unless
given):

- ``text``: /v1/tag/batch posts of one-piece words ("a a a ..."), each at most
  --max-post-pieces word-pieces (and --max-text-chars characters), together
  --max-request-pieces: the most tagger windows one request may ask for;
- ``pictures``: /v1/tag/batch posts with flat PNGs (a few tens of KB each, like the
  issue's 36-megapixel PNGs) of 12 MP each (a phone photo; less where the bundle's
  per-picture limit is lower), together at most --max-request-pixels;

one client sends ``--short-requests`` short POST /v1/tag requests one after another,
first with the server idle, then while another client sends the largest request back to
back (so one is always in flight). Reported per repeat: the short requests' p50/p99 idle
and loaded, their ratio (the issue's target: p99 loaded <= 5x p99 idle), and how long
each largest request took. The machine's other load moves every number: repeat, and read
the spread.

Pass --pythonpath to run the server from another source tree (an older mner, to compare);
limits are passed to the server only when given here (an older server lacks the flags).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

from mner.benchmarks.loadtest import Connection, free_port, start_server, stop_server
from mner.runtime.serve_batcher import ServeConfig

SHORT = json.dumps({"text": "Kawhi Leonard scores 30 as the Raptors beat the Celtics in Toronto"}).encode()
PHOTO_PIXELS = 4000 * 3000  # a 12-megapixel phone photo


def largest_text_request(bundle: Path, max_post_pieces: int, max_request_pieces: int, max_text_chars: int,
                         max_posts: int) -> tuple[bytes, int, int]:  # fmt: skip
    """The /v1/tag/batch body asking for the most word-pieces the limits allow, with its (pieces, windows)."""
    from mner.runtime.pipeline import Pipeline  # noqa: PLC0415 -- for the text cost, by the bundle's own tokenizer

    with Pipeline.from_bundle(bundle, verify=False) as pipeline:
        assert pipeline.text_cost("a").pieces == 1, "'a' is one word-piece in every BERT vocabulary"
        words = min(max_post_pieces, (max_text_chars + 1) // 2)
        posts, left = [], max_request_pieces
        while left > 0 and len(posts) < max_posts:
            n = min(words, left)
            posts.append(" ".join(["a"] * n))
            left -= n
        costs = [pipeline.text_cost(text) for text in posts]
    body = json.dumps({"posts": [{"text": text} for text in posts]}).encode()
    return body, sum(c.pieces for c in costs), sum(c.windows for c in costs)


def largest_picture_request(max_request_pixels: int, per_picture: int, max_posts: int) -> tuple[bytes, int, int]:
    """The /v1/tag/batch body whose pictures have the most pixels the limits allow, with (pictures, pixels)."""
    import cv2  # noqa: PLC0415

    pixels = min(PHOTO_PIXELS, per_picture, max_request_pixels)
    height = int((pixels * 3 / 4) ** 0.5)
    width = pixels // height
    count = min(max_request_pixels // (width * height), max_posts)
    picture = np.zeros((height, width, 3), np.uint8)
    picture[: height // 2] = (200, 120, 40)  # flat halves: a small PNG that decodes to every pixel
    png = base64.b64encode(cv2.imencode(".png", picture)[1].tobytes()).decode("ascii")
    body = json.dumps({"posts": [{"text": f"Photo {i} of Paris", "image_base64": png} for i in range(count)]}).encode()
    return body, count, count * width * height


@dataclass
class Phase:
    short_ms: list[float] = field(default_factory=list)
    large_s: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)

    def p(self, q: float) -> float:
        return float(np.percentile(self.short_ms, q))


async def measure(port: int, shorts: int, large: bytes | None, timeout: float) -> Phase:
    """``shorts`` short requests one after another; with ``large``, while it is sent back to back."""
    phase = Phase()
    stop = asyncio.Event()
    in_flight = asyncio.Event()

    async def large_client() -> None:
        connection = Connection(port, timeout=timeout)
        try:
            while not stop.is_set():
                started = time.perf_counter()
                in_flight.set()
                reply = await connection.request("POST", "/v1/tag/batch", large)
                phase.large_s.append(time.perf_counter() - started)
                phase.statuses[reply.status] = phase.statuses.get(reply.status, 0) + 1
                if reply.status != 200:
                    raise RuntimeError(f"the largest legal request got {reply.status}: {reply.body[:300]!r}")
        finally:
            await connection.close()

    background = asyncio.create_task(large_client()) if large is not None else None
    if background is not None:
        await in_flight.wait()
        await asyncio.sleep(0.05)  # it is being read and counted
    connection = Connection(port, timeout=timeout)
    try:
        for _ in range(shorts):
            started = time.perf_counter()
            reply = await connection.request("POST", "/v1/tag", SHORT)
            phase.short_ms.append((time.perf_counter() - started) * 1000)
            phase.statuses[reply.status] = phase.statuses.get(reply.status, 0) + 1
            if background is not None and background.done():
                background.result()  # raises what ended it
    finally:
        await connection.close()
        stop.set()
        if background is not None:
            await background  # the one in flight finishes
    return phase


@click.command()
@click.option("--engine", "bundle", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--repeats", type=click.IntRange(1, 20), default=3, show_default=True)
@click.option("--short-requests", type=click.IntRange(10, 10_000), default=200, show_default=True, help="Per phase.")
@click.option("--kind", "kinds", type=click.Choice(["text", "pictures"]), multiple=True, default=("text", "pictures"),
              show_default=True)
@click.option("--max-batch", type=int, help="Passed to mner-serve (its default otherwise).")
@click.option("--max-post-pieces", type=int)
@click.option("--max-request-pieces", type=int)
@click.option("--max-request-pixels", type=int)
@click.option("--max-batch-pixels", type=int)
@click.option("--max-step-pieces", type=int)
@click.option("--pythonpath", help="PYTHONPATH for the server process (another source tree, to compare).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Also write the Markdown here.")
def main(bundle, repeats, short_requests, kinds, max_batch, max_post_pieces, max_request_pieces, max_request_pixels,
         max_batch_pixels, max_step_pieces, pythonpath, output) -> None:  # fmt: skip
    """A short request's p50/p99 idle vs while the largest legal request is in flight (loopback only)."""
    given = {"max_batch": max_batch, "max_post_pieces": max_post_pieces, "max_request_pieces": max_request_pieces,
             "max_request_pixels": max_request_pixels, "max_batch_pixels": max_batch_pixels,
             "max_step_pieces": max_step_pieces}  # fmt: skip
    options = [item for name, value in given.items() if value is not None
               for item in (f"--{name.replace('_', '-')}", str(value))]  # fmt: skip
    config = ServeConfig(**{name: value for name, value in given.items() if value is not None})
    from mner.runtime.bundle import Bundle  # noqa: PLC0415

    per_picture = int(Bundle.open(bundle, verify=False).image_settings.get("max_pixels", PHOTO_PIXELS))
    requests, described = {}, {}
    if "text" in kinds:
        body, pieces, windows = largest_text_request(bundle, config.max_post_pieces, config.max_request_pieces,
                                                     config.max_text_chars, config.max_posts)  # fmt: skip
        requests["text"] = body
        described["text"] = f"{json.loads(body)['posts'].__len__()} posts, {pieces} word-pieces, {windows} tagger windows"
    if "pictures" in kinds:
        body, count, pixels = largest_picture_request(config.max_request_pixels, per_picture, config.max_posts)
        requests["pictures"] = body
        described["pictures"] = f"{count} PNGs, {pixels / 1e6:.1f} MP in all, {len(body) / 1e3:.0f} KB body"
    env_path = os.environ.get("PYTHONPATH")
    if pythonpath:
        os.environ["PYTHONPATH"] = pythonpath
    port = free_port()
    try:
        server = start_server(bundle, port, *options, stderr=subprocess.DEVNULL)
    finally:
        if pythonpath:
            os.environ["PYTHONPATH"] = env_path or ""
    rows: list[str] = []
    ratios: dict[str, list[float]] = {kind: [] for kind in requests}
    try:
        asyncio.run(measure(port, 20, None, 60))  # warm the connection path
        for repeat in range(1, repeats + 1):
            for kind, body in requests.items():
                idle = asyncio.run(measure(port, short_requests, None, 120))
                loaded = asyncio.run(measure(port, short_requests, body, 120))
                ratio = loaded.p(99) / idle.p(99)
                ratios[kind].append(ratio)
                statuses = {**idle.statuses}
                for status, n in loaded.statuses.items():
                    statuses[status] = statuses.get(status, 0) + n
                rows.append(f"| {repeat} | {kind} | {idle.p(50):.1f} | {idle.p(99):.1f} | {loaded.p(50):.1f} | "
                            f"{loaded.p(99):.1f} | {max(loaded.short_ms):.1f} | **{ratio:.1f}x** | {len(loaded.large_s)} | "
                            f"{statistics.median(loaded.large_s):.2f} | {statuses} |")  # fmt: skip
                click.echo(rows[-1], err=True)
    finally:
        stop_server(server)
    lines = [
        f"Server: `mner-serve --engine {bundle.name} {' '.join(options)}`".rstrip() + " (127.0.0.1)",
        f"Short request: POST /v1/tag, {len(SHORT)} bytes of text, {short_requests} sent one after another per phase",
        *(f"Largest legal request ({kind}): {text}" for kind, text in described.items()),
        "",
        "| repeat | largest | idle p50 ms | idle p99 ms | loaded p50 ms | loaded p99 ms | loaded max ms | p99 ratio | "
        "largest sent | largest median s | statuses |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        *(f"{kind}: p99 ratio median {statistics.median(r):.1f}x, min {min(r):.1f}x, max {max(r):.1f}x over {len(r)} repeats"
          for kind, r in ratios.items()),
    ]  # fmt: skip
    text = "\n".join(lines) + "\n"
    click.echo(text)
    if output is not None:
        output.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
