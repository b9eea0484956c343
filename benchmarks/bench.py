"""mner-bench's measurements: one bundle, several backends, several batch sizes.

Each backend is measured in a process of its own (``python -m mner.benchmarks.bench
worker JOB RESULT``), so that its bundle load time is a cold start and its peak memory
is its own. A worker opens the bundle as a ``Pipeline``, tags the workload once per
batch size with ``pipeline.clock`` on, and writes every batch's wall time, every
step's time and the tags of the first pass; it reports each batch on its stdout as it
goes, which the parent turns into one progress bar (``runtime.progress``). The parent
(``run_bench``) turns the measurements into percentiles, throughput and parity, and
times the CRF decoders itself.

Before any backend loads, the parent hashes every file of the bundle once (what a first
start pays, reported as such) and so leaves the bundle verification cache warm: every
backend's load time is then that of a later start, the same for all of them, however the
backends are ordered. ``--no-verify`` skips hashing there and in every worker.

Backends: ``backends.BACKENDS`` (re-exported here).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from mner.benchmarks.backends import BACKENDS, REFERENCE, BackendSpec
from mner.benchmarks.machine import machine_facts
from mner.runtime.batching import DEFAULT_SORT_WINDOW, PaddingCount, length_order, post_windows, simulated_padding, sort_key
from mner.runtime.bundle import MANIFEST_NAME, Bundle, VerificationCache, check_files, read_manifest, verification_cache_dir
from mner.runtime.conll import data_file, evaluate_entities, read_conll
from mner.runtime.pipeline import Pipeline, StageClock, grid_cell_bounds
from mner.runtime.progress import progress as progress_bar
from mner.runtime.runners import Runner

__all__ = ["BACKENDS", "REFERENCE", "BackendSpec", "run_bench", "run_worker", "measure_pipeline", "open_pipeline"]

WORKER_ERROR = "mner-bench worker error: "
# A worker writes this and a post count on a line of its stdout after each batch (warm-up ones too).
WORKER_PROGRESS = "mner-bench worker batch: "
STEPS = ("images", "detector", "vision", "encode", "tagger", "decode")  # StageClock's names, in pipeline order
PERCENTILES = (50, 90, 99)
SPREAD = (10, 90)  # the plots' spread: p10-p90 over the timed batches


@dataclass(frozen=True)
class BenchPost:
    """One post of the workload: its words, gold tags, picture path."""

    words: list[str]
    tags: list[str]
    image: str | None


def load_workload(data: Path | None, images_dir: Path | None, max_posts: int | None, scratch: Path,
                  split: str = "test") -> tuple[list[BenchPost], str]:  # fmt: skip
    """(posts, a description). ``data``: a TWITTER-format folder (its ``split``) or one CoNLL
    file (``conll.data_file``); without it, the built-in sample's ``split``, pictures included."""
    if data is None:
        from mner.train.sample import write_sample_corpus  # noqa: PLC0415 -- numpy and OpenCV only

        corpus = write_sample_corpus(scratch / "sample", seed=0)
        data, images_dir = data_file(corpus, split), corpus / "images"
        source = f"the built-in sample's {split} split (synthetic posts and pictures, seed 0)"
    else:
        data = data_file(data, split)
        source = str(data)
    try:
        posts = read_conll(data)
    except OSError as error:
        raise ValueError(f"--data {data}: {error.strerror or error}") from None
    if not posts:
        raise ValueError(f"--data {data} holds no posts")
    if max_posts is not None:
        posts = posts[:max_posts]
    workload = []
    for post in posts:
        image = None
        if images_dir is not None and post.image_id:
            path = images_dir / f"{post.image_id}.jpg"
            image = str(path) if path.is_file() else None
        workload.append(BenchPost(list(post.words), list(post.tags), image))
    return workload, source


# --------------------------------------------------------------------------- runners


