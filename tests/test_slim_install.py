"""The slim install: ``pip install mner`` in a fresh venv has no torch, and mner-tag and mner-serve work.

How it installs, and why it is quick:

* the wheel is built from this working tree by the project's own backend (scikit-build-core). Where the
  build tools are installed in this environment (``make install`` puts them there: ``mner[test]``), it
  builds without an isolated environment in ``build/<wheel tag>``, the folder ``make install`` built in,
  so the native Viterbi extension is not compiled again (~8 s instead of ~70 s on a loaded 2-core machine);
  elsewhere it falls back to pip's isolated build.
* the venv is made without pip (``venv --without-pip``); this environment's pip installs into it
  (``pip --python``), with ``--no-compile`` (byte-compiling ~300 MB of packages is most of an install).
* the dependencies come from a wheelhouse in the user's cache (``$MNER_TEST_WHEELHOUSE``, else
  ``$XDG_CACHE_HOME/mner/test-wheels`` or ``~/.cache/mner/test-wheels``), installed with ``--no-index``. pip's own HTTP cache cannot
  be relied on: a registry proxy that sends no caching headers leaves it empty. When the wheelhouse lacks
  something (the first run, a raised floor in pyproject.toml), ``pip download`` fills it from the
  configured indexes and the install is retried -- pip still resolves the dependencies from the wheel's
  metadata either way, so what is tested is what ``pip install mner`` installs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from importlib.util import find_spec
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = "Scripts" if os.name == "nt" else "bin"
# What the slim install must not contain: every distribution of the train and bench extras.
EXTRA_DISTRIBUTIONS = {"torch", "torchvision", "transformers", "onnx", "onnxscript", "gensim", "seqeval",
                       "matplotlib", "pytorch-crf"}  # fmt: skip
TRAIN_ONLY = {"mner-train": "train", "mner-eval": "train", "mner-convert": "train", "mner-export": "train",
              "mner-bench": "bench"}  # fmt: skip


def wheelhouse() -> Path:
    """Where the slim install's dependency wheels are kept between runs: ``$MNER_TEST_WHEELHOUSE``, else the user's
    cache folder's ``mner/test-wheels``. Not ``$MNER_CACHE_DIR``: tests/conftest.py points that (the bundle
    verification cache) at a temporary folder for the session, and the wheels must outlive it."""
    if os.environ.get("MNER_TEST_WHEELHOUSE"):
        return Path(os.environ["MNER_TEST_WHEELHOUSE"])
    if os.environ.get("XDG_CACHE_HOME"):
        root = Path(os.environ["XDG_CACHE_HOME"]) / "mner"
    else:
        root = Path.home() / ".cache" / "mner"
    return root / "test-wheels"


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, **kwargs)


def pip(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "pip", *arguments]


def build_wheel(dest: Path) -> Path:
    command = pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(dest))
    if find_spec("scikit_build_core") is not None and find_spec("pybind11") is not None:
        # make install's build folder: the compiled extension is reused when the C++ source has not changed
        command += ["--no-build-isolation", "--config-settings=build-dir=build/{wheel_tag}"]
    result = run([*command, str(REPO)], cwd=REPO, timeout=900)  # a compile from scratch on a loaded machine
    assert result.returncode == 0, result.stderr
    (wheel,) = dest.glob("mner-*.whl")
    return wheel


def install_slim(python: Path, wheel: Path) -> None:
    """``pip install <wheel>`` into the venv of ``python``, dependencies from the wheelhouse (filled if short)."""
    house = wheelhouse()
    house.mkdir(parents=True, exist_ok=True)
    offline = pip("--python", str(python), "install", "--quiet", "--no-compile", "--no-index",
                  "--find-links", str(house), str(wheel))  # fmt: skip
    if run(offline, timeout=600).returncode == 0:
        return
    fetched = run(pip("--python", str(python), "download", "--quiet", "--dest", str(house), str(wheel)), timeout=900)
    assert fetched.returncode == 0, f"could not fetch the slim install's dependencies:\n{fetched.stderr}"
    for copy in house.glob("mner-*.whl"):  # download copies the wheel itself too; it is built afresh each run
        copy.unlink()
    again = run(offline, timeout=600)
    assert again.returncode == 0, again.stderr


def slim_env(venv: Path, cache: Path) -> dict[str, str]:
    """The environment a user of the slim venv has: none of this test run's Python paths leak into it."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}}
    env["PATH"] = f"{venv / BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env["MNER_CACHE_DIR"] = str(cache)  # the bundle verification cache: this test's own, not the user's
    return env


class Slim:
    def __init__(self, venv: Path, env: dict[str, str]) -> None:
        self.venv, self.env = venv, env
        self.python = venv / BIN / "python"

    def script(self, name: str) -> str:
        return str(self.venv / BIN / name)

    def run(self, command: list[str], **kwargs) -> subprocess.CompletedProcess:
        return run(command, env=self.env, timeout=kwargs.pop("timeout", 180), **kwargs)

    def python_code(self, code: str) -> subprocess.CompletedProcess:
        return self.run([str(self.python), "-c", textwrap.dedent(code)])


@pytest.fixture(scope="module")
def slim(tmp_path_factory) -> Slim:
    root = tmp_path_factory.mktemp("slim")
    wheel = build_wheel(root / "wheel")
    venv = root / "venv"
    made = run([sys.executable, "-m", "venv", "--without-pip", str(venv)], timeout=120)
    assert made.returncode == 0, made.stderr
    install_slim(venv / BIN / "python", wheel)
    return Slim(venv, slim_env(venv, root / "cache"))


