"""A Triton Inference Server model repository from a bundle (``mner-triton BUNDLE DIR``).

The repository holds four models::

    DIR/
      detector/ vision/ tagger/    one stage each: config.pbtxt, 1/model.onnx (1/model.plan: TensorRT)
                                   [+ 1/model.py and 1/manifest.json in the python flavour]
      mner/                        the front model (Python backend, BLS): TEXT [+ IMAGE] -> ENTITIES
        config.pbtxt  1/model.py  1/bundle/ (the whole bundle)

Two flavours of stage model, chosen with ``flavour``:

- ``native``: ``platform: "onnxruntime_onnx"`` on the bundle's FP32, FP16 or INT8 graphs, or
  ``platform: "tensorrt_plan"`` on one of its engine folders: what a full Triton (NVIDIA's NGC container)
  runs, with Triton's own ONNX Runtime and TensorRT backends;
- ``python``: the Python backend running mner's own ONNX Runtime runner on the same graph, for a Triton
  that has only that backend (the ``nvidia-pytriton`` wheel's server, which the tests start).

The front model is the same in both: it runs the runtime's own preprocessing, Viterbi and spans
(``triton_models.FrontModel``, a ``Pipeline`` whose runners are BLS calls to the stage models).

Why a command of the runtime (``mner-triton``) and not an option of ``mner-export``: the repository is made
from a bundle, not from a checkpoint, on the machine that serves, which has the torch-free runtime only;
mner-export needs torch and the training checkpoint.

Files are hard-linked from the bundle where the file system allows (a repository beside its bundle costs
no space), copied otherwise. Nothing is fetched; the bundle's integrity (every file's sha256 against its
manifest) is checked when the repository is written and again when each model loads.

``config.pbtxt`` is written here as text (the runtime does not depend on protobuf); the tests parse every
generated file with Triton's own ``ModelConfig`` schema, and load the python flavour in a real server.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mner.runtime.bundle import Bundle, TensorInfo, manifest_sha256, read_manifest

logger = logging.getLogger(__name__)

FLAVOURS = ("python", "native")
KINDS = ("cpu", "gpu")
PRECISIONS = ("fp32", "fp16", "int8")
STAGES = ("detector", "vision", "tagger")
FRONT = "mner"  # the front model's name: what clients call
BUNDLE_DIR = "bundle"  # the bundle's copy in the front model's version folder
STAGE_MANIFEST = "manifest.json"  # the bundle's manifest beside a python-flavour stage's graph

# Triton's data types for the dtypes a manifest names (model_config.proto DataType)
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
                "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}  # fmt: skip


@dataclass(frozen=True)
class RepositoryOptions:
    """How the models are served. Every default says what Triton does with it."""

    flavour: str = "python"  # "python": the Python backend runs the stages; "native": Triton's own backends
    precision: str = "fp32"  # which ONNX graphs the stages serve ("int8": the INT8 graph where a stage has one)
    engines: str | None = None  # native: a folder under the bundle's engines/ -> tensorrt_plan stage models
    kind: str | None = None  # instance kind of the stage models; None: "gpu" for native, "cpu" for python
    max_batch_size: int = 32  # posts per front-model call, and rows per stage call (the pipeline's batch size)
    preferred_batch_sizes: tuple[int, ...] = ()  # dynamic batching's preferred sizes; () : Triton's choice
    max_queue_delay_us: int = 2000  # how long the dynamic batcher holds a request for more to join it
    stage_instances: int = 1  # copies of each stage model (per GPU for kind "gpu")
    front_instances: int = 2  # copies of the front model: one preprocesses while another waits on its stages
    max_text_chars: int = 10_000  # a longer TEXT is that request's error (mner-serve's --max-text-chars default)

    def __post_init__(self) -> None:
        problems = []
        if self.flavour not in FLAVOURS:
            problems.append(f"flavour must be one of {FLAVOURS}, got {self.flavour!r}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.kind is not None and self.kind not in KINDS:
            problems.append(f"kind must be one of {KINDS} or None, got {self.kind!r}")
        if self.engines is not None and self.flavour != "native":
            problems.append("engines (TensorRT plans) are served by Triton's TensorRT backend: they need the native flavour (--flavour native)")
        if self.engines is not None and self.precision != "fp32":
            problems.append(f"precision chooses ONNX graphs; with engines it must stay 'fp32', got {self.precision!r}")
        if self.engines is not None and self.kind == "cpu":
            problems.append("TensorRT engines run on a GPU: kind must be 'gpu' (or None) with engines (--kind gpu)")
        for name in ("max_batch_size", "max_queue_delay_us", "stage_instances", "front_instances", "max_text_chars"):
            value = getattr(self, name)
            low = 0 if name == "max_queue_delay_us" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                problems.append(f"{name} must be an int >= {low}, got {value!r}")
        sizes = self.preferred_batch_sizes
        if not isinstance(sizes, tuple) or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
            problems.append(f"preferred_batch_sizes must be a tuple of positive ints, got {sizes!r}")
        elif isinstance(self.max_batch_size, int) and any(s > self.max_batch_size for s in sizes):
            problems.append(f"preferred_batch_sizes {sizes} go over max_batch_size {self.max_batch_size}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def stage_kind(self) -> str:
        return self.kind or ("gpu" if self.flavour == "native" else "cpu")


def write_repository(bundle: str | os.PathLike, out: str | os.PathLike,
                     options: RepositoryOptions = RepositoryOptions()) -> Path:  # fmt: skip
    """Write the model repository for ``bundle`` into ``out`` (absent or empty) and return its path.

    Raises BundleError for a bundle that does not open (a hash that differs, say) or lacks the graphs
    ``precision`` asks for (precision int8 runs FP32 for a stage without an INT8 graph, but the tagger must
    have one, as for mner-tag), ValueError for other options the bundle cannot serve (engines that are not in
    the bundle, or whose profiles are smaller than ``max_batch_size``).
    """
    opened = Bundle.open(bundle, verify=True)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder: give a new path for the model repository")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not an empty directory: give a new path for the model repository")
    stages = [name for name in STAGES if name in opened.stages]
    files = _stage_files(opened, stages, options)
    sha = manifest_sha256(opened.path)
    out.mkdir(parents=True, exist_ok=True)
    try:
        for name in stages:
            version = out / name / "1"
            version.mkdir(parents=True)
            source, filename = files[name]
            _link_or_copy(source, version / filename)
            if options.flavour == "python":
                _write_model_py(version, "StageModel")
                _link_or_copy(opened.path / "manifest.json", version / STAGE_MANIFEST)
            (out / name / "config.pbtxt").write_text(stage_config(opened, name, filename, options, sha,
                                                                  source.relative_to(opened.path).as_posix()))  # fmt: skip
        front = out / FRONT / "1"
        front.mkdir(parents=True)
        _write_model_py(front, "FrontModel")
        _copy_bundle(opened.path, front / BUNDLE_DIR)
        served = {name: (source.relative_to(opened.path).as_posix(), filename) for name, (source, filename) in files.items()}
        (out / FRONT / "config.pbtxt").write_text(front_config(opened, options, sha, served))
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # half a repository would load as a broken one
        raise
    logger.info("wrote a %s-flavour Triton model repository for %s in %s (models %s)", options.flavour, opened.path,
                out, ", ".join([*stages, FRONT]))  # fmt: skip
    return out


# ----------------------------------------------------------------------------- config.pbtxt


def stage_config(bundle: Bundle, name: str, filename: str, options: RepositoryOptions, bundle_sha: str,
                 bundle_file: str) -> str:
    """The config.pbtxt of one stage model: inputs and outputs from the manifest, without the batch axis;
    ``bundle_file``: the bundle's file it serves (as ``filename``), whose manifest sha256 the model checks."""
    stage = bundle.stages[name]
    lines = [f"name: {_quote(name)}"]
    if options.flavour == "python":
        lines.append('backend: "python"')
    elif filename.endswith(".plan"):
        lines.append('platform: "tensorrt_plan"')
    else:
        lines.append('platform: "onnxruntime_onnx"')
    if options.flavour == "native":  # the python flavour's is model.py; its graph is model.onnx beside it
        lines.append(f"default_model_filename: {_quote(filename)}")
    lines.append(f"max_batch_size: {options.max_batch_size}")
    lines.append("input [\n" + ",\n".join(_tensor_config(t) for t in stage.inputs) + "\n]")
    lines.append("output [\n" + ",\n".join(_tensor_config(t) for t in stage.outputs) + "\n]")
    lines.append(_batching(options))
    lines.append(f"instance_group [ {{ count: {options.stage_instances} kind: {_kind(options.stage_kind)} }} ]")
    lines.append(_parameters({"mner_bundle_sha256": bundle_sha, "mner_stage": name, "mner_file": bundle_file}))
    return "\n".join(lines) + "\n"


