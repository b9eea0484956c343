"""Stage 1, the detector: a letterboxed picture (batch, 3, S, S) -> its top-K candidates.

``mner.train.detectors``: the torchvision COCO detector the checkpoint was trained with
(``--detector``: RetinaNet-ResNet50-FPN v2 by default, SSDlite320-MobileNetV3-Large or
Faster R-CNN MobileNetV3-Large-320-FPN for CPUs), each wrapped so that the K best
(anchor or proposal, class) pairs are taken in one TopK and boxes decoded for those
only. The graph has no NMS and no data-dependent control flow; its outputs are small
and fixed-shape per picture, the same for every detector:

    scores (batch, K) float32, labels (batch, K) int64 torchvision COCO ids, boxes (batch, K, 4)

The host turns them into object ids with ``mner.runtime.coco.select_objects`` (score
threshold, per-class NMS, the best ``max_objects``); the manifest records its settings,
and the stage's ``arch``, ``size``, how its scores are made and what input it expects.

Parity: TopK may order near-equal scores differently in two runtimes (pictures with
flat regions give exactly equal scores to many anchors), so labels and boxes are
compared where a candidate's score is separated from its neighbours by more than the
tolerance, and the object ids after host selection must be identical.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Mapping

import numpy as np

from mner.export.parity import Measure, compare_floats
from mner.export.spec import BuiltStage, Fp16Policy, Sources, StageSpec, TensorSpec
from mner.export.vision import synthetic_pictures, weights_identity
from mner.runtime.coco import select_objects
from mner.runtime.image import detector_tensor
from mner.train.detector_choice import DEFAULT_DETECTOR, resolve_detector
from mner.train.detectors import DETECTOR_CLASSES
from mner.train.vision import DETECTOR_TOP_K, ObjectDetector

logger = logging.getLogger(__name__)

MAX_BATCH = 1024


def selection_settings(max_objects: int) -> dict:
    """The host's object selection, as the manifest records it (thresholds: select_objects' defaults)."""
    defaults = inspect.signature(select_objects).parameters
    return {
        "score_threshold": defaults["score_threshold"].default,
        "iou_threshold": defaults["iou_threshold"].default,
        "max_objects": max_objects,
        "labels": "torchvision COCO ids 0..90; mner.runtime.coco.contiguous_from_torchvision maps them to 1..80",
    }


def build(sources: Sources) -> BuiltStage:
    arch = resolve_detector(sources.detector_arch).name
    detector = ObjectDetector.from_weights(
        sources.detector_weights, arch=arch, size=sources.detector_size, top_k=DETECTOR_TOP_K, seed=sources.seed
    )
    wrapper = DETECTOR_CLASSES[arch]
    return BuiltStage(
        module=detector.eval(),
        # max_objects: the tagger's object slots, what host selection keeps per picture
        dims={"detector_size": detector.size, "top_k": detector.top_k, "max_objects": sources.checkpoint.config.num_objects},
        axis_bounds={"batch": (1, MAX_BATCH)},
        weights=weights_identity(arch, sources.detector_weights, sources.seed, detector.weights_identity),
        info={"arch": arch, "size": detector.size, "top_k": detector.top_k, "scores": wrapper.score_kind,
              "input": wrapper.input_normalisation},  # fmt: skip
    )


def choose_detector(arch: str | None, size: int | None, train_args: Mapping[str, Any]) -> tuple[str, int]:
    """The detector to export and its input side: those given, else the ones the checkpoint trained with.

    ``train_args``: the checkpoint's record (empty for a random or converted one: RetinaNet v2).
    A size the checkpoint recorded for another detector is not carried over: the named
    detector's own default applies. A picture-trained model exported with another detector
    than its training used is warned about: its tagger learnt from the other one's objects.
    Raises ValueError for an unknown name or a size the detector cannot take.
    """
    trained = resolve_detector(train_args.get("detector", DEFAULT_DETECTOR))
    choice = resolve_detector(arch) if arch is not None else trained
    if size is None:
        size = train_args.get("detector_size") if choice == trained else None
        size = size or choice.default_size
    choice.check_size(size)
    if choice != trained and train_args.get("images_dir"):
        logger.warning("exporting the %s detector for a model trained with %s: its tagger learnt from the object ids "
                       "%s found, and another detector finds others; retrain with --detector %s for a consistent model",
                       choice.name, trained.name, trained.name, choice.alias)  # fmt: skip
    return choice.name, size


def dummy_inputs(built: BuiltStage, sizes: Mapping[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    size = built.dims["detector_size"]
    pictures = synthetic_pictures(sizes["batch"], rng)
    return {"images": np.stack([detector_tensor(picture, size)[0] for picture in pictures])}  # (B, 3, S, S)


def _separated(scores: np.ndarray, gap: float) -> np.ndarray:
    """(B, K) bool: candidates whose score differs from both neighbours by more than ``gap``.

    The last candidate is never separated: the (K+1)-th, outside the graph's output, may
    swap with it.
    """
    before = np.full_like(scores, np.inf)
    before[:, 1:] = scores[:, :-1] - scores[:, 1:]
    after = np.zeros_like(scores)
    after[:, :-1] = scores[:, :-1] - scores[:, 1:]
    return (before > gap) & (after > gap)


def compare(
    built: BuiltStage,
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    tolerance: Mapping[str, float],
    strict: bool,
) -> list[Measure]:
    measures = [compare_floats("scores", reference["scores"], candidate["scores"], tolerance["scores"])]
    scale = float(np.abs(reference["scores"]).max(initial=0.0))
    keep = _separated(reference["scores"], 2 * tolerance["scores"] * scale)
    measures.append(
        compare_floats("boxes", reference["boxes"][keep], candidate["boxes"][keep], tolerance["boxes"], note=f"at {int(keep.sum())} separated candidates")
    )
    label_mismatches = int((reference["labels"][keep] != candidate["labels"][keep]).sum())
    measures.append(Measure("labels", "mismatches", label_mismatches, 0, note=f"of {int(keep.sum())} separated candidates"))
    settings = {k: v for k, v in selection_settings(built.dims["max_objects"]).items() if k != "labels"}
    ids = [select_objects(o["scores"], o["labels"], o["boxes"], **settings) for o in (reference, candidate)]
    # FP16 moves scores across the threshold legitimately: reported, and only the FP32 graph must match.
    measures.append(Measure("object_ids", "mismatches", int((ids[0] != ids[1]).sum()), 0 if strict else None,
                            note=f"after select_objects{settings}"))  # fmt: skip
    return measures


SPEC = StageSpec(
    name="detector",
    summary="letterboxed picture -> top-K (score, COCO label, box) candidates; NMS runs on the host",
    inputs=(TensorSpec("images", "float32", ("batch", 3, "detector_size", "detector_size")),),
    outputs=(
        TensorSpec("scores", "float32", ("batch", "top_k")),
        TensorSpec("labels", "int64", ("batch", "top_k")),
        TensorSpec("boxes", "float32", ("batch", "top_k", 4)),
    ),
    dynamic_axes=("batch",),
    build=build,
    dummy_inputs=dummy_inputs,
    tolerance={"scores": 1e-4, "boxes": 1e-4},
    fp16_tolerance={"scores": 3e-2, "boxes": 3e-2},
    parity_sizes=({"batch": 1}, {"batch": 3}),
    trt_profile={"batch": (1, 16, 64)},
    # GroupNorm (exported as InstanceNormalization) and the candidate tail -- TopK, the
    # sigmoid, the box decoding with its Exp -- stay FP32: the ranking and the pixel
    # coordinates are what the host reads.
    fp16=Fp16Policy(fp32_ops=frozenset({"InstanceNormalization", "GroupNormalization", "BatchNormalization"}),
                    fp32_after_ops=frozenset({"TopK"})),  # fmt: skip
    compare=compare,
)
