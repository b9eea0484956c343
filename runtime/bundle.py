"""The bundle reader: what ``mner-export`` wrote, checked before anything runs from it.

The layout and ``manifest.json``'s schema are defined by the writer
(``mner.export.bundle``'s docstring, format version 1); this module reads them
without importing export/ or torch. ``Bundle.open`` refuses a bundle, with a
``BundleError`` that names the file and says what to do, when:

* ``manifest.json`` is missing, not JSON, not an mner bundle, or of another format version;
* a listed file is missing, has another size or sha256, or a file on disk is not listed
  (every such file is named, not just the first);
* the manifest is inconsistent with itself (tag list vs CRF arrays vs the tagger's
  emissions, a stage without its graph) or with this runtime (the image preprocessing
  it was exported with is not the one implemented here);

and ``Bundle.engine_for`` refuses TensorRT engines built for another GPU or another
TensorRT version, listing what the bundle has and what this machine is.

Hashing every file is what makes a start slow (about a second per 300 MB), so a bundle
that passed is remembered in a verification cache (``VerificationCache``): a file whose
size, mtime, ctime, inode and device are what they were when its sha256 matched is not
hashed again. ``verify=False`` (``--no-verify``) skips hashing altogether.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Mapping

import numpy as np

from mner.runtime.decode import CRFParameters
from mner.runtime.files import write_atomically
from mner.runtime.image import preprocessing_constants
from mner.runtime.splitters import SPLITTERS
from mner.runtime.tags import TagScheme
from mner.runtime.text import TextEncoder

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "mner-bundle"
MANIFEST_FORMAT_VERSION = 1  # the version mner.export.bundle writes; any other is refused
STAGE_NAMES = ("detector", "vision", "tagger")  # pipeline order
PRECISIONS = ("fp32", "fp16", "int8")
# Which flag of mner-export writes a precision's graphs (named when a bundle lacks them).
PRECISION_FLAGS = {"fp16": "--fp16", "int8": "--int8 --data <gold-tagged CoNLL>"}

# Image preprocessing entries that must equal this runtime's for the graphs to see the
# inputs they were exported for ("detector_size" and "max_pixels" are per bundle).
_PREPROCESSING_KEYS = ("version", "channel_order", "layout", "vision_size", "mean", "std")

# How raw text is split into words, for a bundle whose manifest does not say
# (preprocessing.text.splitter came later). Every model before it was trained by
# mner-train, which reads TWITTER-format CoNLL files only, whose words were split by the
# tweet tokenizer that ``runtime.splitters.split_tweet`` reproduces.
LEGACY_SPLITTER = "tweet"


class BundleError(ValueError):
    """A bundle that cannot be used as it is; the message names the file and the remedy."""


# --------------------------------------------------------------------------- stage specs


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output as the manifest declares it."""

    name: str
    dtype: str  # numpy dtype name: "float32", "int64"
    shape: tuple[int | str, ...]  # ints, or the names of dynamic axes ("batch", "sequence")

    def describe(self) -> str:
        return f"{self.name} {self.dtype} ({', '.join(str(d) for d in self.shape)})"


@dataclass(frozen=True)
class StageInfo:
    """A stage's interface: what a runner checks its inputs against."""

    name: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    axes: Mapping[str, tuple[int, int]]  # dynamic axis -> (min, max) sizes the graph (or engine) takes
    graphs: Mapping[str, Path] = field(default_factory=dict)  # precision -> ONNX file
    weights: Mapping[str, Any] = field(default_factory=dict)  # the manifest's weight identity
    facts: Mapping[str, Any] = field(default_factory=dict)  # "size", "top_k", "arch", "max_sequence", ...

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def with_axes(self, axes: Mapping[str, tuple[int, int]]) -> StageInfo:
        """The same stage with narrower axis bounds (a TensorRT profile's)."""
        unknown = sorted(set(axes) - set(self.axes))
        if unknown:
            raise ValueError(f"stage {self.name} has dynamic axes {sorted(self.axes)}, not {unknown}")
        return StageInfo(self.name, self.inputs, self.outputs, {**self.axes, **axes}, self.graphs, self.weights, self.facts)


