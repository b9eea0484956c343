"""runners.OrtSettings: the one place an ONNX Runtime session's options come from (issue 15, item 3)."""

import numpy as np
import onnxruntime as ort
import pytest

from mner.runtime.runners import DEFAULT_ORT_SETTINGS, GRAPH_OPTIMIZATIONS, OrtRunner, OrtSettings
from runtime_samples import TOY_STAGE as STAGE
from runtime_samples import save_toy_graph

@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    return save_toy_graph(tmp_path_factory.mktemp("graph"))


def spinning(options: ort.SessionOptions) -> tuple[str, str]:
    return (options.get_session_config_entry("session.intra_op.allow_spinning"),
            options.get_session_config_entry("session.inter_op.allow_spinning"))  # fmt: skip


def test_the_defaults_are_onnx_runtime_s_own():
    options, plain = DEFAULT_ORT_SETTINGS.session_options(ort), ort.SessionOptions()
    assert DEFAULT_ORT_SETTINGS == OrtSettings()
    for name in ("intra_op_num_threads", "inter_op_num_threads", "execution_mode", "graph_optimization_level",
                 "enable_cpu_mem_arena", "enable_mem_pattern"):  # fmt: skip
        assert getattr(options, name) == getattr(plain, name), name
    assert spinning(options) == ("1", "1")  # ONNX Runtime spins unless told otherwise
    assert options.log_severity_level == 3


def test_each_setting_reaches_the_session_options():
    options = OrtSettings(intra_op_threads=1, inter_op_threads=2, execution_mode="parallel", allow_spinning=False,
                          memory_arena=False, memory_pattern=False, graph_optimization="basic").session_options(ort)  # fmt: skip
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 2)
    assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert spinning(options) == ("0", "0")
    assert (options.enable_cpu_mem_arena, options.enable_mem_pattern) == (False, False)
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    levels = {level: OrtSettings(graph_optimization=level).session_options(ort).graph_optimization_level
              for level in GRAPH_OPTIMIZATIONS}  # fmt: skip
    assert levels["disable"] == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert levels["all"] == ort.GraphOptimizationLevel.ORT_ENABLE_ALL and len(set(levels.values())) == len(levels)


@pytest.mark.parametrize(("change", "message"), [
    ({"intra_op_threads": 0}, "intra_op_threads must be a positive int or None"),
    ({"intra_op_threads": True}, "intra_op_threads must be a positive int or None"),
    ({"inter_op_threads": "2"}, "inter_op_threads must be a positive int or None"),
    ({"execution_mode": "fast"}, r"execution_mode must be one of \('sequential', 'parallel'\), got 'fast'"),
    ({"graph_optimization": "max"}, "graph_optimization must be one of .* got 'max'"),
    ({"allow_spinning": "no"}, "allow_spinning must be True or False, got 'no'"),
    ({"memory_arena": 0}, "memory_arena must be True or False, got 0"),
    ({"memory_pattern": None}, "memory_pattern must be True or False, got None"),
])  # fmt: skip
def test_settings_that_onnx_runtime_would_not_take_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        OrtSettings(**change)


def test_a_runner_takes_its_settings_and_threads_replaces_their_intra_op_threads(graph):
    assert OrtRunner(STAGE, graph).settings is DEFAULT_ORT_SETTINGS
    quiet = OrtSettings(allow_spinning=False, graph_optimization="basic")
    runner = OrtRunner(STAGE, graph, threads=1, settings=quiet)
    assert runner.settings == quiet.replace(intra_op_threads=1) and runner.threads == 1
    feed = {"x": np.ones((2, 3), np.float32), "ids": np.zeros((2, 4), np.int64)}
    with runner, OrtRunner(STAGE, graph) as plain:
        assert spinning(runner.session.get_session_options()) == ("0", "0")
        for name, value in runner.infer(feed).items():
            np.testing.assert_array_equal(value, plain.infer(feed)[name])
    with pytest.raises(ValueError, match="settings must be an OrtSettings or None, got dict"):
        OrtRunner(STAGE, graph, settings={"allow_spinning": False})
    with pytest.raises(ValueError, match="threads must be a positive int or None"):
        OrtRunner(STAGE, graph, threads=True)
