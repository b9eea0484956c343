"""Mixed-precision graphs: FP16 weights and activations, FP32 where FP16 breaks things.

TensorRT 11 has no FP16 builder flag and no per-layer precision: precision lives in
the graph (a STRONGLY_TYPED network). So the FP16 graph is made here, from the FP32
one, with onnx alone -- the approach of onnxconverter-common's
``convert_float_to_float16(keep_io_types=True, node_block_list=...)``, with the block
list derived from the stage's ``Fp16Policy`` instead of written out by node name:

* ``fp32_ops``        op types that always run in FP32 (LayerNormalization, Softmax,
                      the normalisations);
* ``mask_inputs``     the mask arithmetic: every node computing only from these inputs
                      and scalar constants (cast, 1 - m, * -10000, unsqueeze), and
                      every node where such a mask meets data (scores + mask);
* ``fp32_after_ops``  these ops and all that follows them (the detector's TopK tail);
* ``fp32_heads``      a graph output's head: back from the output to its MatMul/Gemm.

Every other node that computes on float tensors runs in FP16. Float32 tensors cross
between the two worlds through inserted Cast nodes (one per tensor and direction);
initializers read only by FP16 nodes are stored in FP16. Graph inputs and outputs
keep FP32, so an FP16 graph has exactly the FP32 graph's interface.

Nothing is downgraded silently: a weight outside FP16's range, a tensor whose type
cannot be inferred, or a control-flow subgraph raises ``Fp16Error``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mner.export.spec import Fp16Policy

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
FP16_MAX = float(np.finfo(np.float16).max)  # 65504
FP16_TINY = float(np.finfo(np.float16).smallest_subnormal)  # below this a weight becomes 0
# Inputs whose type is not the op's data type T: they stay float32 in an FP16 node.
FLOAT32_PARAMETER_INPUTS = {"Resize": (1, 2), "Upsample": (1,)}
HEAD_STOP_OPS = frozenset({"MatMul", "Gemm"})
# Ops whose float output type comes from an attribute this module does not rewrite.
TYPED_OUTPUT_OPS = frozenset({"EyeLike", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                              "Multinomial", "Bernoulli"})  # fmt: skip
PRECISION = "fp16"


class Fp16Error(ValueError):
    """The graph cannot be converted to FP16 without losing what it computes."""


@dataclass
class Fp16Report:
    fp16_nodes: int = 0
    fp32_nodes: dict[str, int] = field(default_factory=dict)  # reason -> nodes kept FP32
    fp32_ops: dict[str, int] = field(default_factory=dict)  # op type -> nodes kept FP32
    casts: int = 0
    fp16_initializers: int = 0
    weights_flushed_to_zero: int = 0  # non-zero weights below FP16's smallest subnormal

    def to_json(self) -> dict[str, Any]:
        return {
            "io_dtype": "float32",
            "fp16_nodes": self.fp16_nodes,
            "fp32_nodes_by_reason": dict(sorted(self.fp32_nodes.items())),
            "fp32_nodes_by_op": dict(sorted(self.fp32_ops.items())),
            "casts_inserted": self.casts,
            "fp16_initializers": self.fp16_initializers,
            "weights_flushed_to_zero": self.weights_flushed_to_zero,
        }


def convert_to_fp16(model: onnx.ModelProto, policy: Fp16Policy) -> tuple[onnx.ModelProto, Fp16Report]:
    """The mixed-precision copy of ``model`` (FP32 in, FP32 out) and what was kept FP32."""
    model_copy = onnx.ModelProto()
    model_copy.CopyFrom(model)
    graph = model_copy.graph
    for node in graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise Fp16Error(f"node {node.name or node.op_type} ({node.op_type}) holds a subgraph; FP16 conversion handles flat graphs only")

    types = _tensor_types(model_copy)
    initializers = {init.name: init for init in graph.initializer}
    constants = {node.output[0]: node for node in graph.node if node.op_type == "Constant"}
    reasons = _fp32_nodes(graph, types, initializers, constants, policy)

    report = Fp16Report()
    new_type: dict[str, int] = {}  # float tensors whose type changed to FLOAT16
    converted: dict[tuple[str, int], str] = {}
    new_initializers: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def convert(name: str, want: int) -> str:
        key = (name, want)
        if key in converted:
            return converted[key]
        suffix = "fp16" if want == FLOAT16 else "fp32"
        if name in initializers and want == FLOAT16:
            new_name = f"{name}__{suffix}"
            new_initializers.append(_to_fp16_initializer(initializers[name], new_name, report))
            report.fp16_initializers += 1
        else:
            new_name = f"{name}__to_{suffix}"
            nodes.append(helper.make_node("Cast", [name], [new_name], to=want, name=f"{new_name}__cast"))
            report.casts += 1
        new_type[new_name] = want
        converted[key] = new_name
        return new_name

    for index, node in enumerate(graph.node):
        fp16 = index not in reasons
        for position, name in enumerate(node.input):
            if not name or types.get(name) != FLOAT:
                continue
            parameter = position in FLOAT32_PARAMETER_INPUTS.get(node.op_type, ())
            want = FLOAT16 if fp16 and not parameter else FLOAT
            if new_type.get(name, FLOAT) != want:
                node.input[position] = convert(name, want)
        if fp16:
            _retype_attributes(node, report)
            for name in node.output:
                if types.get(name) == FLOAT:
                    new_type[name] = FLOAT16
            if any(types.get(name) in (FLOAT, FLOAT16) for name in (*node.input, *node.output)):
                report.fp16_nodes += 1
        elif any(types.get(name) == FLOAT for name in (*node.input, *node.output)):  # shape arithmetic is not counted
            report.fp32_nodes[reasons[index]] = report.fp32_nodes.get(reasons[index], 0) + 1
            report.fp32_ops[node.op_type] = report.fp32_ops.get(node.op_type, 0) + 1
        nodes.append(node)

    # Outputs keep float32: the producer writes "<name>__fp16", a final Cast writes <name>.
    for output in graph.output:
        if new_type.get(output.name) == FLOAT16:
            inner = f"{output.name}__fp16"
            for node in nodes:
                node.input[:] = [inner if n == output.name else n for n in node.input]
                node.output[:] = [inner if n == output.name else n for n in node.output]
            nodes.append(helper.make_node("Cast", [inner], [output.name], to=FLOAT, name=f"{output.name}__cast"))
            report.casts += 1

    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in nodes for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + [init for init in new_initializers if init.name in used])
    del graph.value_info[:]
    model_copy = onnx.shape_inference.infer_shapes(model_copy)
    onnx.helper.set_model_props(model_copy, {**{p.key: p.value for p in model_copy.metadata_props}, "mner.precision": PRECISION})
    return model_copy, report


# --------------------------------------------------------------------------- which nodes stay FP32


def _fp32_nodes(graph, types, initializers, constants, policy: Fp16Policy) -> dict[int, str]:
    """node index -> why it stays FP32."""
    nodes = list(graph.node)
    reasons: dict[int, str] = {}
    producers = {name: i for i, node in enumerate(nodes) for name in node.output}
    graph_inputs = {value.name for value in graph.input}
    graph_outputs = {value.name for value in graph.output}

    missing = [name for name in policy.mask_inputs if name not in graph_inputs]
    if missing:
        raise Fp16Error(f"mask inputs {missing} are not graph inputs (inputs: {sorted(graph_inputs)})")
    missing = [name for name in policy.fp32_heads if name not in graph_outputs]
    if missing:
        raise Fp16Error(f"FP32 heads {missing} are not graph outputs (outputs: {sorted(graph_outputs)})")

    def scalar_constant(name: str) -> bool:
        if name in initializers:
            return int(np.prod(initializers[name].dims)) <= 1
        if name in constants:
            value = next((a.t for a in constants[name].attribute if a.name == "value"), None)
            return value is not None and int(np.prod(value.dims)) <= 1
        return False

    for i, node in enumerate(nodes):
        if node.op_type in policy.fp32_ops:
            reasons[i] = "fp32_op"
        elif node.op_type in TYPED_OUTPUT_OPS:
            reasons[i] = "typed_output"

    mask_tensors = set(policy.mask_inputs)
    for i, node in enumerate(nodes):
        inputs = [name for name in node.input if name]
        if not any(name in mask_tensors for name in inputs):
            continue
        float_inputs = [name for name in inputs if types.get(name) == FLOAT]
        if all(name in mask_tensors or scalar_constant(name) for name in float_inputs):
            mask_tensors.update(node.output)  # pure mask arithmetic
            reasons.setdefault(i, "mask")
        elif any(name in mask_tensors for name in float_inputs):
            reasons.setdefault(i, "mask")  # where the mask meets the data: scores + mask, grid * mask

    tail_tensors: set[str] = set()
    for i, node in enumerate(nodes):
        if node.op_type in policy.fp32_after_ops or any(name in tail_tensors for name in node.input):
            tail_tensors.update(node.output)
            reasons.setdefault(i, "tail")

    for output in policy.fp32_heads:
        name = output
        while name in producers:
            i = producers[name]
            reasons.setdefault(i, "head")
            node = nodes[i]
            if node.op_type in HEAD_STOP_OPS:
                break
            data = [n for n in node.input if types.get(n) == FLOAT and n not in initializers and n not in constants]
            if not data:
                break
            name = data[0]

    # A float constant read by an FP32 node stays FP32 (no round trip through FP16).
    consumers = defaultdict(list)
    for i, node in enumerate(nodes):
        for name in node.input:
            consumers[name].append(i)
    for i, node in enumerate(nodes):
        if node.op_type in ("Constant", "ConstantOfShape") and i not in reasons:
            if any(c in reasons for name in node.output for c in consumers[name]):
                reasons[i] = "constant_for_fp32"
    return reasons


# --------------------------------------------------------------------------- helpers


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {}
    for value in (*graph.input, *graph.value_info, *graph.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    unknown = [name for node in graph.node for name in node.output if name and name not in types]
    if unknown:
        raise Fp16Error(f"cannot infer the element type of {len(unknown)} tensors (e.g. {unknown[:5]}); not converting blindly")
    return types


def _as_fp16(values: np.ndarray, what: str, report: Fp16Report) -> np.ndarray:
    largest = float(np.abs(values).max(initial=0.0))
    if largest > FP16_MAX:
        raise Fp16Error(f"{what} holds values up to {largest:.4g}, beyond FP16's range (±{FP16_MAX:g})")
    report.weights_flushed_to_zero += int(((values != 0) & (np.abs(values) < FP16_TINY)).sum())
    return values.astype(np.float16)


def _to_fp16_initializer(init: onnx.TensorProto, name: str, report: Fp16Report) -> onnx.TensorProto:
    return numpy_helper.from_array(_as_fp16(numpy_helper.to_array(init), f"initializer {init.name}", report), name)


def _retype_attributes(node: onnx.NodeProto, report: Fp16Report) -> None:
    """An FP16 node whose float output type comes from an attribute: make that attribute FP16."""
    for attribute in node.attribute:
        if node.op_type == "Constant" and attribute.name == "value_float":
            scalar = np.array(attribute.f, dtype=np.float32)
            attribute.CopyFrom(helper.make_attribute("value", numpy_helper.from_array(_as_fp16(scalar, f"constant {node.output[0]}", report))))
            continue
        if node.op_type == "Cast" and attribute.name == "to" and attribute.i == FLOAT:
            attribute.i = FLOAT16
        elif node.op_type in ("Constant", "ConstantOfShape") and attribute.name == "value" and attribute.t.data_type == FLOAT:
            values = _as_fp16(numpy_helper.to_array(attribute.t), f"constant {node.output[0]}", report)
            attribute.t.CopyFrom(numpy_helper.from_array(values, attribute.t.name))