# --------------------------------------------------------------------------- engines


@dataclass(frozen=True)
class EngineInfo:
    """TensorRT engines of one GPU model and TensorRT version (``engines/<gpu>-trt<version>/``)."""

    dir: str
    gpu: str
    compute_capability: str
    tensorrt: str
    plans: Mapping[str, Path]  # stage -> .plan file
    profiles: Mapping[str, list[dict[str, dict[str, list[int]]]]]  # stage -> [{input: {"min", "opt", "max"}}]

    def describe(self) -> str:
        return f"{self.dir} ({self.gpu}, compute capability {self.compute_capability}, TensorRT {self.tensorrt})"


# --------------------------------------------------------------------------- the bundle


@dataclass
class Bundle:
    """An opened, checked bundle. ``Bundle.open(path)`` is the way in."""

    path: Path
    manifest: dict[str, Any]
    scheme: TagScheme
    stages: dict[str, StageInfo]
    engines: dict[str, EngineInfo]

    @classmethod
    def open(cls, path: str | os.PathLike, *, verify: bool = True,
             verify_cache: bool | str | os.PathLike = True) -> Bundle:  # fmt: skip
        """Read and check a bundle.

        ``verify=False`` skips hashing the files (not their presence, sizes or the manifest's
        checks): for a bundle you trust. ``verify_cache``: True remembers verified files in
        the user's cache (``verification_cache_dir()``), so a bundle that passed is not hashed
        again while its files keep their size, mtime, ctime, inode and device (see
        ``VerificationCache`` for what that does and does not catch); False hashes every
        file on every open; a path is the cache folder to use.
        """
        path = Path(path)
        if not path.is_dir():
            raise BundleError(f"{path} is not a bundle directory (it {'is a file' if path.exists() else 'does not exist'}); "
                              "pass the directory mner-export wrote")  # fmt: skip
        manifest = read_manifest(path)
        cache = None
        if verify and verify_cache is not False:
            folder = verification_cache_dir() if verify_cache is True else Path(verify_cache)
            cache = VerificationCache.load(folder, path) if folder is not None else None
        check_files(path, manifest, hashes=verify, cache=cache)
        where = path / MANIFEST_NAME
        try:
            scheme = TagScheme.from_json(_require(manifest, "tags", dict, where))
        except ValueError as error:
            raise BundleError(f"{where}: 'tags' is not a tag scheme this runtime reads: {error}") from None
        stages = {name: _stage(path, name, entry, where) for name, entry in _require(manifest, "stages", dict, where).items()}
        bundle = cls(path, manifest, scheme, stages, {})
        bundle._check_consistency()
        bundle.engines = {name: _engine(path, name, entry, where) for name, entry in (manifest.get("engines") or {}).items()}
        return bundle

    # -- parts -------------------------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        """The model's ModelConfig as a dict."""
        return self.manifest["model"]["config"]

    def crf(self) -> CRFParameters:
        crf = CRFParameters.from_npz(self.path / self.manifest["crf"]["file"])
        expected = (self.scheme.num_tags,)
        shapes = {"start": crf.start.shape, "end": crf.end.shape, "transitions": crf.transitions.shape}
        wanted = {"start": expected, "end": expected, "transitions": expected * 2}
        if shapes != wanted:
            raise BundleError(f"{self.path / self.manifest['crf']['file']}: arrays {shapes}, expected {wanted} for "
                              f"{self.scheme.num_tags} tags; re-export the bundle")  # fmt: skip
        return crf

    def text_encoder(self) -> TextEncoder:
        directory = self.path / self.manifest["tokenizer"]["dir"]
        try:
            return TextEncoder.load(directory)
        except ValueError as error:
            raise BundleError(f"{directory}: {error}; re-export the bundle") from None

    @property
    def image_settings(self) -> dict[str, Any]:
        """preprocessing.image: what mner.runtime.image.preprocessing_constants() gave at export."""
        return self.manifest["preprocessing"]["image"]

    @property
    def object_settings(self) -> dict[str, Any]:
        """The arguments of mner.runtime.coco.select_objects (score/iou thresholds, max_objects)."""
        objects = self.manifest["preprocessing"]["objects"]
        return {key: objects[key] for key in ("score_threshold", "iou_threshold", "max_objects")}

    @property
    def splitter(self) -> str:
        """How raw text must be split into words for this model (``runtime.splitters``)."""
        return self.manifest["preprocessing"].get("text", {}).get("splitter", LEGACY_SPLITTER)

    @property
    def has_images(self) -> bool:
        """Whether the bundle holds the two image stages (a tagger-only bundle tags text only)."""
        return "detector" in self.stages and "vision" in self.stages

    def graph(self, stage: str, precision: str = "fp32") -> Path:
        info = self._stage_named(stage)
        if precision not in info.graphs:
            flag = PRECISION_FLAGS.get(precision)
            remedy = f"export with {flag} for {precision.upper()} graphs" if flag else "re-export the bundle"
            raise BundleError(f"{self.path}: stage {stage} has {sorted(info.graphs)} graphs, not {precision!r}; {remedy}")
        return info.graphs[precision]

    def stage_precisions(self, precision: str) -> dict[str, str]:
        """stage -> the precision of the graph it runs when ``precision`` is asked for (``stage_precisions``)."""
        return stage_precisions(self.manifest, precision, where=self.path)

    def _stage_named(self, stage: str) -> StageInfo:
        if stage not in self.stages:
            raise BundleError(f"{self.path} has the stages {sorted(self.stages)}, not {stage!r}")
        return self.stages[stage]

    # -- TensorRT ----------------------------------------------------------------------

    def engine_for(self, gpu: str, compute_capability: str, tensorrt: str) -> EngineInfo:
        """The engines built for this GPU model and TensorRT version, or a BundleError saying what differs.

        An engine runs only on the GPU model and the exact TensorRT version it was built
        with (TensorRT's default compatibility), so all three must match.
        """
        if not self.engines:
            raise BundleError(f"{self.path} holds no TensorRT engines: export it with `mner-export --trt` on the "
                              "serving machine, or use the onnxruntime backend (--backend ort)")  # fmt: skip
        for engine in self.engines.values():
            if (engine.gpu, engine.compute_capability, engine.tensorrt) == (gpu, compute_capability, tensorrt):
                return engine
        lines = []
        for engine in self.engines.values():
            differs = []
            if engine.gpu != gpu or engine.compute_capability != compute_capability:
                differs.append(f"built for {engine.gpu} (compute capability {engine.compute_capability})")
            if engine.tensorrt != tensorrt:
                differs.append(f"built with TensorRT {engine.tensorrt}")
            lines.append(f"{engine.dir}: {' and '.join(differs)}")
        raise BundleError(
            f"{self.path} has no TensorRT engine for this machine ({gpu}, compute capability {compute_capability}, "
            f"TensorRT {tensorrt}):\n  " + "\n  ".join(lines) + "\nBuild engines here with `mner-export --trt` "
            "(or install the TensorRT version the engines were built with), or use --backend ort."
        )

    # -- consistency -------------------------------------------------------------------

    def _check_consistency(self) -> None:
        where = self.path / MANIFEST_NAME
        problems = []
        if "tagger" not in self.stages:
            problems.append(f"it has the stages {sorted(self.stages)} but no tagger")
        if ("detector" in self.stages) != ("vision" in self.stages):
            problems.append(f"it has the stages {sorted(self.stages)}: detector and vision come together or not at all")
        crf = _require(self.manifest, "crf", dict, where)
        arrays = crf.get("arrays", {})
        t = self.scheme.num_tags
        if [arrays.get("start"), arrays.get("end"), arrays.get("transitions")] != [[t], [t], [t, t]]:
            problems.append(f"crf.arrays {arrays} do not fit the {t} tags of 'tags'")
        tagger = self.stages.get("tagger")
        if tagger is not None:
            emissions = {o.name: o for o in tagger.outputs}.get("emissions")
            if emissions is None or emissions.shape[-1:] != (t,):
                problems.append(f"the tagger's emissions {emissions.describe() if emissions else 'are missing'}, "
                                f"expected (batch, sequence, {t})")  # fmt: skip
            if "sequence" not in tagger.axes:
                problems.append("the tagger has no dynamic 'sequence' axis")
        tokenizer = _require(self.manifest, "tokenizer", dict, where)
        max_length = tokenizer.get("max_length")
        if not isinstance(max_length, int) or max_length < 3:
            problems.append(f"tokenizer.max_length {max_length!r} is not an int >= 3")
        elif tagger is not None and "sequence" in tagger.axes and max_length > tagger.axes["sequence"][1]:
            problems.append(f"tokenizer.max_length {max_length} exceeds the tagger's sequence axis {tagger.axes['sequence']}")
        preprocessing = _require(self.manifest, "preprocessing", dict, where)
        image = preprocessing.get("image")
        if not isinstance(image, dict):
            problems.append("preprocessing.image is missing")
        elif self.has_images:
            ours = preprocessing_constants()
            different = {k: (image.get(k), ours[k]) for k in _PREPROCESSING_KEYS if image.get(k) != ours[k]}
            if different:
                listed = ", ".join(f"{k}: bundle {a!r}, runtime {b!r}" for k, (a, b) in different.items())
                raise BundleError(f"{where}: the bundle was exported with other image preprocessing than this runtime "
                                  f"implements ({listed}); use the mner version that exported it, or re-export")  # fmt: skip
            if "detector" in self.stages and image.get("detector_size") != self.stages["detector"].facts.get("size"):
                problems.append(f"preprocessing.image.detector_size {image.get('detector_size')} differs from the "
                                f"detector's size {self.stages['detector'].facts.get('size')}")  # fmt: skip
        text = preprocessing.get("text", {"splitter": LEGACY_SPLITTER})
        if not isinstance(text, dict) or text.get("splitter") not in SPLITTERS:
            problems.append(f"preprocessing.text must name a word splitter in {sorted(SPLITTERS)}, got {text!r}")
        if self.has_images:
            objects = preprocessing.get("objects")
            needed = ("score_threshold", "iou_threshold", "max_objects")
            if not isinstance(objects, dict) or any(k not in objects for k in needed):
                problems.append(f"preprocessing.objects must give {needed}, got {objects!r}")
        if problems:
            raise BundleError(f"{where} is inconsistent; re-export the bundle:\n  " + "\n  ".join(problems))


