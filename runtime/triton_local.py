"""Run a real Triton Inference Server on this machine, from the ``nvidia-pytriton`` wheel, on a model repository.

The wheel ships the ``tritonserver`` binary, its libraries and the Python backend (a stub per Python
version), not the ONNX Runtime or TensorRT backends: it serves the python flavour of ``mner-triton``'s
repositories, on the CPU. Install it without its dependencies (its pins, NumPy < 2 among them, are not
the project's; only the binary and the backend are used)::

    pip install --no-deps nvidia-pytriton

What this module does that a plain ``tritonserver`` command line would not:

- a backends folder whose Python backend has the stub built for this interpreter's Python version;
- ``LD_LIBRARY_PATH``: this interpreter's ``libpython`` first (the stub links ``libpython3.X``), then the
  wheel's libraries;
- ``PYTHONPATH``: the folders given (``python_path``), then where mner and its dependencies are installed.
  The stub's C++ was built against NumPy 1's ABI: with NumPy 2 it reads tensor buffers wrongly (a BYTES
  input's lengths come out as garbage). So the first folder given must hold NumPy < 2 (``make install``
  puts one in ``.venv/triton-numpy``); mner's runtime runs on either.
- HTTP, gRPC and metrics bound to 127.0.0.1 on free ports; ``stop()`` ends the server and its stubs.

``python -m mner.runtime.triton_local REPOSITORY [--http-port 8000] [--numpy DIR]`` runs one in the foreground.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import secrets
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

logger = logging.getLogger(__name__)

INSTALL = "pip install --no-deps nvidia-pytriton"


class TritonUnavailable(RuntimeError):
    """The wheel's server cannot run here (not installed, no stub for this Python); says what to do."""


def wheel_server() -> tuple[Path, Path, Path, Path]:
    """(tritonserver binary, its libraries' folder, the Python backend's folder, the stub for this Python)."""
    spec = importlib.util.find_spec("pytriton")  # not imported: its __init__ needs the wheel's dependencies
    if spec is None or not spec.submodule_search_locations:
        raise TritonUnavailable(f"no Triton server here: {INSTALL}")
    root = Path(next(iter(spec.submodule_search_locations)))
    server = root / "tritonserver"
    binary, libs = server / "bin" / "tritonserver", root.parent / "nvidia_pytriton.libs"
    backend = server / "backends" / "python"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = server / "python_backend_stubs" / version / "triton_python_backend_stub"
    missing = [str(p) for p in (binary, libs, backend / "libtriton_python.so") if not p.exists()]
    if missing:
        raise TritonUnavailable(f"the nvidia-pytriton install lacks {missing}: reinstall it ({INSTALL})")
    if not stub.is_file():
        have = sorted(p.name for p in (server / "python_backend_stubs").iterdir())
        raise TritonUnavailable(f"nvidia-pytriton has Python-backend stubs for Python {have}, not {version}")
    return binary, libs, backend, stub


