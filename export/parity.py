"""Parity: every exported graph, run by ONNX Runtime (CPU), against the PyTorch module.

Two kinds of check, all collected before anything fails:

* outputs -- at each of a stage's ``parity_sizes``, on dummy inputs made by the stage:
  float outputs by relative error (max |onnx - torch| / max |torch|) against the
  stage's tolerance, integer outputs exactly (or by the stage's own ``compare``);
* tags -- the tagger's emissions decoded with ``mner.runtime.decode.decode_words`` on
  every post of a text: the FP32 graph must give the PyTorch module's tags on every
  post, the FP16 graph a word-level agreement of at least ``FP16_TAG_AGREEMENT``.

``ParityReport.raise_if_failed`` raises one ``ParityError`` listing every failing
check with its value and limit; the report's ``to_json`` goes into the manifest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnxruntime as ort

from mner.export.spec import BuiltStage, StageSpec
from mner.runtime.decode import CRFParameters, decode_words
from mner.runtime.progress import progress as progress_bar
from mner.runtime.tags import TagScheme
from mner.runtime.text import TextEncoder

logger = logging.getLogger(__name__)

FP16_TAG_AGREEMENT = 0.995  # word-level agreement of the FP16 graph's tags with FP32's (the issue's target)
HIGHER_IS_BETTER = frozenset({"word_agreement"})
TEXT_BATCH = 32  # posts per tagger run in the tag check


class ParityError(ValueError):
    """One or more exported graphs disagree with PyTorch beyond their tolerance."""


@dataclass
class Measure:
    output: str  # output name, or a derived quantity ("object_ids", "word tags")
    metric: str  # "max_rel", "mismatches", "differing_posts", "word_agreement"
    value: float
    limit: float | None  # None: reported, never fails
    max_abs: float | None = None
    note: str = ""

    @property
    def passed(self) -> bool:
        if self.limit is None:
            return True
        if self.metric in HIGHER_IS_BETTER:
            return bool(self.value >= self.limit)
        return bool(self.value <= self.limit)


@dataclass
class Check:
    stage: str
    precision: str
    case: str  # "batch=3 sequence=64", or the text the tags were checked on
    measure: Measure

    def describe(self) -> str:
        m = self.measure
        relation = ">=" if m.metric in HIGHER_IS_BETTER else "<="
        limit = "reported" if m.limit is None else f"limit {relation} {m.limit:g}"
        extra = f", max_abs {m.max_abs:.3g}" if m.max_abs is not None else ""
        note = f" ({m.note})" if m.note else ""
        return f"{self.stage} [{self.precision}] {self.case}: {m.output} {m.metric} {m.value:.6g} ({limit}{extra}){note}"

    def to_json(self) -> dict[str, Any]:
        m = self.measure
        return {
            "stage": self.stage, "precision": self.precision, "case": self.case, "output": m.output,
            "metric": m.metric, "value": _json_number(m.value), "limit": m.limit, "passed": m.passed,
            "max_abs": _json_number(m.max_abs), "note": m.note,
        }  # fmt: skip


@dataclass
class ParityReport:
    checks: list[Check] = field(default_factory=list)
    text: dict[str, Any] = field(default_factory=dict)  # what the tag checks read

    def add(self, stage: str, precision: str, case: str, measures: Sequence[Measure]) -> None:
        self.checks.extend(Check(stage, precision, case, m) for m in measures)

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if not check.measure.passed]

    def raise_if_failed(self) -> None:
        failures = self.failures
        if failures:
            lines = "\n  ".join(check.describe() for check in failures)
            raise ParityError(f"{len(failures)} of {len(self.checks)} parity checks failed:\n  {lines}")

    def to_json(self) -> dict[str, Any]:
        return {"passed": not self.failures, "text": self.text, "checks": [c.to_json() for c in self.checks]}


# --------------------------------------------------------------------------- comparisons


def compare_floats(name: str, reference: np.ndarray, candidate: np.ndarray, tolerance: float, note: str = "") -> Measure:
    """max |candidate - reference| relative to max |reference|; non-finite candidates fail."""
    if reference.shape != candidate.shape:
        return Measure(name, "max_rel", float("inf"), tolerance, note=f"shape {candidate.shape}, expected {reference.shape}")
    if reference.size == 0:
        return Measure(name, "max_rel", 0.0, tolerance, 0.0, note=note or "empty")
    candidate = candidate.astype(np.float64)
    non_finite = int((~np.isfinite(candidate)).sum())
    if non_finite:
        hint = "activations beyond the graph's float range, e.g. FP16's ±65504"
        return Measure(name, "max_rel", float("inf"), tolerance, note=f"{non_finite} non-finite values: {hint} {note}".strip())
    difference = float(np.abs(candidate - reference).max())
    scale = float(np.abs(reference).max())
    relative = difference / scale if scale > 0 else difference
    return Measure(name, "max_rel", relative, tolerance, difference, note)


def default_compare(
    spec: StageSpec,
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    tolerance: Mapping[str, float],
    strict: bool,
) -> list[Measure]:
    measures = []
    for output in spec.outputs:
        ref, cand = reference[output.name], candidate[output.name]
        if output.name in tolerance:
            measures.append(compare_floats(output.name, ref, cand, tolerance[output.name]))
        else:
            mismatches = int((ref != cand).sum()) if ref.shape == cand.shape else ref.size
            measures.append(Measure(output.name, "mismatches", mismatches, 0 if strict else None))
    return measures


# --------------------------------------------------------------------------- sessions


def cpu_session(path: str | Path) -> ort.InferenceSession:
    """An ONNX Runtime CPU session (for FP16 graphs ORT inserts casts around kernels it lacks in FP16)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the FP16 cast insertions are expected
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def check_outputs(
    spec: StageSpec,
    built: BuiltStage,
    session: ort.InferenceSession,
    precision: str,
    seed: int,
    report: ParityReport,
) -> None:
    """Run PyTorch and the graph at every parity size of the stage and add the measures to ``report``."""
    strict = precision == "fp32"
    tolerance = spec.tolerance if strict else spec.fp16_tolerance
    for index, sizes in enumerate(spec.parity_sizes):
        bounded = {axis: min(size, built.axis_bounds[axis][1]) for axis, size in sizes.items()}
        if bounded != dict(sizes):
            logger.info("%s: parity size %s exceeds the model's bounds; checking %s", spec.name, dict(sizes), bounded)
        inputs = spec.dummy_inputs(built, bounded, np.random.default_rng([seed, index]))
        reference = dict(zip(spec.output_names, built.run(inputs, spec.input_names)))
        candidate = dict(zip(spec.output_names, session.run(list(spec.output_names), inputs)))
        if spec.compare is not None:
            measures = spec.compare(built, reference, candidate, tolerance, strict)
        else:
            measures = default_compare(spec, reference, candidate, tolerance, strict)
        report.add(spec.name, precision, spec.case_name(bounded), measures)