# --------------------------------------------------------------------------- reading


def stage_precisions(manifest: Mapping[str, Any], precision: str, where: Any = "the bundle") -> dict[str, str]:
    """stage -> the precision of the graph that runs for ``precision``, in pipeline order.

    "fp32" and "fp16": every stage that precision (``Bundle.graph`` refuses a missing graph).
    "int8": each stage's INT8 graph where it has one and FP32 otherwise; the tagger must have
    one (INT8 is asked for to speed the tagger up), else a BundleError naming the export flag.
    Reads only the manifest, so mner-tag and mner-serve can say what runs without opening
    the bundle twice.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    stages = manifest.get("stages") or {}
    graphs = {name: set((stages[name] or {}).get("graphs") or {}) for name in STAGE_NAMES if name in stages}
    if precision != "int8":
        return {name: precision for name in graphs}
    if "int8" not in graphs.get("tagger", ()):
        raise BundleError(f"{where}: --precision int8 needs an INT8 tagger graph, and this bundle's tagger has "
                          f"{sorted(graphs.get('tagger', ()))} graphs; export it with `mner-export {PRECISION_FLAGS['int8']}`")  # fmt: skip
    return {name: "int8" if "int8" in kinds else "fp32" for name, kinds in graphs.items()}


def describe_precisions(precisions: Mapping[str, str]) -> str:
    """"int8" where every stage runs it; else each precision with its stages: "int8 (tagger), fp32 (detector, vision)"."""
    kinds = list(dict.fromkeys(precisions.values()))
    if len(kinds) == 1:
        return kinds[0]
    return ", ".join(f"{kind} ({', '.join(name for name, k in precisions.items() if k == kind)})" for kind in kinds)


def manifest_sha256(bundle: str | os.PathLike) -> str:
    """The sha256 of ``bundle``/manifest.json, which lists the size and sha256 of every file: what names a
    bundle's whole content (mner-tag's output sidecar, mner-serve's start-up line and info metric)."""
    path = Path(bundle) / MANIFEST_NAME
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as error:
        raise BundleError(f"cannot read {path} to identify the bundle: {error.strerror or error}") from None


