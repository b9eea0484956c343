"""The INT8 tagger (``mner-export --int8``): ONNX Runtime quantization behind an accuracy guard.

``tagger.int8.onnx`` is the FP32 graph with every MatMul (and Gemm) whose second input is
a weight quantized by ONNX Runtime's dynamic quantization: weights INT8 per output
channel on 7 bits (``reduce_range``), activations UINT8 quantized per tensor at run time.
Attention's activation-by-activation MatMuls, LayerNorm, Softmax, the embeddings and the
CRF stay FP32. The graph keeps the FP32 graph's interface (FP32 in, FP32 emissions out).

What was measured to choose it (the MiniLM + GloVe model of runs/minilm-twitter2017, FP32
test F1 83.21; TWITTER-2017 test, 723 posts, 11,330 words, decoded by the runtime; ONNX
Runtime 1.32; an AMD EPYC Zen 3 with AVX2 and no AVX-512/VNNI; speed: posts/s of CPU time
on one thread at batch 8 over 200 posts, encode and decode included, FP32: 39.7):

    method                                        agreement   F1 drop (points)   posts/s
    dynamic, per tensor                             98.53 %        1.35            57.7
    dynamic, per channel                            99.51 %        0.68            58.3
    dynamic, per tensor, reduce_range               96.52 %        4.70             --
    dynamic, per channel, reduce_range   (kept)     99.55 %        0.36            56.2
    static QDQ, MinMax on 200 test posts, per ch.   98.08 %        2.16            58.5
    static QDQ, Percentile 99.999, per channel      98.25 %        1.36            59.0

All INT8 graphs run at about the same speed here (1.4-1.5x FP32's CPU time per post;
without VNNI, INT8 products go through AVX2's 16-bit multiply-add), so accuracy decided:
only per-channel dynamic quantization with 7-bit weights passes the guard below. Without
VNNI, ONNX Runtime's U8S8 kernels can saturate 16-bit intermediate sums with 8-bit
weights, which 7-bit weights avoid (ONNX Runtime's documentation recommends
reduce_range on such CPUs); on a VNNI CPU it costs one bit of weight precision and keeps
the graph's accuracy the same on every x86 CPU. Static QDQ also fixes activation ranges
from calibration text, which the attention and GELU outputs of a fine-tuned BERT exceed.

The guard (``guard_tagger``): every post of the gold-tagged ``--data`` is tagged by the
runtime's own pipeline (windows, constrained Viterbi) with the FP32 and the INT8 graph,
as text (the data's pictures are not read at export). The INT8 graph is written only
when its word-level tag agreement with FP32 is at least ``MIN_TAG_AGREEMENT`` and its
entity F1 against the gold tags is at most ``MAX_F1_DROP`` points below FP32's; otherwise
the export fails with ``Int8GuardError`` naming both figures, and writes nothing (asked
for INT8, the user gets INT8 or an error, never a bundle without it).
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import onnx

from mner.runtime.bundle import StageInfo
from mner.runtime.conll import ConllPost, entity_types, evaluate_entities
from mner.runtime.decode import CRFParameters
from mner.runtime.pipeline import Pipeline
from mner.runtime.runners import OrtRunner
from mner.runtime.tags import TagScheme
from mner.runtime.text import TextEncoder

logger = logging.getLogger(__name__)

PRECISION = "int8"
MIN_TAG_AGREEMENT = 0.99  # word-level agreement of INT8's tags with FP32's (the guard)
MAX_F1_DROP = 0.5  # entity F1 points (0-100 scale) INT8 may lose against FP32 on the gold tags
GUARD_BATCH = 32  # posts per tagger call in the guard
# What the manifest records as graphs.int8.method (the module docstring says why these).
METHOD = {
    "tool": "onnxruntime.quantization.quantize_dynamic",
    "preprocess": "onnxruntime.quantization.shape_inference.quant_pre_process(auto_merge=True)",
    "op_types": ["MatMul", "Gemm"],
    "weights": "int8, per channel, reduce_range (7 bits)",
    "activations": "uint8, per tensor, dynamic (ranges computed at run time)",
}


class Int8GuardError(ValueError):
    """The INT8 graph is less accurate than the guard allows, or the guard has nothing to measure on."""


@dataclass(frozen=True)
class GuardReport:
    """The guard's figures: tag agreement with FP32 and entity F1 (gold) of both graphs."""

    source: str  # the data file's name
    posts: int
    words: int
    agreeing_words: int
    f1_fp32: float  # micro entity F1 against the gold tags, 0..1
    f1_int8: float

    @property
    def agreement(self) -> float:
        return self.agreeing_words / self.words if self.words else 1.0

    @property
    def f1_drop(self) -> float:
        """FP32's F1 minus INT8's, in points (negative: INT8 scored higher)."""
        return 100 * (self.f1_fp32 - self.f1_int8)

    @property
    def passed(self) -> bool:
        # rounded: 99 of 100 words, or F1 80.0 against 80.5, are at the limits, not a float's width past them
        return round(self.agreement, 9) >= MIN_TAG_AGREEMENT and round(self.f1_drop, 9) <= MAX_F1_DROP

    def describe(self) -> str:
        return (f"tag agreement with FP32 {100 * self.agreement:.2f} % ({self.agreeing_words} of {self.words} words; "
                f"needs >= {100 * MIN_TAG_AGREEMENT:g} %), entity F1 {100 * self.f1_int8:.2f} against FP32's "
                f"{100 * self.f1_fp32:.2f} (a drop of {self.f1_drop:.2f} points; at most {MAX_F1_DROP:g} allowed) "
                f"on {self.source} ({self.posts} posts)")  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "data": {"source": self.source, "posts": self.posts, "words": self.words, "pictures": False},
            "word_agreement": round(self.agreement, 6),
            "entity_f1": {"fp32": round(self.f1_fp32, 6), "int8": round(self.f1_int8, 6)},
            "f1_drop_points": round(self.f1_drop, 4),
            "limits": {"min_word_agreement": MIN_TAG_AGREEMENT, "max_f1_drop_points": MAX_F1_DROP},
        }


