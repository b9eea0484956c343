"""mner-serve under hostile input, as a real server process on 127.0.0.1 (the tiny bundle test_exported_bundle
exports): multipart bodies built to be slow to parse, answered 400 at once while /healthz stays quick.

Every request has a timeout and every loop a bound, so a server that stalls fails a test rather than hanging it.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from test_exported_bundle import exported  # noqa: F401 -- `exported` is a fixture

from mner.benchmarks.loadtest import Connection, free_port, start_server, stop_server
from mner.runtime.serve import ApiError, _multipart

MiB = 1 << 20
HEALTHZ_BOUND_S = 0.5  # what a test asserts on a shared two-core machine; the robustness report measures < 100 ms


@pytest.fixture(scope="module")
def server(exported):  # noqa: F811
    port = free_port()
    process = start_server(exported.bundle, port)
    yield port
    stop_server(process)


async def healthz_while(port: int, method: str, path: str, body: bytes, content_type: str, probes: int = 5):
    """Send one request and, while it is in flight, GET /healthz on another connection: (its reply, the
    slowest /healthz in seconds). At least ``probes`` probes, so a quick answer is measured too."""
    hostile = asyncio.ensure_future(Connection(port, timeout=20).request(method, path, body, content_type))
    await asyncio.sleep(0.05)  # the body is on its way (loopback): the server is reading or parsing it
    probe, worst, sent = Connection(port, timeout=20), 0.0, 0
    try:
        while sent < probes or not hostile.done():
            started = time.perf_counter()
            assert (await probe.request("GET", "/healthz")).status == 200
            worst, sent = max(worst, time.perf_counter() - started), sent + 1
            await asyncio.sleep(0.01)
    finally:
        await probe.close()
    return await hostile, worst


def _part(name: str, value: bytes, boundary: bytes = b"B", filename: str = "") -> bytes:
    filename = f'; filename="{filename}"' if filename else ""
    return b"--" + boundary + f'\r\nContent-Disposition: form-data; name="{name}"{filename}\r\n\r\n'.encode() + value + b"\r\n"


SLOW_MULTIPART = {
    # what: the body (built when the test runs). Each took the old hand-written parser seconds to minutes on the
    # event loop; python-multipart stops at its per-part header limits, and the delimiter check refuses the rest.
    "the issue's part header repeating content-disposition: 8,000 times (160 KB)":
        lambda: b"--B\r\n" + b"content-disposition:" * 8000 + b"\r\n\r\nx\r\n--B--\r\n",
    "the same header 750,000 times (15 MiB)": lambda: b"--B\r\n" + b"content-disposition:" * 750_000 + b"\r\n\r\nx\r\n--B--\r\n",
    "15 MiB of near-delimiters in a part": lambda: _part("image", b"\r\n--Bx" * (15 * MiB // 6), filename="p.jpg") + b"--B--\r\n",
    "15 MiB of padding after a delimiter":
        lambda: _part("text", b"Obama") + b"--B" + b" " * (15 * MiB) + b"\r\n" + _part("image", b"x")[5:] + b"--B--\r\n",
}  # fmt: skip


@pytest.mark.parametrize("what", SLOW_MULTIPART)
def test_a_multipart_body_built_to_be_slow_is_refused_at_once_and_healthz_stays_quick(server, what):
    body = SLOW_MULTIPART[what]()
    reply, worst = asyncio.run(healthz_while(server, "POST", "/v1/tag", body, "multipart/form-data; boundary=B"))
    assert reply.status == 400, reply.body[:200]
    assert reply.json()["error"]["kind"] == "malformed multipart"
    assert worst < HEALTHZ_BOUND_S, f"/healthz took {worst * 1000:.0f} ms while {what} was parsed"


def test_a_multipart_post_is_still_read_by_its_parts(server):
    body = _part("text", "Obama in Paris".encode()) + b"--B--\r\n"
    reply = asyncio.run(Connection(server).request("POST", "/v1/tag", body, "multipart/form-data; boundary=B"))
    assert reply.status == 200 and set(reply.json()) >= {"entities", "objects"}


# --------------------------------------------------------------------------- the multipart reader alone

CT = "multipart/form-data; boundary=B"


def test_multipart_fields_by_name():
    body = _part("text", b"Obama") + _part("image", b"\xff\xd8 bytes\r\n--X", filename="p.jpg") + b"--B--\r\n"
    assert _multipart(body, CT) == {"text": b"Obama", "image": b"\xff\xd8 bytes\r\n--X"}
    assert _multipart(body, 'multipart/form-data; boundary="B"') == {"text": b"Obama", "image": b"\xff\xd8 bytes\r\n--X"}
    padded = _part("text", b"a") + b"--B  \t\r\n" + _part("image", b"x")[5:] + b"--B--\r\n"  # RFC 2046 transport padding
    assert _multipart(padded, CT) == {"text": b"a", "image": b"x"}


BAD_MULTIPART = [
    # (what, body, content type, status, message fragment)
    ("no boundary", b"--B--\r\n", "multipart/form-data", 400, "without a boundary parameter"),
    ("boundary over 256 bytes", b"--B--\r\n", "multipart/form-data; boundary=" + "x" * 300, 400, "Boundary length 300"),
    ("not closed", _part("text", b"a"), CT, 400, "not closed by its boundary"),
    ("empty body", b"", CT, 400, "not closed by its boundary"),
    ("no Content-Disposition name", b"--B\r\nX-Thing: y\r\n\r\na\r\n--B--\r\n", CT, 400, "no Content-Disposition name"),
    ("a header over 4 KiB", b"--B\r\nContent-Disposition: form-data; name=\"" + b"t" * 5000 + b"\"\r\n\r\na\r\n--B--\r\n", CT,
     400, "Maximum header size exceeded"),
    ("nine headers in a part", b"--B\r\n" + b"X-A: b\r\n" * 9 + b"\r\na\r\n--B--\r\n", CT, 400, "Maximum header count exceeded"),
    ("text like the delimiter inside a part", _part("text", b"a\r\n--Bb") + b"--B--\r\n", CT, 400, "followed by neither"),
    ("four parts", b"".join(_part(name, b"a") for name in ("text", "image", "x", "y")) + b"--B--\r\n", CT, 400,
     "occurs 4 times"),
    ("65 spaces after a delimiter", _part("text", b"a") + b"--B" + b" " * 65 + b"\r\n" + _part("image", b"x")[5:] + b"--B--\r\n",
     CT, 400, "followed by neither"),
    ("an unknown field", _part("picture", b"x") + b"--B--\r\n", CT, 422, "unknown field 'picture'"),
    ("text twice", _part("text", b"a") + _part("text", b"b") + b"--B--\r\n", CT, 422, "'text' is given twice"),
]  # fmt: skip


@pytest.mark.parametrize("what, body, content_type, status, message", BAD_MULTIPART, ids=[b[0] for b in BAD_MULTIPART])
def test_multipart_refusals(what, body, content_type, status, message):
    with pytest.raises(ApiError, match=message) as refused:
        _multipart(body, content_type)
    assert refused.value.status == status
