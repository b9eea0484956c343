"""mner-export --int8 (export/int8.py): the INT8 tagger written behind its accuracy guard, or refused.

The model is ``text_only_ckpt`` (tests/export/conftest.py: the small tiny-preset model trained one epoch on
the built-in sample corpus), whose INT8 graph honestly keeps every tag of the corpus' test posts; a random
model would not do (its emissions are near ties, so INT8 noise flips tags: the sharpened random tiny model
agrees on 98.2 % of TWITTER-2017's words). The degraded graph is the same FP32 graph with every MatMul
quantized statically (QDQ, attention's too) with ranges calibrated on one empty post.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from mner.export import int8 as int8_module
from mner.export.cli import export_command
from mner.export.int8 import METHOD, GuardReport, Int8GuardError, check_guard, guard_tagger
from mner.export import pipeline as export_pipeline
from mner.export.pipeline import export_bundle
from mner.runtime.bundle import Bundle
from mner.runtime.cli import tag_command
from mner.runtime.conll import read_conll
from mner.runtime.pipeline import Pipeline

FIGURES = r"tag agreement with FP32 \d+\.\d\d % \(\d+ of \d+ words; needs >= 99 %\), entity F1 \d+\.\d\d against " \
          r"FP32's \d+\.\d\d \(a drop of -?\d+\.\d\d points; at most 0.5 allowed\) on test.txt \(6 posts\)"  # fmt: skip


@pytest.fixture(scope="module")
def int8_export(text_only_ckpt, graph_cache, tmp_path_factory):
    """mner-export --int8 --data <the sample corpus> of the text-only model: (bundle, the command's output, corpus).
    Its FP32 graph is test_cli.py's trace of the same tagger where that ran first (tests/conftest.py's graph_cache):
    what is tested here is what --int8 does with it."""
    corpus = text_only_ckpt.parents[1] / "corpus"
    out = tmp_path_factory.mktemp("int8") / "bundle"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("mner.export.pipeline.export_graph", graph_cache.wrap(export_pipeline.export_graph))
        result = CliRunner().invoke(export_command, ["--checkpoint", str(text_only_ckpt), "-o", str(out), "--int8",
                                                     "--data", str(corpus), "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    return out, result.output, corpus


@pytest.fixture(scope="module")
def degraded_graph(int8_export, tmp_path_factory) -> Path:
    """The bundle's FP32 tagger, every MatMul quantized (static QDQ) with ranges from one empty post: [CLS] [SEP]
    (quantizing every op as well degrades it as much, in 3x the time)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    bundle = Bundle.open(int8_export[0])
    feed = {"input_ids": np.array([[bundle.text_encoder().tokenizer.token_to_id("[CLS]"),
                                    bundle.text_encoder().tokenizer.token_to_id("[SEP]")]]),
            "attention_mask": np.ones((1, 2), np.int64), "aug_ids": np.zeros((1, 2), np.int64),
            "grid": np.zeros((1, 1, 2048), np.float32), "image_mask": np.zeros(1, np.int64),
            "object_ids": np.zeros((1, 5), np.int64)}  # fmt: skip

    class OneEmptyPost(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([feed])

        def get_next(self):
            return next(self.feeds, None)

    path = tmp_path_factory.mktemp("degraded") / "tagger.int8.onnx"
    quantize_static(str(bundle.graph("tagger")), str(path), OneEmptyPost(), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["MatMul"], activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)  # fmt: skip
    return path


def test_export_int8_writes_a_quantized_tagger_and_the_manifest_records_both_figures(int8_export):
    bundle_path, output, _ = int8_export
    manifest = json.loads((bundle_path / "manifest.json").read_text())
    entry = manifest["stages"]["tagger"]["graphs"]["int8"]
    guard = entry["guard"]
    assert entry["file"] == "tagger.int8.onnx" and entry["method"] == METHOD
    assert guard["passed"] is True and guard["data"] == {"source": "test.txt", "posts": 6, "words": 52, "pictures": False}
    assert guard["word_agreement"] == 1.0 and guard["f1_drop_points"] == 0.0
    assert guard["entity_f1"]["fp32"] == guard["entity_f1"]["int8"] > 0
    assert guard["limits"] == {"min_word_agreement": 0.99, "max_f1_drop_points": 0.5}
    assert "tagger.int8.onnx" in manifest["files"]
    assert f"int8: tagger agreement with fp32 100.00 %, entity F1 {100 * guard['entity_f1']['int8']:.2f}" in output
    graph = onnx.load(str(bundle_path / "tagger.int8.onnx"))
    ops = {node.op_type for node in graph.graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops  # really quantized: weights int8, activations at run time
    assert {p.key: p.value for p in graph.metadata_props}["mner.precision"] == "int8"
    assert Bundle.open(bundle_path).stage_precisions("int8") == {"tagger": "int8"}


def test_the_int8_bundle_tags_through_the_pipeline_and_mner_tag(int8_export, tmp_path):
    bundle_path, _, corpus = int8_export
    posts = read_conll(corpus / "test.txt")
    with Pipeline.from_bundle(bundle_path, precision="int8") as int8, Pipeline.from_bundle(bundle_path) as fp32:
        assert int8.tagger.graph.name == "tagger.int8.onnx"
        words = [post.words for post in posts]
        assert [r.tags for r in int8.tag_words(words)] == [r.tags for r in fp32.tag_words(words)]  # as the guard found
    out = tmp_path / "tagged.jsonl"
    result = CliRunner().invoke(tag_command, ["--engine", str(bundle_path), "--conll", str(corpus / "test.txt"),
                                              "-o", str(out), "--precision", "int8", "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 6 and "micro" in result.output


def test_guard_boundaries():
    def report(agreeing, f1_int8):
        return GuardReport("x.txt", posts=10, words=100, agreeing_words=agreeing, f1_fp32=0.8, f1_int8=f1_int8)

    assert report(99, 0.795).passed  # exactly 99 % and exactly 0.5 points
    assert not report(98, 0.8).passed
    assert not report(100, 0.7949).passed
    assert report(100, 0.9).passed and report(100, 0.9).f1_drop < 0  # INT8 may score higher
    check_guard(report(99, 0.795))
    with pytest.raises(Int8GuardError, match=r"98.00 % \(98 of 100 words; needs >= 99 %\), entity F1 80.00 against "
                                             r"FP32's 80.00 \(a drop of 0.00 points"):  # fmt: skip
        check_guard(report(98, 0.8))


def test_the_guard_refuses_a_degraded_int8_graph_naming_both_figures(int8_export, degraded_graph):
    bundle = Bundle.open(int8_export[0])
    posts = read_conll(int8_export[2] / "test.txt")
    report = guard_tagger(bundle.stages["tagger"], bundle.graph("tagger"), degraded_graph, posts, "test.txt",
                          bundle.text_encoder(), bundle.scheme, bundle.crf())  # fmt: skip
    assert not report.passed and report.agreement < 0.99
    with pytest.raises(Int8GuardError, match="the INT8 tagger fails its accuracy guard: " + FIGURES):
        check_guard(report)


def test_export_refuses_a_degraded_int8_graph_and_writes_nothing(int8_export, degraded_graph, text_only_ckpt,
                                                                 tmp_path, monkeypatch, reuse_exported_graphs):  # fmt: skip
    # The FP32 graph is the session's trace of this tagger (reuse_exported_graphs); quantizing gives the degraded one.
    monkeypatch.setattr(int8_module, "quantize_tagger", lambda fp32, int8: shutil.copyfile(degraded_graph, int8))
    out = tmp_path / "exports" / "bundle"
    with pytest.raises(Int8GuardError, match=FIGURES + r"\. No bundle was written"):
        export_bundle(ckpt=text_only_ckpt, out=out, int8=True, parity_data=int8_export[2], progress=False)
    assert not out.exists() and list(out.parent.iterdir()) == []  # no partial directory either


def test_int8_without_data_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="--int8 needs --data: TWITTER-format CoNLL with gold tags"):
        export_bundle(ckpt=tmp_path / "not-read.pt", out=tmp_path / "bundle", int8=True)
    result = CliRunner().invoke(export_command, ["--checkpoint", str(tmp_path / "not-read.pt"), "-o",
                                                 str(tmp_path / "bundle"), "--int8"])  # fmt: skip
    assert result.exit_code == 1 and "Error: --int8 needs --data" in result.output
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize("text, message", [
    ("Obama\tO\nvisits\tO\n\nParis\tO\n", r"--int8 needs --data with gold entity tags .* 2 posts are all tagged O"),
    ("\n", r"--int8 needs gold-tagged --data to guard the INT8 tagger; gold.txt holds no posts"),
])  # fmt: skip
def test_int8_data_without_gold_entities_is_refused(tmp_path, text, message):
    (tmp_path / "gold.txt").write_text(text)
    with pytest.raises(Int8GuardError, match=message):
        export_bundle(ckpt=tmp_path / "not-read.pt", out=tmp_path / "bundle", int8=True, parity_data=tmp_path / "gold.txt")


def test_int8_data_with_entity_types_the_model_cannot_predict_is_refused(text_only_ckpt, tmp_path):
    (tmp_path / "gold.txt").write_text("Obama\tB-PER\nin\tO\nmovies\tB-OTHER\n")
    with pytest.raises(ValueError, match=r"has entity types \['OTHER', 'PER'\] .* \['OTHER'\] could never be predicted"):
        export_bundle(ckpt=text_only_ckpt, out=tmp_path / "bundle", int8=True, parity_data=tmp_path / "gold.txt")


def test_int8_needs_the_tagger_stage(text_only_ckpt, int8_export, tmp_path):
    with pytest.raises(ValueError, match=r"--int8 quantizes the tagger, which this export leaves out \(stages: detector, vision\)"):
        export_bundle(ckpt=text_only_ckpt, out=tmp_path / "bundle", int8=True, parity_data=int8_export[2],
                      stages="detector,vision")  # fmt: skip
