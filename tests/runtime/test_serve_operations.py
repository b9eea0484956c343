"""What an operator of mner-serve sees, on a real server process on 127.0.0.1 (the tiny bundle
test_exported_bundle exports): the start-up line with the port the system chose (--port 0), JSON log lines and
the access log, /docs and /redoc served without any external URL (they work offline), /metrics in Prometheus'
text format with the process collectors and the bundle's info, --max-pixels for JSON and multipart pictures,
--no-verify, and an OpenAPI document whose models fit what the server really answers.

No browser renders the pages here (none is installed); the test checks that every script, style sheet and icon
the pages name is served by this server and that nothing names another host.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from html.parser import HTMLParser

import pytest
from test_exported_bundle import exported, jpeg  # noqa: F401 -- `exported` is a fixture
from test_serve import multipart

from mner.benchmarks.loadtest import Connection, post_body
from mner.runtime import serve_api

MAX_PIXELS = 100 * 100  # so that a 120 x 90 picture is over it and a 90 x 90 one within


class ServerProcess:
    """mner-serve --port 0 in a child process; its stderr read line by line on a thread."""

    def __init__(self, bundle, *options: str) -> None:
        command = [sys.executable, "-m", "mner.runtime.serve_cli", "--engine", str(bundle), "--port", "0", *options]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout: float = 90) -> str:
        """The first stderr line (from now on) matching ``pattern``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"mner-serve exited with {self.process.wait()}: {self.seen[-20:]}")
            self.seen.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r} within {timeout} s: {self.seen[-20:]}")

    def stop(self) -> list[str]:
        """SIGTERM, and every stderr line."""
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        finally:
            if self.process.poll() is None:
                self.process.kill()
        while (line := self.lines.get(timeout=10)) is not None:
            self.seen.append(line)
        return self.seen


def get(port: int, path: str, body: bytes = b"", content_type: str = "application/json", method: str | None = None):
    """One request on a connection of its own: GET, or POST with a body."""
    return asyncio.run(Connection(port).request(method or ("POST" if body else "GET"), path, body, content_type))


@pytest.fixture(scope="module")
def server(exported):  # noqa: F811
    """(port, the start-up line as parsed JSON, the ServerProcess)."""
    process = ServerProcess(exported.bundle, "--log-format", "json", "--access-log", "--no-verify",
                            "--max-pixels", str(MAX_PIXELS), "--max-request-posts", "4", "--drain-s", "0")  # fmt: skip
    try:
        startup = json.loads(process.wait_for("listening on"))
        port = int(startup["url"].rsplit(":", 1)[1])
        deadline = time.monotonic() + 60
        while get(port, "/readyz").status != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        yield port, startup, process
    finally:
        process.stop()


def test_the_startup_line_names_the_url_bundle_backend_and_limits(server, exported):  # noqa: F811
    port, startup, _ = server
    assert port > 0 and startup["url"] == f"http://127.0.0.1:{port}"
    assert startup["level"] == "INFO" and startup["logger"] == "mner.runtime.serve"
    sha = hashlib.sha256((exported.bundle / "manifest.json").read_bytes()).hexdigest()
    assert startup["sha256"] == sha and startup["bundle"] == str(exported.bundle) and startup["verified"] is False
    assert (startup["backend"], startup["device"], startup["precision"]) == ("ort", "cpu", "fp32")
    assert startup["stages"] == ["detector", "vision", "tagger"]
    assert startup["limits"]["max_pixels"] == MAX_PIXELS and startup["limits"]["max_request_posts"] == 4
    message = startup["message"]
    assert message.startswith(f"mner-serve listening on http://127.0.0.1:{port} | bundle {exported.bundle} (sha256 {sha}")
    assert f"--max-pixels {MAX_PIXELS}" in message and "--batch-size 32" in message and "not verified" in message