class WindowPaddedTagger(Runner):
    """The tagger as the reference feeds it: every batch padded to ``length`` word-pieces,
    and every post given all the grid's cells (with or without a picture).

    Delegates to ``inner``; pads input_ids (with ``pad_id``), attention_mask and aug_ids,
    and the grid (with zeros: fewer cells come only in batches without pictures), and
    cuts the emissions back to the batch's own length.
    """

    def __init__(self, inner: Runner, length: int, pad_id: int) -> None:
        super().__init__(inner.stage)
        self.inner, self.length, self.pad_id = inner, length, pad_id
        self.backend = inner.backend
        self.cells = grid_cell_bounds(inner)[1]

    def _activate(self) -> None:
        self.inner.activate()

    def _deactivate(self) -> None:
        self.inner.deactivate()

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        length = feed["input_ids"].shape[1]
        extra = self.length - length
        if extra > 0:
            feed = dict(feed)
            for name, value in (("input_ids", self.pad_id), ("attention_mask", 0), ("aug_ids", 0)):
                feed[name] = np.pad(feed[name], ((0, 0), (0, extra)), constant_values=value)
        if feed["grid"].shape[1] < self.cells:
            feed = dict(feed, grid=np.pad(feed["grid"], ((0, 0), (0, self.cells - feed["grid"].shape[1]), (0, 0))))
        outputs = self.inner.infer(feed)
        return {"emissions": np.ascontiguousarray(outputs["emissions"][:, :length])}


