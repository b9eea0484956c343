"""TensorRT engines from the FP16 graphs. ``tensorrt`` is imported here only, and only for ``--trt``.

TensorRT 11 dropped the FP16 builder flag and per-layer precision: a network is
strongly typed and takes its precisions from the graph, which is why the engines are
built from the mixed-precision ``*.fp16.onnx`` graphs. On TensorRT 10.12+ the same
behaviour is asked for with the STRONGLY_TYPED creation flag (11 keeps the flag for
compatibility and ignores it). Each engine gets one optimisation profile over the
stage's dynamic axes (batch 1..64, opt 16; sequence 8..128, opt 64, clipped to what
the model takes; the tagger's grid cells 1..49, opt 49). One timing cache is shared by the engines of an export and kept
in the bundle, so a rebuild on the same GPU and TensorRT reuses the measurements.

    engines/<gpu>-trt<version>/<stage>.plan        serialized engine
    engines/<gpu>-trt<version>/<stage>.meta.json   GPU, compute capability, TensorRT, profile
    engines/<gpu>-trt<version>/timing.cache
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mner.export.spec import BuiltStage, StageSpec

logger = logging.getLogger(__name__)

MIN_VERSION = (10, 12)  # the first TensorRT whose strongly typed FP16 path this module relies on
WORKSPACE_BYTES = 4 << 30
INSTALL_HINT = (
    "TensorRT comes from NVIDIA's package index: `pip install --extra-index-url https://pypi.nvidia.com "
    "tensorrt` (10.12 or newer, for the CUDA version of your driver), on a machine with an NVIDIA GPU and "
    "a CUDA build of torch. Export without --trt to write the ONNX bundle only; engines can be built later "
    "on the serving GPU."
)


class TensorRTUnavailable(RuntimeError):
    """--trt was asked for where TensorRT or a CUDA GPU is missing."""


class EngineBuildError(RuntimeError):
    """TensorRT could not parse a graph or build its engine."""


@dataclass(frozen=True)
class Gpu:
    name: str
    compute_capability: str  # "9.0"

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")


def require_tensorrt():
    """The tensorrt module, or TensorRTUnavailable naming everything that is missing and how to get it."""
    missing = []
    trt = None
    try:
        import tensorrt as trt  # noqa: PLC0415 -- lazy on purpose: most machines have no TensorRT
    except ImportError as error:
        missing.append(f"the `tensorrt` Python module (import failed: {error})")
    if not torch.cuda.is_available():
        missing.append(f"a CUDA GPU (torch {torch.__version__} sees none: torch.cuda.is_available() is False)")
    if missing:
        raise TensorRTUnavailable("--trt needs " + " and ".join(missing) + ". " + INSTALL_HINT)
    version = tuple(int(part) for part in re.findall(r"\d+", trt.__version__)[:2])
    if version < MIN_VERSION:
        raise TensorRTUnavailable(
            f"--trt needs TensorRT {'.'.join(map(str, MIN_VERSION))} or newer (strongly typed FP16 networks); "
            f"found {trt.__version__}. {INSTALL_HINT}"
        )
    return trt


def current_gpu(device: int = 0) -> Gpu:
    major, minor = torch.cuda.get_device_capability(device)
    return Gpu(torch.cuda.get_device_name(device), f"{major}.{minor}")


def engine_dir_name(gpu: Gpu, trt_version: str) -> str:
    return f"{gpu.slug}-trt{trt_version}"


def profile_shapes(spec: StageSpec, built: BuiltStage) -> dict[str, dict[str, list[int]]]:
    """min/opt/max shape of every input with a dynamic axis, the axes clipped to the model's bounds."""
    sizes = {}
    for axis, (low, opt, high) in spec.trt_profile.items():
        bound_low, bound_high = built.axis_bounds[axis]
        low, high = max(low, bound_low), min(high, bound_high)
        sizes[axis] = (min(low, high), min(max(opt, low), high), high)
    inputs, _ = spec.resolved(built)
    shapes = {}
    for tensor in inputs:
        if any(entry in spec.dynamic_axes for entry in tensor.shape):
            shapes[tensor.name] = {
                key: list(tensor.concrete({axis: value[k] for axis, value in sizes.items()}))
                for k, key in enumerate(("min", "opt", "max"))
            }
    return shapes


def build_engine(trt, onnx_path: Path, plan_path: Path, shapes: dict, timing_cache: bytes) -> tuple[bytes, float]:
    """Parse ``onnx_path`` strongly typed, build with one profile, write ``plan_path``; returns (timing cache, seconds)."""
    start = time.perf_counter()
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n  ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT {trt.__version__} could not parse {onnx_path.name}:\n  {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    cache = config.create_timing_cache(timing_cache)
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    for name, shape in shapes.items():
        profile.set_shape(name, shape["min"], shape["opt"], shape["max"])
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT {trt.__version__} failed to build an engine from {onnx_path.name} (see its log above)")
    plan_path.write_bytes(bytes(serialized))
    return bytes(config.get_timing_cache().serialize()), time.perf_counter() - start


def build_engines(trt, bundle_dir: Path, stages: list[tuple[StageSpec, BuiltStage]]) -> dict[str, Any]:
    """Engines for every stage from ``<stage>.fp16.onnx`` in ``bundle_dir``; returns the manifest's ``engines`` entry."""
    gpu = current_gpu()
    name = engine_dir_name(gpu, trt.__version__)
    directory = bundle_dir / "engines" / name
    directory.mkdir(parents=True, exist_ok=True)
    cache = b""
    entry: dict[str, Any] = {
        "dir": f"engines/{name}",
        "gpu": gpu.name,
        "compute_capability": gpu.compute_capability,
        "tensorrt": trt.__version__,
        "cuda": torch.version.cuda,
        "timing_cache": f"engines/{name}/timing.cache",
        "stages": {},
    }
    for spec, built in stages:
        source = spec.graph_file("fp16")
        shapes = profile_shapes(spec, built)
        logger.info("TensorRT %s: building %s on %s", trt.__version__, source, gpu.name)
        cache, seconds = build_engine(trt, bundle_dir / source, directory / f"{spec.name}.plan", shapes, cache)
        meta = {
            "stage": spec.name,
            "plan": f"{spec.name}.plan",
            "source_graph": source,
            "gpu": gpu.name,
            "compute_capability": gpu.compute_capability,
            "tensorrt": trt.__version__,
            "cuda": torch.version.cuda,
            "network": "strongly typed",
            "profiles": [shapes],
            "build_seconds": round(seconds, 1),
        }
        (directory / f"{spec.name}.meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        entry["stages"][spec.name] = {
            "file": f"engines/{name}/{spec.name}.plan",
            "meta": f"engines/{name}/{spec.name}.meta.json",
            "source_graph": source,
            "profiles": [shapes],
        }
    (directory / "timing.cache").write_bytes(cache)
    return {name: entry}