def test_the_text_startup_line_with_a_verified_bundle(exported):  # noqa: F811
    process = ServerProcess(exported.bundle, "--drain-s", "0")
    try:
        line = process.wait_for("listening on")
    finally:
        lines = process.stop()
    assert re.search(r"INFO mner\.runtime\.serve: mner-serve listening on http://127\.0\.0\.1:\d+ \| bundle .*, verified\)", line)
    assert len([seen for seen in lines if "listening on" in seen or "Uvicorn running" in seen]) == 1  # one start-up line
    assert not any("mner.access" in seen for seen in lines), "the access log is off by default"


def test_the_docs_pages_and_every_asset_they_name_come_from_this_server(server):
    port, _, _ = server
    for page in ("/docs", "/redoc"):
        reply = get(port, page)
        assert reply.status == 200 and reply.headers["content-type"].startswith("text/html")
        html = reply.body.decode()
        assert not re.search(r"https?://(?!127\.0\.0\.1:%d)" % port, html), f"{page} names another host"
        assert "//cdn" not in html and "fonts.googleapis" not in html
        assets = _assets(html)
        assert assets, f"{page} names no script or style sheet"
        for asset in assets:
            assert asset.startswith("/") and not asset.startswith("//"), f"{page} loads {asset} from elsewhere"
            served = get(port, asset)
            assert served.status == 200 and len(served.body) > 100, asset
            if asset.endswith(".css"):  # what a style sheet loads in turn: only data: URLs or this server's files
                for url in re.findall(r"url\(\s*['\"]?([^'\")]+)", served.body.decode()):
                    assert url.startswith(("data:", "#")) or get(port, url).status == 200, url
    swagger = get(port, "/docs").body.decode()
    assert "url: '/openapi.json'" in swagger and '"validatorUrl": null' in swagger  # no online validator badge
    assert 'spec-url="/openapi.json"' in get(port, "/redoc").body.decode()
    assert get(port, "/openapi.json").json()["info"]["title"] == "mner-serve"


def _assets(html: str) -> list[str]:
    """Every src= and href= of the page's tags."""
    found: list[str] = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.extend(value for name, value in attrs if name in ("src", "href") and value)

    Collect().feed(html)
    return found


def test_metrics_are_prometheus_text_with_process_collectors_and_the_bundles_info(server, exported):  # noqa: F811
    port, startup, _ = server
    reply = get(port, "/metrics")
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain; version=")
    text = reply.body.decode()
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds", "python_info",
                 "python_gc_objects_collected_total", "mner_requests_total", "mner_queue_depth"):  # fmt: skip
        assert re.search(rf"^{name}[{{ ]", text, re.MULTILINE), name
    info = re.search(r"^mner_bundle_info\{(.*)\} 1\.0$", text, re.MULTILINE)
    assert info, text[:2000]
    labels = dict(re.findall(r'(\w+)="([^"]*)"', info.group(1)))
    assert labels == {"sha256": startup["sha256"], "backend": "ort", "device": "cpu", "precision": "fp32",
                      "stages": "detector,vision,tagger"}  # fmt: skip


def test_max_pixels_holds_for_json_and_multipart_pictures(server):
    port, _, _ = server
    large, small = jpeg(120, 90, seed=1), jpeg(90, 90, seed=2)
    refusals = [get(port, "/v1/tag", post_body("Obama in Paris", large)),
                get(port, "/v1/tag", *multipart({"text": b"Obama in Paris", "image": large}))]  # fmt: skip
    for reply in refusals:
        assert reply.status == 422, reply.body
        assert reply.json()["error"]["kind"] == "image too large"
        assert reply.json()["error"]["limit"] == "max_pixels" and reply.json()["error"]["value"] == MAX_PIXELS
        assert "= 10800 pixels, over the limit of 10000" in reply.json()["error"]["message"]
    batch = get(port, "/v1/tag/batch", json.dumps({"posts": [json.loads(post_body("Obama", large)),
                                                             json.loads(post_body("Paris", small))]}).encode())  # fmt: skip
    assert batch.status == 200
    first, second = batch.json()["results"]
    assert first["error"]["limit"] == "max_pixels" and "entities" in second
    assert get(port, "/v1/tag", post_body("Obama in Paris", small)).status == 200
    assert get(port, "/v1/tag", *multipart({"text": b"Obama in Paris", "image": small})).status == 200


