"""TrtRunner on a real TensorRT engine. Runs where `tensorrt` imports and a CUDA GPU exists; skips elsewhere."""

import numpy as np
import pytest

trt = pytest.importorskip(
    "tensorrt",
    reason="TensorRT is not installed; it comes from NVIDIA's index "
    "(pip install --extra-index-url https://pypi.nvidia.com tensorrt) on a machine with an NVIDIA GPU",
)

import onnx  # noqa: E402

from mner.runtime.bundle import StageInfo, TensorInfo  # noqa: E402
from mner.runtime.runners import OrtRunner, TrtRunner, _cudart, tensorrt_machine  # noqa: E402
from runtime_samples import toy_graph  # noqa: E402


def _gpus() -> int:
    try:
        error, count = _cudart().cudaGetDeviceCount()
    except RuntimeError:
        return 0
    return count if int(error) == 0 else 0


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_gpus() == 0, reason="no CUDA GPU visible to cuda-python")]

STAGE = StageInfo(
    "toy",
    inputs=(TensorInfo("x", "float32", ("batch", 3)), TensorInfo("ids", "int64", ("batch", "sequence"))),
    outputs=(TensorInfo("y", "float32", ("batch", 3)), TensorInfo("next_ids", "int64", ("batch", "sequence"))),
    axes={"batch": (1, 1024), "sequence": (1, 128)},
)
PROFILES = [{"x": {"min": [1, 3], "opt": [4, 3], "max": [8, 3]},
             "ids": {"min": [1, 2], "opt": [4, 4], "max": [8, 6]}}]  # fmt: skip


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    model = toy_graph()
    directory = tmp_path_factory.mktemp("trt")
    onnx.save(model, str(directory / "toy.onnx"))
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(model.SerializeToString()), [str(parser.get_error(i)) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name, shapes in PROFILES[0].items():
        profile.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None
    (directory / "toy.plan").write_bytes(bytes(plan))
    return directory


def test_trt_runner_matches_onnxruntime(engine):
    feed = {"x": np.arange(15, dtype=np.float32).reshape(5, 3), "ids": np.arange(20, dtype=np.int64).reshape(5, 4)}
    with TrtRunner(STAGE, engine / "toy.plan", PROFILES) as ours, OrtRunner(STAGE, engine / "toy.onnx") as reference:
        assert ours.axis_bounds("batch") == (1, 8) and ours.axis_bounds("sequence") == (2, 6)
        for _ in range(2):  # buffers are reused
            actual, expected = ours.infer(feed), reference.infer(feed)
            for name in ("y", "next_ids"):
                np.testing.assert_array_equal(actual[name], expected[name])
        with pytest.raises(ValueError, match=r"axis 'batch' is 9, outside \[1, 8\]"):
            ours.infer({"x": np.zeros((9, 3), np.float32), "ids": np.zeros((9, 2), np.int64)})


def test_this_machine_is_described_as_bundles_record_it():
    gpu, capability, version = tensorrt_machine()
    assert gpu and capability.count(".") == 1 and version == trt.__version__