def front_config(bundle: Bundle, options: RepositoryOptions, bundle_sha: str,
                 served: Mapping[str, tuple[str, str]]) -> str:
    """The front model: TEXT (UTF-8 BYTES) and optional IMAGE (an encoded picture; empty: none) -> ENTITIES (JSON).
    ``served``: stage -> (the bundle's file, its name in the stage model), which the front model checks."""
    inputs = ['  { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }']
    if bundle.has_images:
        inputs.append('  { name: "IMAGE" data_type: TYPE_STRING dims: [ 1 ] optional: true }')
    lines = [
        f"name: {_quote(FRONT)}",
        'backend: "python"',
        f"max_batch_size: {options.max_batch_size}",
        "input [\n" + ",\n".join(inputs) + "\n]",
        'output [\n  { name: "ENTITIES" data_type: TYPE_STRING dims: [ 1 ] }\n]',
        _batching(options),
        # The front model preprocesses and decodes on the CPU; its stages run where their instance group says.
        f"instance_group [ {{ count: {options.front_instances} kind: KIND_CPU }} ]",
        _parameters({"mner_bundle_sha256": bundle_sha, "max_text_chars": str(options.max_text_chars),
                     "mner_stage_files": json.dumps(served, sort_keys=True)}),  # fmt: skip
    ]
    return "\n".join(lines) + "\n"