def read_manifest(bundle: str | os.PathLike) -> dict[str, Any]:
    """manifest.json with its format and version checked (files are not looked at)."""
    path = Path(bundle) / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{Path(bundle)} is not an mner bundle: {MANIFEST_NAME} is missing "
                          "(an interrupted export leaves no manifest; export again)")  # fmt: skip
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{path} is not valid JSON ({error}); re-copy or re-export the bundle") from None
    found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
    if found != MANIFEST_FORMAT:
        raise BundleError(f"{path} is not an mner bundle manifest: format {found!r}, expected {MANIFEST_FORMAT!r}")
    version = manifest.get("format_version")
    if version != MANIFEST_FORMAT_VERSION:
        newer = isinstance(version, int) and version > MANIFEST_FORMAT_VERSION
        remedy = "upgrade mner to read it" if newer else "re-export it with this version of mner-export"
        raise BundleError(f"{path}: bundle format_version {version!r}, this runtime reads {MANIFEST_FORMAT_VERSION}; {remedy}")
    return manifest


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_files(bundle: Path, manifest: dict[str, Any], hashes: bool = True,
                cache: VerificationCache | None = None) -> None:  # fmt: skip
    """Every listed file present with its size (and sha256), and no unlisted file; names each one that fails.

    With a ``cache``, a file it vouches for is not hashed; when every file passed, the
    files hashed now are added to it.
    """
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not listed:
        raise BundleError(f"{bundle / MANIFEST_NAME} has no 'files' table; re-export the bundle")
    problems = []
    hashed = reused = 0
    for name, entry in sorted(listed.items()):
        if not _is_inside(name):
            problems.append(f"{name}: not a relative path inside the bundle")
            continue
        path = bundle / name
        if not path.is_file():
            problems.append(f"{name}: missing")
            continue
        before = path.stat()
        size = before.st_size
        if not isinstance(entry, dict) or size != entry.get("bytes"):
            problems.append(f"{name}: {size} bytes, the manifest says {entry.get('bytes') if isinstance(entry, dict) else entry!r}")
        elif hashes:
            expected = entry.get("sha256")
            if cache is not None and cache.vouches(name, before, expected):
                reused += 1
                continue
            digest = sha256_file(path)
            hashed += 1
            if digest != expected:
                problems.append(f"{name}: sha256 {digest}, the manifest says {expected}")
            elif cache is not None:
                cache.record(name, before, path.stat(), digest)
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()} - {MANIFEST_NAME}
    problems += [f"{name}: not listed in the manifest" for name in sorted(on_disk - set(listed))]
    if problems:
        raise BundleError(
            f"bundle {bundle} does not match its manifest ({len(problems)} file{'s' * (len(problems) > 1)}):\n  "
            + "\n  ".join(problems)
            + "\nThe bundle was changed or copied incompletely: copy it again, or re-export it."
        )
    if hashes:
        logger.debug("%s: %d files hashed, %d vouched for by the verification cache", bundle, hashed, reused)
    if cache is not None and hashed:
        cache.save(listed)


