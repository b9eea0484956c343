"""--precision int8 in the runtime: Pipeline.from_bundle, mner-tag, mner-serve and the bundle reader.

The bundles here are the session's tiny bundle (``exported_once``: detector, vision, tagger, FP32 only) and
a copy of it given a graphs.int8 entry for the tagger whose file is a copy of the FP32 graph: what the runtime
selects, reports and refuses does not depend on the graph's numbers. The real quantization and its guard are
tested in tests/export/test_int8.py, where such an entry is made by mner-export --int8 itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mner.benchmarks.backends import BACKENDS as BENCH_BACKENDS
from mner.runtime import bundle as bundle_module
from mner.runtime import cli, serve_cli
from mner.runtime.bundle import Bundle, BundleError, describe_precisions, sha256_file, stage_precisions
from mner.runtime.cli import tag_command
from mner.runtime.pipeline import Pipeline

GUARD = {"passed": True, "data": {"source": "test.txt", "posts": 6, "words": 52, "pictures": False},
         "word_agreement": 0.995, "entity_f1": {"fp32": 0.8, "int8": 0.799}, "f1_drop_points": 0.1,
         "limits": {"min_word_agreement": 0.99, "max_f1_drop_points": 0.5}}  # fmt: skip
METHOD = {"tool": "onnxruntime.quantization.quantize_dynamic"}
POSTS = [{"id": 1, "text": "Obama visits Paris today"}, {"id": 2, "text": "so proud of Taylor Swift ! # NBA"}]


def with_int8_tagger(source: Path, target: Path, entry: dict | None = None) -> Path:
    """A copy of ``source`` whose tagger has a graphs.int8 entry (default: a passed guard), listed and hashed."""
    shutil.copytree(source, target)
    shutil.copyfile(target / "tagger.onnx", target / "tagger.int8.onnx")
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["stages"]["tagger"]["graphs"]["int8"] = entry or {"file": "tagger.int8.onnx", "method": METHOD, "guard": GUARD}
    path = target / "tagger.int8.onnx"
    manifest["files"]["tagger.int8.onnx"] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


@pytest.fixture(scope="module")
def int8_bundle(exported_once, tmp_path_factory) -> Path:
    return with_int8_tagger(exported_once.bundle, tmp_path_factory.mktemp("int8") / "bundle")


def test_the_spelled_out_precisions_are_the_runtimes_and_the_bench_has_ort_int8():
    assert cli.PRECISIONS == serve_cli.PRECISIONS == bundle_module.PRECISIONS == ("fp32", "fp16", "int8")
    spec = BENCH_BACKENDS["ort-int8"]
    assert (spec.engine, spec.precision, spec.pad_to_window, spec.gpu_only) == ("ort", "int8", False, False)


def test_int8_runs_the_int8_tagger_and_fp32_for_stages_without_an_int8_graph(int8_bundle):
    bundle = Bundle.open(int8_bundle)
    assert bundle.stage_precisions("int8") == {"detector": "fp32", "vision": "fp32", "tagger": "int8"}
    assert bundle.stage_precisions("fp32") == {"detector": "fp32", "vision": "fp32", "tagger": "fp32"}
    with Pipeline.from_bundle(int8_bundle, precision="int8") as pipeline:
        assert {r.stage.name: r.graph.name for r in pipeline.runners} == {
            "detector": "detector.onnx", "vision": "vision.onnx", "tagger": "tagger.int8.onnx"}  # fmt: skip
        results = pipeline.tag([post["text"] for post in POSTS])
    assert all(r.ok and len(r.tags) == len(POSTS[i]["text"].split()) for i, r in enumerate(results))


def test_describe_precisions_names_the_stages_of_each_precision_only_when_they_differ():
    assert describe_precisions({"tagger": "int8"}) == "int8"
    assert describe_precisions({"detector": "fp32", "vision": "fp32", "tagger": "int8"}) == "fp32 (detector, vision), int8 (tagger)"
    assert describe_precisions({"detector": "fp16", "vision": "fp16", "tagger": "fp16"}) == "fp16"


def test_a_bundle_without_an_int8_tagger_is_refused_naming_the_export_flag(exported_once, tmp_path):
    with pytest.raises(BundleError, match=r"--precision int8 needs an INT8 tagger graph.*\['fp32'\].*mner-export --int8"):
        Pipeline.from_bundle(exported_once.bundle, precision="int8")
    posts = tmp_path / "posts.jsonl"
    posts.write_text("\n".join(json.dumps(p) for p in POSTS) + "\n")
    result = CliRunner().invoke(tag_command, ["--engine", str(exported_once.bundle), "--input", str(posts),
                                              "--output", str(tmp_path / "out.jsonl"), "--precision", "int8"])  # fmt: skip
    assert result.exit_code == 1 and "mner-export --int8" in result.output
    assert not (tmp_path / "out.jsonl").exists()


def test_unknown_precisions_and_int8_off_the_ort_backend_are_refused(int8_bundle, exported_once):
    with pytest.raises(ValueError, match=r"precision must be one of \('fp32', 'fp16', 'int8'\), got 'int4'"):
        Pipeline.from_bundle(int8_bundle, precision="int4")
    with pytest.raises(ValueError, match=r"precision must be one of .* got 'int4'"):
        stage_precisions(Bundle.open(int8_bundle).manifest, "int4")
    with pytest.raises(ValueError, match="precision applies to the ort backend only"):
        Pipeline.from_bundle(int8_bundle, "torch", precision="int8", checkpoint=exported_once.checkpoint)
    assert CliRunner().invoke(tag_command, ["--engine", str(int8_bundle), "--input", "-", "-o", "-",
                                            "--precision", "int4"]).exit_code == 2  # fmt: skip


@pytest.mark.parametrize("entry, message", [
    ({"file": "tagger.int8.onnx", "method": METHOD}, r"must record its quantization method and a passed accuracy guard"),
    ({"file": "tagger.int8.onnx", "guard": GUARD}, r"must record its quantization method"),
    ({"file": "tagger.int8.onnx", "method": METHOD, "guard": {**GUARD, "passed": False}}, r"a passed accuracy guard"),
    ({"file": "tagger.int8.onnx", "method": METHOD, "guard": {**GUARD, "word_agreement": 0.95}},
     r"word_agreement 0.95 and f1_drop_points 0.1 do not meet its limits"),
    ({"file": "tagger.int8.onnx", "method": METHOD, "guard": {**GUARD, "f1_drop_points": 0.8}},
     r"f1_drop_points 0.8 do not meet"),
    ({"file": "tagger.int8.onnx", "method": METHOD, "guard": {**GUARD, "limits": {}}}, r"do not meet its limits \{\}"),
])  # fmt: skip
def test_an_int8_entry_without_a_passed_guard_within_its_limits_is_refused(exported_once, tmp_path, entry, message):
    bundle = with_int8_tagger(exported_once.bundle, tmp_path / "bundle", entry)
    with pytest.raises(BundleError, match=r"stages.tagger: graphs.int8.*" + message):
        Bundle.open(bundle)


def test_mner_tag_int8_records_and_its_sidecar_says_which_stage_ran_int8(int8_bundle, tmp_path):
    posts = tmp_path / "posts.jsonl"
    posts.write_text("\n".join(json.dumps(p) for p in POSTS) + "\n")
    out = tmp_path / "out.jsonl"
    args = ["--engine", str(int8_bundle), "--input", str(posts), "--output", str(out), "--no-progress"]
    result = CliRunner().invoke(tag_command, [*args, "--precision", "int8"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == [1, 2] and all("entities" in r for r in records)
    meta = json.loads((tmp_path / "out.jsonl.meta.json").read_text())
    assert meta["options"]["precision"] == "int8"
    assert meta["details"]["graphs"] == {"detector": "fp32", "vision": "fp32", "tagger": "int8"}
    resumed = CliRunner().invoke(tag_command, args)  # fp32 on an int8 output: other records, refused
    assert resumed.exit_code == 1 and '--precision: "int8" then, "fp32" now' in resumed.output


def test_mner_serve_int8_says_which_stages_run_int8(int8_bundle, monkeypatch):
    seen = {}
    monkeypatch.setattr("mner.runtime.serve.serve", lambda pipeline, config, limits, **options: seen.update(options))
    result = CliRunner().invoke(serve_cli.serve_command, ["--engine", str(int8_bundle), "--precision", "int8"])
    assert result.exit_code == 0, result.output
    assert seen["bundle"].precision == "fp32 (detector, vision), int8 (tagger)"
    assert seen["bundle"].stages == ("detector", "vision", "tagger")
