"""Load test for mner-serve on loopback: throughput and latency percentiles per batching setting.

    python -m mner.benchmarks.loadtest --engine BUNDLE --clients 64 --requests 2000 \\
        --setting 1:0 --setting 8:2 --setting 32:5

For each ``max_batch:max_wait_ms`` setting a server process is started on 127.0.0.1
(a free port), warmed up, and driven by ``--clients`` concurrent keep-alive clients
each sending ``--requests`` POST /v1/tag requests (or until ``--max-seconds``);
then it gets SIGTERM. Reported per setting: requests answered, errors, throughput,
p50/p95/p99 latency and the mean batch size from the server's /metrics.

The client is a minimal HTTP/1.1 keep-alive client on asyncio streams, so the
measurement is the server's time rather than an HTTP library's (there are two cores).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

HOST = "127.0.0.1"
POSTS = (
    "Kawhi Leonard scores 30 as the Raptors beat the Celtics in Toronto",
    "Great night at Madison Square Garden with Taylor Swift",
    "RT @user : Obama meets Merkel in Berlin to talk about NATO",
    "Nice day in Paris",
)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


class Connection:
    """One keep-alive HTTP/1.1 connection to HOST:port."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.port, self.timeout = port, timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"", content_type: str = "application/json",
                      headers: dict[str, str] | None = None) -> Reply:  # fmt: skip
        if self.writer is None:
            self.reader, self.writer = await asyncio.wait_for(asyncio.open_connection(HOST, self.port), self.timeout)
        head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\nContent-Length: {len(body)}\r\n"
        if body:
            head += f"Content-Type: {content_type}\r\n"
        for key, value in (headers or {}).items():
            head += f"{key}: {value}\r\n"
        self.writer.write(head.encode("latin-1") + b"\r\n" + body)
        try:
            return await asyncio.wait_for(self._reply(), self.timeout)
        except BaseException:
            await self.close()
            raise

    async def _reply(self) -> Reply:
        assert self.reader is not None
        status_line = await self.reader.readuntil(b"\r\n")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            key, _, value = line.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return Reply(status, headers, body)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def post_body(text: str, image: bytes | None = None) -> bytes:
    value = {"text": text}
    if image is not None:
        value["image_base64"] = base64.b64encode(image).decode("ascii")
    return json.dumps(value).encode("utf-8")


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)  # seconds, answered requests
    statuses: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # connection errors, wrong answers
    examples: dict[int, Reply] = field(default_factory=dict)  # the first reply of each status
    seconds: float = 0.0

    @property
    def answered(self) -> int:
        return len(self.latencies)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")


async def run_load(port: int, bodies: list[bytes], *, clients: int, requests: int, max_seconds: float,
                   expected: list | None = None, path: str = "/v1/tag") -> LoadResult:  # fmt: skip
    """``clients`` connections each send up to ``requests`` bodies (cycling) until ``max_seconds``;
    with ``expected``, each 200's JSON must equal ``expected[i]`` for ``bodies[i]``."""
    result = LoadResult()
    deadline = time.monotonic() + max_seconds

    async def client(number: int) -> None:
        connection = Connection(port)
        try:
            for k in range(requests):
                if time.monotonic() > deadline:
                    break
                i = (number * requests + k) % len(bodies)
                started = time.perf_counter()
                try:
                    reply = await connection.request("POST", path, bodies[i])
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as error:
                    result.failures.append(f"client {number} request {k}: {type(error).__name__}: {error}")
                    break
                result.latencies.append(time.perf_counter() - started)
                result.statuses[reply.status] = result.statuses.get(reply.status, 0) + 1
                result.examples.setdefault(reply.status, reply)
                if reply.status == 200 and expected is not None and reply.json() != expected[i]:
                    result.failures.append(f"client {number} request {k}: {reply.json()} != {expected[i]}")
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(clients)))
    result.seconds = time.perf_counter() - started
    return result


# --------------------------------------------------------------------------- a server process


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(bundle: str | os.PathLike, port: int, *options: str, stderr=subprocess.PIPE) -> subprocess.Popen:
    """mner-serve in a child process (same interpreter and environment), returned once /readyz says ready."""
    command = [sys.executable, "-c", "from mner.runtime.serve_cli import serve_command; serve_command()",
               "--engine", str(bundle), "--port", str(port), *options]  # fmt: skip
    process = subprocess.Popen(command, env=dict(os.environ), stderr=stderr, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mner-serve exited with {process.returncode}: {process.stderr.read().decode() if process.stderr else ''}")
        try:
            reply = asyncio.run(Connection(port, timeout=2).request("GET", "/readyz"))
            if reply.status == 200:
                return process
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("mner-serve did not become ready within 60 s")


def stop_server(process: subprocess.Popen, timeout: float = 60) -> str:
    """SIGTERM, wait, and return its stderr."""
    process.send_signal(signal.SIGTERM)
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        raise
    return stderr.decode() if stderr else ""


def scrape(port: int) -> dict[str, float]:
    """The server's /metrics as {sample name with labels: value}."""
    text = asyncio.run(Connection(port).request("GET", "/metrics")).body.decode()
    samples = {}
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) (\S+)", line)
        if match:
            samples[match.group(1)] = float(match.group(2))
    return samples


# --------------------------------------------------------------------------- the benchmark


@click.command()
@click.option("--engine", "bundle", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--clients", type=click.IntRange(1, 512), default=64, show_default=True)
@click.option("--requests", type=click.IntRange(1, 100_000), default=2000, show_default=True, help="Per client.")
@click.option("--max-seconds", type=click.FloatRange(1, 3600), default=300, show_default=True, help="Per setting.")
@click.option("--setting", "settings", multiple=True, default=("1:0", "8:2", "32:5"), show_default=True,
              help="max_batch:max_wait_ms, repeatable.")
@click.option("--max-queue", type=click.IntRange(min=1), default=4096, show_default=True)
def main(bundle, clients, requests, max_seconds, settings, max_queue) -> None:
    """Throughput and p50/p95/p99 latency of mner-serve for a few batching settings (loopback only)."""
    bodies = [post_body(text) for text in POSTS]
    rows = []
    for setting in settings:
        max_batch, _, max_wait_ms = setting.partition(":")
        port = free_port()
        server = start_server(bundle, port, "--max-batch", max_batch, "--max-wait-ms", max_wait_ms,
                              "--max-queue", str(max_queue), stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            result = asyncio.run(run_load(port, bodies, clients=clients, requests=requests, max_seconds=max_seconds))
            samples = scrape(port)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
        batches = samples.get("mner_batch_size_count", 0)
        mean_batch = samples.get("mner_batch_size_sum", 0) / batches if batches else float("nan")
        others = {s: n for s, n in result.statuses.items() if s != 200}
        rows.append(f"| {max_batch} | {max_wait_ms} | {result.answered} | {others or '-'} | {len(result.failures)} | "
                    f"{result.seconds:.1f} | {result.answered / result.seconds:.0f} | {result.percentile(50):.1f} | "
                    f"{result.percentile(95):.1f} | {result.percentile(99):.1f} | {mean_batch:.1f} |")  # fmt: skip
        click.echo(rows[-1], err=True)
    click.echo(f"{clients} clients x {requests} requests (POST /v1/tag, text only), at most {max_seconds:.0f} s per setting\n")
    click.echo("| max-batch | max-wait-ms | answered | non-200 | failures | seconds | req/s | p50 ms | p95 ms | p99 ms | mean batch |")
    click.echo("|---|---|---|---|---|---|---|---|---|---|---|")
    click.echo("\n".join(rows))


if __name__ == "__main__":
    main()