def _half_module(module: Any) -> Any:
    """A module run in FP16 on FP32 inputs, giving FP32 outputs (integer tensors pass through)."""
    import torch  # noqa: PLC0415

    class Half(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = module.half()

        def forward(self, *inputs):
            outputs = self.module(*[x.half() if x.is_floating_point() else x for x in inputs])
            if isinstance(outputs, torch.Tensor):
                return outputs.float()
            return tuple(o.float() if o.is_floating_point() else o for o in outputs)

    return Half()


def open_pipeline(bundle: Path, spec: BackendSpec, *, checkpoint: Path | None, device: str, threads: int | None,
                  resnet_weights: Path | None = None, detector_weights: Path | None = None,
                  verify: bool = True) -> Pipeline:  # fmt: skip
    """The bundle as a Pipeline on one backend (for ``torch`` backends, rebuilt from the checkpoint);
    ``verify=False`` trusts the bundle's files without hashing them."""
    options: dict[str, Any] = {}
    if spec.engine == "ort":
        options = {"precision": spec.precision, "threads": threads}
    elif spec.engine == "torch":
        if threads is not None:
            import torch  # noqa: PLC0415

            torch.set_num_threads(threads)
        options = {"checkpoint": checkpoint, "resnet_weights": resnet_weights, "detector_weights": detector_weights}
    # No picture cache: every pass repeats the same pictures, and the bench times the stages, not look-ups.
    pipeline = Pipeline.from_bundle(bundle, backend=spec.engine, device=None if spec.engine == "trt" else device,
                                    verify=verify, picture_cache_bytes=0, **options)  # fmt: skip
    if spec.engine == "torch" and spec.precision == "fp16":
        for runner in pipeline.runners:
            runner.module = _half_module(runner.module).to(device).eval()
    if spec.pad_to_window:
        pipeline.tagger = WindowPaddedTagger(pipeline.tagger, pipeline.encoder.max_length, pipeline.encoder.pad_id).activate()
    return pipeline


# --------------------------------------------------------------------------- measuring


def batch_plan(posts: int, batch_size: int, warmup: int, min_batches: int) -> tuple[list[int], list[int]]:
    """The posts of each warm-up batch and of each timed batch ``measure_pipeline`` runs."""
    sizes = [min(batch_size, posts - start) for start in range(0, posts, batch_size)]
    passes = max(1, -(-min_batches // len(sizes))) if sizes else 0
    return (sizes * warmup)[:warmup], sizes * passes


def measure_pipeline(pipeline: Pipeline, posts: Sequence[BenchPost], batch_size: int, *, warmup: int = 3,
                     min_batches: int = 20, pictures: Mapping[str, bytes] | None = None,
                     on_batch: Callable[[int], None] | None = None, sort_window: int = 1) -> dict[str, Any]:  # fmt: skip
    """Tag ``posts`` in batches of ``batch_size``: ``warmup`` untimed batches, then whole passes
    until at least ``min_batches`` batches were timed (``batch_plan`` lists them);
    ``on_batch(posts)`` after each batch, warm-up ones included. ``sort_window``: the posts
    of each run of that many are taken in order of their word-pieces, as mner-tag takes them
    (``runtime.batching``; the batches are cut from the whole reordered list, which is
    mner-tag's cut wherever the batch size divides the window); 1: input order.

    Returns the wall seconds of every timed batch ("e2e_s"), each step's seconds per batch
    ("steps_s"), the posts per batch, the first pass's word tags in input order ("tags"; None
    for a post the pipeline refused, "errors" counts them) and the tagger's word-pieces in
    the first pass, real and padded ("padding": as measured, and as input order gives them).
    """
    if batch_size < 1:
        raise ValueError(f"batch sizes must be >= 1, got {batch_size}")
    pictures = pictures or {}
    windows = [post_windows(pipeline, post.words) for post in posts]
    order = length_order([sort_key(w, post.image is not None) for w, post in zip(windows, posts)], sort_window)
    ordered = [posts[i] for i in order]
    batches = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    pipeline.batch_size = batch_size
    clock = pipeline.clock = StageClock()

    def run(batch: Sequence[BenchPost]):
        images = [pictures.get(post.image) if post.image else None for post in batch]
        return pipeline.tag_words([post.words for post in batch], images)

    def done(batch: Sequence[BenchPost]) -> None:
        if on_batch is not None:
            on_batch(len(batch))

    try:
        for batch in (batches * warmup)[:warmup]:
            run(batch)
            done(batch)
        clock.reset()
        e2e, steps, sizes, tags, errors = [], {step: [] for step in STEPS}, [], [], 0
        padding = pipeline.padding = PaddingCount()
        first_pass = True
        while first_pass or len(e2e) < min_batches:
            for batch in batches:
                started = time.perf_counter()
                results = run(batch)
                e2e.append(time.perf_counter() - started)
                done(batch)  # outside the timed span
                seconds = clock.reset()
                for step in STEPS:
                    steps[step].append(seconds.get(step, 0.0))
                sizes.append(len(batch))
                if first_pass:
                    tags += [result.tags if result.ok else None for result in results]
                    errors += sum(not result.ok for result in results)
            first_pass = False
            pipeline.padding = None
    finally:
        pipeline.clock = pipeline.padding = None
    in_input_order = [None] * len(posts)
    for position, post_tags in zip(order, tags):
        in_input_order[position] = post_tags
    return {"batch_size": batch_size, "e2e_s": e2e, "steps_s": steps, "posts": sizes, "tags": in_input_order,
            "errors": errors, "sort_window": sort_window,
            "padding": _padding_report(pipeline, padding, windows, batch_size, sort_window)}  # fmt: skip


def _padding_report(pipeline: Pipeline, measured: PaddingCount, windows: list[list[int]], batch_size: int,
                    sort_window: int) -> dict[str, Any]:  # fmt: skip
    """The first pass's tagger pieces, real and padded, as measured ("measured") and as input order gives them
    ("input_order": simulated by batching.padded_pieces where the posts were reordered, else the measured)."""
    tagger = pipeline.tagger
    if isinstance(tagger, WindowPaddedTagger):  # the runner pads every window to the model's window after counting
        measured.padded = measured.windows * tagger.length
    unsorted = measured
    if sort_window > 1:
        most = min(batch_size, tagger.axis_bounds("batch")[1])
        unsorted = simulated_padding(windows, range(len(windows)), batch_size, most, tagger.axis_bounds("sequence")[0])
    return {"measured": measured.to_json(), "input_order": unsorted.to_json()}


class _GpuMemory:
    """Peak GPU memory used while it runs: torch's allocator when torch ran, else nvidia-smi polled."""

    def __init__(self, device: str) -> None:
        self.active = device == "cuda"
        self.baseline = self.peak = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _used_mib(self) -> float | None:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                                 capture_output=True, text=True, timeout=5, check=True).stdout  # fmt: skip
            return float(out.strip().splitlines()[0])
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return None

    def __enter__(self) -> _GpuMemory:
        if self.active:
            self.baseline = self.peak = self._used_mib()
            if self.baseline is not None:
                self._thread = threading.Thread(target=self._poll, daemon=True)
                self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            used = self._used_mib()
            if used is not None:
                self.peak = max(self.peak or 0.0, used)

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def result(self) -> dict[str, Any] | None:
        if not self.active:
            return None
        if "torch" in sys.modules and sys.modules["torch"].cuda.is_initialized():
            torch = sys.modules["torch"]
            return {"peak_mib": torch.cuda.max_memory_allocated() / 2**20, "how": "torch.cuda.max_memory_allocated"}
        if self.peak is None:
            return {"peak_mib": None, "how": "nvidia-smi unavailable"}
        return {"peak_mib": self.peak - self.baseline, "how": "nvidia-smi memory.used, peak minus before loading"}


def run_worker(job: dict[str, Any], on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
    """One backend, every batch size: what a worker process writes (``on_batch``: see measure_pipeline)."""
    spec = BACKENDS[job["backend"]]
    posts = [BenchPost(**post) for post in job["posts"]]
    pictures = {path: Path(path).read_bytes() for path in {post.image for post in posts if post.image}}
    path_or_none = lambda value: Path(value) if value else None  # noqa: E731
    with _GpuMemory(job["device"] if spec.engine != "trt" else "cuda") as gpu:
        started = time.perf_counter()
        pipeline = open_pipeline(Path(job["bundle"]), spec, checkpoint=path_or_none(job.get("checkpoint")),
                                 device=job["device"], threads=job.get("threads"),
                                 resnet_weights=path_or_none(job.get("resnet_weights")),
                                 detector_weights=path_or_none(job.get("detector_weights")),
                                 verify=job.get("verify", True))  # fmt: skip
        load_s = time.perf_counter() - started
        with pipeline:
            # The runtime's backends take posts as mner-tag does; the reference models in input order.
            sort_window = job.get("sort_window", 1) if spec.engine != "torch" else 1
            runs = [measure_pipeline(pipeline, posts, size, warmup=job["warmup"], min_batches=job["min_batches"],
                                     pictures=pictures, on_batch=on_batch, sort_window=sort_window)
                    for size in job["batch_sizes"]]  # fmt: skip
    return {
        "backend": spec.name,
        "load_s": load_s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
        "gpu_memory": gpu.result(),
        "runs": runs,
    }


def run_in_process(job: dict[str, Any], scratch: Path, on_batch: Callable[[int], None] | None = None,
                   python: str = sys.executable) -> dict[str, Any]:  # fmt: skip
    """run_worker in a fresh process; a failure raises RuntimeError with the worker's last words.

    The worker's progress lines (stdout) are passed to ``on_batch`` as they come; its stderr
    goes to a file (a pipe nobody reads while the worker runs could fill and stall it).
    """
    job_path, result_path = scratch / f"{job['backend']}.job.json", scratch / f"{job['backend']}.result.json"
    job_path.write_text(json.dumps(job))
    other_output = []
    with tempfile.TemporaryFile(mode="w+", dir=scratch) as stderr:
        process = subprocess.Popen([python, "-m", "mner.benchmarks.bench", "worker", str(job_path), str(result_path)],
                                   stdout=subprocess.PIPE, stderr=stderr, text=True)  # fmt: skip
        with process:
            for line in process.stdout:
                if line.startswith(WORKER_PROGRESS):
                    if on_batch is not None:
                        on_batch(int(line[len(WORKER_PROGRESS):]))
                else:
                    other_output.append(line)
        stderr.seek(0)
        output = (stderr.read() or "".join(other_output)).strip()
    if process.returncode != 0 or not result_path.is_file():
        if WORKER_ERROR in output:
            raise RuntimeError(f"backend {job['backend']}: {output.split(WORKER_ERROR, 1)[1].strip()}")
        tail = "\n".join(output.splitlines()[-15:])
        raise RuntimeError(f"backend {job['backend']}: the measuring process failed (exit {process.returncode}):\n{tail}")
    return json.loads(result_path.read_text())


# --------------------------------------------------------------------------- summarising


def _spread(values: np.ndarray) -> dict[str, float]:
    return {"min": float(values.min()), **{f"p{p}": float(np.percentile(values, p)) for p in sorted({*SPREAD, 50})},
            "max": float(values.max())}  # fmt: skip


def summarise_run(run: Mapping[str, Any]) -> dict[str, Any]:
    """Percentiles (end to end and per step), throughput and mean step times of one (backend, batch size).

    Latency, step times and each batch's own posts/s ("throughput_batches_posts_s") are over
    the timed batches of the full batch size ("latency_batches" of them): a pass's last,
    smaller batch would otherwise be the fastest "batch of 32" (with 100 posts, a quarter of
    them) and stretch the spread; it is left out there whenever a full batch exists.
    Throughput ("throughput_posts_s", "tagger_posts_s") is all posts over all timed seconds.
    The spread the plots draw: p10-p90 of latency and of each batch's posts/s.
    """
    e2e = np.asarray(run["e2e_s"])
    sizes = np.asarray(run["posts"])
    full = sizes == run["batch_size"]
    if not full.any():  # fewer posts than one batch: the one (partial) batch size is all there is
        full = np.ones_like(full, dtype=bool)
    posts = int(sizes.sum())
    timed = {step: np.asarray(values)[full] * 1e3 for step, values in run["steps_s"].items() if np.sum(values) > 0}
    tagger = float(np.sum(run["steps_s"]["tagger"]))
    latency_s = e2e[full]
    latency = {f"p{p}": float(np.percentile(latency_s, p) * 1e3) for p in sorted({*SPREAD, *PERCENTILES})}
    return {
        "batches": len(e2e),
        "posts": posts,
        "latency_batches": int(full.sum()),
        "latency_ms": {"mean": float(latency_s.mean() * 1e3), "min": float(latency_s.min() * 1e3), **latency,
                       "max": float(latency_s.max() * 1e3)},  # fmt: skip
        "throughput_posts_s": posts / float(e2e.sum()),
        "throughput_batches_posts_s": _spread(sizes[full] / latency_s),
        "tagger_posts_s": posts / tagger if tagger > 0 else None,
        "steps_ms": {step: float(values.mean()) for step, values in timed.items()},
        "steps_percentiles_ms": {step: {f"p{p}": float(np.percentile(values, p)) for p in PERCENTILES}
                                 for step, values in timed.items()},  # fmt: skip
        "errors": run["errors"],
        "sort_window": run.get("sort_window", 1),
        "padding": run.get("padding"),  # absent from reports of an mner-bench before issue 15
    }


def agreement(reference: Sequence[list[str] | None], tags: Sequence[list[str] | None]) -> dict[str, Any]:
    """Word-level tag agreement over the posts both tagged, and how many posts differ anywhere."""
    if len(reference) != len(tags):
        raise ValueError(f"the two runs tagged {len(reference)} and {len(tags)} posts")
    same = words = differing = compared = 0
    for ref, got in zip(reference, tags):
        if ref is None or got is None:
            continue
        compared += 1
        matches = sum(a == b for a, b in zip(ref, got))
        same, words = same + matches, words + len(ref)
        differing += matches != len(ref) or len(ref) != len(got)
    return {"word_agreement": same / words if words else None, "words": words, "posts_compared": compared,
            "posts_differing": differing}  # fmt: skip


def entity_f1(posts: Sequence[BenchPost], tags: Sequence[list[str] | None]) -> float:
    """Micro entity F1 against the workload's gold tags (a refused post counts as all O)."""
    predicted = [t if t is not None else ["O"] * len(p.words) for p, t in zip(posts, tags)]
    return evaluate_entities([p.tags for p in posts], predicted)["micro"]["f1"]


def decode_timings(batch_sizes: Sequence[int], num_tags: int, repeats: int = 15) -> dict[str, Any]:
    """Milliseconds per batch of the reference's CRF decoding (pytorch-crf) and mner's, at L = 64."""
    from mner.benchmarks import viterbi as viterbi_bench  # noqa: PLC0415
    from mner.runtime.viterbi import native_available, viterbi_decode  # noqa: PLC0415

    rng = np.random.default_rng(0)
    rows = {}
    for size in batch_sizes:
        inputs = viterbi_bench.make_inputs(rng, size, num_tags=num_tags)
        decoders: dict[str, Callable] = {"mner": lambda inputs=inputs: viterbi_decode(**inputs)}
        reference = viterbi_bench.pytorch_crf_decoder(inputs)
        if reference is not None:
            decoders["pytorch-crf"] = reference
        viterbi_bench.check_agreement(inputs, decoders)
        rows[str(size)] = viterbi_bench.time_decoders(decoders, repeats=repeats, minimum_seconds=0.02)
    return {"sequence_length": viterbi_bench.SEQ_LENGTH, "num_tags": num_tags,
            "mner_decoder": "native" if native_available() else "numpy", "ms": rows}  # fmt: skip


def verify_bundle(bundle_path: Path) -> float:
    """Hash every file of the bundle, as a first start does, and leave the verification cache warm.

    Returns the seconds it took. A fresh cache entry, not the one on disk: the time is the
    full check's whatever the cache held, and what it records is what the workers find.
    """
    folder = verification_cache_dir()
    cache = VerificationCache(folder, bundle_path) if folder is not None else None
    started = time.perf_counter()
    check_files(bundle_path, read_manifest(bundle_path), hashes=True, cache=cache)
    return time.perf_counter() - started


def bundle_facts(bundle_path: Path, verify: bool = True) -> dict[str, Any]:
    """What the report says about the bundle; ``verify``: hash it first (``verify_bundle``), timed as ``verify_s``."""
    verify_s = verify_bundle(bundle_path) if verify else None
    bundle = Bundle.open(bundle_path, verify=False)
    config = bundle.config
    files = [p for p in bundle_path.rglob("*") if p.is_file()]
    return {
        "path": str(bundle_path),
        "verify_s": verify_s,
        "stages": sorted(bundle.stages),
        "size_mib": round(sum(p.stat().st_size for p in files) / 2**20, 1),
        "model": {key: config.get(key) for key in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                   "intermediate_size", "max_length", "fusion", "augmentation")},  # fmt: skip
        "checkpoint": bundle.manifest["model"]["checkpoint"],
        "window": bundle.text_encoder().max_length,
        "num_tags": bundle.scheme.num_tags,
    }


def run_bench(
    bundle: Path,
    backends: Sequence[str],
    batch_sizes: Sequence[int],
    *,
    data: Path | None = None,
    split: str = "test",
    images_dir: Path | None = None,
    checkpoint: Path | None = None,
    resnet_weights: Path | None = None,
    detector_weights: Path | None = None,
    device: str = "cpu",
    threads: int | None = None,
    warmup: int = 3,
    min_batches: int = 20,
    max_posts: int | None = None,
    verify: bool = True,
    sort_window: int = DEFAULT_SORT_WINDOW,
    progress: bool | None = True,
    command: str = "",
    echo: Callable[[str], None] = print,
    measure: Callable[..., dict[str, Any]] = run_in_process,
) -> dict[str, Any]:
    """Measure every backend and return the report (``report.write_report`` writes it).

    ``measure(job, scratch, on_batch)`` measures one backend (default: in a fresh process);
    ``progress``: one bar (or periodic log line) over every batch of every backend, as
    ``runtime.progress.progress``'s ``enabled``; ``verify=False`` trusts the bundle;
    ``sort_window``: the runtime's backends (not torch's) take posts ordered by length in
    windows of that many, as mner-tag does (1: input order).
    """
    problems = check_request(bundle, backends, batch_sizes, device, checkpoint, data=data, split=split)
    if isinstance(sort_window, bool) or not isinstance(sort_window, int) or sort_window < 1:
        problems.append(f"sort_window must be a positive int (1: input order), got {sort_window!r}")
    if problems:
        raise ValueError("; ".join(problems))
    facts = bundle_facts(bundle, verify=verify)
    machine = machine_facts(device)  # before measuring: the load average says how idle the machine was
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    scratch = Path(tempfile.mkdtemp(prefix="mner-bench-"))
    try:
        posts, source = load_workload(data, images_dir, max_posts, scratch, split)
        plans = [batch_plan(len(posts), size, warmup, min_batches) for size in batch_sizes]
        total = len(backends) * sum(sum(warm) + sum(timed) for warm, timed in plans)
        measured = {}
        with progress_bar(total, desc="mner-bench", unit="post", enabled=progress) as bar:
            for name in backends:
                echo(f"measuring {name} ({BACKENDS[name].description}) at batch sizes {', '.join(map(str, batch_sizes))} ...")
                bar.set_postfix(backend=name)
                job = {"bundle": str(bundle), "backend": name, "checkpoint": _str(checkpoint), "device": device,
                       "threads": threads, "resnet_weights": _str(resnet_weights), "detector_weights": _str(detector_weights),
                       "batch_sizes": list(batch_sizes), "warmup": warmup, "min_batches": min_batches, "verify": verify,
                       "sort_window": sort_window,
                       "posts": [asdict(post) for post in posts]}  # fmt: skip
                measured[name] = measure(job, scratch, bar.update)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    echo("timing the CRF decoders ...")
    decode = decode_timings(batch_sizes, facts["num_tags"])
    return build_report(measured, posts, source, facts, decode, backends, batch_sizes, command=command,
                        machine=machine, started=started,
                        settings={"device": device, "threads": threads, "warmup": warmup, "min_batches": min_batches,
                                  "max_posts": max_posts, "images_dir": _str(images_dir), "verify": verify,
                                  "sort_window": sort_window})  # fmt: skip


def _str(path: Path | None) -> str | None:
    return str(path) if path is not None else None


def check_request(bundle: Path, backends: Sequence[str], batch_sizes: Sequence[int], device: str,
                  checkpoint: Path | None, *, data: Path | None = None, split: str = "test") -> list[str]:  # fmt: skip
    """Every problem with a request, before anything is measured."""
    problems = []
    if data is not None:
        try:
            data_file(data, split)
        except ValueError as error:
            problems.append(str(error))
    if not (Path(bundle) / MANIFEST_NAME).is_file():
        problems.append(f"--engine {bundle}: not an mner bundle (no {MANIFEST_NAME}); write one with mner-export")
    unknown = [name for name in backends if name not in BACKENDS]
    if unknown:
        problems.append(f"unknown backends {unknown}; expected some of {sorted(BACKENDS)}")
    if not backends:
        problems.append("no backends given")
    if len(set(backends)) != len(backends):
        problems.append(f"a backend is listed twice: {list(backends)}")
    if not batch_sizes or any(size < 1 for size in batch_sizes):
        problems.append(f"batch sizes must be >= 1, got {list(batch_sizes)}")
    if device not in ("cpu", "cuda"):
        problems.append(f"--device must be cpu or cuda, got {device!r}")
    gpu = [name for name in backends if name in BACKENDS and BACKENDS[name].gpu_only]
    if gpu and device != "cuda" and any(BACKENDS[name].engine == "torch" for name in gpu):
        problems.append(f"{gpu} run on a GPU only: add --device cuda")
    if any(name in BACKENDS and BACKENDS[name].engine == "torch" for name in backends) and checkpoint is None:
        problems.append("the torch backends rebuild the model from the checkpoint the bundle was exported from: "
                        "pass --checkpoint best.pt")  # fmt: skip
    elif checkpoint is not None and not Path(checkpoint).is_file():
        problems.append(f"--checkpoint {checkpoint}: no such file")
    return problems


def build_report(
    measured: Mapping[str, Mapping[str, Any]],
    posts: Sequence[BenchPost],
    source: str,
    facts: Mapping[str, Any],
    decode: Mapping[str, Any],
    backends: Sequence[str],
    batch_sizes: Sequence[int],
    *,
    command: str,
    machine: Mapping[str, Any],
    settings: Mapping[str, Any],
    started: str | None = None,
) -> dict[str, Any]:
    """The report (JSON-ready) from the workers' raw measurements."""
    results: dict[str, Any] = {}
    reference = measured.get(REFERENCE)
    for name in backends:
        raw = measured[name]
        runs = {}
        for run in raw["runs"]:
            summary = summarise_run(run)
            parity: dict[str, Any] = {"f1": entity_f1(posts, run["tags"])}
            if reference is not None:
                ref_run = next(r for r in reference["runs"] if r["batch_size"] == run["batch_size"])
                parity.update(agreement(ref_run["tags"], run["tags"]))
            summary["parity"] = parity
            runs[str(run["batch_size"])] = summary
        results[name] = {"description": BACKENDS[name].description if name in BACKENDS else name,
                         "load_s": raw["load_s"], "peak_rss_mib": raw["peak_rss_mib"],
                         "gpu_memory": raw.get("gpu_memory"), "batches": runs}  # fmt: skip
    words = sum(len(post.words) for post in posts)
    report = {
        "command": command,
        "started": started,
        "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": dict(machine),
        "bundle": dict(facts),
        "workload": {"source": source, "posts": len(posts), "words": words,
                     "with_pictures": sum(post.image is not None for post in posts)},  # fmt: skip
        "settings": dict(settings),
        "reference": REFERENCE if reference is not None else None,
        "backends": results,
        "decode": dict(decode),
    }
    report["targets"] = targets(report)
    return report


TARGET_BATCH = 8
# (what, runtime backend, metric, ratio over the reference wanted): the tagger targets were set for
# TWITTER-2017's text posts, the end-to-end one for posts with pictures as well.
TARGETS = (("tagger throughput, runtime FP32 (ort) over the reference (torch)", "ort", "tagger_posts_s", 2.5),
           ("tagger throughput, runtime INT8 (ort-int8) over the reference (torch)", "ort-int8", "tagger_posts_s", 5.0),
           ("end-to-end throughput, runtime FP32 (ort) over the reference (torch)", "ort", "throughput_posts_s", 1.5))  # fmt: skip


def targets(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The CPU targets at batch 8: one row per target whose runtime backend ran beside torch at batch 8."""
    backends = report["backends"]
    key = str(TARGET_BATCH)
    ran = {name for name, run in backends.items() if key in run["batches"]}
    if "torch" not in ran:
        return []
    rows = []
    for what, backend, metric, wanted in TARGETS:
        if backend not in ran:
            continue
        runtime, torch = backends[backend]["batches"][key][metric], backends["torch"]["batches"][key][metric]
        ratio = runtime / torch if runtime and torch else None
        rows.append({"what": what, "batch_size": TARGET_BATCH, "target": wanted, "measured": ratio,
                     "met": ratio is not None and ratio >= wanted})  # fmt: skip
    return rows


def worker_main(argv: Sequence[str]) -> int:
    if len(argv) != 3 or argv[0] != "worker":
        print("usage: python -m mner.benchmarks.bench worker JOB.json RESULT.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[1]).read_text())

    def report_batch(posts: int) -> None:
        print(f"{WORKER_PROGRESS}{posts}", flush=True)

    try:
        result = run_worker(job, on_batch=report_batch)
    except (ValueError, RuntimeError) as error:  # a refused request: its message is the report, not a traceback
        print(f"{WORKER_ERROR}{error}", file=sys.stderr)
        return 1
    Path(argv[2]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(worker_main(sys.argv[1:]))
