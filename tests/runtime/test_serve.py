"""mner-serve as a real server process on 127.0.0.1, on the tiny bundle test_exported_bundle exports.

Each server is started with ``sys.executable`` and this process's environment, on a
free port; every request loop is bounded in count and time. The issue's full load
(64 clients x 2,000 requests) takes minutes on two cores: here 64 clients send 10
requests each, and benchmarks/results/serve.md records the full run.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal

import pytest
from click.testing import CliRunner
from test_exported_bundle import exported, jpeg, png_header_claiming  # noqa: F401 -- `exported` is a fixture

from mner.benchmarks.loadtest import Connection, free_port, post_body, run_load, scrape, start_server, stop_server
from mner.runtime.cli import tag_command
from mner.runtime.serve_batcher import ServeConfig

LIMITS = ("--max-body-bytes", "200000", "--max-text-chars", "500", "--max-posts", "8")
TEXTS = ["Kawhi Leonard scores 30 in Toronto", "Obama meets Merkel in Berlin", "Nice day in Paris",
         "RT @user : Taylor Swift at Madison Square Garden tonight"]  # fmt: skip


def request(port: int, method: str, path: str, body: bytes = b"", content_type: str = "application/json"):
    return asyncio.run(Connection(port).request(method, path, body, content_type))


@pytest.fixture(scope="module")
def server(exported):  # noqa: F811
    port = free_port()
    # --drain-s 0: stopped at once at the module's end; the default 5 s drain would only add 5 idle seconds (the
    # SIGTERM test below keeps the default, test_serve_hostile.py tests the drain)
    process = start_server(exported.bundle, port, "--max-batch", "16", "--max-wait-ms", "5", "--drain-s", "0", *LIMITS)
    yield port
    stop_server(process)


@pytest.fixture(scope="module")
def posts():
    """(text, picture or None) pairs: pictures of two sizes, and posts without one."""
    return [(text, jpeg(60 + 20 * i, 90, seed=i) if i % 2 == 0 else None) for i, text in enumerate(TEXTS * 2)]


def multipart(fields: dict[str, bytes], boundary: str = "b0undary") -> tuple[bytes, str]:
    body = b""
    for name, value in fields.items():
        filename = '; filename="p.jpg"' if name == "image" else ""
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{filename}\r\n\r\n'.encode() + value + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_health_readiness_metrics_and_docs(server):
    assert request(server, "GET", "/healthz").json() == {"status": "ok"}
    assert request(server, "GET", "/readyz").json() == {"status": "ready"}
    paths = request(server, "GET", "/openapi.json").json()["paths"]
    assert {"/v1/tag", "/v1/tag/batch", "/healthz", "/readyz", "/metrics"} <= set(paths)
    assert request(server, "GET", "/docs").status == 200
    assert "mner_queue_depth" in scrape(server)


def test_tags_equal_mner_tag(server, posts, tmp_path, exported):  # noqa: F811
    lines = [{"id": i, "text": text, **({"image_base64": base64.b64encode(image).decode()} if image else {})}
             for i, (text, image) in enumerate(posts)]  # fmt: skip
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = CliRunner().invoke(tag_command, ["--engine", str(exported.bundle), "--input", str(tmp_path / "in.jsonl"),
                                              "--output", str(tmp_path / "out.jsonl"), "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    expected = []
    for line in (tmp_path / "out.jsonl").read_text().splitlines():
        record = json.loads(line)
        del record["id"], record["line"]
        expected.append(record)
    assert any(record["objects"] for record in expected) and all(record["entities"] for record in expected)

    singles = [request(server, "POST", "/v1/tag", post_body(text, image)) for text, image in posts]
    assert [reply.status for reply in singles] == [200] * len(posts)
    assert_same_tags([reply.json() for reply in singles], expected)

    batch = {"posts": [json.loads(post_body(text, image)) for text, image in posts]}
    reply = request(server, "POST", "/v1/tag/batch", json.dumps(batch).encode())
    assert reply.status == 200
    assert_same_tags(reply.json()["results"], expected)

    text, image = posts[0]
    reply = request(server, "POST", "/v1/tag", *multipart({"text": text.encode(), "image": image}))
    assert reply.status == 200
    assert_same_tags([reply.json()], expected[:1])


def assert_same_tags(got: list[dict], expected: list[dict]) -> None:
    """Same entities and objects; scores to 1e-3 (a post's batch neighbours change float sums in the last bits)."""
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g["objects"] == e["objects"]
        assert [{k: v for k, v in x.items() if k != "score"} for x in g["entities"]] == \
               [{k: v for k, v in x.items() if k != "score"} for x in e["entities"]]  # fmt: skip
        assert [x["score"] for x in g["entities"]] == pytest.approx([x["score"] for x in e["entities"]], abs=1e-3)


def test_concurrent_clients_are_answered_correctly_and_batched(server, posts):
    bodies = [post_body(text, image) for text, image in posts]
    expected = [request(server, "POST", "/v1/tag", body).json() for body in bodies]
    before = scrape(server)
    result = asyncio.run(run_load(server, bodies, clients=64, requests=10, max_seconds=60, expected=expected))
    assert result.failures == []
    assert result.statuses == {200: 640}
    after = scrape(server)
    batches = after["mner_batch_size_count"] - before["mner_batch_size_count"]
    single = after['mner_batch_size_bucket{le="1.0"}'] - before['mner_batch_size_bucket{le="1.0"}']
    assert batches < 640 and single < batches, "under load some batches must hold more than one post"
    assert after['mner_requests_total{endpoint="/v1/tag",status="200"}'] >= 640


def _corrupt_jpeg() -> bytes:
    """A JPEG cut short (a broken upload)."""
    data = jpeg(64, 64, seed=9)
    return data[: len(data) // 2]


BAD_INPUTS = [
    # (what, content type, body, status, error kind, limit)
    ("malformed JSON", "application/json", b'{"text": "a', 400, "malformed JSON", None),
    ("wrong content type", "text/plain", b"Obama in Paris", 415, "content type", None),
    ("form encoding", "application/x-www-form-urlencoded", b"text=Obama", 415, "content type", None),
    ("invalid base64", "application/json", b'{"text": "Obama", "image_base64": "abc$"}', 422, "invalid base64", None),
    ("not an image", "application/json", post_body("Obama", b"hello world"), 422, "bad image", None),
    ("corrupt image", "application/json", None, 422, "bad image", None),
    ("pixel bomb", "application/json", post_body("Obama", png_header_claiming(50_000, 50_000)), 422,
     "image too large", "max_pixels"),
    ("text too long", "application/json", post_body("word " * 200), 422, "text too long", "max_text_chars"),
    ("body too large", "application/json", b'{"text": "' + b"a" * 300_000 + b'"}', 413, "body too large", "max_body_bytes"),
    ("empty text", "application/json", post_body("   "), 422, "empty text", None),
    ("missing text", "application/json", b'{"image_base64": null}', 422, "invalid request", None),
    ("unknown key", "application/json", b'{"text": "a", "picture": "x"}', 422, "invalid request", None),
    ("not an object", "application/json", b"[1, 2]", 422, "invalid request", None),
    ("multipart without boundary", "multipart/form-data", b"--x\r\n", 400, "malformed multipart", None),
]  # fmt: skip


@pytest.mark.parametrize("what, content_type, body, status, kind, limit", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_each_bad_input_gets_its_4xx_and_the_server_keeps_serving(server, what, content_type, body, status, kind, limit):
    if body is None:
        body = post_body("Obama", _corrupt_jpeg())
    reply = request(server, "POST", "/v1/tag", body, content_type)
    assert reply.status == status, reply.body
    error = reply.json()["error"]
    assert error["kind"] == kind and error["message"]
    if limit is not None:
        assert error["limit"] == limit and isinstance(error["value"], (int, float)) and str(error["value"]) in error["message"]
    assert request(server, "POST", "/v1/tag", post_body("Obama in Paris")).status == 200


def test_batch_endpoint_limits(server):
    too_many = json.dumps({"posts": [{"text": "a"}] * 9}).encode()
    reply = request(server, "POST", "/v1/tag/batch", too_many)
    assert reply.status == 422 and reply.json()["error"] == {
        "kind": "too many posts", "message": "9 posts in one call, over the limit of 8", "limit": "max_request_posts", "value": 8}
    # a bad post is its own error in its place; the others are tagged
    reply = request(server, "POST", "/v1/tag/batch", json.dumps({"posts": [{"text": "a"}, {"text": 3}]}).encode())
    assert reply.status == 200 and "entities" in reply.json()["results"][0]
    assert reply.json()["results"][1]["error"]["message"] == "posts[1].text must be a string, got int"
    reply = request(server, "POST", "/v1/tag/batch", *multipart({"text": b"a"}))
    assert reply.status == 415
    corrupt = {"posts": [{"text": "Obama"}, json.loads(post_body("Paris", _corrupt_jpeg()))]}
    reply = request(server, "POST", "/v1/tag/batch", json.dumps(corrupt).encode())
    assert reply.status == 200 and "entities" in reply.json()["results"][0]
    assert reply.json()["results"][1]["error"]["kind"] == "bad image"
    assert reply.json()["results"][1]["error"]["message"].startswith("posts[1].image_base64: corrupt JPEG")


def test_queue_overflow_gives_503_with_retry_after(exported):  # noqa: F811
    port = free_port()
    process = start_server(exported.bundle, port, "--max-batch", "1", "--max-wait-ms", "0", "--max-queue", "1",
                           "--drain-s", "0")  # fmt: skip
    try:
        result = asyncio.run(run_load(port, [post_body(text) for text in TEXTS], clients=32, requests=4, max_seconds=30))
        assert result.failures == [] and set(result.statuses) == {200, 503}, result.statuses
        refused = result.examples[503]
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"] == {"kind": "queue full", "message": refused.json()["error"]["message"],
                                           "limit": "max_queue", "value": 1}  # fmt: skip
        assert request(port, "POST", "/v1/tag", post_body("Obama in Paris")).status == 200
        assert scrape(port)['mner_errors_total{kind="queue full"}'] == result.statuses[503]
    finally:
        stop_server(process)


def test_a_request_past_its_timeout_gets_504(exported):  # noqa: F811
    port = free_port()
    process = start_server(exported.bundle, port, "--timeout-s", "0.000001", "--drain-s", "0")
    try:
        reply = request(port, "POST", "/v1/tag", post_body("Obama in Paris"))
        assert reply.status == 504 and reply.json()["error"]["limit"] == "timeout_s"
    finally:
        stop_server(process)


def test_sigterm_under_load_answers_every_accepted_request(exported):  # noqa: F811
    port = free_port()
    # a drain of 1 s, not the default 5: the load goes on through it all the same (test_serve_hostile.py times a drain)
    process = start_server(exported.bundle, port, "--max-batch", "8", "--max-wait-ms", "2", "--drain-s", "1")
    bodies = [post_body(text) for text in TEXTS]

    async def load_then_terminate():
        load = asyncio.ensure_future(run_load(port, bodies, clients=32, requests=400, max_seconds=40))
        await asyncio.sleep(1.5)
        os.kill(process.pid, signal.SIGTERM)
        return await load

    try:
        result = asyncio.run(load_then_terminate())
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    # uvicorn drains, then re-raises the signal it caught, so the parent sees how the process ended
    assert process.returncode == -signal.SIGTERM, stderr.decode()
    match = re.search(r"(\d+) tagging requests accepted, (\d+) answered", stderr.decode())
    assert match, stderr.decode()
    accepted, answered = int(match.group(1)), int(match.group(2))
    assert accepted == answered == result.answered > 0
    assert result.statuses == {200: result.answered}
    assert result.answered < 32 * 400, "the load should still be running when SIGTERM arrives"
    # the clients cut off are those whose next request found the server gone, never one it accepted
    assert all(("Connect" in f or "IncompleteRead" in f or "Reset" in f) for f in result.failures), result.failures[:3]


def test_serve_config_refuses_nonsense():
    with pytest.raises(ValueError, match="max_batch must be a positive int"):
        ServeConfig(max_batch=0)
    with pytest.raises(ValueError, match="max_wait_ms must be >= 0"):
        ServeConfig(max_wait_ms=-1)
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        ServeConfig(timeout_s=0)


def test_cli_refuses_a_directory_that_is_not_a_bundle(tmp_path):
    from mner.runtime.serve_cli import serve_command  # noqa: PLC0415

    result = CliRunner().invoke(serve_command, ["--engine", str(tmp_path), "--port", "0"])
    assert result.exit_code != 0 and "manifest.json is missing" in result.output