# --------------------------------------------------------------------------- verification cache

CACHE_ENV = "MNER_CACHE_DIR"
CACHE_FORMAT = 1  # of a cache file; a file of another format is ignored (and rewritten)
# A file changed again within the file system's timestamp granularity after it was hashed
# could keep its mtime and ctime (git's "racy clean" problem); a file whose mtime or ctime
# is this recent when it is hashed is therefore not remembered, only hashed again next time.
# 2 s covers the coarsest common granularity (FAT); Linux file systems tick in milliseconds.
RACY_SECONDS = 2.0


def verification_cache_dir() -> Path | None:
    """Where verified bundles are remembered: ``$MNER_CACHE_DIR``, else ``$XDG_CACHE_HOME/mner``, else ``~/.cache/mner``.

    Why the user's cache and not the bundle: a bundle is often read-only (an image layer, a
    shared mount), and a file inside it would be a file its manifest does not list. Why per
    user: a cache is only as trustworthy as whoever can write it, and a user can always
    write their own. ``MNER_CACHE_DIR`` set but empty turns the cache off (every open
    hashes every file), for deployments that want the full check on each start.
    """
    override = os.environ.get(CACHE_ENV)
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    try:
        if override is not None:
            return Path(override).expanduser() if override.strip() else None
        if xdg and os.path.isabs(xdg):  # the XDG spec: a relative value is invalid and is ignored
            return Path(xdg) / "mner"
        return Path.home() / ".cache" / "mner"
    except RuntimeError:  # no home directory to expand (HOME unset, no passwd entry): no cache
        return None


