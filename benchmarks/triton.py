"""mner-serve against Triton (the python flavour of ``mner-triton``) in one run: same bundle, machine and clients.

    python -m mner.benchmarks.triton --engine BUNDLE -o OUTDIR [--concurrency 1,4,16,32] [--requests N] \\
        [--batch-size N] [--pictures]

Two servers on 127.0.0.1, both started by this command from the one bundle and both given the same
dynamic batch (``--batch-size`` posts, ``--max-wait-ms``):

- ``mner-serve --batch-size N --max-wait-ms W`` (a child process, ``benchmarks.loadtest.start_server``);
- the Triton Inference Server of the ``nvidia-pytriton`` wheel (``runtime.triton_local.LocalTriton``) on the
  repository ``runtime.triton_repository.write_repository`` writes with ``max_batch_size=N`` and
  ``max_queue_delay_us`` = W x 1000, its other options the library's defaults. The wheel has only the Python
  backend: the stage models are mner's ONNX Runtime runner inside Python-backend stubs, and the front model
  ``mner`` calls them through BLS, each hop a copy through shared memory. That is not Triton's native
  onnxruntime or TensorRT backend, which a full Triton (NGC container, GPU) runs.

The posts are TWITTER-2017's test posts (``--data``, read with ``runtime.conll``), words joined by spaces as raw
tweets, in file order, cycled. With ``--pictures`` (a bundle with picture stages) every post gets a real photo
(matplotlib's sample photos, scikit-image's where installed: ``benchmarks.picture_cache.photos``), each post's
bytes its own (a marker segment in the JPEG), so neither server's picture cache answers a post from another's
features (a post seen again, once the run has gone through all the posts, may be answered from it, on both).

For each concurrency C (``--concurrency``), the servers take turns (the order alternates from one C to the
next, so a drift in the machine's load does not fall on one server alone): ``--warmup`` requests (at least C),
then ``--requests`` requests, sent by C closed-loop client threads (each sends one post and waits for its
answer: ``POST /v1/tag`` to mner-serve, ``tritonclient.http`` ``infer`` on ``mner`` with TEXT [and IMAGE] to
Triton). The k-th request of the run is the same post on both servers, so their answers are compared request by
request: entities' type, text, start and end identical, scores within ``SCORE_TOLERANCE``, objects identical.
Reported per server and C: posts/s, p50 and p99 latency, errors, and the mean batch each server ran (from its
metrics), with the mismatches; ``triton.json`` and ``triton.md`` in ``-o``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from mner.runtime import clikit
from mner.runtime.serve_limits import ServeConfig

logger = logging.getLogger(__name__)

SCORE_TOLERANCE = 1e-3  # two ONNX Runtime sessions with other batch mates (other padding) round scores apart
DEFAULT_DATA = "../shared/data/twitter2017"  # the shared TWITTER-2017 copy, from the repository's root
SERVERS = ("mner-serve", "triton")
MISMATCH_EXAMPLES = 5  # kept in the report, with the post's text and both answers
ERROR_EXAMPLES = 5  # messages kept per server and concurrency


# --------------------------------------------------------------------------- posts


def load_posts(data: str | Path, split: str = "test", pictures: bool = False, limit: int | None = None) -> list[dict]:
    """The split's posts as raw tweets (``{"text"}``, ``{"text", "image"}`` with ``pictures``), at most ``limit``."""
    from mner.runtime.conll import data_file, read_conll  # noqa: PLC0415

    posts = [{"text": " ".join(post.words)} for post in read_conll(data_file(data, split))]
    posts = posts[:limit] if limit is not None else posts
    if pictures:
        for post, picture in zip(posts, distinct_pictures(len(posts))):
            post["image"] = picture
    return posts


def distinct_pictures(count: int, sources: int = 8) -> list[bytes]:
    """``count`` JPEGs of real photos (``sources`` distinct ones, cycled), each with its own bytes: the k-th has a
    marker segment (APP15, which decoders skip) naming k, so its SHA-256 is its own and a picture cache keyed by it
    misses, while decoding and the stages cost what the photo costs."""
    from mner.benchmarks.picture_cache import photos  # noqa: PLC0415

    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    bases = photos(min(count, sources))
    out = []
    for k in range(count):
        jpeg = bases[k % len(bases)]
        assert jpeg.startswith(b"\xff\xd8"), "photos() writes JPEGs"
        payload = f"mner benchmark post {k}".encode()
        out.append(jpeg[:2] + b"\xff\xef" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:])
    return out