# --------------------------------------------------------------------------- tags


@dataclass
class TextSource:
    """The posts the tag check reads: a CoNLL file's, or seeded synthetic ones."""

    posts: list[list[str]]
    description: dict[str, Any]


def synthetic_text(encoder: TextEncoder, count: int, seed: int) -> TextSource:
    """Posts of 2..40 words drawn from the tokenizer's whole-word pieces (no data file needed)."""
    vocab = encoder.tokenizer.get_vocab()
    words = sorted(w for w in vocab if not w.startswith("##") and not (w.startswith("[") and w.endswith("]")))
    if not words:
        raise ValueError("the checkpoint's tokenizer has no whole-word pieces to make parity posts from")
    rng = np.random.default_rng(seed)
    posts = [[words[i] for i in rng.integers(0, len(words), size=int(rng.integers(2, 41)))] for _ in range(count)]
    return TextSource(posts, {"source": "synthetic", "posts": count, "seed": seed})


def synthetic_image_features(index: int, seed: int, grid_cells: int, grid_dim: int, num_objects: int):
    """Every other post has a seeded random grid and object ids, so both paths of the tagger are checked."""
    if index % 2:
        return np.zeros((grid_cells, grid_dim), np.float32), 0, np.zeros(num_objects, np.int64)
    rng = np.random.default_rng([seed, 7, index])
    objects = np.sort(rng.integers(0, 81, size=num_objects))[::-1].copy()  # ids first, 0-padding last
    return rng.standard_normal((grid_cells, grid_dim)).astype(np.float32), 1, objects


def tag_posts(
    emissions_of: Callable[[dict[str, np.ndarray]], np.ndarray],
    posts: Sequence[Sequence[str]],
    encoder: TextEncoder,
    scheme: TagScheme,
    crf: CRFParameters,
    dims: Mapping[str, int],
    seed: int,
    description: str,
    progress: bool | None = True,
) -> list[list[str]]:
    """Word tags of every post, computed in batches of similar length; post i gets image features i.

    ``progress``: a bar on a terminal, periodic log lines elsewhere, False nothing (runtime.progress).
    """
    encoded = encoder.encode_many(posts)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    tags: list[list[str] | None] = [None] * len(encoded)
    with progress_bar(len(order), desc=description, unit="post", enabled=progress, leave=False) as bar:
        for start in range(0, len(order), TEXT_BATCH):
            rows = order[start : start + TEXT_BATCH]
            batch = encoder.batch([encoded[i] for i in rows])
            features = [synthetic_image_features(i, seed, dims["grid_cells"], dims["grid_dim"], dims["num_objects"]) for i in rows]
            inputs = {
                "input_ids": batch["input_ids"],
                "attention_mask": batch["attention_mask"],
                "aug_ids": batch["aug_ids"],
                "grid": np.stack([f[0] for f in features]),
                "image_mask": np.array([f[1] for f in features], dtype=np.int64),
                "object_ids": np.stack([f[2] for f in features]),
            }
            decoded = decode_words(emissions_of(inputs), batch["lengths"], batch["roles"], scheme, crf)
            for row, word_tags in zip(rows, decoded.word_tags):
                tags[row] = word_tags
            bar.update(len(rows))
    return tags  # type: ignore[return-value]


def compare_tags(reference: Sequence[Sequence[str]], candidate: Sequence[Sequence[str]], strict: bool) -> Measure:
    """FP32: the number of posts whose tags differ anywhere (must be 0); FP16: word-level agreement."""
    differing = [i for i, (a, b) in enumerate(zip(reference, candidate)) if list(a) != list(b)]
    words = sum(len(a) for a in reference)
    agreeing = sum(x == y for a, b in zip(reference, candidate) for x, y in zip(a, b))
    note = f"{len(reference) - len(differing)} of {len(reference)} posts identical, {agreeing} of {words} words agree"
    if differing:
        note += f"; first differing posts {differing[:5]}"
    if strict:
        return Measure("word tags", "differing_posts", len(differing), 0, note=note)
    return Measure("word tags", "word_agreement", agreeing / words if words else 1.0, FP16_TAG_AGREEMENT, note=note)


def _json_number(value):
    if value is None or isinstance(value, (int, np.integer)):
        return None if value is None else int(value)
    value = float(value)
    return value if np.isfinite(value) else str(value)