def test_the_old_limit_name_is_the_new_options(server):
    port, _, _ = server
    reply = get(port, "/v1/tag/batch", json.dumps({"posts": [{"text": "a"}] * 5}).encode())
    assert reply.status == 422 and reply.json()["error"]["limit"] == "max_request_posts"
    assert reply.json()["error"]["value"] == 4


def test_what_the_server_answers_fits_its_openapi_models(server):
    port, _, _ = server
    document = get(port, "/openapi.json").json()
    paths = document["paths"]
    for path, method in (("/v1/tag", "post"), ("/v1/tag/batch", "post"), ("/healthz", "get"), ("/readyz", "get"),
                         ("/metrics", "get")):  # fmt: skip
        responses = paths[path][method]["responses"]
        assert responses["200"]["content"], path
        documented = {int(status) for status in responses if status != "200"}
        assert documented == set(serve_api.ERRORS[path]), path
        for status in documented:
            schema = responses[str(status)]["content"]["application/json"]["schema"]
            assert schema["$ref"].rsplit("/", 1)[1] in ("ErrorBody", "NotReady"), (path, status)
    assert list(paths["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain; version=1.0.0; charset=utf-8"]
    assert set(paths["/v1/tag"]["post"]["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    schemas = document["components"]["schemas"]
    assert {"PostIn", "MultipartPostIn", "BatchIn", "TagOut", "BatchOut", "ErrorBody"} <= set(schemas)
    assert schemas["MultipartPostIn"]["properties"]["image"]["format"] == "binary"

    tagged = get(port, "/v1/tag", post_body("Obama meets Merkel in Berlin"))
    serve_api.TagOut.model_validate(tagged.json())
    batch = get(port, "/v1/tag/batch", json.dumps({"posts": [{"text": "Obama"}, {"text": ""}]}).encode())
    results = serve_api.BatchOut.model_validate(batch.json()).results
    assert isinstance(results[0], serve_api.TagOut) and isinstance(results[1], serve_api.ErrorBody)
    serve_api.Health.model_validate(get(port, "/healthz").json())
    serve_api.Ready.model_validate(get(port, "/readyz").json())
    for refused in (get(port, "/v1/tag", b"{", "application/json"), get(port, "/v1/tag", b"x", "text/plain"),
                    get(port, "/nowhere"), get(port, "/healthz", method="POST")):  # fmt: skip
        assert refused.status >= 400
        serve_api.ErrorBody.model_validate(refused.json())
    for body in (serve_api.PostIn(text="a").model_dump(exclude_none=True),
                 serve_api.BatchIn(posts=[serve_api.PostIn(text="a")]).model_dump(exclude_none=True)):  # fmt: skip
        path = "/v1/tag/batch" if "posts" in body else "/v1/tag"
        assert get(port, path, json.dumps(body).encode()).status == 200  # the documented request is accepted


def test_access_lines_are_json_with_method_path_status_and_duration(server):
    port, _, process = server
    get(port, "/healthz")
    get(port, "/v1/tag", b"x", "text/plain")
    ok = json.loads(process.wait_for(r'"path": "/healthz"'))
    refused = json.loads(process.wait_for(r'"status": 415'))
    assert ok["logger"] == "mner.access" and ok["level"] == "INFO"
    assert (ok["method"], ok["path"], ok["status"]) == ("GET", "/healthz", 200) and ok["duration_ms"] >= 0
    assert ok["client"].startswith("127.0.0.1:") and ok["error_kind"] is None
    assert (refused["method"], refused["path"], refused["error_kind"]) == ("POST", "/v1/tag", "content type")
    assert re.fullmatch(r'127\.0\.0\.1:\d+ "POST /v1/tag" 415 [\d.]+ ms \(content type\)', refused["message"])
    assert all(json.loads(line) for line in process.seen), "every stderr line is one JSON object"
