"""One stage's module -> one ONNX graph, checked against the stage's spec.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript). Both
exporters were tried on MGCMT (transformers 5 BertModel, eager attention, a prepared
4-D additive mask) with dynamic batch and sequence, and both match PyTorch to ~1e-6
in ONNX Runtime at batch 1/3/17 x sequence 5/64/100. The dynamo graph is the clean
one: ~480 nodes for the test model against ~1,200 from the TorchScript exporter
(which adds Constant/Identity/Shape chains around every reshape), it names the
dynamic dimensions after the ``torch.export.Dim``s, it folds constants with the
onnxscript optimiser, and it is the exporter torch keeps (``dynamo=False``, the
TorchScript one, is deprecated since torch 2.9). It also exports ResNet (BatchNorm
folded into Conv) and the RetinaNet candidate graph (TopK, no If/Loop) cleanly.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import torch

from mner.export.spec import BuiltStage, StageSpec, TensorSpec

logger = logging.getLogger(__name__)

EXPORTER = f"torch.onnx.export(dynamo=True), torch {torch.__version__}"
EXAMPLE_SIZES = {"batch": 2, "sequence": 9, "grid_cells": 7}  # > 1, so torch.export does not specialise an axis to size 1
_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.INT64: "int64",
                onnx.TensorProto.INT32: "int32", onnx.TensorProto.BOOL: "bool"}  # fmt: skip


class GraphError(ValueError):
    """An exported graph does not have the interface its stage declares."""


def export_graph(spec: StageSpec, built: BuiltStage, path: Path, seed: int = 0) -> None:
    """Export ``built.module`` to ``path`` (FP32) and check it: onnx.checker, then names, dtypes and shapes."""
    sizes = {axis: max(low, min(EXAMPLE_SIZES[axis], high)) for axis, (low, high) in built.axis_bounds.items()}
    example = spec.dummy_inputs(built, sizes, np.random.default_rng(seed))
    args = tuple(torch.from_numpy(np.ascontiguousarray(example[name])) for name in spec.input_names)
    dims = {axis: torch.export.Dim(axis, min=low, max=high) for axis, (low, high) in built.axis_bounds.items()}
    dynamic_shapes = tuple(
        {position: dims[entry] for position, entry in enumerate(tensor.shape) if entry in spec.dynamic_axes}
        for tensor in spec.inputs
    )
    with torch.no_grad(), warnings.catch_warnings():
        # torch.export's notes on renamed symbolic dims and deprecated internals are not ours to act on.
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        program = torch.onnx.export(
            built.module,
            args,
            input_names=list(spec.input_names),
            output_names=list(spec.output_names),
            opset_version=spec.opset,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            optimize=True,
            verbose=False,
        )
    program.save(str(path))
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {"mner.stage": spec.name, "mner.precision": "fp32", "mner.exporter": EXPORTER})
    onnx.save(model, str(path))
    inputs, outputs = spec.resolved(built)
    check_graph(path, inputs, outputs)


def check_graph(path: Path, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> None:
    """onnx.checker (full, with shape inference), then the graph's interface against the spec."""
    onnx.checker.check_model(str(path), full_check=True)
    graph = onnx.load(str(path), load_external_data=False).graph
    problems = []
    for kind, declared, actual in (("input", inputs, graph.input), ("output", outputs, graph.output)):
        actual = [value for value in actual]
        if [t.name for t in declared] != [v.name for v in actual]:
            problems.append(f"{kind} names {[v.name for v in actual]}, expected {[t.name for t in declared]}")
            continue
        for tensor, value in zip(declared, actual):
            dtype, shape = describe_value(value)
            if dtype != tensor.dtype or shape != list(tensor.shape):
                problems.append(f"{kind} {tensor.name}: {dtype} {shape}, expected {tensor.dtype} {list(tensor.shape)}")
    if problems:
        raise GraphError(f"{path.name} does not match its stage spec: " + "; ".join(problems))


def describe_value(value: onnx.ValueInfoProto) -> tuple[str, list[int | str]]:
    tensor_type = value.type.tensor_type
    dtype = _ONNX_DTYPES.get(tensor_type.elem_type, onnx.TensorProto.DataType.Name(tensor_type.elem_type).lower())
    shape = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in tensor_type.shape.dim]
    return dtype, shape