def mner_python_path() -> list[str]:
    """Folders that make this mner and its dependencies importable: where ``mner`` is, then site-packages."""
    import mner.runtime  # noqa: PLC0415

    # <folder>/mner/runtime/__init__.py, not resolved: mner/runtime may be a link into a source tree
    return [str(Path(mner.runtime.__file__).parents[2]), *site.getsitepackages()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalTriton:
    """``with LocalTriton(repository, python_path=[numpy1_dir]) as server: server.http_url``."""

    def __init__(self, repository: str | os.PathLike, *, python_path: list[str], workdir: str | os.PathLike | None = None,
                 start_timeout_s: float = 180.0, log_path: str | os.PathLike | None = None,
                 http_port: int = 0) -> None:  # fmt: skip
        self.repository = Path(repository).resolve()
        if not (self.repository.is_dir()):
            raise ValueError(f"{repository} is not a model repository directory")
        self.python_path = list(python_path)
        self._tmp = None if workdir is not None else tempfile.TemporaryDirectory(prefix="mner-triton-")
        self.workdir = Path(workdir) if workdir is not None else Path(self._tmp.name)
        self.start_timeout_s = start_timeout_s
        self.log_path = Path(log_path) if log_path is not None else self.workdir / "tritonserver.log"
        self.process: subprocess.Popen | None = None
        self.requested_http_port = http_port  # 0: a free one
        self.http_port = self.grpc_port = self.metrics_port = 0
        # The Python backend's shared-memory regions (/dev/shm, 1 MiB and up per model instance) are named after
        # this prefix, so stop() can remove what a server killed or failed at load leaves there; the backend's
        # default prefix is the same for every server, and a dead server's regions would stay until reboot.
        self.shm_prefix = f"mner_triton_{os.getpid()}_{secrets.token_hex(4)}_"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def start(self) -> LocalTriton:
        binary, libs, backend, stub = wheel_server()
        backends = self.workdir / "backends"
        python_backend = backends / "python"
        python_backend.mkdir(parents=True, exist_ok=True)
        for source in (*backend.iterdir(), stub):
            target = python_backend / source.name
            if source.name != "__pycache__" and not target.exists():
                target.symlink_to(source)
        env = dict(os.environ)
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
        env["PYTHONPATH"] = os.pathsep.join([*self.python_path, *mner_python_path()])
        self.http_port = self.requested_http_port or _free_port()
        self.grpc_port, self.metrics_port = _free_port(), _free_port()
        command = [str(binary), "--model-repository", str(self.repository), "--backend-directory", str(backends),
                   "--http-address", "127.0.0.1", "--http-port", str(self.http_port),
                   "--grpc-address", "127.0.0.1", "--grpc-port", str(self.grpc_port),
                   "--metrics-address", "127.0.0.1", "--metrics-port", str(self.metrics_port),
                   "--model-control-mode", "none", "--exit-on-error", "true", "--exit-timeout-secs", "10",
                   "--backend-config", f"python,shm-region-prefix-name={self.shm_prefix}"]  # fmt: skip
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 -- the server's, closed when it ends
        # its own session: stop() ends the server and the Python-backend stubs it started, together
        self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                status = self.process.returncode
                self.stop()  # stubs it started may outlive it
                raise RuntimeError(f"tritonserver exited with status {status} while starting:\n{self.failure()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"tritonserver was not ready within {self.start_timeout_s:.0f} s:\n{self.log_tail()}")

    def failure(self) -> str:
        """Why the server did not start: each model that did not load and its reason, read from the model table
        of the log (where a reason is one wide cell among the server's option tables), then the log's path; the
        log's last lines where the log has no such model."""
        try:
            log = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        rows = re.findall(r"^\| (\S+) +\| (\d+) +\| (UNAVAILABLE: .*?) *\|$", log, flags=re.MULTILINE)
        if not rows:
            return self.log_tail()
        reasons = [f"model {name} (version {version}): {why}" for name, version, why in rows]
        # a temporary working folder goes when the server does: its log is then no place to send the reader
        return "\n".join(reasons if self._tmp is not None else [*reasons, f"(the whole log: {self.log_path})"])

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # stubs that outlived their server
        except ProcessLookupError:
            pass
        self.process = None
        for region in self.shm_regions():  # every process that mapped them has ended
            region.unlink(missing_ok=True)

    def shm_regions(self) -> list[Path]:
        """This server's Python-backend shared-memory regions now in /dev/shm."""
        return sorted(Path("/dev/shm").glob(f"{self.shm_prefix}*"))

    def __enter__(self) -> LocalTriton:
        try:
            return self.start()
        except BaseException:
            self.__exit__()  # a server that did not start leaves no process and no temporary folder
            raise

    def __exit__(self, *exc_info) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()


def main(argv: list[str] | None = None) -> None:
    """``python -m mner.runtime.triton_local REPOSITORY [--http-port 8000] [--numpy DIR]``: serve until Ctrl+C
    (or SIGTERM)."""
    import argparse  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m mner.runtime.triton_local", description=main.__doc__)
    parser.add_argument("repository", help="a model repository mner-triton wrote (python flavour)")
    parser.add_argument("--numpy", default=str(Path(sys.prefix) / "triton-numpy"),
                        help="a folder holding NumPy < 2 for the Python-backend stub [default: %(default)s, "
                             "where make install puts it]")  # fmt: skip
    parser.add_argument("--http-port", type=int, default=8000, help="[default: %(default)s; 0: a free one]")
    args = parser.parse_args(argv)
    if not (Path(args.numpy) / "numpy").is_dir():
        parser.error(f"{args.numpy} holds no numpy: pip install --target {args.numpy} 'numpy<2'")
    versions = sorted(p.name[len("numpy-"):-len(".dist-info")] for p in Path(args.numpy).glob("numpy-*.dist-info"))
    if versions and not versions[-1].startswith("1."):
        parser.error(f"{args.numpy} holds numpy {versions[-1]}; the Python-backend stub needs numpy<2 (with NumPy 2 it "
                     f"misreads every tensor): pip install --target DIR 'numpy<2' and pass --numpy DIR")  # fmt: skip
    repository = Path(args.repository)
    if (repository / "manifest.json").is_file() and not any(repository.glob("*/config.pbtxt")):
        parser.error(f"{repository} is an mner bundle, not a model repository: write one first with "
                     f"mner-triton --engine {repository} -o triton-repo")  # fmt: skip
    if args.http_port:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", args.http_port))
            except OSError:
                parser.error(f"port {args.http_port} is in use (another server?): pick another --http-port, or 0")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # SystemExit: the with-block stops the server
    try:
        with LocalTriton(args.repository, python_path=[args.numpy], http_port=args.http_port) as server:
            logger.info("tritonserver ready: HTTP http://%s, gRPC 127.0.0.1:%d, metrics http://127.0.0.1:%d/metrics; "
                        "its log: %s; Ctrl+C stops it", server.http_url, server.grpc_port, server.metrics_port,
                        server.log_path)  # fmt: skip
            code = server.process.wait()
            parser.exit(1, f"error: tritonserver exited with status {code}:\n{server.log_tail()}\n")
    except (TritonUnavailable, RuntimeError, ValueError) as error:
        parser.exit(1, f"error: {error}\n")
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
