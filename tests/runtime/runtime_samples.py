"""Inputs several runtime tests share: pictures, a decompression-bomb header, a toy ONNX graph."""

from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper

from mner.runtime.bundle import StageInfo, TensorInfo


def jpeg(height: int, width: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    picture = (rng.random((height, width, 3)) * 255).astype(np.uint8)
    picture[: height // 2, : width // 3] = rng.integers(0, 256, size=3, dtype=np.uint8)
    return cv2.imencode(".jpg", picture)[1].tobytes()


def png_header_claiming(width: int, height: int) -> bytes:
    """The first bytes of a PNG whose header claims a huge canvas (a decompression bomb's)."""
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + len(ihdr).to_bytes(4, "big") + b"IHDR" + ihdr + b"\0" * 4


def toy_graph() -> onnx.ModelProto:
    """y = 2x, next_ids = ids + 1, with symbolic batch and sequence axes (checked)."""
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    one = helper.make_tensor("one", TensorProto.INT64, [], [1])
    model = helper.make_model(
        helper.make_graph(
            [helper.make_node("Mul", ["x", "two"], ["y"]), helper.make_node("Add", ["ids", "one"], ["next_ids"])],
            "toy",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]),
             helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "sequence"])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3]),
             helper.make_tensor_value_info("next_ids", TensorProto.INT64, ["batch", "sequence"])],
            initializer=[two, one],
        ),  # fmt: skip
        opset_imports=[helper.make_opsetid("", 18)],
    )
    onnx.checker.check_model(model)
    return model


# The interface toy_graph declares, as a bundle's manifest would describe it.
TOY_STAGE = StageInfo(
    "toy",
    inputs=(TensorInfo("x", "float32", ("batch", 3)), TensorInfo("ids", "int64", ("batch", "sequence"))),
    outputs=(TensorInfo("y", "float32", ("batch", 3)), TensorInfo("next_ids", "int64", ("batch", "sequence"))),
    axes={"batch": (1, 8), "sequence": (1, 5)},
)


def save_toy_graph(folder) -> Path:
    path = Path(folder) / "toy.onnx"
    onnx.save(toy_graph(), str(path))
    return path
