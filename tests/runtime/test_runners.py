"""mner.runtime.runners: the Runner interface, its input checks, OrtRunner and TorchRunner on a small graph."""

import numpy as np
import onnxruntime as ort
import pytest

from mner.runtime.bundle import BundleError, StageInfo, TensorInfo
from mner.runtime.runners import OrtRunner, Runner, TorchRunner, check_feed, profile_axes
from runtime_samples import TOY_STAGE as STAGE
from runtime_samples import save_toy_graph

@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    return save_toy_graph(tmp_path_factory.mktemp("graph"))


def feed(batch=2, sequence=4):
    return {"x": np.arange(batch * 3, dtype=np.float32).reshape(batch, 3),
            "ids": np.arange(batch * sequence, dtype=np.int64).reshape(batch, sequence)}  # fmt: skip


def test_ort_runner_runs_the_graph(graph):
    with OrtRunner(STAGE, graph, threads=1) as runner:
        assert runner.is_active
        outputs = runner.infer(feed())
        # non-contiguous inputs are accepted
        strided = {"x": np.zeros((4, 6), np.float32)[:, ::2], "ids": np.zeros((4, 3), np.int64)}
        assert runner.infer(strided)["y"].shape == (4, 3)
    assert not runner.is_active
    np.testing.assert_array_equal(outputs["y"], feed()["x"] * 2)
    np.testing.assert_array_equal(outputs["next_ids"], feed()["ids"] + 1)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: f.pop("ids"), r"missing inputs \['ids'\]"),
        (lambda f: f.update(extra=np.zeros(1)), r"unexpected inputs \['extra'\]"),
        (lambda f: f.update(x=f["x"].astype(np.float64)), "x: dtype float64, expected float32"),
        (lambda f: f.update(ids=f["ids"].astype(np.int32)), "ids: dtype int32, expected int64"),
        (lambda f: f.update(x=f["x"][0]), r"x: shape \(3,\), expected 2 dimensions"),
        (lambda f: f.update(x=np.zeros((2, 4), np.float32)), "x: dimension 1 is 4, expected 3"),
        (lambda f: f.update(ids=np.zeros((3, 4), np.int64)), "ids: axis 'batch' is 3 but 2 in x"),
        (lambda f: f.update(ids=np.zeros((2, 6), np.int64)), r"ids: axis 'sequence' is 6, outside \[1, 5\]"),
        (lambda f: f.update(x=[[1.0, 2.0, 3.0]]), "x: expected a numpy array, got list"),
    ],
)
def test_infer_checks_the_feed_against_the_manifest(graph, change, message):
    values = feed()
    change(values)
    with OrtRunner(STAGE, graph) as runner, pytest.raises(ValueError, match=message):
        runner.infer(values)


def test_every_problem_is_listed_at_once():
    values = {"x": np.zeros((9, 3), np.float64), "y": np.zeros(1)}
    with pytest.raises(ValueError) as caught:
        check_feed(STAGE, values)
    message = str(caught.value)
    for fragment in ("missing inputs ['ids']", "unexpected inputs ['y']", "dtype float64", "outside [1, 8]",
                     "x float32 (batch, 3), ids int64 (batch, sequence)"):  # fmt: skip
        assert fragment in message
    with pytest.raises(ValueError, match="must map input names"):
        check_feed(STAGE, [np.zeros(3)])


def test_runner_lifecycle_and_construction_errors(graph, tmp_path):
    runner = OrtRunner(STAGE, graph)
    with pytest.raises(RuntimeError, match="is not active"):
        runner.infer(feed())
    runner.activate()
    runner.activate()  # idempotent
    runner.deactivate()
    runner.deactivate()
    with pytest.raises(ValueError, match="device"):
        OrtRunner(STAGE, graph, device="tpu")
    with pytest.raises(ValueError, match="threads"):
        OrtRunner(STAGE, graph, threads=0)
    with pytest.raises(BundleError, match="no such ONNX graph"):
        OrtRunner(STAGE, tmp_path / "absent.onnx").activate()
    renamed = StageInfo("toy", (TensorInfo("z", "float32", ("batch", 3)), STAGE.inputs[1]), STAGE.outputs, STAGE.axes)
    with pytest.raises(BundleError, match=r"differ from the manifest's \['z', 'ids'\]"):
        OrtRunner(renamed, graph).activate()


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="onnxruntime-gpu is installed here")
def test_cuda_without_onnxruntime_gpu_says_how_to_get_it(graph):
    with pytest.raises(RuntimeError, match="pip install onnxruntime-gpu"):
        OrtRunner(STAGE, graph, device="cuda").activate()


@pytest.mark.gpu
@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="needs onnxruntime-gpu and a GPU")
def test_cuda_io_binding_matches_cpu(graph):
    with OrtRunner(STAGE, graph, device="cuda") as gpu, OrtRunner(STAGE, graph) as cpu:
        for name, value in cpu.infer(feed()).items():
            np.testing.assert_array_equal(gpu.infer(feed())[name], value)


class Broken(Runner):
    def _activate(self):
        pass

    def _infer(self, feed):
        return {"y": np.zeros((1, 3), np.float32)}

    def _deactivate(self):
        pass


def test_outputs_that_differ_from_the_manifest_are_an_error():
    with Broken(STAGE) as runner, pytest.raises(RuntimeError, match=r"outputs \['y'\], expected \['y', 'next_ids'\]; y: float32 \(1, 3\)"):
        runner.infer(feed())


def test_torch_runner_gives_the_graph_s_outputs(graph):
    torch = pytest.importorskip("torch")

    class Toy(torch.nn.Module):
        def forward(self, x, ids):
            return x * 2, ids + 1, "ignored"

    with TorchRunner(STAGE, Toy(), select=lambda outputs: outputs[:2]) as reference, OrtRunner(STAGE, graph) as ours:
        expected, actual = reference.infer(feed(3, 5)), ours.infer(feed(3, 5))
    for name in ("y", "next_ids"):
        np.testing.assert_array_equal(actual[name], expected[name])


def test_profile_axes_narrow_the_bounds_to_the_engine_profile():
    profiles = [{"x": {"min": [1, 3], "opt": [4, 3], "max": [6, 3]},
                 "ids": {"min": [2, 2], "opt": [4, 3], "max": [8, 4]}}]  # fmt: skip
    assert profile_axes(STAGE, profiles) == {"batch": (2, 6), "sequence": (2, 4)}
    assert STAGE.with_axes(profile_axes(STAGE, profiles)).axes == {"batch": (2, 6), "sequence": (2, 4)}
    assert profile_axes(STAGE, []) == {}
    with pytest.raises(ValueError, match="dynamic axes"):
        STAGE.with_axes({"height": (1, 2)})
