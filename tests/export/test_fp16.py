"""FP16 graphs: what stays FP32, that ONNX Runtime (CPU) runs them, tag agreement, and refusals."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mner.export.bundle import read_manifest
from mner.export.fp16 import Fp16Error, convert_to_fp16
from mner.export.parity import FP16_TAG_AGREEMENT, cpu_session
from mner.export.spec import Fp16Policy
from mner.export.tagger import SPEC as TAGGER

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    graph = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info, *graph.output)}
    types.update({i.name: i.data_type for i in graph.initializer})
    return types


def float_inputs(node, types):
    return [types[name] for name in node.input if name and types.get(name) in (FLOAT, FLOAT16)]


@pytest.fixture(scope="module")
def tagger16(bundle):
    model = onnx.load(str(bundle / "tagger.fp16.onnx"))
    return model, tensor_types(model)


def test_tagger_keeps_layernorm_softmax_masks_and_head_in_fp32(tagger16):
    model, types = tagger16
    nodes = list(model.graph.node)
    for node in nodes:
        if node.op_type in ("LayerNormalization", "Softmax"):
            assert set(float_inputs(node, types)) == {FLOAT}, node.name
    producers = {out: node for node in nodes for out in node.output}
    # Every softmax reads scores + mask computed in FP32.
    for softmax in (n for n in nodes if n.op_type == "Softmax"):
        add = producers[softmax.input[0]]
        assert add.op_type == "Add" and set(float_inputs(add, types)) == {FLOAT}
    # The emission head: emissions <- Cast <- Add(bias) <- MatMul, the latter two in FP32.
    head = producers["emissions"]
    while head.op_type != "MatMul":
        assert set(float_inputs(head, types)) <= {FLOAT}
        head = producers[head.input[0]]
    assert set(float_inputs(head, types)) == {FLOAT}
    matmuls = [n for n in nodes if n.op_type == "MatMul"]
    assert sum(set(float_inputs(n, types)) == {FLOAT16} for n in matmuls) >= len(matmuls) - 1
    # the interface is the FP32 graph's
    assert all(types[v.name] in (FLOAT, TensorProto.INT64) for v in (*model.graph.input, *model.graph.output))
    assert sum(i.data_type == FLOAT16 for i in model.graph.initializer) > 20


def test_detector_tail_stays_fp32(bundle):
    model = onnx.load(str(bundle / "detector.fp16.onnx"))
    types = tensor_types(model)
    (topk,) = [n for n in model.graph.node if n.op_type == "TopK"]
    assert types[topk.input[0]] == FLOAT
    assert all(set(float_inputs(n, types)) == {FLOAT} for n in model.graph.node if n.op_type in ("Exp", "InstanceNormalization"))


def test_fp16_graphs_run_on_onnx_runtime_cpu_and_agree(bundle):
    manifest = read_manifest(bundle)
    checks = [c for c in manifest["parity"]["checks"] if c["precision"] == "fp16"]
    assert {c["stage"] for c in checks} == {"detector", "vision", "tagger"}
    assert all(c["passed"] for c in checks)
    (agreement,) = [c for c in checks if c["metric"] == "word_agreement"]
    assert agreement["limit"] == FP16_TAG_AGREEMENT and agreement["value"] >= FP16_TAG_AGREEMENT
    emissions = [c["value"] for c in checks if c["output"] == "emissions"]
    assert len(emissions) == len(TAGGER.parity_sizes) == 11 and max(emissions) < 1e-2


def masked_attention_graph(scale: float = 1.0) -> onnx.ModelProto:
    """x (2, 4) float, mask (2, 4) int64 -> softmax(x W + (1 - mask) * -10000) W2: a tagger in miniature."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((4, 4)) * scale).astype(np.float32), "w")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w2")
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    negative = numpy_helper.from_array(np.array(-10000.0, np.float32), "negative")
    nodes = [
        helper.make_node("Cast", ["mask"], ["mask_f"], to=FLOAT),
        helper.make_node("Sub", ["one", "mask_f"], ["inverted"]),
        helper.make_node("Mul", ["inverted", "negative"], ["additive"]),
        helper.make_node("MatMul", ["x", "w"], ["scores"]),
        helper.make_node("Add", ["scores", "additive"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "w2"], ["hidden"]),
        helper.make_node("Relu", ["hidden"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "mini",
        [helper.make_tensor_value_info("x", FLOAT, ["batch", 4]), helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", 4])],
        [helper.make_tensor_value_info("y", FLOAT, ["batch", 3])],
        [w, w2, one, negative],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_mask_arithmetic_is_found_and_kept_fp32(tmp_path):
    model16, report = convert_to_fp16(masked_attention_graph(), Fp16Policy(fp32_ops=frozenset({"Softmax"}), mask_inputs=("mask",)))
    onnx.checker.check_model(model16, full_check=True)
    types = tensor_types(model16)
    by_op = {n.op_type: n for n in model16.graph.node if not n.name.endswith("__cast")}
    for op in ("Sub", "Mul", "Add", "Softmax"):
        assert set(float_inputs(by_op[op], types)) == {FLOAT}, op
    assert set(float_inputs(by_op["Relu"], types)) == {FLOAT16}
    assert report.fp32_nodes == {"mask": 4, "fp32_op": 1} and report.fp16_initializers == 2
    path = tmp_path / "mini.onnx"
    onnx.save(model16, str(path))
    inputs = {"x": np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32), "mask": np.array([[1, 1, 0, 0], [1, 1, 1, 1]])}
    onnx.save(masked_attention_graph(), str(tmp_path / "mini32.onnx"))
    (expected,) = cpu_session(tmp_path / "mini32.onnx").run(["y"], inputs)
    (actual,) = cpu_session(path).run(["y"], inputs)
    assert actual.dtype == np.float32 and np.abs(actual - expected).max() < 1e-2 * np.abs(expected).max()


def test_conversion_refuses_instead_of_downgrading():
    with pytest.raises(Fp16Error, match=r"initializer w holds values up to .* beyond FP16's range"):
        convert_to_fp16(masked_attention_graph(scale=1e6), Fp16Policy())
    with pytest.raises(Fp16Error, match=r"mask inputs \['attention'\] are not graph inputs"):
        convert_to_fp16(masked_attention_graph(), Fp16Policy(mask_inputs=("attention",)))
    with pytest.raises(Fp16Error, match=r"FP32 heads \['logits'\] are not graph outputs"):
        convert_to_fp16(masked_attention_graph(), Fp16Policy(fp32_heads=("logits",)))
    model = masked_attention_graph()
    branch = helper.make_graph([], "branch", [], [helper.make_tensor_value_info("y", FLOAT, None)])
    model.graph.node.append(helper.make_node("If", ["cond"], ["z"], then_branch=branch, else_branch=branch))
    with pytest.raises(Fp16Error, match="holds a subgraph"):
        convert_to_fp16(model, Fp16Policy())