# --------------------------------------------------------------------------- clients


class ServeClient:
    """One keep-alive HTTP/1.1 connection to mner-serve; ``tag(post)`` -> its /v1/tag answer."""

    def __init__(self, port: int, timeout_s: float) -> None:
        import http.client  # noqa: PLC0415

        from mner.benchmarks.loadtest import HOST  # noqa: PLC0415

        self._http = http.client
        self.connection = http.client.HTTPConnection(HOST, port, timeout=timeout_s)

    def tag(self, post: dict) -> dict:
        import json  # noqa: PLC0415

        from mner.benchmarks.loadtest import post_body  # noqa: PLC0415

        try:
            self.connection.request("POST", "/v1/tag", post_body(post["text"], post.get("image")),
                                    {"Content-Type": "application/json"})  # fmt: skip
            reply = self.connection.getresponse()
            body = reply.read()
        except (OSError, self._http.HTTPException):
            self.connection.close()  # the next request opens a new connection
            raise
        if reply.status != 200:
            raise RuntimeError(f"HTTP {reply.status}: {body[:300].decode(errors='replace')}")
        return json.loads(body)

    def close(self) -> None:
        self.connection.close()


class TritonClient:
    """One ``tritonclient.http`` client (not thread-safe: one per client thread); ``tag(post)`` -> ENTITIES."""

    def __init__(self, url: str, timeout_s: float) -> None:
        import tritonclient.http as http  # noqa: PLC0415

        self._http = http
        self.client = http.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)

    def tag(self, post: dict) -> dict:
        import json  # noqa: PLC0415

        import numpy as np  # noqa: PLC0415

        text = self._http.InferInput("TEXT", [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[post["text"].encode("utf-8")]], dtype=np.object_))
        inputs = [text]
        if post.get("image") is not None:
            image = self._http.InferInput("IMAGE", [1, 1], "BYTES")
            image.set_data_from_numpy(np.array([[post["image"]]], dtype=np.object_))
            inputs.append(image)
        result = self.client.infer("mner", inputs)
        return json.loads(result.as_numpy("ENTITIES")[0, 0])

    def close(self) -> None:
        self.client.close()


# --------------------------------------------------------------------------- load


class Phase:
    """What C closed-loop clients got for requests ``first`` .. ``first + count - 1`` of the run."""

    def __init__(self, first: int, count: int) -> None:
        self.first, self.count = first, count
        self.latencies: list[float] = []  # seconds, answered requests
        self.errors: list[str] = []
        self.answers: dict[int, dict] = {}  # request number -> answer
        self.seconds = 0.0

    def summary(self) -> dict:
        import numpy as np  # noqa: PLC0415

        latencies = np.array(self.latencies) * 1000
        answered = len(self.latencies)
        return {
            "requests": answered + len(self.errors),
            "answered": answered,
            "errors": len(self.errors),
            "error_examples": self.errors[:ERROR_EXAMPLES],
            "seconds": round(self.seconds, 3),
            "posts_per_s": round(answered / self.seconds, 2) if self.seconds > 0 else None,
            "latency_ms": {"p50": round(float(np.percentile(latencies, 50)), 2) if answered else None,
                           "p99": round(float(np.percentile(latencies, 99)), 2) if answered else None,
                           "mean": round(float(latencies.mean()), 2) if answered else None},  # fmt: skip
        }


