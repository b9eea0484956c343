"""Parity bookkeeping: relative error, non-finite outputs, tag comparison, and one error listing every failure."""

import numpy as np
import pytest

from mner.export.parity import (
    FP16_TAG_AGREEMENT,
    Measure,
    ParityError,
    ParityReport,
    compare_floats,
    compare_tags,
    synthetic_text,
)


def test_relative_error_is_against_the_reference_scale():
    reference = np.array([[0.0, 10.0], [-20.0, 1e-9]], np.float32)
    measure = compare_floats("emissions", reference, reference + 0.002, 1e-4)
    assert measure.max_abs == pytest.approx(0.002, rel=1e-3) and measure.value == pytest.approx(1e-4, rel=1e-3)
    assert compare_floats("emissions", reference, reference, 0.0).passed


def test_non_finite_and_misshapen_outputs_fail():
    reference = np.ones((2, 3), np.float32)
    broken = reference.copy()
    broken[0, 1] = np.inf
    measure = compare_floats("grid", reference, broken, 1.0)
    assert not measure.passed and measure.value == np.inf and "1 non-finite values" in measure.note and "65504" in measure.note
    measure = compare_floats("grid", reference, reference[:1], 1.0)
    assert not measure.passed and "shape (1, 3), expected (2, 3)" in measure.note


def test_tag_comparison_strict_and_agreement():
    reference = [["O", "B-PER"], ["B-LOC"]]
    assert compare_tags(reference, [["O", "B-PER"], ["B-LOC"]], strict=True).passed
    strict = compare_tags(reference, [["O", "O"], ["B-LOC"]], strict=True)
    assert not strict.passed and strict.value == 1 and "first differing posts [0]" in strict.note
    loose = compare_tags(reference, [["O", "O"], ["B-LOC"]], strict=False)
    assert loose.metric == "word_agreement" and loose.value == pytest.approx(2 / 3) and loose.limit == FP16_TAG_AGREEMENT
    assert not loose.passed  # 66.7% < 99.5%: higher is better for this metric
    assert Measure("word tags", "word_agreement", 0.999, FP16_TAG_AGREEMENT).passed
    assert Measure("object_ids", "mismatches", 3, None).passed  # reported only


def test_report_raises_one_error_listing_every_failure():
    report = ParityReport(text={"source": "synthetic"})
    report.add("vision", "fp32", "batch=1", [Measure("grid", "max_rel", 2e-3, 1e-4, max_abs=0.5)])
    report.add("tagger", "fp32", "batch=3 sequence=5", [Measure("emissions", "max_rel", 1e-7, 1e-4, max_abs=1e-8)])
    report.add("detector", "fp32", "batch=3", [Measure("labels", "mismatches", 2, 0, note="of 40 separated candidates")])
    with pytest.raises(ParityError) as error:
        report.raise_if_failed()
    message = str(error.value)
    assert message.startswith("2 of 3 parity checks failed")
    assert "vision [fp32] batch=1: grid max_rel 0.002 (limit <= 0.0001, max_abs 0.5)" in message
    assert "detector [fp32] batch=3: labels mismatches 2 (limit <= 0) (of 40 separated candidates)" in message
    assert "emissions" not in message
    data = report.to_json()
    assert data["passed"] is False and [c["passed"] for c in data["checks"]] == [False, True, False]
    assert data["checks"][2]["value"] == 2 and isinstance(data["checks"][2]["value"], int)


def test_synthetic_text_is_seeded(sources):
    encoder = sources.checkpoint.text_encoder
    first, again = synthetic_text(encoder, 5, seed=1), synthetic_text(encoder, 5, seed=1)
    assert first.posts == again.posts and len(first.posts) == 5 and all(2 <= len(p) <= 40 for p in first.posts)
    assert first.description == {"source": "synthetic", "posts": 5, "seed": 1}
    assert synthetic_text(encoder, 5, seed=2).posts != first.posts