def _tensor_config(tensor: TensorInfo) -> str:
    if tensor.dtype not in TRITON_TYPES:
        raise ValueError(f"tensor {tensor.name}: dtype {tensor.dtype} has no Triton type here ({sorted(TRITON_TYPES)})")
    assert tensor.shape and tensor.shape[0] == "batch", f"{tensor.name}: the first axis is the batch: {tensor.shape}"
    dims = [d if isinstance(d, int) else -1 for d in tensor.shape[1:]]
    text = f"  {{ name: {_quote(tensor.name)} data_type: {TRITON_TYPES[tensor.dtype]} "
    if not dims:
        # A per-row scalar (image_mask): Triton needs at least one dimension besides the batch, so the
        # request carries (batch, 1) and the model sees (batch,) -- Triton's documented reshape.
        return text + "dims: [ 1 ] reshape: { shape: [ ] } }"
    return text + f"dims: [ {', '.join(str(d) for d in dims)} ] }}"


def _batching(options: RepositoryOptions) -> str:
    preferred = (f"preferred_batch_size: [ {', '.join(str(s) for s in options.preferred_batch_sizes)} ] "
                 if options.preferred_batch_sizes else "")  # fmt: skip
    return f"dynamic_batching {{ {preferred}max_queue_delay_microseconds: {options.max_queue_delay_us} }}"


def _kind(kind: str) -> str:
    return "KIND_GPU" if kind == "gpu" else "KIND_CPU"


def _parameters(values: Mapping[str, str]) -> str:
    return "\n".join(f"parameters {{ key: {_quote(k)} value: {{ string_value: {_quote(v)} }} }}" for k, v in values.items())


def _quote(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid protobuf text-format string for these ASCII values


# ----------------------------------------------------------------------------- files


def _stage_files(bundle: Bundle, stages: Sequence[str], options: RepositoryOptions) -> dict[str, tuple[Path, str]]:
    """stage -> (the bundle file it serves, its name in the model's version folder)."""
    if options.engines is None:
        small = [f"{name} takes at most {bundle.stages[name].axes['batch'][1]} rows" for name in stages
                 if bundle.stages[name].axes.get("batch", (1, 0))[1] < options.max_batch_size]  # fmt: skip
        if small:
            raise ValueError(f"{bundle.path}: max_batch_size {options.max_batch_size} is more than the graphs take: "
                             + "; ".join(small))  # fmt: skip
        precisions = bundle.stage_precisions(options.precision)
        return {name: (bundle.graph(name, precisions[name]), "model.onnx") for name in stages}
    engine = next((e for e in bundle.engines.values() if e.dir.rstrip("/").split("/")[-1] == options.engines), None)
    if engine is None:
        have = sorted(e.dir.rstrip("/").split("/")[-1] for e in bundle.engines.values()) or "none"
        raise ValueError(f"{bundle.path} has no engines folder {options.engines!r} (it has: {have}); build engines "
                         "on the serving GPU with `mner-export --trt`")  # fmt: skip
    problems = []
    for name in stages:
        if name not in engine.plans:
            problems.append(f"no plan for stage {name}")
            continue
        # the most rows any of the engine's optimisation profiles takes (TensorRT picks the profile per call)
        most = max(min(profile[t.name]["max"][0] for t in bundle.stages[name].inputs) for profile in engine.profiles[name])
        if most < options.max_batch_size:
            problems.append(f"stage {name}'s engine takes at most {most} rows, max_batch_size is {options.max_batch_size}")
    if problems:
        raise ValueError(f"{engine.describe()}: " + "; ".join(problems))
    return {name: (engine.plans[name], "model.plan") for name in stages}


MODEL_PY = '''"""Written by mner-triton: the {model} of mner.runtime.triton_models."""

import os
import sys

# Triton's Python-backend stub ignores PYTHONPATH: honour it, so that the mner (and numpy) of the environment
# the server was started with are the ones imported.
sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]

from mner.runtime.triton_models import {model} as TritonPythonModel  # noqa: E402, F401
'''


def _write_model_py(version: Path, model: str) -> None:
    # The model's code is the runtime's (triton_models): this file only names it, so a repository written by
    # one mner runs the mner installed where Triton runs.
    (version / "model.py").write_text(MODEL_PY.format(model=model))


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(source, target)


def _copy_bundle(bundle: Path, target: Path) -> None:
    """The bundle's listed files and its manifest, nothing else (a stray file would fail the load-time check)."""
    listed = read_manifest(bundle)["files"]
    for name in [*listed, "manifest.json"]:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(bundle / name, target / name)

