"""mner-bench's backends: names and what each runs (torch-free and cheap: ``mner-bench --help`` lists them).

``torch`` is the reference -- the eager FP32 model the checkpoint came from, every post
padded to the model's window (64 word-pieces), as the authors' code runs it.
``torch-longest`` is the same model with each batch padded only to its longest post;
``ort`` / ``ort-fp16`` / ``ort-int8`` are the runtime on ONNX Runtime (``ort-int8``: the bundle's INT8
graphs, ``mner-export --int8``, FP32 for stages without one), ``trt`` on the bundle's TensorRT
engines, ``torch-fp16`` the reference in half precision (GPU).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackendSpec:
    name: str
    engine: str  # Pipeline.from_bundle's backend: "torch", "ort" or "trt"
    precision: str  # "fp32", "fp16" or "int8" (Pipeline.from_bundle's)
    pad_to_window: bool  # every post padded to the model's window, as the reference runs it
    gpu_only: bool
    description: str


BACKENDS = {
    spec.name: spec
    for spec in (
        BackendSpec("torch", "torch", "fp32", True, False,
                    "the reference: eager PyTorch FP32, every post padded to the model's window"),
        BackendSpec("torch-longest", "torch", "fp32", False, False,
                    "eager PyTorch FP32, each batch padded to its longest post"),
        BackendSpec("torch-fp16", "torch", "fp16", True, True,
                    "the reference in half precision (CUDA), every post padded to the window"),
        BackendSpec("ort", "ort", "fp32", False, False,
                    "mner runtime, ONNX Runtime FP32, each batch padded to its longest post"),
        BackendSpec("ort-fp16", "ort", "fp16", False, False,
                    "mner runtime, ONNX Runtime on the FP16 graphs, padded to the longest post"),
        BackendSpec("ort-int8", "ort", "int8", False, False,
                    "mner runtime, ONNX Runtime on the INT8 graphs (FP32 where a stage has none), padded to the longest post"),
        BackendSpec("trt", "trt", "fp16", False, True,
                    "mner runtime, the bundle's TensorRT FP16 engines, padded to the longest post"),
    )  # fmt: skip
}
REFERENCE = "torch"