@pytest.fixture(scope="module")
def bundle(exported_once) -> Path:
    return exported_once.bundle


def test_the_slim_install_has_no_torch_and_none_of_the_extras(slim):
    result = slim.python_code("import torch")
    assert result.returncode != 0 and "No module named 'torch'" in result.stderr
    listed = slim.python_code("""
        import importlib.metadata, json, re
        names = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower() for d in importlib.metadata.distributions()}
        print(json.dumps(sorted(names)))
    """)
    installed = set(json.loads(listed.stdout))
    assert "mner" in installed and {"onnxruntime", "fastapi", "uvicorn", "prometheus-client"} <= installed
    assert not installed & EXTRA_DISTRIBUTIONS


def test_the_runtime_comes_from_the_wheel_with_its_native_decoder(slim):
    result = slim.python_code("""
        import mner.runtime, mner.runtime.serve, mner.runtime.cli
        from mner.runtime.viterbi import native_available
        print(mner.runtime.__file__)
        print(native_available())
    """)
    assert result.returncode == 0, result.stderr
    where, native = result.stdout.split()
    assert Path(where).is_relative_to(slim.venv) and native == "True"


def test_mner_tag_tags_a_jsonl_file(slim, bundle, tmp_path):
    cv2 = pytest.importorskip("cv2")
    import numpy as np  # noqa: PLC0415

    picture = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "p1.jpg"), picture)
    posts = [{"id": "a", "text": "Kawhi Leonard scores 40 in Toronto"},
             {"id": "b", "text": "RT @nba : Lakers beat the Celtics", "image": "p1.jpg"}]  # fmt: skip
    source = tmp_path / "posts.jsonl"
    source.write_text("".join(json.dumps(post) + "\n" for post in posts))
    output = tmp_path / "tags.jsonl"
    result = slim.run([slim.script("mner-tag"), "--engine", str(bundle), "--input", str(source),
                       "--output", str(output), "--no-progress"])  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["id"] for r in records] == ["a", "b"]
    for post, record in zip(posts, records):
        assert "error" not in record, record
        assert isinstance(record["entities"], list)
        for entity in record["entities"]:  # a random-weights model: whatever it finds, the offsets must hold
            assert post["text"][entity["start"]:entity["end"]] == entity["text"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url: str, body: bytes | None = None) -> tuple[int, dict]:
    sent = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(sent, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_mner_serve_answers_and_stops_on_sigterm(slim, bundle, tmp_path):
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as sink:
        server = subprocess.Popen(
            [slim.script("mner-serve"), "--engine", str(bundle), "--host", "127.0.0.1", "--port", str(port),
             "--drain-s", "0"],
            env=slim.env, stdout=sink, stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # loading and warming three ONNX graphs on a loaded machine
        ready = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                ready = request(f"{base}/readyz")
                if ready[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass  # not listening yet
            time.sleep(0.25)
        assert ready is not None and ready[0] == 200, f"not ready: {ready}\n{log.read_text()}"
        status, reply = request(f"{base}/v1/tag", json.dumps({"text": "Obama visits Paris"}).encode())
        assert status == 200, reply
        assert isinstance(reply["entities"], list)
        server.send_signal(signal.SIGTERM)
        # a graceful stop: uvicorn re-raises the signal once it has shut down (runtime/serve.py), so the status
        # is SIGTERM's, and the server has logged its stop line before that
        assert server.wait(timeout=60) in (0, -signal.SIGTERM), log.read_text()
        assert "mner-serve stopped" in log.read_text()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_require_extra_gives_one_line_in_the_slim_install(slim):
    result = slim.python_code("""
        import click
        from mner.runtime.extras import require_extra

        @click.command()
        def demo():
            require_extra("train")

        demo(["--"], prog_name="mner-demo")
    """)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Error: mner-demo needs torch, torchvision, transformers and 6 more (not installed): pip install 'mner[train]'"]


@pytest.mark.parametrize("name", sorted(TRAIN_ONLY))
def test_train_only_commands_show_help_without_torch(slim, name):
    result = slim.run([slim.script(name), "--help"], timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout



def minimal_arguments(name: str, tmp_path: Path, bundle: Path) -> list[str]:
    """Arguments that get past option parsing, so the command itself runs and finds its extra missing."""
    a_file, a_dir = tmp_path / "file", tmp_path / "dir"
    a_file.write_text("")
    a_dir.mkdir(exist_ok=True)
    out = str(tmp_path / "out")
    return {
        "mner-train": ["--data", str(a_dir), "--output", out],
        "mner-eval": ["--checkpoint", str(a_file), "--data", str(a_file)],
        "mner-convert": ["--weights", str(a_file), "--bert", str(a_dir), "--aug-table", str(a_file), "--output", out],
        "mner-export": ["--checkpoint", str(a_file), "--output", out],
        "mner-bench": ["--engine", str(bundle), "--checkpoint", str(a_file), "--output", out],
    }[name]


@pytest.mark.parametrize("name", sorted(TRAIN_ONLY))
def test_train_only_commands_name_their_extra_in_one_line(slim, bundle, name, tmp_path):
    result = slim.run([slim.script(name), *minimal_arguments(name, tmp_path, bundle)], timeout=60)
    extra = TRAIN_ONLY[name]
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: {name} needs ") and line.endswith(f"pip install 'mner[{extra}]'"), line
