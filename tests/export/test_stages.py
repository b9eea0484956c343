"""Each stage exported: onnx.checker, interface as declared, ONNX Runtime against PyTorch at the issue's sizes."""

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest

from mner.export.bundle import read_manifest
from mner.export.graph import GraphError, check_graph
from mner.export.parity import cpu_session
from mner.export.spec import Fp16Policy, StageSpec, TensorSpec
from mner.export.stages import STAGES, select_stages
from mner.export.tagger import SPEC as TAGGER
from mner.export.trt import Gpu, engine_dir_name, profile_shapes


@pytest.fixture(scope="module")
def manifest(bundle):
    return read_manifest(bundle)


@pytest.mark.parametrize("name", list(STAGES))
def test_each_stage_exports_a_checked_graph_with_the_declared_interface(bundle, manifest, name):
    spec = STAGES[name]
    entry = manifest["stages"][name]
    assert entry["opset"] >= 17
    for precision in ("fp32", "fp16"):
        path = bundle / entry["graphs"][precision]["file"]
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path), load_external_data=False)
        assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [entry["opset"]]
        assert [i.name for i in model.graph.input] == list(spec.input_names) == [i["name"] for i in entry["inputs"]]
        assert [o.name for o in model.graph.output] == list(spec.output_names) == [o["name"] for o in entry["outputs"]]
        check_graph(path, [TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in entry["inputs"]],
                    [TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in entry["outputs"]])  # fmt: skip
        # no data-dependent control flow anywhere (TensorRT and the FP16 converter rely on it)
        assert not {n.op_type for n in model.graph.node} & {"If", "Loop", "Scan", "NonMaxSuppression"}


def test_declared_shapes_name_the_dynamic_axes(manifest):
    tagger = {t["name"]: t["shape"] for t in manifest["stages"]["tagger"]["inputs"]}
    assert tagger["input_ids"] == ["batch", "sequence"] and tagger["grid"] == ["batch", "grid_cells", 2048]
    assert manifest["stages"]["tagger"]["dynamic_axes"]["grid_cells"] == {"min": 1, "max": 49}
    assert tagger["object_ids"] == ["batch", 5] and tagger["image_mask"] == ["batch"]
    assert manifest["stages"]["tagger"]["outputs"][0]["shape"] == ["batch", "sequence", 13]
    assert manifest["stages"]["vision"]["inputs"][0]["shape"] == ["batch", 3, 224, 224]
    assert manifest["stages"]["detector"]["inputs"][0]["shape"] == ["batch", 3, 128, 128]
    assert [o["shape"] for o in manifest["stages"]["detector"]["outputs"]] == [["batch", 100], ["batch", 100], ["batch", 100, 4]]
    assert manifest["stages"]["tagger"]["dynamic_axes"]["sequence"] == {"min": 1, "max": 128}


@pytest.mark.parametrize("batch", [1, 3, 17])
@pytest.mark.parametrize("sequence", [5, 64, 100])
def test_tagger_graph_matches_pytorch(bundle, sources, batch, sequence):
    """Independent of export/parity.py: ORT vs the checkpoint's model, relative error <= 1e-4."""
    built = TAGGER.build(sources)
    inputs = TAGGER.dummy_inputs(built, {"batch": batch, "sequence": sequence}, np.random.default_rng(batch * 1000 + sequence))
    assert batch == 1 or inputs["attention_mask"].sum(1).min() < sequence  # padded rows are part of the check
    (expected,) = built.run(inputs, TAGGER.input_names)
    (actual,) = cpu_session(bundle / "tagger.onnx").run(["emissions"], inputs)
    assert actual.shape == (batch, sequence, 13)
    assert np.abs(actual - expected).max() <= 1e-4 * np.abs(expected).max()


def test_parity_results_are_in_the_manifest(manifest):
    checks = manifest["parity"]["checks"]
    assert manifest["parity"]["passed"] and all(c["passed"] for c in checks)
    tagger_cases = {c["case"] for c in checks if c["stage"] == "tagger" and c["metric"] == "max_rel" and c["precision"] == "fp32"}
    assert tagger_cases == {f"batch={b} sequence={s} grid_cells=49" for b in (1, 3, 17) for s in (5, 64, 100)} | {
        "batch=3 sequence=20 grid_cells=1", "batch=17 sequence=64 grid_cells=1"}
    grid = [c for c in checks if c["stage"] == "vision" and c["precision"] == "fp32"]
    assert grid and all(c["value"] <= 1e-4 for c in grid)
    ids = [c for c in checks if c["output"] == "object_ids" and c["precision"] == "fp32"]
    assert len(ids) == 2 and all(c["value"] == 0 and c["limit"] == 0 for c in ids)


