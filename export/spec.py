"""What an export stage declares, and what it is built from.

A stage (``export/detector.py``, ``export/vision.py``, ``export/tagger.py``) is one
``StageSpec``: graph input and output names, dtypes and shapes (named axes), which
axes stay dynamic, the ONNX opset, the parity tolerance of each output, the sizes
parity is checked at, how to make dummy inputs, which parts an FP16 graph keeps in
FP32, and the TensorRT optimisation profile. ``export/stages.py`` registers them in
one table; the exporter, the parity checks, the FP16 converter, the TensorRT
builder and the manifest all read that table, so nothing about a stage is said twice.

Shapes are tuples whose entries are ints or names. A name in ``dynamic_axes``
("batch", "sequence") stays symbolic in the graph and in the manifest; any other
name ("num_tags", "detector_size") is fixed per export and resolved from the
built stage's ``dims``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from mner.train.checkpoint import Checkpoint
from mner.train.detector_choice import DEFAULT_DETECTOR

# 18 is the dynamo exporter's native opset (no version conversion step); LayerNormalization
# needs >= 17, and TensorRT 10.12+ and ONNX Runtime 1.17+ read it.
OPSET = 18

# Relative error, everywhere in export/: max |onnx - torch| / max |torch| over one output
# tensor. Element-wise |a - b| / |b| is meaningless where the reference crosses zero.


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "int64"
    shape: tuple[int | str, ...]  # ints, dynamic axis names, or names resolved from BuiltStage.dims

    def resolve(self, dims: Mapping[str, int], dynamic_axes: tuple[str, ...]) -> "TensorSpec":
        """The same tensor with every non-dynamic name replaced by its value from ``dims``."""
        shape = []
        for entry in self.shape:
            if isinstance(entry, str) and entry not in dynamic_axes:
                if entry not in dims:
                    raise ValueError(f"{self.name}: shape entry {entry!r} is neither a dynamic axis nor in dims {sorted(dims)}")
                entry = int(dims[entry])
            shape.append(entry)
        return TensorSpec(self.name, self.dtype, tuple(shape))

    def concrete(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        """The shape with dynamic axes set from ``sizes`` (call on a resolved spec)."""
        return tuple(sizes[entry] if isinstance(entry, str) else entry for entry in self.shape)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Fp16Policy:
    """Which parts of a stage's FP16 graph stay FP32 (see export/fp16.py)."""

    fp32_ops: frozenset[str] = frozenset()  # op types always computed in FP32
    mask_inputs: tuple[str, ...] = ()  # graph inputs whose mask arithmetic stays FP32
    fp32_after_ops: frozenset[str] = frozenset()  # these ops and everything downstream of them stay FP32
    fp32_heads: tuple[str, ...] = ()  # graph outputs whose last MatMul/Gemm (and what follows it) stays FP32


@dataclass
class Sources:
    """Everything the stages are built from: the checkpoint and the frozen vision weights."""

    checkpoint: Checkpoint
    checkpoint_path: Path
    checkpoint_sha256: str
    resnet_weights: Path | None = None  # None: seeded random weights
    detector_weights: Path | None = None
    seed: int = 0  # seed of random vision/detector weights, and of the parity inputs
    vision_arch: str = "resnet152"  # the paper's; resnet50 keeps tests quick (same 2048 channels)
    detector_arch: str = DEFAULT_DETECTOR  # a name of mner.train.detector_choice.DETECTORS (or its alias)
    detector_size: int | None = None  # None: the detector's own (512 RetinaNet, 320 the MobileNetV3 ones)


@dataclass
class BuiltStage:
    """A stage's PyTorch module, ready to export: eval mode, forward(*inputs) -> outputs (spec order)."""

    module: nn.Module
    dims: dict[str, int]  # values of the fixed shape names
    axis_bounds: dict[str, tuple[int, int]]  # (min, max) of each dynamic axis, for torch.export
    weights: dict[str, Any]  # identity of the weights, for the manifest
    info: dict[str, Any] = field(default_factory=dict)  # stage facts for the manifest (sizes, K)

    def run(self, inputs: Mapping[str, np.ndarray], names: tuple[str, ...]) -> list[np.ndarray]:
        """The PyTorch reference on numpy inputs, outputs as numpy (spec order)."""
        with torch.no_grad():
            outputs = self.module(*(torch.from_numpy(np.ascontiguousarray(inputs[name])) for name in names))
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        return [output.detach().cpu().numpy() for output in outputs]


@dataclass(frozen=True)
class StageSpec:
    name: str
    summary: str  # one line for --help and the manifest
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dynamic_axes: tuple[str, ...]
    build: Callable[[Sources], BuiltStage]
    dummy_inputs: Callable[[BuiltStage, Mapping[str, int], np.random.Generator], dict[str, np.ndarray]]
    tolerance: Mapping[str, float]  # fp32 graph vs PyTorch: max relative error per float output
    fp16_tolerance: Mapping[str, float]  # fp16 graph vs PyTorch (FP32)
    parity_sizes: tuple[Mapping[str, int], ...]  # dynamic-axis sizes parity runs at
    trt_profile: Mapping[str, tuple[int, int, int]]  # per dynamic axis: (min, opt, max)
    fp16: Fp16Policy = Fp16Policy()
    # compare(built, reference, candidate, tolerance, strict) -> [parity.Measure]: replaces the
    # default (float outputs by relative error, integer outputs exactly) where a stage needs more.
    compare: Callable[..., list] | None = None
    opset: int = OPSET

    def __post_init__(self) -> None:
        names = [t.name for t in (*self.inputs, *self.outputs)]
        if len(set(names)) != len(names):
            raise ValueError(f"stage {self.name}: tensor names must be unique, got {names}")
        floats = {t.name for t in self.outputs if t.dtype.startswith("float")}
        for table in (self.tolerance, self.fp16_tolerance):
            if set(table) != floats:
                raise ValueError(f"stage {self.name}: tolerances must name the float outputs {sorted(floats)}, got {sorted(table)}")
        if self.opset < 17:
            raise ValueError(f"stage {self.name}: opset must be >= 17 (LayerNormalization), got {self.opset}")
        for sizes in self.parity_sizes:
            if set(sizes) != set(self.dynamic_axes):
                raise ValueError(f"stage {self.name}: parity sizes {dict(sizes)} must set exactly {self.dynamic_axes}")
        if set(self.trt_profile) != set(self.dynamic_axes):
            raise ValueError(f"stage {self.name}: the TensorRT profile must cover {self.dynamic_axes}")

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def resolved(self, built: BuiltStage) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """(inputs, outputs) with fixed dims filled in from the built stage: the manifest's shapes."""
        return (
            tuple(t.resolve(built.dims, self.dynamic_axes) for t in self.inputs),
            tuple(t.resolve(built.dims, self.dynamic_axes) for t in self.outputs),
        )

    def graph_file(self, precision: str) -> str:
        return f"{self.name}.onnx" if precision == "fp32" else f"{self.name}.{precision}.onnx"

    @staticmethod
    def case_name(sizes: Mapping[str, int]) -> str:
        return " ".join(f"{axis}={size}" for axis, size in sizes.items())
