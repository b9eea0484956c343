"""mner-serve under hostile input, as a real server process on 127.0.0.1 (the tiny bundle test_exported_bundle
exports): multipart bodies built to be slow to parse are answered 400 at once while /healthz stays quick; JSON
past its limits is a 400 on a connection that stays open; slow headers, slow bodies and idle keep-alive
connections are timed out, connections past the limit refused; every status has the {"error": {...}} shape, and
a batch's bad post is its own error among the others' results; after SIGTERM the server drains where a load
balancer can see it. (One module, so that the bundle is exported once for all of them.)

Every request has a timeout and every loop a bound, so a server that stalls fails a test rather than hanging it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import threading
import time

import pytest
import uvicorn
from test_exported_bundle import exported  # noqa: F401 -- `exported` is a fixture
from test_pipeline import fake_pipeline

from mner.benchmarks.loadtest import HOST, Connection, free_port, post_body, scrape, start_server, stop_server
from mner.runtime.serve import _BASE64_SLICE, ApiError, _decode_base64_in_slices, _multipart, create_app
from mner.runtime.serve_batcher import ServeConfig
from mner.runtime.serve_limits import HttpLimits
from mner.runtime.tagfile import decode_base64

MiB = 1 << 20
HEALTHZ_BOUND_S = 0.5  # what a test asserts on a shared two-core machine; the robustness report measures < 100 ms


# Short timeouts so that each is seen within a test; the body timeout leaves room to send 15 MiB on loopback.
HEADER_TIMEOUT_S, BODY_TIMEOUT_S, KEEP_ALIVE_S, MAX_CONNECTIONS = 1.0, 3.0, 1.5, 64


@pytest.fixture(scope="module")
def server(exported):  # noqa: F811
    port = free_port()
    # --drain-s 0: the drain is test_after_sigterm_the_server_drains_where_a_load_balancer_can_see_it's own server;
    # this one is stopped at once at the module's end (the default drain would add 5 idle seconds)
    process = start_server(exported.bundle, port, "--header-timeout-s", str(HEADER_TIMEOUT_S), "--body-timeout-s",
                           str(BODY_TIMEOUT_S), "--keep-alive-s", str(KEEP_ALIVE_S), "--max-connections",
                           str(MAX_CONNECTIONS), "--max-posts", "8", "--drain-s", "0")  # fmt: skip
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


# --------------------------------------------------------------------------- JSON past its limits


JSON_REFUSED = {
    # what: (path, body, error kind). Each was an unhandled 500 in plain text that reset the keep-alive connection.
    "an integer of 5,000 digits": ("/v1/tag", b'{"text": "a", "n": 1' + b"0" * 4999 + b"}", "integer too long"),
    "100 levels of nesting": ("/v1/tag", b'{"text": ' + b"[" * 100 + b"]" * 100 + b"}", "JSON too deep"),
    "5,000 levels of nesting": ("/v1/tag", b'{"text": ' + b"[" * 5000 + b"]" * 5000 + b"}", "too many JSON values"),
    "100,000 levels of nesting": ("/v1/tag", b"[" * 100_000 + b"]" * 100_000, "too many JSON values"),
    "5,000 levels inside a batch": ("/v1/tag/batch", b'{"posts": [{"text": "a"}, ' + b"[" * 5000 + b"]" * 5000 + b"]}",
                                    "JSON too deep"),
    "NaN": ("/v1/tag", b'{"text": NaN}', "not a JSON number"),
    "1e999": ("/v1/tag", b'{"text": "a", "x": 1e999}', "number out of range"),
    "a million empty arrays (the C parser would hold the GIL for seconds)":
        ("/v1/tag/batch", b'{"posts": [' + b"[]," * 1_000_000 + b"[]]}", "too many JSON values"),
}  # fmt: skip


@pytest.mark.parametrize("what", JSON_REFUSED)
def test_json_past_its_limits_is_a_400_and_the_connection_stays_open(server, what):
    path, body, kind = JSON_REFUSED[what]

    async def bad_then_good():
        connection = Connection(server, timeout=20)
        try:
            return await connection.request("POST", path, body), await connection.request("GET", "/healthz")
        finally:
            await connection.close()

    reply, after = asyncio.run(bad_then_good())
    assert reply.status == 400, reply.body[:300]
    assert reply.json()["error"]["kind"] == kind and reply.headers["x-error-kind"] == kind
    assert reply.headers.get("connection") != "close"
    assert after.status == 200  # on the same keep-alive connection


def test_the_json_values_bound_leaves_room_for_posts_of_commas(server):
    text = ",[{" * 1300  # 3,900 characters, each a comma or a bracket and a word-piece: within the post's budget
    reply = asyncio.run(Connection(server).request("POST", "/v1/tag", post_body(text)))
    assert reply.status == 200, reply.body[:300]
    batch = json.dumps({"posts": [{"text": text}] * 4}).encode()
    reply = asyncio.run(Connection(server, timeout=60).request("POST", "/v1/tag/batch", batch))
    assert reply.status == 200 and len(reply.json()["results"]) == 4, reply.body[:300]


# --------------------------------------------------------------------------- one error shape


def test_404_and_405_have_the_error_shape(server):
    reply = asyncio.run(Connection(server).request("GET", "/v2/tag"))
    assert reply.status == 404 and reply.json()["error"]["kind"] == "not found"
    assert "/v2/tag" in reply.json()["error"]["message"] and set(reply.json()) == {"error"}
    for method, path in (("GET", "/v1/tag"), ("DELETE", "/v1/tag/batch"), ("POST", "/healthz")):
        reply = asyncio.run(Connection(server).request(method, path))
        assert reply.status == 405, (method, path, reply.body)
        assert reply.json()["error"]["kind"] == "method not allowed" and method in reply.json()["error"]["message"]
        assert reply.headers["allow"]


def test_a_batch_answers_each_bad_post_in_its_place(server):
    good = "Obama meets Merkel in Berlin"
    posts = [{"text": good}, {"text": 3}, {"text": "bad \ud800 text"}, {"text": "   "}, {"text": good, "picture": "x"},
             {"text": good, "image_base64": "abc$"}, "not an object", {"text": good}]  # fmt: skip
    before = scrape(server)
    reply = asyncio.run(Connection(server).request("POST", "/v1/tag/batch", json.dumps({"posts": posts}).encode()))
    assert reply.status == 200, reply.body[:300]
    results = reply.json()["results"]
    alone = asyncio.run(Connection(server).request("POST", "/v1/tag", post_body(good))).json()
    assert [set(r) for r in results] == [{"entities", "objects"}, {"error"}, {"error"}, {"error"}, {"error"}, {"error"},
                                         {"error"}, {"entities", "objects"}]  # fmt: skip
    for got in (results[0], results[7]):
        assert [{k: v for k, v in e.items() if k != "score"} for e in got["entities"]] == \
               [{k: v for k, v in e.items() if k != "score"} for e in alone["entities"]]  # fmt: skip
    kinds = [r["error"]["kind"] for r in results[1:7]]
    assert kinds == ["invalid request", "bad text", "empty text", "invalid request", "invalid base64", "invalid request"]
    assert results[1]["error"]["message"] == "posts[1].text must be a string, got int"
    assert results[2]["error"]["message"].startswith("posts[2].text has a lone surrogate U+D800 at character 4")
    after = scrape(server)
    assert after['mner_errors_total{kind="invalid request"}'] - before.get('mner_errors_total{kind="invalid request"}', 0) == 3

    only_bad = asyncio.run(Connection(server).request("POST", "/v1/tag/batch", json.dumps({"posts": [{"text": 1}]}).encode()))
    assert only_bad.status == 200 and only_bad.json()["results"][0]["error"]["kind"] == "invalid request"


@pytest.mark.parametrize("body, status, kind", [
    (b'{"posts": {"text": "a"}}', 422, "invalid request"),  # not a list
    (b'{"posts": []}', 422, "invalid request"),
    (json.dumps({"posts": [{"text": "a"}] * 9}).encode(), 422, "too many posts"),
    (b'{"posts": [', 400, "malformed JSON"),
])  # fmt: skip
def test_a_batch_refused_as_a_whole_stays_4xx(server, body, status, kind):
    reply = asyncio.run(Connection(server).request("POST", "/v1/tag/batch", body))
    assert reply.status == status and reply.json()["error"]["kind"] == kind


@pytest.fixture()
def app_port():
    """create_app over a fake pipeline, with a route that raises, under uvicorn in a thread of this process."""
    app = create_app(fake_pipeline(), ServeConfig(max_wait_ms=0))

    @app.get("/raise")
    async def fail() -> None:
        raise RuntimeError("a bug in a handler")

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)  # no signal handlers off the main thread
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start within 30 s"
    while asyncio.run(Connection(port).request("GET", "/readyz")).status != 200 and time.monotonic() < deadline:
        time.sleep(0.05)  # warm-up
    yield port
    server.should_exit = True
    thread.join(30)


def test_an_unhandled_error_is_a_json_500_on_a_connection_kept_open(app_port):
    async def fail_then_tag():
        connection = Connection(app_port)
        try:
            return await connection.request("GET", "/raise"), await connection.request("POST", "/v1/tag", post_body("Paris"))
        finally:
            await connection.close()

    failed, after = asyncio.run(fail_then_tag())
    assert failed.status == 500 and failed.headers["content-type"] == "application/json"
    assert failed.json() == {"error": {"kind": "internal", "message": "the server failed on this request (the error is in its log)"}}
    assert failed.headers.get("connection") != "close" and after.status == 200


# --------------------------------------------------------------------------- connections: timeouts and a limit


async def _read_all(reader: asyncio.StreamReader, within: float) -> tuple[bytes, float]:
    """What the server sends until it closes the connection, and when it closed (seconds from now)."""
    started = time.perf_counter()
    data = await asyncio.wait_for(reader.read(), within)
    return data, time.perf_counter() - started


def test_slow_headers_are_timed_out_408_and_closed(server):
    """200 connections trickle a request line (slowloris): each is closed after the header timeout, where the old
    server held every one for as long as the client liked. (A client still writing when the server closes may see
    a reset rather than the 408: its unread bytes make the kernel send RST.)"""

    async def slowloris(count: int = 200):
        async def one():
            reader, writer = await asyncio.open_connection(HOST, server)
            started = time.perf_counter()

            async def trickle():
                for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
                    writer.write(bytes([byte]))
                    await asyncio.sleep(0.1)

            dripping = asyncio.ensure_future(trickle())
            try:
                data = await asyncio.wait_for(reader.read(), HEADER_TIMEOUT_S + 10)
            except ConnectionResetError:
                data = b""
            finally:
                dripping.cancel()
                writer.close()
            return data, time.perf_counter() - started

        return await asyncio.gather(*(one() for _ in range(count)))

    results = asyncio.run(slowloris())
    assert max(seconds for _, seconds in results) < HEADER_TIMEOUT_S + 3
    for data, _ in results:
        if data:
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith((b"HTTP/1.1 408 ", b"HTTP/1.1 503 ")), data[:200]
            assert json.loads(body)["error"]["kind"] in ("header timeout", "too many connections")
    assert asyncio.run(Connection(server).request("GET", "/healthz")).status == 200


def test_headers_that_stop_coming_get_a_json_408(server):
    async def half_a_request():
        reader, writer = await asyncio.open_connection(HOST, server)
        writer.write(b"POST /v1/tag HTTP/1.1\r\nHost: x\r\n")
        try:
            return await _read_all(reader, HEADER_TIMEOUT_S + 10)
        finally:
            writer.close()

    data, seconds = asyncio.run(half_a_request())
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ") and b"connection: close" in head
    assert json.loads(body)["error"] == {"kind": "header timeout", "message": "the request line and headers did not "
                                         f"arrive within {HEADER_TIMEOUT_S} s", "limit": "header_timeout_s",
                                         "value": HEADER_TIMEOUT_S}  # fmt: skip
    assert HEADER_TIMEOUT_S - 0.3 < seconds < HEADER_TIMEOUT_S + 3


def test_a_body_that_stops_coming_is_timed_out_408_and_closed(server):
    async def short_body():
        reader, writer = await asyncio.open_connection(HOST, server)
        writer.write(b"POST /v1/tag HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                     + b'{"text": "' + b"a" * 30)  # 40 bytes of the 1,000 declared
        try:
            return await _read_all(reader, BODY_TIMEOUT_S + 10)
        finally:
            writer.close()

    data, seconds = asyncio.run(short_body())
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ") and b"connection: close" in head.lower()
    assert json.loads(body)["error"] == {"kind": "body timeout", "message": "the request body did not arrive within "
                                         f"{BODY_TIMEOUT_S} s (40 of 1000 bytes did)", "limit": "body_timeout_s",
                                         "value": BODY_TIMEOUT_S}  # fmt: skip
    assert BODY_TIMEOUT_S - 0.5 < seconds < BODY_TIMEOUT_S + 3


def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(server):
    async def idle():
        connection = Connection(server)
        assert (await connection.request("GET", "/healthz")).status == 200
        try:
            return await _read_all(connection.reader, KEEP_ALIVE_S + 10)
        finally:
            await connection.close()

    data, seconds = asyncio.run(idle())
    assert data == b"" and KEEP_ALIVE_S - 0.5 < seconds < KEEP_ALIVE_S + 3


def test_a_connection_past_the_limit_gets_503_and_is_closed(server):
    async def crowd():
        held = [await asyncio.open_connection(HOST, server) for _ in range(MAX_CONNECTIONS + 4)]
        try:
            return await Connection(server).request("GET", "/healthz")
        finally:
            for _, writer in held:
                writer.close()

    refused = asyncio.run(crowd())
    assert refused.status == 503 and refused.headers["connection"] == "close" and refused.headers["retry-after"] == "1"
    assert refused.json()["error"] == {"kind": "too many connections", "message": refused.json()["error"]["message"],
                                       "limit": "max_connections", "value": MAX_CONNECTIONS}  # fmt: skip
    time.sleep(0.2)  # the held connections are gone
    assert asyncio.run(Connection(server).request("GET", "/healthz")).status == 200


def test_malformed_http_is_a_json_400(server):
    async def garbage():
        reader, writer = await asyncio.open_connection(HOST, server)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        try:
            return await _read_all(reader, 10)
        finally:
            writer.close()

    data, _ = asyncio.run(garbage())
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and json.loads(body)["error"]["kind"] == "malformed HTTP"


def test_http_limits_refuse_nonsense():
    with pytest.raises(ValueError, match="header_timeout_s must be > 0"):
        HttpLimits(header_timeout_s=0)
    with pytest.raises(ValueError, match="body_timeout_s must be > 0"):
        HttpLimits(body_timeout_s=-1)
    with pytest.raises(ValueError, match="keep_alive_s must be > 0"):
        HttpLimits(keep_alive_s=0)
    with pytest.raises(ValueError, match="max_connections must be a positive int"):
        HttpLimits(max_connections=0)
    with pytest.raises(ValueError, match="drain_s must be >= 0"):
        HttpLimits(drain_s=-0.5)


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


# --------------------------------------------------------------------------- a large base64 picture, in slices


def test_a_large_base64_payload_decodes_in_slices_as_in_one_piece():
    data = bytes(range(256)) * (3 * _BASE64_SLICE // 256 + 7)  # three slices and a bit
    plain = base64.b64encode(data).decode()
    assert _decode_base64_in_slices(plain) == (data, None) == decode_base64(plain)
    wrapped = "\n".join(plain[i : i + 76] for i in range(0, len(plain), 76))  # MIME lines
    assert _decode_base64_in_slices(wrapped) == (data, None)
    urlsafe = base64.urlsafe_b64encode(data).decode().rstrip("=")
    assert _decode_base64_in_slices(urlsafe) == (data, None)


@pytest.mark.parametrize("what, change, problem", [
    ("both alphabets", lambda text: text[:-8] + "-_" + text[-6:], "mixes the standard (+/) and URL-safe (-_) alphabets"),
    ("padding inside", lambda text: text[:1000] + "=" + text[1001:], "unexpected character '=' before the end"),
    ("a bad character in a later slice", lambda text: text[:-100] + "!" + text[-99:], "unexpected character '!'"),
])  # fmt: skip
def test_a_large_base64_payload_is_refused_as_in_one_piece(what, change, problem):
    text = base64.b64encode(b"\xfb\xff" * (2 * _BASE64_SLICE)).decode()  # '+' and '/' throughout
    data, refusal = _decode_base64_in_slices(change(text))
    assert data is None and problem in refusal


# --------------------------------------------------------------------------- SIGTERM: a drain a load balancer can see
# Before, uvicorn stopped listening at the signal (/healthz and /readyz unreachable) and cut keep-alive connections
# without a Connection: close, so a client's next request on one was reset.

DRAIN_TEXTS = ["Kawhi Leonard scores 30 in Toronto", "Obama meets Merkel in Berlin", "Nice day in Paris"]
DRAIN_S = 3.0
TAKEN_OUT_S = 0.5  # how long after /readyz first says 503 the balancer stops sending (its failure threshold)


def test_after_sigterm_the_server_drains_where_a_load_balancer_can_see_it(exported):  # noqa: F811
    port = free_port()
    process = start_server(exported.bundle, port, "--max-batch", "8", "--max-wait-ms", "2", "--drain-s", str(DRAIN_S))
    bodies = [post_body(text) for text in DRAIN_TEXTS]
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