def gold_posts(posts: Sequence[ConllPost], source: str) -> list[ConllPost]:
    """``posts`` if they can guard an INT8 graph: some gold entity to score F1 on; else Int8GuardError."""
    if not posts:
        raise Int8GuardError(f"--int8 needs gold-tagged --data to guard the INT8 tagger; {source} holds no posts")
    if not entity_types(posts):
        raise Int8GuardError(f"--int8 needs --data with gold entity tags (entity F1 is half of the INT8 guard); "
                             f"{source}'s {len(posts)} posts are all tagged O")  # fmt: skip
    return list(posts)


def quantize_tagger(fp32_graph: Path, int8_graph: Path) -> None:
    """Write the INT8 copy of ``fp32_graph`` to ``int8_graph`` (METHOD; the module docstring says why)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: PLC0415 -- export-time only
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mner-int8-") as scratch:
        # The quantizer reads tensor shapes to choose per-channel axes; the exporter's graph leaves some
        # symbolic ("Incomplete symbolic shape inference" without auto_merge, which unifies equal dims).
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_graph), str(prepared), auto_merge=True)
        quantize_dynamic(str(prepared), str(int8_graph), op_types_to_quantize=list(METHOD["op_types"]),
                         per_channel=True, reduce_range=True, weight_type=QuantType.QInt8)  # fmt: skip
    model = onnx.load(str(int8_graph))
    props = {p.key: p.value for p in model.metadata_props}
    onnx.helper.set_model_props(model, {**props, "mner.precision": PRECISION, "mner.quantization": METHOD["tool"]})
    onnx.save(model, str(int8_graph))
    logger.info("tagger: quantized %s to INT8 in %.0f s", int8_graph.name, time.perf_counter() - started)


def tag_with(stage: StageInfo, graph: Path, posts: Sequence[Sequence[str]], encoder: TextEncoder, scheme: TagScheme,
             crf: CRFParameters) -> list[list[str]]:  # fmt: skip
    """Word tags of ``posts`` (as text, no picture) by the runtime's pipeline on ``graph``."""
    runner = OrtRunner(stage, graph)
    with Pipeline(encoder=encoder, scheme=scheme, crf=crf, tagger=runner, batch_size=GUARD_BATCH) as pipeline:
        results = pipeline.tag_words(posts)
    failed = [(i, r.error) for i, r in enumerate(results) if not r.ok]
    if failed:  # tag_words refuses only posts without words, which read_conll never gives
        raise ValueError(f"the guard could not tag {len(failed)} posts, e.g. post {failed[0][0]}: {failed[0][1]}")
    return [r.tags for r in results]


def guard_tagger(stage: StageInfo, fp32_graph: Path, int8_graph: Path, posts: Sequence[ConllPost], source: str,
                 encoder: TextEncoder, scheme: TagScheme, crf: CRFParameters) -> GuardReport:  # fmt: skip
    """Tag every post with both graphs and measure the guard's figures (see ``GuardReport.passed``)."""
    posts = gold_posts(posts, source)
    words = [post.words for post in posts]
    gold = [post.tags for post in posts]
    started = time.perf_counter()
    reference = tag_with(stage, fp32_graph, words, encoder, scheme, crf)
    candidate = tag_with(stage, int8_graph, words, encoder, scheme, crf)
    agreeing = sum(a == b for ref, cand in zip(reference, candidate) for a, b in zip(ref, cand))
    report = GuardReport(
        source=source,
        posts=len(posts),
        words=sum(len(w) for w in words),
        agreeing_words=agreeing,
        f1_fp32=evaluate_entities(gold, reference)["micro"]["f1"],
        f1_int8=evaluate_entities(gold, candidate)["micro"]["f1"],
    )
    logger.info("tagger: INT8 guard in %.0f s: %s", time.perf_counter() - started, report.describe())
    return report


def check_guard(report: GuardReport) -> None:
    """Raise Int8GuardError naming both figures unless the report passed."""
    if not report.passed:
        raise Int8GuardError(
            f"the INT8 tagger fails its accuracy guard: {report.describe()}. No bundle was written; export "
            "without --int8 for an FP32 bundle (ONNX Runtime's INT8 kernels differ between CPUs: the figures are "
            "this machine's)"
        )


def write_int8_tagger(stage: StageInfo, fp32_graph: Path, int8_graph: Path, posts: Sequence[ConllPost], source: str,
                      encoder: TextEncoder, scheme: TagScheme, crf: CRFParameters) -> dict[str, Any]:  # fmt: skip
    """Quantize, guard, and return the manifest's graphs.int8 entry; Int8GuardError (and no file) if the guard fails."""
    quantize_tagger(fp32_graph, int8_graph)
    try:
        report = guard_tagger(stage, fp32_graph, int8_graph, posts, source, encoder, scheme, crf)
        check_guard(report)
    except BaseException:
        int8_graph.unlink(missing_ok=True)
        raise
    return {"file": int8_graph.name, "method": dict(METHOD), "guard": report.to_json()}
