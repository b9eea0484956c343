"""``mner-tag --ray``: mner-tag's records for sharded archives, tagged by a pool of Ray actors.

Input: one JSONL or Parquet file, or a folder of them (its files ending in .jsonl, .ndjson, .json or
.parquet; names starting with "." or "_" are skipped), on a local disk or at any URI pyarrow's file
systems open (``s3://``, ``gs://``, ``hdfs://``). A Parquet row is read as the JSON object of its
columns (``id``, ``text``, ``image`` | ``image_base64``), ``line`` being its row number.

A Parquet ``image`` column of binary values holds the pictures themselves: such a value is read as
``image_base64`` would be.

Output: a folder holding one shard per input shard, ``<input name>.<bundle sha256[:16]>.jsonl`` (or
``.parquet`` with ``output_format="parquet"``), with exactly one record per input line or row, in input
order: the records mner-tag writes for that file, because each shard is tagged by mner-tag's own
``tagfile.tag_jsonl`` (its line rules, duplicate ids, error records, ordering by length within
``sort_window``), so the union of the shards equals mner-tag's records of the same input. A Parquet shard
holds the same records in the columns of ``PARQUET_SCHEMA``, the same in every shard so that a folder of
them reads as one table: ``id`` as text (an integer id 3 becomes "3"), null where a record has no such field.

How it runs (Ray Data): the shards are a dataset of one row each; ``map_batches`` hands them one at a time
to a pool of ``actors`` actors that each hold one ``Pipeline``, and an actor tags a shard's lines in
batches of ``batch_size`` into a temporary file beside its output shard, renamed into place once whole.
The unit of parallel work is a shard: give at least as many shards as actors (a few per actor balance
best). Ray restarts an actor that dies and retries its shard (``max_restarts`` and ``max_task_retries``
unbounded); the retried shard is tagged again from its start into a new temporary file, so no line is
lost or written twice.

Restart-safe: an output shard exists only whole, and its name carries the bundle's sha256, so a rerun
skips the shards already written and tags only the rest. ``_mner-tag-ray.meta.json`` in the output
folder records the bundle and the options that change records (as mner-tag's sidecar does); a rerun with
other options is refused, naming each difference.

Ray is imported when a run starts, never when this module is imported (``pip install 'mner[ray]'``).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import socket
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from mner.runtime.tagfile import (
    MAX_LINE_BYTES,
    MAX_TEXT_CHARS,
    SIDECAR_FORMAT,
    Provenance,
    option_differences,
    parse_sidecar,
)

logger = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
PARQUET_SUFFIXES = (".parquet",)
SIDECAR_NAME = "_mner-tag-ray.meta.json"  # "_": never read back as an input shard of a later job
OUTPUT_FORMATS = {"jsonl": ".jsonl", "parquet": ".parquet"}  # output_format -> an output shard's suffix
SHA_CHARS = 16  # of the bundle's sha256 in an output shard's name: 64 bits tell bundles apart
BACKENDS = ("ort", "trt", "torch")
BAD_IMAGE_POLICIES = ("error", "text-only")


@dataclass(frozen=True)
class Shard:
    """One input file and the output shard its records go to."""

    path: str  # on the input file system
    name: str  # the file's name: output shards are named after it
    format: str  # "jsonl" or "parquet"


@dataclass
class RaySummary:
    """What a run did: shards written and skipped, and the records of the shards written."""

    shards: int = 0  # input shards
    skipped_shards: int = 0  # already written by an earlier run
    posts: int = 0  # records written by this run
    tagged: int = 0
    entities: int = 0
    errors: Counter = field(default_factory=Counter)  # kind -> count, of this run's records
    seconds: float = 0.0
    output: str = ""
    failed: dict[str, str] = field(default_factory=dict)  # shard name -> why it could not be tagged (no output)

    @property
    def error_records(self) -> int:
        return sum(self.errors.values())

    def format(self) -> str:
        rate = self.posts / self.seconds if self.seconds > 0 else 0.0
        written = self.shards - self.skipped_shards - len(self.failed)
        text = (f"{self.shards} shards -> {self.output}: {written} written, "
                f"{self.skipped_shards} skipped (already done); {self.posts} posts, {self.tagged} tagged "
                f"({self.entities} entities), {self.error_records} errors; {self.seconds:.1f} s, {rate:.1f} posts/s")
        if self.errors:
            text += "\nerrors: " + ", ".join(f"{kind} {count}" for kind, count in self.errors.most_common())
        if self.failed:
            text += (f"\n{len(self.failed)} shards could not be tagged, so they have no output shard (fix or remove "
                     "them, then run again: the shards written are skipped):")  # fmt: skip
            text += "".join(f"\n  {name}: {why}" for name, why in sorted(self.failed.items()))
        return text


def tag_ray(
    bundle: str | os.PathLike,
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    images: str | os.PathLike | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    actors: int = 1,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    batch_size: int = 16,
    backend: str = "ort",
    device: str | None = None,
    precision: str = "fp32",
    threads: int | None = None,
    on_bad_image: str = "error",
    with_text: bool = False,
    max_text_chars: int = MAX_TEXT_CHARS,
    max_line_bytes: int = MAX_LINE_BYTES,
    verify: bool = True,
    sort_window: int = 1024,
    picture_cache_bytes: int = 64 << 20,
    output_format: str = "jsonl",
    progress: bool = True,
    bundle_details: dict[str, Any] | None = None,
) -> RaySummary:
    """Tag every shard of ``input`` into the folder ``output`` on Ray (see the module docstring).

    ``address``: join that Ray cluster ("auto": the one this machine belongs to); None: use the Ray this
    process has already started, else start a local one for the run (``num_cpus`` CPUs, default all) and
    shut it down at the end. ``actors`` actors with ``cpus_per_actor`` CPUs and ``gpus_per_actor`` GPUs each
    tag batches of ``batch_size`` posts; ``threads``: ONNX Runtime's intra-op threads per graph (default: the
    actor's CPUs, so actors do not fight over cores). ``images``: the folder image paths are relative to
    (default: the input's folder where it is local, the current directory for a URI); on a cluster, a path
    every node sees. The bundle is opened on every actor from ``bundle``, so it too must be where every node
    sees it. Backend, precision, on_bad_image, with_text, sort_window, picture_cache_bytes and the limits as for
    mner-tag; ``output_format``: "jsonl" or "parquet" shards; ``progress`` False: no Ray Data progress bars.
    ``bundle_details``: written to the sidecar for the reader (the mner version, when the run started).
    """
    _check_options(actors=actors, cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor,
                   batch_size=batch_size, backend=backend, on_bad_image=on_bad_image, num_cpus=num_cpus,
                   threads=threads, max_text_chars=max_text_chars, max_line_bytes=max_line_bytes,
                   sort_window=sort_window, output_format=output_format, device=device)  # fmt: skip
    from mner.runtime.bundle import manifest_sha256  # noqa: PLC0415

    started = time.perf_counter()
    in_fs, shards, default_images, in_folder = _input_shards(input)
    images = str(images if images is not None else default_images)
    if not Path(images).is_dir():
        raise ValueError(f"--images {images}: no such directory")
    sha = manifest_sha256(bundle)
    if in_folder is not None and _same_place(in_fs, in_folder, output):
        raise ValueError(f"--output {output} is the --input folder: its output shards would be read as input shards "
                         "by the next run; pass another folder")  # fmt: skip
    out_fs, out_dir = _output_folder(output)
    options = {"input": "jsonl", "output_format": output_format, "backend": backend, "precision": precision,
               "on_bad_image": on_bad_image,
               "with_text": with_text, "max_text_chars": max_text_chars, "max_line_bytes": max_line_bytes}  # fmt: skip
    provenance = Provenance(sha, options, os.path.abspath(bundle), dict(bundle_details or {}))
    _claim_output(out_fs, out_dir, provenance, shown=os.fspath(output))
    summary = RaySummary(shards=len(shards), output=str(output))
    outputs = {shard.name: _output_path(out_dir, shard, sha, output_format) for shard in shards}
    pending = [shard for shard in shards if not _exists(out_fs, outputs[shard.name])]
    summary.skipped_shards = len(shards) - len(pending)
    if pending:
        _remove_leftovers(out_fs, out_dir, {outputs[shard.name] for shard in pending})
        counts = _run_on_ray(
            pending, outputs, progress=progress, in_fs=in_fs, out_fs=out_fs, output_format=output_format,
            address=address, num_cpus=num_cpus,
            actors=actors, cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor, images=images,
            reading={"max_text_chars": max_text_chars, "max_line_bytes": max_line_bytes, "sort_window": sort_window},
            tagging={"bundle": str(bundle), "backend": backend, "device": device, "precision": precision,
                     "threads": threads if threads is not None else max(1, int(cpus_per_actor)), "verify": verify,
                     "batch_size": batch_size, "on_bad_image": on_bad_image, "with_text": with_text,
                     "picture_cache_bytes": picture_cache_bytes},
        )  # fmt: skip
        for row in counts:
            if row["failed"]:
                summary.failed[row["shard"]] = row["failed"]
            summary.posts += row["posts"]
            summary.tagged += row["tagged"]
            summary.entities += row["entities"]
            summary.errors.update(json.loads(row["errors"]))
    summary.seconds = time.perf_counter() - started
    return summary


# --------------------------------------------------------------------------- checks, input and output


def _check_options(*, actors, cpus_per_actor, gpus_per_actor, batch_size, backend, on_bad_image, num_cpus, threads,
                   max_text_chars, max_line_bytes, sort_window, output_format, device=None) -> None:  # fmt: skip
    for name, value in {"actors": actors, "batch_size": batch_size, "max_text_chars": max_text_chars,
                        "sort_window": sort_window,
                        "max_line_bytes": max_line_bytes, "num_cpus": num_cpus, "threads": threads}.items():  # fmt: skip
        if value is None and name in ("num_cpus", "threads"):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    for name, value in {"cpus_per_actor": cpus_per_actor, "gpus_per_actor": gpus_per_actor}.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if cpus_per_actor == 0 and gpus_per_actor == 0:
        raise ValueError("an actor needs some CPU or GPU: cpus_per_actor and gpus_per_actor are both 0")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if gpus_per_actor > 0 and backend == "ort" and device != "cuda":
        raise ValueError("gpus_per_actor (--gpus-per-actor) goes with device 'cuda' (--device cuda) or backend 'trt': "
                         "ONNX Runtime on the CPU would hold a GPU it never uses")  # fmt: skip
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise ValueError(f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}")
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {tuple(OUTPUT_FORMATS)}, got {output_format!r}")


def _filesystem(location: str | os.PathLike):
    """(pyarrow file system, path on it) for a local path (relative or not) or a URI."""
    from pyarrow import fs  # noqa: PLC0415 -- pyarrow comes with ray[data]

    text = os.fspath(location)
    if "://" not in text:
        return fs.LocalFileSystem(), os.path.abspath(text)
    return fs.FileSystem.from_uri(text)


def _input_shards(input: str | os.PathLike):
    """(file system, shards sorted by name, default --images folder, the folder or None for a file) of ``input``:
    a file or a folder of them (its files only: a subfolder is named in a warning, not read)."""
    from pyarrow import fs  # noqa: PLC0415

    in_fs, path = _filesystem(input)
    local = isinstance(in_fs, fs.LocalFileSystem)
    info = in_fs.get_file_info(path)
    if info.type == fs.FileType.NotFound:
        raise ValueError(f"--input {input}: no such file or folder")
    if info.type == fs.FileType.File:
        shards = [Shard(path, info.base_name, _format(info.base_name))]
        return in_fs, shards, os.path.dirname(path) if local else ".", None
    infos = in_fs.get_file_info(fs.FileSelector(path, recursive=False))
    folders = sorted(i.base_name for i in infos if i.type == fs.FileType.Directory and not i.base_name.startswith((".", "_")))
    if folders:
        logger.warning("--input %s: its subfolders are not read (%s%s): only the files directly in it are shards; pass "
                       "a subfolder as --input to tag its files", input, ", ".join(folders[:5]),
                       f" and {len(folders) - 5} more" if len(folders) > 5 else "")  # fmt: skip
    shards = sorted((Shard(i.path, i.base_name, _format(i.base_name)) for i in infos
                     if i.type == fs.FileType.File and not i.base_name.startswith((".", "_"))
                     and i.base_name.lower().endswith(JSONL_SUFFIXES + PARQUET_SUFFIXES)),
                    key=lambda shard: shard.name)  # fmt: skip
    if not shards:
        raise ValueError(f"--input {input} holds no shard: expected files ending in "
                         f"{', '.join(JSONL_SUFFIXES + PARQUET_SUFFIXES)}")  # fmt: skip
    return in_fs, shards, path if local else ".", path


def _same_place(in_fs, folder: str, output: str | os.PathLike) -> bool:
    """Whether ``output`` names the input ``folder`` (the same file system; locally, after links)."""
    out_fs, out_path = _filesystem(output)
    if type(out_fs) is not type(in_fs):
        return False
    if os.path.isabs(folder) and os.path.isabs(out_path):
        return os.path.realpath(folder) == os.path.realpath(out_path)
    return folder.rstrip("/") == out_path.rstrip("/")


def _format(name: str) -> str:
    return "parquet" if name.lower().endswith(PARQUET_SUFFIXES) else "jsonl"


def _output_folder(output: str | os.PathLike):
    from pyarrow import fs  # noqa: PLC0415

    out_fs, out_dir = _filesystem(output)
    if out_fs.get_file_info(out_dir).type == fs.FileType.File:
        raise ValueError(f"--output {output} is a file; with --ray it is the folder the output shards go to")
    out_fs.create_dir(out_dir, recursive=True)
    return out_fs, out_dir


def _output_path(out_dir: str, shard: Shard, sha: str, output_format: str) -> str:
    return f"{out_dir.rstrip('/')}/{shard.name}.{sha[:SHA_CHARS]}{OUTPUT_FORMATS[output_format]}"


def _exists(out_fs, path: str) -> bool:
    from pyarrow import fs  # noqa: PLC0415

    return out_fs.get_file_info(path).type == fs.FileType.File


def _remove_leftovers(out_fs, out_dir: str, outputs: set[str]) -> None:
    """Delete the temporary files a killed run left for ``outputs`` (``<output>.<32 hex>.tmp``): their shards are
    tagged again from the start."""
    from pyarrow import fs  # noqa: PLC0415

    for info in out_fs.get_file_info(fs.FileSelector(out_dir, recursive=False)):
        stem, dot, suffix = info.path.rpartition(".")
        base, _, token = stem.rpartition(".")
        if dot and suffix == "tmp" and base in outputs and len(token) == 32:
            logger.info("removing %s, left by an interrupted run", info.path)
            out_fs.delete_file(info.path)


def _claim_output(out_fs, out_dir: str, provenance: Provenance, shown: str) -> None:
    """Refuse an output folder whose sidecar names other options or another bundle (its shards and this run's
    would be one archive of two kinds of records); write the sidecar where there is none. ``shown``: the output
    as the user gave it, for messages."""
    path = f"{out_dir.rstrip('/')}/{SIDECAR_NAME}"
    if _exists(out_fs, path):
        with out_fs.open_input_stream(path) as stream:
            meta = parse_sidecar(stream.read())
        if meta is None:
            raise ValueError(f"{path} is not an mner-tag sidecar (format {SIDECAR_FORMAT!r}): pass another --output")
        differences = option_differences(meta["options"], provenance.options)
        if differences:
            raise ValueError(f"--output {shown} holds shards written with other options ({SIDECAR_NAME}), so this "
                             "run's would mix two kinds of records in one archive:\n  " + "\n  ".join(differences)
                             + "\npass another --output, or run with the options that wrote it")  # fmt: skip
        bundle = meta["bundle"]
        if bundle.get("sha256") == provenance.bundle_sha256:
            return
        # Two bundles' shards in one folder are two sets of records for the same posts: as mner-tag refuses to
        # resume a file with another bundle, this refuses the folder
        raise ValueError(f"--output {shown} holds shards of another bundle ({SIDECAR_NAME}: sha256 "
                         f"{str(bundle.get('sha256'))[:SHA_CHARS]}..., {bundle.get('path')}), not of this one "
                         f"({provenance.bundle_sha256[:SHA_CHARS]}...): its records and this run's would be two sets "
                         "for the same posts; pass another --output")  # fmt: skip
    with _AtomicOutput(out_fs, path) as sink:
        sink.write((json.dumps(provenance.to_json(), indent=2) + "\n").encode())


# --------------------------------------------------------------------------- the Ray job


def _run_on_ray(pending: list[Shard], outputs: dict[str, str], *, progress: bool, in_fs, out_fs, output_format, address,
                num_cpus, actors, cpus_per_actor, gpus_per_actor, images, reading, tagging) -> list[dict[str, Any]]:  # fmt: skip
    """Tag ``pending`` on Ray, each into its output shard (``outputs``, by shard name); one row of counts per
    shard."""
    import ray  # noqa: PLC0415 -- the mner[ray] extra, imported only for a run

    started_here = False
    local = address is None  # a Ray started here or by this process: what it has is all there is
    if address is not None:
        _check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as error:  # no cluster there; ray:// without ray[client]
            raise RuntimeError(f"--ray-address {address}: cannot join a Ray cluster: {error}") from error
        started_here = True  # disconnect at the end (the cluster goes on)
    elif not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        started_here = True
    context = ray.data.DataContext.get_current()
    bars = context.enable_progress_bars
    try:
        _check_room(ray.cluster_resources(), actors=min(actors, len(pending)), cpus_per_actor=cpus_per_actor,
                    gpus_per_actor=gpus_per_actor, refuse=local)  # fmt: skip
        context.enable_progress_bars = bars and progress
        if not progress:
            # Ray Data logs once per process that the bars are off, telling how to turn them on: the user just did
            # (--no-progress). Marking that message as logged keeps it out (a renamed key shows the line again).
            from ray.util.debug import log_once  # noqa: PLC0415

            log_once("ray_data_progress_manager_disabled")
        items = [{"path": shard.path, "name": shard.name, "format": shard.format, "output": outputs[shard.name]}
                 for shard in pending]  # fmt: skip
        dataset = ray.data.from_items(items, override_num_blocks=len(items))
        dataset = dataset.map_batches(
            _ShardTagger, batch_size=1, batch_format="pandas",
            fn_constructor_kwargs={"in_fs": in_fs, "out_fs": out_fs, "images": images, "reading": reading,
                                   "output_format": output_format, **tagging},
            # A fixed pool: an autoscaling one (min_size=1) started one actor and grew late or not at all, so 2
            # actors tagged 8 shards in 41 s against 29 s for a fixed pool of 2 (800 posts, MiniLM, 2 cores).
            # Where the cluster has no room for every actor, those that fit start and tag (3 actors of 1 CPU on
            # a 2-CPU Ray finished the same job).
            compute=ray.data.ActorPoolStrategy(size=min(actors, len(items))),
            num_cpus=cpus_per_actor, num_gpus=gpus_per_actor,
        )  # fmt: skip
        # An actor that dies (a node lost, a process killed) is restarted and its shard tagged again: Ray Data's
        # actor pools default to max_restarts=-1 and max_task_retries=-1 (passing them is deprecated since Ray
        # 2.5x); tests/runtime/test_ray_tag.py kills an actor mid-run to hold it to that.
        return dataset.take_all()
    finally:
        context.enable_progress_bars = bars
        if started_here:
            ray.shutdown()


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """A HOST:PORT address that nothing answers at is refused here: ray.init retries such a head for minutes."""
    if address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"--ray-address {address}: expected HOST:PORT (the head's GCS port, 6379 by default), "
                         "auto, or ray://HOST:10001")  # fmt: skip
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise RuntimeError(f"--ray-address {address}: nothing answers there ({error.strerror or error}): is the "
                           "cluster's head up (ray start --head)?") from error  # fmt: skip


def _check_room(resources: dict[str, float], *, actors: int, cpus_per_actor: float, gpus_per_actor: float,
                refuse: bool) -> None:
    """An actor the Ray has no room for waits forever: refused on a local Ray (``refuse``), whose resources are
    all there is; a warning on a cluster, which may add nodes. Fewer actors than asked that fit: a warning."""
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if cpus_per_actor > cpus or gpus_per_actor > gpus:
        message = (f"an actor asks for {cpus_per_actor:g} CPUs and {gpus_per_actor:g} GPUs (--cpus-per-actor, "
                   f"--gpus-per-actor), and this Ray has {cpus:g} CPUs and {gpus:g} GPUs in all: no actor could "
                   "start and the run would wait forever")  # fmt: skip
        if refuse:
            raise ValueError(message + "; ask for less, or start Ray with more (--ray-cpus)")
        logger.warning("%s, unless the cluster adds nodes", message)
        return
    fit = min(int(cpus // cpus_per_actor) if cpus_per_actor else actors,
              int(gpus // gpus_per_actor) if gpus_per_actor else actors)  # fmt: skip
    if fit < actors:
        logger.warning("%d actors asked for, %d fit in this Ray's %g CPUs and %g GPUs at once: the others wait",
                       actors, fit, cpus, gpus)  # fmt: skip


class _ShardTagger:
    """One actor of the pool: one Pipeline, tagging whole shards with mner-tag's ``tag_jsonl``."""

    def __init__(self, *, in_fs, out_fs, images, reading, output_format, bundle, backend, device, precision, threads,
                 verify, batch_size, on_bad_image, with_text, picture_cache_bytes):  # fmt: skip
        from mner.runtime.pipeline import Pipeline  # noqa: PLC0415

        self.pipeline = Pipeline.from_bundle(bundle, backend=backend, device=device, precision=precision,
                                             threads=threads if backend == "ort" else None, verify=verify,
                                             batch_size=batch_size, on_bad_image=on_bad_image,
                                             picture_cache_bytes=picture_cache_bytes)  # fmt: skip
        self.in_fs, self.out_fs, self.images, self.output_format = in_fs, out_fs, images, output_format
        self.reading = {**reading, "with_text": with_text}

    def __call__(self, batch):
        rows = [self._tag_shard(item) for item in batch.to_dict("records")]
        return {name: [row[name] for row in rows] for name in rows[0]}

    def _tag_shard(self, item: dict[str, Any]) -> dict[str, Any]:
        logger.info("tagging %s on process %d", item["name"], os.getpid())
        try:
            return self._tag_shard_into_place(item)
        except Exception as error:  # noqa: BLE001 -- a shard that cannot be read is that shard's problem
            # (a file named .parquet that is none, a truncated file, an object store that refused): its temporary
            # output is gone, the other shards go on, and the run's summary names it; a rerun tries it again
            logger.warning("%s: %s: %s", item["name"], type(error).__name__, error)
            return {"shard": item["name"], "posts": 0, "tagged": 0, "entities": 0, "errors": "{}",
                    "failed": f"{type(error).__name__}: {error}"}  # fmt: skip

    def _tag_shard_into_place(self, item: dict[str, Any]) -> dict[str, Any]:
        from mner.runtime.tagfile import tag_jsonl  # noqa: PLC0415

        if item["format"] == "parquet":
            source = io.BufferedReader(_ParquetLines(self.in_fs, item["path"]))
        else:
            source = io.BufferedReader(self.in_fs.open_input_stream(item["path"]))
        if self.output_format == "parquet":
            # mner-tag's records first (a local temporary file: a shard may not fit in memory), then the same
            # records as Parquet into the atomic output
            with source, tempfile.TemporaryFile() as records:
                summary = tag_jsonl(self.pipeline, input=source, output=records, images=self.images, progress=False,
                                    **self.reading)  # fmt: skip
                records.seek(0)
                with _AtomicOutput(self.out_fs, item["output"]) as sink:
                    write_parquet_records(records, sink.stream)  # pyarrow's own stream: ParquetWriter takes it as is
        else:
            with source, _AtomicOutput(self.out_fs, item["output"]) as sink:
                summary = tag_jsonl(self.pipeline, input=source, output=sink, images=self.images, progress=False,
                                    **self.reading)  # fmt: skip
        return {"shard": item["name"], "posts": summary.lines, "tagged": summary.tagged, "entities": summary.entities,
                "errors": json.dumps(dict(summary.errors)), "failed": ""}  # fmt: skip


class _AtomicOutput:
    """A binary stream to a temporary file beside ``path`` that becomes ``path`` when closed without an error,
    and is deleted otherwise: a reader and a rerun see a whole shard or none."""

    def __init__(self, out_fs, path: str) -> None:
        self.out_fs, self.path = out_fs, path
        self.temporary = f"{path}.{uuid.uuid4().hex}.tmp"
        self.stream = out_fs.open_output_stream(self.temporary)

    def write(self, data: bytes) -> int:
        return self.stream.write(data)

    def flush(self) -> None:
        self.stream.flush()

    def __enter__(self) -> _AtomicOutput:
        return self

    def __exit__(self, kind, error, trace) -> None:
        self.stream.close()
        if kind is None:
            self.out_fs.move(self.temporary, self.path)
            return
        try:
            self.out_fs.delete_file(self.temporary)
        except OSError:
            pass


class _ParquetLines(io.RawIOBase):
    """A Parquet file's rows as JSON lines, read a record batch at a time, so ``tag_jsonl`` reads them as it
    reads JSONL (``line`` is the row number). A value JSON has no type for (a date, bytes) becomes its str()."""

    def __init__(self, in_fs, path: str) -> None:
        import pyarrow.parquet as pq  # noqa: PLC0415

        self._file = in_fs.open_input_file(path)
        self._batches = pq.ParquetFile(self._file).iter_batches(batch_size=1024)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        while not self._buffer:
            batch = next(self._batches, None)
            if batch is None:
                return 0
            self._buffer = b"".join((json.dumps(_post_row(row), default=str) + "\n").encode("ascii")
                                    for row in batch.to_pylist())  # fmt: skip
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size

    def close(self) -> None:
        self._file.close()
        super().close()


def _post_row(row: dict[str, Any]) -> dict[str, Any]:
    """A Parquet row as mner-tag's JSON post: a binary ``image`` is the picture itself, so it becomes
    ``image_base64`` (a path column stays a path); one row holding both is left for tag_jsonl to refuse."""
    image = row.get("image")
    if isinstance(image, (bytes, bytearray)) and row.get("image_base64") is None:
        row = {name: value for name, value in row.items() if name != "image"}
        row["image_base64"] = base64.b64encode(image).decode("ascii")
    return row


# --------------------------------------------------------------------------- Parquet output

PARQUET_BATCH_ROWS = 4096  # records per row group


def parquet_schema():
    """The columns of a Parquet output shard: every field an mner-tag record can have (``--with-text``'s text
    too), the same in every shard."""
    import pyarrow as pa  # noqa: PLC0415

    entity = pa.struct([("type", pa.string()), ("text", pa.string()), ("start", pa.int64()), ("end", pa.int64()),
                        ("score", pa.float64())])  # fmt: skip
    return pa.schema([("id", pa.string()), ("line", pa.int64()), ("text", pa.string()),
                      ("entities", pa.list_(entity)), ("objects", pa.list_(pa.string())),
                      ("image_error", pa.string()), ("error", pa.string())])  # fmt: skip


def write_parquet_records(records: IO[bytes], sink) -> None:
    """mner-tag's JSONL records (``records``, one per line) as a Parquet file of ``parquet_schema()`` into the
    binary stream ``sink``. An integer id is written as its decimal text; a record with a field the schema lacks
    is a bug here, not in the input, and raises."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    schema = parquet_schema()
    with pq.ParquetWriter(sink, schema) as writer:
        rows: list[dict[str, Any]] = []
        for line in records:
            record = json.loads(line)
            unknown = set(record) - set(schema.names)
            if unknown:
                raise RuntimeError(f"record of line {record.get('line')} has fields {sorted(unknown)} that the "
                                   "Parquet output has no column for")  # fmt: skip
            if isinstance(record.get("id"), int):
                record["id"] = str(record["id"])
            rows.append(record)
            if len(rows) == PARQUET_BATCH_ROWS:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                rows = []
        if rows:  # a shard of no lines is a file of no rows, with the columns
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