def drive(make_client, posts: list[dict], *, first: int, count: int, concurrency: int, max_seconds: float) -> Phase:
    """``concurrency`` threads, each with its own client from ``make_client()``, send requests ``first`` ..
    ``first + count - 1`` (request k is post ``k % len(posts)``), one at a time each, until all are sent or
    ``max_seconds`` have passed."""
    import itertools  # noqa: PLC0415
    import threading  # noqa: PLC0415
    import time  # noqa: PLC0415

    phase = Phase(first, count)
    numbers = itertools.count(first)
    lock = threading.Lock()
    start = threading.Barrier(concurrency + 1)  # every client made before the clock starts
    deadline: list[float] = []

    def work() -> None:
        # made, used and closed in its thread: tritonclient's connections belong to the thread's gevent hub
        try:
            client = make_client()
        except Exception as error:  # noqa: BLE001 -- counted as an error; the other clients go on
            client = None
            with lock:
                phase.errors.append(f"client: {type(error).__name__}: {error}")
        start.wait()
        if client is None:
            return
        try:
            while True:
                with lock:
                    k = next(numbers)
                if k >= first + count or time.monotonic() > deadline[0]:
                    return
                began = time.perf_counter()
                try:
                    answer = client.tag(posts[k % len(posts)])
                except Exception as error:  # noqa: BLE001 -- any failure is this request's error, counted and shown
                    with lock:
                        phase.errors.append(f"request {k}: {type(error).__name__}: {error}")
                    continue
                took = time.perf_counter() - began
                with lock:
                    phase.latencies.append(took)
                    phase.answers[k] = answer
        finally:
            client.close()  # before the server stops: an open keep-alive connection delays its exit

    threads = [threading.Thread(target=work, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    deadline.append(time.monotonic() + max_seconds)
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    phase.seconds = time.perf_counter() - began
    return phase


# --------------------------------------------------------------------------- answers


def same_answer(got: dict, want: dict, tolerance: float = SCORE_TOLERANCE) -> bool:
    """Entities (type, text, start, end) and objects identical, scores within ``tolerance``; the same keys."""
    if set(got) != set(want) or got.get("objects") != want.get("objects") or got.get("image_error") != want.get("image_error"):
        return False
    ours, theirs = got.get("entities", []), want.get("entities", [])
    if [(e["type"], e["text"], e["start"], e["end"]) for e in ours] != [(e["type"], e["text"], e["start"], e["end"]) for e in theirs]:
        return False
    return all(abs(a["score"] - b["score"]) <= tolerance for a, b in zip(ours, theirs))


def compare(answers: dict[str, dict[int, dict]], posts: list[dict]) -> dict:
    """The requests both servers answered, and those whose answers differ (a few shown)."""
    serve, triton = answers["mner-serve"], answers["triton"]
    both = sorted(serve.keys() & triton.keys())
    differ = [k for k in both if not same_answer(triton[k], serve[k])]
    return {
        "compared": len(both),
        "mismatches": len(differ),
        "examples": [{"request": k, "text": posts[k % len(posts)]["text"], "mner-serve": serve[k], "triton": triton[k]}
                     for k in differ[:MISMATCH_EXAMPLES]],  # fmt: skip
    }


# --------------------------------------------------------------------------- the servers' metrics (loadtest.scrape)


def _mean_batch(before: dict[str, float], after: dict[str, float], posts: str, calls: str) -> float | None:
    """Posts per model call between two scrapes: the difference of the ``posts`` and ``calls`` samples."""
    done = after.get(calls, 0.0) - before.get(calls, 0.0)
    return round((after.get(posts, 0.0) - before.get(posts, 0.0)) / done, 2) if done > 0 else None


SERVE_BATCH = ("mner_batch_size_sum", "mner_batch_size_count")


def _triton_batch_keys(samples: dict[str, float], model: str) -> tuple[str, str]:
    """The front model's (nv_inference_count, nv_inference_exec_count) sample names (labels as Triton writes them)."""
    def find(metric: str) -> str:
        return next((name for name in samples if name.startswith(metric + "{") and f'model="{model}"' in name), metric)

    return find("nv_inference_count"), find("nv_inference_exec_count")


# --------------------------------------------------------------------------- the run


@contextlib.contextmanager
def serving_mner(bundle: Path, options: list[str], log_path: Path) -> Iterator[int]:
    """mner-serve on a free port of 127.0.0.1 (``loadtest.start_server``: ready once /readyz says so), its log in
    ``log_path``; yields the port, and stops it (SIGTERM) after."""
    from mner.benchmarks.loadtest import free_port, start_server, stop_server  # noqa: PLC0415

    port = free_port()
    with open(log_path, "wb") as log:
        try:
            process = start_server(bundle, port, *options, stderr=log)
        except RuntimeError as error:
            raise RuntimeError(f"{error}\n{log_path.read_text(errors='replace')[-3000:]}") from error
        try:
            yield port
        finally:
            stop_server(process)


@contextlib.contextmanager
def serving_triton(bundle: Path, options, triton_numpy: Path, out_dir: Path) -> Iterator[tuple[Any, dict]]:
    """The wheel's tritonserver on the repository written for ``bundle`` with ``options`` (in a folder of
    ``out_dir``, removed after: hard links to the bundle where the file system allows); its log in ``out_dir``.
    Yields (the LocalTriton, the server's metadata: name, version, extensions)."""
    import tempfile  # noqa: PLC0415

    from mner.runtime.triton_local import LocalTriton  # noqa: PLC0415
    from mner.runtime.triton_repository import write_repository  # noqa: PLC0415

    with tempfile.TemporaryDirectory(dir=out_dir, prefix="triton-repository-") as scratch:
        repository = write_repository(bundle, Path(scratch) / "repository", options)
        with LocalTriton(repository, python_path=[str(triton_numpy)], log_path=out_dir / "tritonserver.log",
                         workdir=Path(scratch) / "server") as triton:  # fmt: skip
            client = TritonClient(triton.http_url, timeout_s=60)
            try:
                metadata = client.client.get_server_metadata()
            finally:
                client.close()
            yield triton, metadata


def run_comparison(*, bundle: Path, concurrency: list[int], requests: int, warmup: int, batch_size: int,
                   max_wait_ms: float, pictures: bool, data: Path, split: str, triton_numpy: Path, out_dir: Path,
                   max_seconds: float, timeout_s: float, echo=logger.info) -> dict:  # fmt: skip
    """Both servers, every concurrency level; the report's dict (see the module's docstring)."""
    import time  # noqa: PLC0415

    from mner.benchmarks.loadtest import scrape  # noqa: PLC0415
    from mner.benchmarks.machine import machine_facts, package_version  # noqa: PLC0415
    from mner.runtime.bundle import Bundle, manifest_sha256  # noqa: PLC0415
    from mner.runtime.triton_repository import FRONT, RepositoryOptions  # noqa: PLC0415

    opened = Bundle.open(bundle, verify=False)  # each server verifies it as it loads
    if pictures and not opened.has_images:
        raise ValueError(f"--pictures: {bundle} is a text-only bundle (stages {sorted(opened.stages)}); give a bundle "
                         "with detector and vision stages, or leave --pictures out")  # fmt: skip
    check_triton(triton_numpy)
    machine = machine_facts("cpu")  # before the servers start: the load average says how idle the machine was
    phases = [(c, max(warmup, c), requests) for c in concurrency]  # (clients, warm-up requests, measured requests)
    total = sum(w + n for _, w, n in phases)
    posts = load_posts(data, split, pictures=pictures, limit=total)
    echo(f"{len(posts)} posts from {data} ({split}){', each with its own photo' if pictures else ''}; "
         f"{total} requests per server")  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    options = RepositoryOptions(max_batch_size=batch_size, max_queue_delay_us=round(max_wait_ms * 1000))
    serve_options = ["--batch-size", str(batch_size), "--max-wait-ms", str(max_wait_ms),
                     "--drain-s", "0"]  # stopping it is not measured: no need to wait for clients that left
    results: list[dict] = []
    answers: dict[str, dict[int, dict]] = {name: {} for name in SERVERS}
    started: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        clock = time.perf_counter()
        triton, metadata = stack.enter_context(serving_triton(bundle, options, triton_numpy, out_dir))
        started["triton"] = time.perf_counter() - clock
        clock = time.perf_counter()
        port = stack.enter_context(serving_mner(bundle, serve_options, out_dir / "mner-serve.log"))
        started["mner-serve"] = time.perf_counter() - clock
        echo(f"ready: mner-serve on 127.0.0.1:{port} ({started['mner-serve']:.1f} s), Triton {metadata.get('version')} "
             f"on {triton.http_url} ({started['triton']:.1f} s with writing the repository)")  # fmt: skip
        # each: a client, and the port of its Prometheus /metrics (for the mean batch)
        servers = {"mner-serve": (lambda: ServeClient(port, timeout_s), port),
                   "triton": (lambda: TritonClient(triton.http_url, timeout_s), triton.metrics_port)}  # fmt: skip
        first = 0  # request numbers run on across phases: the k-th request is the same post on both servers
        for turn, (level, warm, count) in enumerate(phases):
            for name in SERVERS if turn % 2 == 0 else SERVERS[::-1]:
                make_client, metrics_port = servers[name]
                warming = drive(make_client, posts, first=first, count=warm, concurrency=level, max_seconds=max_seconds)
                before = scrape(metrics_port)
                phase = drive(make_client, posts, first=first + warm, count=count, concurrency=level,
                              max_seconds=max_seconds)  # fmt: skip
                after = scrape(metrics_port)
                keys = SERVE_BATCH if name == "mner-serve" else _triton_batch_keys(after, FRONT)
                row = {"server": name, "concurrency": level, "warmup": warm, "warmup_errors": len(warming.errors),
                       **phase.summary(), "mean_batch": _mean_batch(before, after, *keys)}  # fmt: skip
                answers[name].update(warming.answers)
                answers[name].update(phase.answers)
                results.append(row)
                echo(f"C={level:<3d} {name:10s} {row['posts_per_s']} posts/s, p50 {row['latency_ms']['p50']} ms, "
                     f"p99 {row['latency_ms']['p99']} ms, {row['errors']} errors, mean batch {row['mean_batch']}")
            first += warm + count
    return {
        "command": "python -m mner.benchmarks.triton " + shlex.join(sys.argv[1:]),
        "bundle": {"path": str(bundle), "manifest_sha256": manifest_sha256(bundle), "stages": sorted(opened.stages),
                   "has_images": opened.has_images},
        "settings": {"concurrency": concurrency, "requests": requests, "warmup": warmup, "batch_size": batch_size,
                     "max_wait_ms": max_wait_ms, "pictures": pictures, "data": str(data), "split": split,
                     "posts": len(posts), "max_seconds": max_seconds, "timeout_s": timeout_s,
                     "score_tolerance": SCORE_TOLERANCE,
                     "mner_serve": "mner-serve --engine BUNDLE " + " ".join(serve_options),
                     "triton_repository": dataclasses.asdict(options)},
        "machine": machine,
        "versions": {"triton_server": metadata.get("version"), "triton_server_name": metadata.get("name"),
                     "tritonclient": package_version("tritonclient"),
                     "nvidia_pytriton": package_version("nvidia-pytriton"),
                     "triton_numpy": _numpy_version(triton_numpy), "mner": package_version("mner")},
        "start_s": {name: round(seconds, 1) for name, seconds in started.items()},
        "results": results,
        "agreement": compare(answers, posts),
        "logs": {"mner-serve": str(out_dir / "mner-serve.log"), "triton": str(out_dir / "tritonserver.log")},
    }  # fmt: skip


def check_triton(triton_numpy: Path) -> None:
    """RuntimeError saying what to install where this machine cannot run the Triton side."""
    from mner.runtime.triton_local import wheel_server  # noqa: PLC0415

    if not (triton_numpy / "numpy").is_dir():
        raise RuntimeError(f"--triton-numpy {triton_numpy} holds no numpy: pip install --target {triton_numpy} "
                           "'numpy<2' (Triton's Python-backend stub was built against NumPy 1)")  # fmt: skip
    try:
        import tritonclient.http  # noqa: F401, PLC0415
    except ImportError:
        raise RuntimeError("no Triton client here: pip install 'tritonclient[http]'") from None
    wheel_server()  # TritonUnavailable (a RuntimeError) names the wheel to install


def _numpy_version(folder: Path) -> str | None:
    """The NumPy version in the stub's folder (its dist-info's name), without importing it."""
    found = sorted(folder.glob("numpy-*.dist-info"))
    return found[0].name.removeprefix("numpy-").removesuffix(".dist-info") if found else None


# --------------------------------------------------------------------------- the report


HOW_TO_READ = """\
- **Triton here is the python flavour on the CPU**: the `nvidia-pytriton` wheel's `tritonserver` has only the
  Python backend, so each stage model is mner's own ONNX Runtime runner inside a Python-backend stub, and the front
  model `mner` (the runtime's preprocessing, Viterbi and spans) calls the stages through BLS: every post crosses
  two more process boundaries (front stub -> server -> stage stub and back) than in mner-serve, as copies through
  shared memory. It measures what that deployment costs, not Triton's native onnxruntime or TensorRT backends
  (a full Triton, NGC container, GPU: `mner-triton --flavour native`), which this machine cannot run.
- Both run the same graphs with the same ONNX Runtime settings and the same dynamic batch (`--batch-size`,
  `--max-wait-ms`); mean batch is posts per model call, from each server's metrics (mner-serve:
  `mner_batch_size`; Triton: the front model's `nv_inference_count / nv_inference_exec_count`).
- Closed loop: each of C clients sends one post and waits for its answer, so posts/s ~ C / latency; past the
  cores' capacity more clients add latency, not throughput. The clients run in this process on the same cores as
  the servers: compare the two servers with each other, not with a dedicated load generator's numbers.
- Mismatches: the same request (the k-th of the run is the same post on both) answered differently by the two
  servers: other entities or objects, or a score more than the tolerance apart. Expected: 0.
"""


def markdown(report: dict) -> str:
    settings, machine, versions = report["settings"], report["machine"], report["versions"]
    by = {(row["server"], row["concurrency"]): row for row in report["results"]}
    lines = [
        "# mner-serve vs Triton (python flavour), one bundle, one machine",
        "",
        f"Command: `{report['command']}`",
        "",
        f"- Bundle: `{report['bundle']['path']}` (manifest sha256 `{report['bundle']['manifest_sha256'][:16]}...`, "
        f"stages {', '.join(report['bundle']['stages'])})",
        f"- Posts: the first {settings['posts']} of {settings['data']} ({settings['split']}), words joined by spaces"
        + (", each with its own photo" if settings["pictures"] else ", text only"),
        f"- Per server and concurrency: {settings['requests']} requests after max(C, {settings['warmup']}) warm-up "
        f"requests (at most {settings['max_seconds']:.0f} s each)",
        f"- mner-serve: `{settings['mner_serve']}`; Triton: `write_repository(..., RepositoryOptions("
        f"max_batch_size={settings['batch_size']}, max_queue_delay_us={settings['triton_repository']['max_queue_delay_us']}))`"
        f", {settings['triton_repository']['front_instances']} front and {settings['triton_repository']['stage_instances']} "
        "stage instance(s) each",
        f"- Machine: {machine['cpu']}, {machine['usable_cores']} usable cores, {machine['memory_gib']} GiB, load average "
        f"{machine['load_average']} before the start; {machine['os']}, Python {machine['python']}",
        f"- Versions: Triton server {versions['triton_server']} (nvidia-pytriton {versions['nvidia_pytriton']}, NumPy "
        f"{versions['triton_numpy']} for its stub), tritonclient {versions['tritonclient']}, onnxruntime "
        f"{machine['packages'].get('onnxruntime')}, mner {versions['mner']}",
        f"- Start-up: mner-serve {report['start_s'].get('mner-serve')} s, Triton {report['start_s'].get('triton')} s "
        "(writing the repository included)",
        "",
        "| C | server | answered | errors | seconds | posts/s | p50 ms | p99 ms | mean batch | Triton/mner-serve posts/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for level in settings["concurrency"]:
        for name in SERVERS:
            row = by.get((name, level))
            if row is None:
                continue
            ratio = ""
            if name == "triton" and row["posts_per_s"] and (by.get(("mner-serve", level)) or {}).get("posts_per_s"):
                ratio = f"{row['posts_per_s'] / by[('mner-serve', level)]['posts_per_s']:.2f}x"
            lines.append(f"| {level} | {name} | {row['answered']} | {row['errors']} | {row['seconds']:.1f} | "
                         f"{row['posts_per_s']} | {row['latency_ms']['p50']} | {row['latency_ms']['p99']} | "
                         f"{row['mean_batch']} | {ratio} |")  # fmt: skip
    agreement = report["agreement"]
    lines += ["", f"Answers compared request by request: {agreement['compared']}; **mismatches: {agreement['mismatches']}** "
              f"(scores within {settings['score_tolerance']:g})."]  # fmt: skip
    for example in agreement["examples"]:
        lines.append(f"- request {example['request']} `{example['text']}`: mner-serve {example['mner-serve']}, "
                     f"Triton {example['triton']}")  # fmt: skip
    errors = [(row["server"], row["concurrency"], message) for row in report["results"] for message in row["error_examples"]]
    if errors:
        lines += ["", "Errors (first of each run):"]
        lines += [f"- {name}, C={level}: {message}" for name, level, message in errors]
    lines += ["", "## How to read", "", HOW_TO_READ]
    return "\n".join(lines)


def write_report(report: dict, out_dir: Path) -> dict[str, Path]:
    import json  # noqa: PLC0415

    paths = {"json": out_dir / "triton.json", "markdown": out_dir / "triton.md"}
    paths["json"].write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["markdown"].write_text(markdown(report), encoding="utf-8")
    return paths


# --------------------------------------------------------------------------- command line


def _levels(ctx, param, value: str) -> list[int]:
    try:
        levels = [int(item) for item in value.split(",") if item.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated whole numbers such as 1,4,16,32, got {value!r}") from None
    if not levels or any(level < 1 for level in levels):
        raise click.BadParameter(f"expected one or more client counts >= 1, got {value!r}")
    if len(set(levels)) != len(levels):
        raise click.BadParameter(f"each client count once, got {value!r}")
    return levels


@clikit.command()
@clikit.option("--engine", "bundle", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
               help="The bundle directory mner-export wrote; both servers serve it.")
@clikit.option("--output", "-o", "out_dir", required=True, hidden_aliases=("--out",),
               type=click.Path(file_okay=False, path_type=Path),
               help="The report folder: triton.json, triton.md, and both servers' logs.")
@clikit.option("--concurrency", default="1,4,16,32", callback=_levels,
               help="Closed-loop client threads: a comma-separated list, each measured on both servers.")
@clikit.option("--requests", type=click.IntRange(min=1), default=500, help="Measured requests per server and concurrency.")
@clikit.option("--warmup", type=click.IntRange(min=0), default=20,
               help="Untimed requests before each measurement (at least the concurrency).")
@clikit.option("--batch-size", type=click.IntRange(min=1), default=ServeConfig.max_batch,
               help="The largest dynamic batch, in posts, of both: mner-serve --batch-size, Triton max_batch_size.")
@clikit.option("--max-wait-ms", type=click.FloatRange(min=0), default=ServeConfig.max_wait_ms,
               help="How long a batch waits for more posts, on both: mner-serve --max-wait-ms, Triton's "
                    "max_queue_delay_microseconds (mner-serve's default).")
@clikit.option("--pictures", is_flag=True,
               help="Every post with its own real photo (a bundle with picture stages); text only without it.")
@clikit.option("--data", type=click.Path(exists=True, path_type=Path), default=DEFAULT_DATA,
               help="TWITTER-format CoNLL data: a folder with train.txt, valid.txt and test.txt (its --split), or one file.")
@clikit.option("--split", type=click.Choice(clikit.SPLITS), default="test", help="Which file of a --data folder.")
@clikit.option("--triton-numpy", type=click.Path(file_okay=False, path_type=Path),
               default=str(Path(sys.prefix) / "triton-numpy"),
               help="A folder holding NumPy < 2 for Triton's Python-backend stub (make install puts it there).")
@clikit.option("--max-seconds", type=click.FloatRange(min=1), default=600.0,
               help="At most this long per server and concurrency (warm-up and measurement each).")
@clikit.option("--timeout-s", type=click.FloatRange(min=0, min_open=True), default=120.0,
               help="A request not answered by then is an error.")
@clikit.verbose_option()
def triton_bench_command(bundle: Path, out_dir: Path, verbose: bool, **options) -> None:
    """mner-serve vs Triton (python flavour, CPU) on one bundle: posts/s, p50/p99 latency, errors and answer
    mismatches per number of closed-loop clients. Writes triton.json and triton.md under --output."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(message)s")
    try:
        report = run_comparison(bundle=bundle, out_dir=out_dir, echo=lambda line: click.echo(line, err=True), **options)
    except (ValueError, RuntimeError) as error:
        raise click.ClickException(str(error)) from error
    paths = write_report(report, out_dir)
    click.echo(f"mismatches: {report['agreement']['mismatches']} of {report['agreement']['compared']} compared; "
               f"errors: {sum(row['errors'] for row in report['results'])}")  # fmt: skip
    click.echo(f"report: {paths['markdown']} and {paths['json']}")


if __name__ == "__main__":
    triton_bench_command()