def test_detector_ids_agree_after_host_selection_even_at_threshold_zero(bundle, sources):
    """At the manifest's 0.5 a random detector selects nothing; at 0 every candidate competes."""
    from mner.runtime.coco import select_objects

    spec = STAGES["detector"]
    built = spec.build(sources)
    inputs = spec.dummy_inputs(built, {"batch": 3}, np.random.default_rng(5))
    expected = built.run(inputs, spec.input_names)
    actual = cpu_session(bundle / "detector.onnx").run(list(spec.output_names), inputs)
    ids = [select_objects(*outputs, score_threshold=0.0, iou_threshold=0.5, max_objects=5) for outputs in (expected, actual)]
    assert (ids[0] > 0).any()
    np.testing.assert_array_equal(ids[0], ids[1])


@pytest.mark.skipif(not (Path(__file__).resolve().parents[2].parent / "shared/data/twitter2017/test.txt").is_file(),
                    reason="TWITTER-2017 test text not found at ../shared/data/twitter2017/test.txt")  # fmt: skip
def test_tags_identical_on_every_twitter2017_test_post(manifest):
    assert manifest["parity"]["text"]["source"] == "test.txt" and manifest["parity"]["text"]["posts"] == 723
    (fp32,) = [c for c in manifest["parity"]["checks"] if c["metric"] == "differing_posts"]
    assert fp32["value"] == 0 and fp32["precision"] == "fp32" and "723 of 723 posts identical" in fp32["note"]


# --------------------------------------------------------------------------- the table and the specs


def test_select_stages():
    assert [s.name for s in select_stages(None)] == ["detector", "vision", "tagger"]
    assert [s.name for s in select_stages("tagger, detector")] == ["detector", "tagger"]
    assert [s.name for s in select_stages(["vision"])] == ["vision"]
    with pytest.raises(ValueError, match="non-empty subset of"):
        select_stages("tagger,ocr")
    with pytest.raises(ValueError, match="non-empty subset of"):
        select_stages("")


def test_stage_spec_validation():
    with pytest.raises(ValueError, match="tolerances must name the float outputs"):
        dataclasses.replace(TAGGER, tolerance={})
    with pytest.raises(ValueError, match="opset must be >= 17"):
        dataclasses.replace(TAGGER, opset=16)
    with pytest.raises(ValueError, match="must set exactly"):
        dataclasses.replace(TAGGER, parity_sizes=({"batch": 1},))
    with pytest.raises(ValueError, match="TensorRT profile must cover"):
        dataclasses.replace(TAGGER, trt_profile={"batch": (1, 2, 3)})
    with pytest.raises(ValueError, match="names must be unique"):
        dataclasses.replace(TAGGER, outputs=(TensorSpec("grid", "float32", ("batch",)),), tolerance={"grid": 1}, fp16_tolerance={"grid": 1})
    with pytest.raises(ValueError, match="neither a dynamic axis nor in dims"):
        TensorSpec("x", "float32", ("batch", "width")).resolve({}, ("batch",))
    assert isinstance(TAGGER.fp16, Fp16Policy) and isinstance(TAGGER, StageSpec)


def test_graph_interface_mismatch_is_named(bundle):
    wrong = [TensorSpec("images", "float32", ("batch", 3, 224, 224))]
    with pytest.raises(GraphError, match="tagger.onnx does not match its stage spec: input names"):
        check_graph(bundle / "tagger.onnx", wrong, [])


def test_trt_profiles_clip_to_the_model(sources):
    built = TAGGER.build(sources)
    shapes = profile_shapes(TAGGER, built)
    assert set(shapes) == {"input_ids", "attention_mask", "aug_ids", "grid", "image_mask", "object_ids"}
    assert shapes["input_ids"] == {"min": [1, 8], "opt": [16, 64], "max": [64, 128]}
    assert shapes["grid"] == {"min": [1, 1, 2048], "opt": [16, 49, 2048], "max": [64, 49, 2048]}
    built.axis_bounds["sequence"] = (1, 40)  # a model with 40 positions
    assert profile_shapes(TAGGER, built)["input_ids"] == {"min": [1, 8], "opt": [16, 40], "max": [64, 40]}
    assert engine_dir_name(Gpu("NVIDIA H100 80GB HBM3", "9.0"), "10.13.0.35") == "nvidia-h100-80gb-hbm3-trt10.13.0.35"


def test_one_grid_cell_gives_a_post_without_picture_the_same_emissions(bundle, sources):
    """The runtime sends one cell for a batch without pictures: the graph must agree with all 49."""
    session = cpu_session(bundle / "tagger.onnx")
    built = TAGGER.build(sources)
    inputs = TAGGER.dummy_inputs(built, {"batch": 6, "sequence": 30, "grid_cells": 1}, np.random.default_rng(0))
    assert not inputs["image_mask"].any()
    full = dict(inputs, grid=np.zeros((6, 49, 2048), np.float32))
    one, all_cells = (session.run(["emissions"], feed)[0] for feed in (inputs, full))
    np.testing.assert_allclose(one, all_cells, rtol=0, atol=1e-5 * np.abs(all_cells).max())
    reference = built.run(full, TAGGER.input_names)[0]  # PyTorch with all 49 cells, as training ran it
    np.testing.assert_allclose(one, reference, rtol=0, atol=1e-4 * np.abs(reference).max())