def _identity(stat: os.stat_result) -> dict[str, int]:
    """What must not have changed for a file to be the one that was hashed.

    mtime alone can be set back by anyone (``touch -d``, ``cp -p``, ``rsync -t``); ctime
    cannot: the kernel sets it to now on every write and on every mtime change, so an edit
    that restores the mtime still shows. inode and device: another file put in its place.
    """
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns,
            "inode": stat.st_ino, "device": stat.st_dev}  # fmt: skip


class VerificationCache:
    """The files of one bundle whose sha256 was checked, by their file system identity.

    One JSON file per bundle directory (named by a hash of its resolved path) under
    ``<cache dir>/verified/``. A file is vouched for when its size, mtime_ns, ctime_ns,
    inode and device are those recorded when it hashed to the sha256 the manifest now
    lists; any difference (an edit, a ``touch``, a copy, a re-export, another manifest)
    means it is hashed again, and a mismatch fails as without the cache.

    What it cannot see: a change that keeps all five, i.e. bytes rewritten without the
    kernel noticing (a raw write to the block device, a file system that does not keep
    ctime, the clock set back to the instant of the last change), or an edit of the cache
    file itself. So the cache guards against accidents (an interrupted copy, an edited or
    re-exported file), not against someone who can write your disk or your cache -- the
    same trust ``--no-verify`` places in the bundle outright. To force a full check,
    delete ``<cache dir>/verified`` or set ``MNER_CACHE_DIR=`` (empty).

    Never an error: a missing, unreadable or corrupt cache is an empty one, and a cache
    that cannot be written is left as it was (the next open hashes again).
    """

    def __init__(self, folder: Path, bundle: Path) -> None:
        """An empty cache for ``bundle`` in ``folder`` (``load`` reads what is saved there)."""
        self.bundle = bundle.resolve()
        self.file = folder / "verified" / (hashlib.sha256(str(self.bundle).encode()).hexdigest()[:32] + ".json")
        self.files: dict[str, dict[str, Any]] = {}  # file name in the bundle -> identity and sha256
        self.changed = False

    @classmethod
    def load(cls, folder: Path, bundle: Path) -> VerificationCache:
        cache = cls(folder, bundle)
        try:
            saved = json.loads(cache.file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):  # none yet, unreadable, or not JSON
            return cache
        if (isinstance(saved, dict) and saved.get("format") == CACHE_FORMAT and saved.get("bundle") == str(cache.bundle)
                and isinstance(saved.get("files"), dict)):  # fmt: skip
            cache.files = {name: entry for name, entry in saved["files"].items() if isinstance(entry, dict)}
        return cache

    def vouches(self, name: str, stat: os.stat_result, sha256: Any) -> bool:
        """Whether ``name`` (now ``stat``) was hashed to ``sha256`` and has not changed since."""
        entry = self.files.get(name)
        return entry is not None and isinstance(sha256, str) and entry == {**_identity(stat), "sha256": sha256}

    def record(self, name: str, before: os.stat_result, after: os.stat_result, sha256: str) -> None:
        """Remember that ``name`` hashed to ``sha256``, unless it changed while it was read or too recently."""
        recent = time.time() - RACY_SECONDS
        if _identity(before) != _identity(after) or max(after.st_mtime_ns, after.st_ctime_ns) / 1e9 > recent:
            self.files.pop(name, None)
            return
        self.files[name] = {**_identity(after), "sha256": sha256}
        self.changed = True

    def save(self, names: Iterable[str] | None = None) -> None:
        """Write the cache file (atomically: concurrent starts each write a whole file); failures are logged only.

        ``names``: the files the manifest lists now; entries of any other file are dropped.
        """
        if names is not None:
            listed = set(names)
            self.files = {name: entry for name, entry in self.files.items() if name in listed}
        if not self.changed:
            return
        data = json.dumps({"format": CACHE_FORMAT, "bundle": str(self.bundle), "files": self.files}, indent=1).encode()
        try:
            # its temporary file ends in .tmp, which the "*.json" sweep below never matches: another process
            # may be mid-write
            write_atomically(self.file, lambda f: f.write(data))
        except OSError as error:  # read-only home, full disk, no permission: hash again next time
            logger.debug("bundle verification cache %s not written: %s", self.file, error)
            return
        self._forget_gone_bundles()

    def _forget_gone_bundles(self) -> None:
        """Delete the entries of bundles no longer on disk, so the cache holds only live bundles."""
        for other in self.file.parent.glob("*.json"):
            if other == self.file:
                continue
            try:
                bundle = json.loads(other.read_text(encoding="utf-8")).get("bundle")
                gone = not isinstance(bundle, str) or not (Path(bundle) / MANIFEST_NAME).is_file()
            except (OSError, UnicodeDecodeError, ValueError, AttributeError):
                gone = True  # corrupt: of no use to anyone
            if gone:
                try:
                    other.unlink()
                except OSError:
                    pass


