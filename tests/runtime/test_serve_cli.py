"""mner-serve's command line (runtime/serve_cli.py): the shared vocabulary, old spellings kept as hidden aliases,
fast --help, --no-verify and --max-pixels handed to the pipeline, the log formats; and, on the app in this process
over a stand-in pipeline, warm-up refusals counted apart from errors. test_serve_operations.py runs the real
process."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import subprocess
import sys
import threading
import time

import click
import pytest
import uvicorn
from click.testing import CliRunner
from test_pipeline import fake_pipeline

from mner.benchmarks.loadtest import Connection, free_port, post_body, scrape
from mner.runtime import serve_cli, serve_logging
from mner.runtime.image import MAX_PIXELS
from mner.runtime.pipeline import BAD_IMAGE_POLICIES, Pipeline
from mner.runtime.serve import BundleInfo, create_app
from mner.runtime.serve_cli import serve_command
from mner.runtime.serve_limits import ServeConfig

HEAVY = ("numpy", "cv2", "onnxruntime", "tokenizers", "fastapi", "starlette", "uvicorn", "prometheus_client", "torch")


def test_help_imports_nothing_heavy_and_is_quick():
    """--help must answer in well under a second: the console module imports no heavy library of its own (it may
    not help what ``mner.runtime``'s own __init__ imports, so that is the baseline)."""
    code = ("import sys, time; import mner.runtime; before = set(sys.modules); started = time.perf_counter(); "
            "import mner.runtime.serve_cli; print(time.perf_counter() - started); "
            "print(' '.join(sorted(set(sys.modules) - before)))")  # fmt: skip
    seconds, added = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    heavy = [name for name in added.split() if name.split(".")[0] in HEAVY]
    assert heavy == [], f"mner.runtime.serve_cli imports {heavy}"
    assert float(seconds) < 0.5
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mner.runtime.serve_cli", "-h"], capture_output=True, text=True, check=True)
    assert "--engine" in done.stdout
    assert time.perf_counter() - started < 5, "generous for a loaded machine; README records the measured time"


def test_every_option_has_help_and_old_spellings_are_hidden():
    help_text = CliRunner().invoke(serve_command, ["--help"]).output
    for param in serve_command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.help, f"{param.opts} has no help text"
    for new in ("--engine", "--batch-size", "--max-request-posts", "--no-verify", "--max-pixels", "--access-log",
                "--log-format", "--threads", "-v, --verbose"):  # fmt: skip
        assert new in help_text
    assert "--max-batch" not in help_text.replace("--max-batch-pixels", "")
    assert "--max-posts" not in help_text
    assert CliRunner().invoke(serve_command, ["-h"]).output == help_text
    version = CliRunner().invoke(serve_command, ["--version"])
    assert version.exit_code == 0 and "(mner)" in version.output


def test_the_constants_spelled_out_for_help_match_the_runtime():
    assert serve_cli.ON_BAD_IMAGE == BAD_IMAGE_POLICIES
    assert serve_cli.BUNDLE_MAX_PIXELS == MAX_PIXELS


@pytest.fixture()
def captured(monkeypatch, tmp_path):
    """Run serve_command with Pipeline.from_bundle and serve() replaced: what each was given."""
    (tmp_path / "manifest.json").write_text('{"format": "mner-bundle"}')
    seen: dict = {}

    def from_bundle(path, **options):
        seen["from_bundle"] = options
        return fake_pipeline()

    def serve(pipeline, config, limits, **options):
        seen.update(config=config, limits=limits, pipeline=pipeline, **options)

    monkeypatch.setattr(Pipeline, "from_bundle", staticmethod(from_bundle))
    monkeypatch.setattr("mner.runtime.serve.serve", serve)

    @contextlib.contextmanager
    def configured(log_format, level):
        seen.update(log_format=log_format, level=level)
        yield

    monkeypatch.setattr(serve_logging, "configured", configured)

    def run(*args: str) -> dict:
        result = CliRunner().invoke(serve_command, ["--engine", str(tmp_path), *args])
        assert result.exit_code == 0, result.output
        return seen

    return run


def test_new_spellings_reach_the_pipeline_and_the_server(captured):
    seen = captured("--batch-size", "7", "--max-request-posts", "3", "--no-verify", "--max-pixels", "1000",
                    "--threads", "1", "--access-log", "--log-format", "json", "--port", "0")  # fmt: skip
    assert seen["config"].max_batch == 7 and seen["config"].max_request_posts == 3
    assert seen["from_bundle"]["verify"] is False and seen["from_bundle"]["max_pixels"] == 1000
    assert seen["from_bundle"]["batch_size"] == 7 and seen["from_bundle"]["threads"] == 1
    assert seen["access_log"] is True and seen["log_format"] == "json" and seen["port"] == 0
    info: BundleInfo = seen["bundle"]
    assert info.verified is False and info.stages == ("detector", "vision", "tagger")
    assert info.sha256 == hashlib.sha256(b'{"format": "mner-bundle"}').hexdigest()  # of manifest.json


def test_old_spellings_still_work(captured):
    seen = captured("--max-batch", "5", "--max-posts", "2")
    assert seen["config"].max_batch == 5 and seen["config"].max_request_posts == 2 == seen["config"].max_posts


def test_defaults(captured):
    seen = captured()
    assert seen["from_bundle"]["verify"] is True and "max_pixels" not in seen["from_bundle"]  # the bundle's
    assert seen["access_log"] is False and seen["log_format"] == "text" and seen["level"] == logging.INFO
    assert seen["config"] == ServeConfig()
    assert captured("-v")["level"] == logging.DEBUG


@pytest.mark.parametrize("args, message", [
    (["--max-pixels", "0"], "0 is not in the range x>=1"),
    (["--log-format", "xml"], "'xml' is not one of 'text', 'json'"),
    (["--batch-size", "0"], "0 is not in the range x>=1"),
    (["--max-request-posts", "0"], "0 is not in the range x>=1"),
    (["--threads", "0"], "0 is not in the range x>=1"),
])  # fmt: skip
def test_the_command_line_refuses_nonsense(tmp_path, args, message):
    result = CliRunner().invoke(serve_command, ["--engine", str(tmp_path), *args])
    assert result.exit_code == 2 and message in result.output


def test_serve_config_and_the_pipeline_refuse_nonsense():
    with pytest.raises(ValueError, match="max_request_posts must be a positive int, got 0"):
        ServeConfig(max_request_posts=0)
    with pytest.raises(ValueError, match="max_batch must be a positive int, got True"):
        ServeConfig(max_batch=True)
    with pytest.raises(ValueError, match="max_pixels must be a positive int, got 0"):
        fake_pipeline(max_pixels=0)
    assert fake_pipeline(max_pixels=12).max_pixels == 12


# --------------------------------------------------------------------------- log formats


def test_json_lines_carry_time_level_logger_message_and_the_extra_fields():
    stream = io.StringIO()
    with serve_logging.configured("json", stream=stream):
        logging.getLogger("mner.access").info('%s "%s %s" %d', "c", "GET", "/healthz", 200,
                                              extra={"method": "GET", "path": "/healthz", "status": 200, "duration_ms": 1.5})  # fmt: skip
        # as uvicorn logs (not on its own logger: an in-process uvicorn of another test may have configured that)
        logging.getLogger("mner.test").warning("plain", extra={"color_message": "\x1b[1mplain\x1b[0m",
                                                               "_mner_mark": 1})  # private, as Ray's _ray_timestamp_ns
        # (named otherwise: once Ray is imported, its record factory sets that one, and logging refuses the extra)
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("mner.x").exception("failed")
    access, plain, failed = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert access["message"] == 'c "GET /healthz" 200' and access["level"] == "INFO" and access["logger"] == "mner.access"
    assert (access["method"], access["path"], access["status"], access["duration_ms"]) == ("GET", "/healthz", 200, 1.5)
    assert access["time"].endswith("+00:00") and "T" in access["time"]
    assert set(plain) == {"time", "level", "logger", "message"}  # uvicorn's colour copy and private marks left out
    assert failed["level"] == "ERROR" and "RuntimeError: boom" in failed["exception"]


def test_text_lines_and_an_unknown_format():
    stream = io.StringIO()
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    with serve_logging.configured("text", level=logging.DEBUG, stream=stream) as handler:
        assert root.handlers == [handler] and root.level == logging.DEBUG
        logging.getLogger("mner.x").info("hello")
    assert stream.getvalue().rstrip().endswith("INFO mner.x: hello")
    assert (root.handlers, root.level) == before  # as it was
    with pytest.raises(ValueError, match="log_format must be one of"):
        with serve_logging.configured("xml"):
            pass


# --------------------------------------------------------------------------- warm-up is not an error


def _serve_in_thread(app):
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start within 30 s"
    return port, server, thread


def _request(port, method, path, body=b""):
    return asyncio.run(Connection(port).request(method, path, body))


def test_requests_while_warming_up_are_503_and_not_counted_as_errors():
    pipeline = fake_pipeline()
    release = threading.Event()
    tag = pipeline.tag

    def slow_warmup(posts):
        release.wait(30)  # the warm-up (the first call) holds until the test has seen the server warming up
        return tag(posts)

    pipeline.tag = slow_warmup
    port, server, thread = _serve_in_thread(create_app(pipeline))
    try:
        refused = _request(port, "POST", "/v1/tag", post_body("Obama in Paris"))
        assert refused.status == 503 and refused.json()["error"]["kind"] == "not ready"
        assert refused.headers["retry-after"] == "1"
        assert _request(port, "GET", "/readyz").json()["status"] == "not ready"
        metrics = scrape(port)
        assert not any(name.startswith("mner_errors_total") for name in metrics), metrics
        assert metrics['mner_not_ready_total{endpoint="/v1/tag",reason="warming up"}'] == 1
        assert metrics['mner_not_ready_total{endpoint="/readyz",reason="warming up"}'] == 1
        assert metrics['mner_requests_total{endpoint="/v1/tag",status="503"}'] == 1
        release.set()
        deadline = time.monotonic() + 30
        while _request(port, "GET", "/readyz").status != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _request(port, "POST", "/v1/tag", post_body("Obama in Paris")).status == 200
    finally:
        release.set()
        server.should_exit = True
        thread.join(30)


def test_a_failed_warm_up_is_an_error():
    pipeline = fake_pipeline()

    def broken(posts):
        raise RuntimeError("the tagger's session is gone")

    pipeline.tag = broken
    app = create_app(pipeline)
    port, server, thread = _serve_in_thread(app)
    try:
        deadline = time.monotonic() + 30
        while app.state.batcher.failed is None and time.monotonic() < deadline:
            time.sleep(0.05)
        refused = _request(port, "POST", "/v1/tag", post_body("Obama in Paris"))
        assert refused.status == 503 and refused.json()["error"] == {
            "kind": "warm-up failed", "message": "warm-up failed: the tagger's session is gone"}
        ready = _request(port, "GET", "/readyz")
        assert ready.status == 503 and ready.json()["status"] == "warm-up failed"
        metrics = scrape(port)
        assert metrics['mner_errors_total{kind="warm-up failed"}'] == 2
        assert not any(name.startswith("mner_not_ready_total{") for name in metrics)
    finally:
        server.should_exit = True
        thread.join(30)
