"""SIGTERM on a real mner-serve process (127.0.0.1, the tiny bundle test_exported_bundle exports) under load: the
server drains where a load balancer can see it. Before, uvicorn stopped listening at the signal (/healthz and
/readyz unreachable) and cut keep-alive connections without a Connection: close, so a client's next request on
one was reset."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time

from test_exported_bundle import exported  # noqa: F401 -- `exported` is a fixture

from mner.benchmarks.loadtest import Connection, free_port, post_body, start_server

TEXTS = ["Kawhi Leonard scores 30 in Toronto", "Obama meets Merkel in Berlin", "Nice day in Paris"]
DRAIN_S = 3.0
TAKEN_OUT_S = 0.5  # how long after /readyz first says 503 the balancer stops sending (its failure threshold)


def test_after_sigterm_the_server_drains_where_a_load_balancer_can_see_it(exported):  # noqa: F811
    port = free_port()
    process = start_server(exported.bundle, port, "--max-batch", "8", "--max-wait-ms", "2", "--drain-s", str(DRAIN_S))
    bodies = [post_body(text) for text in TEXTS]
    clock: dict[str, float] = {}  # when SIGTERM was sent, when the balancer took the server out of rotation
    replies: list[tuple[float, int, str]] = []  # per tagging request: when it was sent, status, Connection header
    failures: list[str] = []
    probes: list[tuple[str, float, int, dict]] = []  # path, when, status, body

    async def client(number: int) -> None:
        """A keep-alive client behind the balancer: it sends until the balancer takes the server out of rotation."""
        connection = Connection(port, timeout=30)
        try:
            for k in range(10_000):
                if "out" in clock:
                    break
                sent = time.monotonic()
                try:
                    reply = await connection.request("POST", "/v1/tag", bodies[(number + k) % len(bodies)])
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as error:
                    failures.append(f"client {number} request {k}: {type(error).__name__}: {error}")
                    break
                replies.append((sent, reply.status, reply.headers.get("connection", "")))
        finally:
            await connection.close()

    async def balancer() -> None:
        """Polls /readyz and /healthz on fresh connections, as a load balancer does, and takes the server out of
        rotation TAKEN_OUT_S after /readyz first says 503."""
        noticed = None
        while noticed is None or time.monotonic() < noticed + TAKEN_OUT_S:
            for path in ("/readyz", "/healthz"):
                sent = time.monotonic()
                reply = await Connection(port, timeout=10).request("GET", path)
                probes.append((path, sent, reply.status, reply.json()))
                if path == "/readyz" and reply.status == 503 and noticed is None:
                    noticed = time.monotonic()
            await asyncio.sleep(0.1)
        clock["out"] = time.monotonic()

    async def idle_keep_alive() -> tuple:
        """A client idle on its keep-alive connection when SIGTERM comes, which sends its next request then."""
        connection = Connection(port, timeout=30)
        first = await connection.request("POST", "/v1/tag", bodies[0])
        while "sigterm" not in clock:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        try:
            return first, await connection.request("POST", "/v1/tag", bodies[1])
        finally:
            await connection.close()

    async def scenario():
        load = [asyncio.ensure_future(client(n)) for n in range(16)]
        idle = asyncio.ensure_future(idle_keep_alive())
        watcher = asyncio.ensure_future(balancer())
        await asyncio.sleep(1.5)
        clock["sigterm"] = time.monotonic()
        os.kill(process.pid, signal.SIGTERM)
        await asyncio.gather(*load, watcher)
        return await idle

    try:
        first, second = asyncio.run(scenario())
        _, stderr = process.communicate(timeout=DRAIN_S + 60)
        exited = time.monotonic()
    finally:
        if process.poll() is None:
            process.kill()
    log = stderr.decode()

    assert failures == [], failures[:3]  # no reset, no request left unanswered
    assert {status for _, status, _ in replies} == {200}
    after = [connection for sent, _, connection in replies if sent > clock["sigterm"] + 0.05]
    assert after and all(connection == "close" for connection in after), after
    assert all(connection != "close" for sent, _, connection in replies if sent < clock["sigterm"] - 0.5)

    # the balancer saw the drain: /readyz 503 "draining", /healthz still 200
    during = [(path, status, body) for path, sent, status, body in probes if sent > clock["sigterm"] + 0.05]
    readyz = [(status, body) for path, status, body in during if path == "/readyz"]
    assert readyz and all(status == 503 and body["status"] == "draining" for status, body in readyz), readyz
    assert readyz[0][1]["error"]["kind"] == "draining" and readyz[0][1]["error"]["message"]
    assert all(status == 200 for path, status, _ in during if path == "/healthz")
    assert clock["out"] - clock["sigterm"] < TAKEN_OUT_S + 2

    # the idle keep-alive client's next request is answered, and told to close
    assert first.status == second.status == 200 and second.headers["connection"] == "close"

    # the server listened through the drain, answered all it accepted, then exited by the signal
    assert DRAIN_S - 0.2 < exited - clock["sigterm"] < DRAIN_S + 30, log
    assert process.returncode == -signal.SIGTERM, log
    match = re.search(r"(\d+) tagging requests accepted, (\d+) answered", log)
    assert match and int(match.group(1)) == int(match.group(2)) == len(replies) + 2, log
    assert "draining for 3.0 s" in log