def _is_inside(name: str) -> bool:
    path = PurePosixPath(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts and "\\" not in name


def _require(mapping: dict, key: str, kind: type, where: Path) -> Any:
    value = mapping.get(key)
    if not isinstance(value, kind):
        raise BundleError(f"{where}: '{key}' is {'missing' if value is None else type(value).__name__}; re-export the bundle")
    return value


def _tensor(entry: Any, where: str) -> TensorInfo:
    if not isinstance(entry, dict) or not {"name", "dtype", "shape"} <= set(entry):
        raise BundleError(f"{where}: a tensor entry needs name, dtype and shape, got {entry!r}")
    try:
        np.dtype(entry["dtype"])
    except TypeError:
        raise BundleError(f"{where}: {entry['name']} has dtype {entry['dtype']!r}, not a numpy dtype name") from None
    shape = tuple(entry["shape"])
    if not all(isinstance(d, str) or (isinstance(d, int) and d >= 0) for d in shape):
        raise BundleError(f"{where}: {entry['name']} has shape {list(shape)}; entries must be sizes or axis names")
    return TensorInfo(entry["name"], entry["dtype"], shape)


def _stage(bundle: Path, name: str, entry: Any, manifest_path: Path) -> StageInfo:
    where = f"{manifest_path} stages.{name}"
    if name not in STAGE_NAMES:
        raise BundleError(f"{where}: unknown stage (this runtime knows {STAGE_NAMES}); upgrade mner")
    if not isinstance(entry, dict):
        raise BundleError(f"{where} is not an object")
    inputs = tuple(_tensor(t, where) for t in entry.get("inputs", ()))
    outputs = tuple(_tensor(t, where) for t in entry.get("outputs", ()))
    if not inputs or not outputs:
        raise BundleError(f"{where}: inputs and outputs must both be listed")
    axes = {}
    for axis, bounds in (entry.get("dynamic_axes") or {}).items():
        low, high = (bounds.get("min"), bounds.get("max")) if isinstance(bounds, dict) else (None, None)
        if not (isinstance(low, int) and isinstance(high, int) and 0 <= low <= high):
            raise BundleError(f"{where}: dynamic axis {axis} has bounds {bounds!r}, expected {{'min': int, 'max': int}}")
        axes[axis] = (low, high)
    named = {d for t in (*inputs, *outputs) for d in t.shape if isinstance(d, str)}
    if named - set(axes):
        raise BundleError(f"{where}: shapes name the axes {sorted(named - set(axes))} that dynamic_axes does not bound")
    graphs = {}
    for precision, graph in (entry.get("graphs") or {}).items():
        if precision not in PRECISIONS or not isinstance(graph, dict) or not _is_inside(str(graph.get("file", ""))):
            raise BundleError(f"{where}: graphs.{precision} = {graph!r} is not a graph entry of {PRECISIONS}")
        if precision == "int8":
            _check_int8_entry(name, graph, f"{where}: graphs.int8")
        graphs[precision] = bundle / graph["file"]
    if "fp32" not in graphs:
        raise BundleError(f"{where}: no fp32 graph; re-export the bundle")
    facts = {k: v for k, v in entry.items() if k not in {"inputs", "outputs", "dynamic_axes", "graphs", "weights"}}
    return StageInfo(name, inputs, outputs, axes, graphs, dict(entry.get("weights") or {}), facts)


def stage_info(bundle: str | os.PathLike, name: str, entry: Mapping[str, Any]) -> StageInfo:
    """A manifest stage entry as the runtime reads it (``Bundle.open`` does this for every stage); for the
    exporter, which runs the runtime on a stage before its bundle is complete."""
    return _stage(Path(bundle), name, entry, Path(bundle) / MANIFEST_NAME)


def _check_int8_entry(stage: str, graph: Mapping[str, Any], where: str) -> None:
    """An INT8 graph is written only behind an accuracy guard whose figures its entry records: one without a
    passed guard (a hand-edited manifest, a graph added by other means) is refused. The tagger's guard
    (export/int8.py) is checked against its own limits too."""
    guard = graph.get("guard")
    if not isinstance(guard, dict) or guard.get("passed") is not True or not graph.get("method"):
        raise BundleError(f"{where} must record its quantization method and a passed accuracy guard, got "
                          f"method {graph.get('method')!r}, guard {guard!r}; re-export the bundle")  # fmt: skip
    if stage != "tagger":
        return
    limits = guard.get("limits") if isinstance(guard.get("limits"), dict) else {}
    agreement, drop = guard.get("word_agreement"), guard.get("f1_drop_points")
    low, high = limits.get("min_word_agreement"), limits.get("max_f1_drop_points")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (agreement, drop, low, high)) \
            or agreement < low or drop > high:  # fmt: skip
        raise BundleError(f"{where}: the guard's word_agreement {agreement!r} and f1_drop_points {drop!r} do not "
                          f"meet its limits {limits!r}; re-export with `mner-export --int8`")  # fmt: skip


def _engine(bundle: Path, name: str, entry: Any, manifest_path: Path) -> EngineInfo:
    where = f"{manifest_path} engines.{name}"
    needed = ("dir", "gpu", "compute_capability", "tensorrt", "stages")
    if not isinstance(entry, dict) or any(k not in entry for k in needed):
        raise BundleError(f"{where} must give {needed}; re-export the bundle")
    plans, profiles = {}, {}
    for stage, item in entry["stages"].items():
        meta_path = bundle / item["meta"]
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        recorded = (entry["gpu"], entry["compute_capability"], entry["tensorrt"])
        if (meta.get("gpu"), meta.get("compute_capability"), meta.get("tensorrt")) != recorded:
            raise BundleError(f"{meta_path} says {meta.get('gpu')} / {meta.get('compute_capability')} / TensorRT "
                              f"{meta.get('tensorrt')}, the manifest {' / '.join(recorded)}; re-export the bundle")  # fmt: skip
        plans[stage] = bundle / item["file"]
        profiles[stage] = item["profiles"]
    return EngineInfo(entry["dir"], entry["gpu"], entry["compute_capability"], entry["tensorrt"], plans, profiles)
