"""TensorRT engines: runs only where `tensorrt` imports and a CUDA GPU exists; skips with the reason elsewhere."""

import importlib.util
import json

import numpy as np
import pytest
import torch

from mner.export.bundle import verify_bundle
from mner.export.pipeline import export_bundle

if importlib.util.find_spec("tensorrt") is None:
    pytest.skip("the tensorrt module is not installed (pip install --extra-index-url https://pypi.nvidia.com tensorrt)",
                allow_module_level=True)  # fmt: skip
if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU: torch.cuda.is_available() is False", allow_module_level=True)

import tensorrt as trt  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def trt_bundle(small_ckpt, fast, tmp_path_factory):
    out = tmp_path_factory.mktemp("trt") / "bundle"
    export_bundle(ckpt=small_ckpt, out=out, trt=True, **fast)
    return out


def test_engines_meta_and_timing_cache_are_in_the_bundle(trt_bundle):
    manifest = verify_bundle(trt_bundle)
    ((name, engine),) = manifest["engines"].items()
    assert name.endswith(f"-trt{trt.__version__}") and engine["tensorrt"] == trt.__version__
    assert set(engine["stages"]) == {"detector", "vision", "tagger"}
    assert engine["timing_cache"] in manifest["files"]
    for stage, entry in engine["stages"].items():
        assert entry["source_graph"] == f"{stage}.fp16.onnx"
        meta = json.loads((trt_bundle / entry["meta"]).read_text())
        assert meta["gpu"] == torch.cuda.get_device_name(0) and meta["compute_capability"] == engine["compute_capability"]
        assert meta["tensorrt"] == trt.__version__ and meta["profiles"] == entry["profiles"]
    assert engine["stages"]["tagger"]["profiles"][0]["input_ids"] == {"min": [1, 8], "opt": [16, 64], "max": [64, 128]}
    assert manifest["versions"]["tensorrt"] == trt.__version__


def test_tagger_engine_matches_onnx_runtime(trt_bundle, sources):
    from mner.export.parity import cpu_session
    from mner.export.stages import STAGES

    manifest = verify_bundle(trt_bundle)
    ((engine_entry),) = manifest["engines"].values()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine((trt_bundle / engine_entry["stages"]["tagger"]["file"]).read_bytes())
    context = engine.create_execution_context()
    spec = STAGES["tagger"]
    built = spec.build(sources)
    inputs = spec.dummy_inputs(built, {"batch": 4, "sequence": 24}, np.random.default_rng(0))
    (expected,) = cpu_session(trt_bundle / "tagger.onnx").run(["emissions"], inputs)
    buffers = {name: torch.from_numpy(array).cuda().contiguous() for name, array in inputs.items()}
    buffers["emissions"] = torch.empty(expected.shape, dtype=torch.float32, device="cuda")
    for name, tensor in buffers.items():
        if name != "emissions":
            context.set_input_shape(name, tuple(tensor.shape))
        context.set_tensor_address(name, tensor.data_ptr())
    stream = torch.cuda.current_stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    actual = buffers["emissions"].cpu().numpy()
    assert np.abs(actual - expected).max() <= 3e-2 * np.abs(expected).max()
