"""COCO object classes and the host half of the detector: NMS and top objects (numpy only).

Two numberings meet here:

* ours, contiguous: 0 = no object, 1..80 = the 80 COCO classes in the standard order
  (the order the reference's Mask R-CNN used, so its object ids mean the same);
* torchvision's, 0..90: the original COCO category ids with their gaps (ids that were
  dropped from the released data set, named "N/A"), 0 = "__background__".

The exported detector returns its top candidates with torchvision ids;
``select_objects`` turns them into the tagger's fixed-size row of object ids.
"""

from __future__ import annotations

import numpy as np

COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)  # fmt: skip
NUM_CLASSES = len(COCO_CLASSES)  # 80; contiguous ids are 1..NUM_CLASSES, 0 = none
NO_OBJECT = 0

# COCO category ids (1..90) that have no class in the released data set.
_TORCHVISION_GAPS = frozenset({12, 26, 29, 30, 45, 66, 68, 69, 71, 83})
TORCHVISION_NUM_LABELS = 91  # torchvision detection heads predict ids 0..90


def _build_torchvision_categories() -> tuple[str, ...]:
    """torchvision's 91 names: "__background__", then COCO ids 1..90 with "N/A" in the gaps."""
    names = iter(COCO_CLASSES)
    categories = ["__background__"]
    for category_id in range(1, TORCHVISION_NUM_LABELS):
        categories.append("N/A" if category_id in _TORCHVISION_GAPS else next(names))
    assert next(names, None) is None
    return tuple(categories)


TORCHVISION_CATEGORIES = _build_torchvision_categories()

# (91,) int64: torchvision id -> contiguous id; background and N/A map to 0.
_CONTIGUOUS_FROM_TORCHVISION = np.zeros(TORCHVISION_NUM_LABELS, dtype=np.int64)
_TORCHVISION_FROM_CONTIGUOUS = np.zeros(NUM_CLASSES + 1, dtype=np.int64)
for _contiguous, _tv in enumerate(
    (i for i, name in enumerate(TORCHVISION_CATEGORIES) if name not in ("__background__", "N/A")), start=1
):
    _CONTIGUOUS_FROM_TORCHVISION[_tv] = _contiguous
    _TORCHVISION_FROM_CONTIGUOUS[_contiguous] = _tv


def contiguous_from_torchvision(label_ids: np.ndarray) -> np.ndarray:
    """Map torchvision COCO ids (0..90, any shape) to ours (0..80); background and N/A -> 0."""
    label_ids = np.asarray(label_ids)
    if not np.issubdtype(label_ids.dtype, np.integer):
        raise ValueError(f"label ids must be integers, got dtype {label_ids.dtype}")
    if label_ids.size and (label_ids.min() < 0 or label_ids.max() >= TORCHVISION_NUM_LABELS):
        raise ValueError(
            f"torchvision COCO ids are 0..{TORCHVISION_NUM_LABELS - 1}, "
            f"got values in {label_ids.min()}..{label_ids.max()}"
        )
    return _CONTIGUOUS_FROM_TORCHVISION[label_ids]


def torchvision_from_contiguous(class_ids: np.ndarray) -> np.ndarray:
    """Inverse of ``contiguous_from_torchvision`` on 0..80 (0 -> 0, background)."""
    class_ids = np.asarray(class_ids)
    if not np.issubdtype(class_ids.dtype, np.integer):
        raise ValueError(f"class ids must be integers, got dtype {class_ids.dtype}")
    if class_ids.size and (class_ids.min() < 0 or class_ids.max() > NUM_CLASSES):
        raise ValueError(f"class ids are 0..{NUM_CLASSES}, got values in {class_ids.min()}..{class_ids.max()}")
    return _TORCHVISION_FROM_CONTIGUOUS[class_ids]


def class_name(class_id: int) -> str:
    """Name of a contiguous id: 1 -> "person", ..., 80 -> "toothbrush"; 0 -> "none"."""
    if isinstance(class_id, (bool, np.bool_)) or not isinstance(class_id, (int, np.integer)):
        raise ValueError(f"class id must be an int, got {class_id!r}")
    if not 0 <= class_id <= NUM_CLASSES:
        raise ValueError(f"class ids are 0..{NUM_CLASSES}, got {class_id}")
    return "none" if class_id == NO_OBJECT else COCO_CLASSES[class_id - 1]


def select_objects(
    scores: np.ndarray,
    labels: np.ndarray,
    boxes: np.ndarray,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    max_objects: int = 5,
) -> np.ndarray:
    """Detector candidates -> object ids per image, int64 (B, max_objects), 0-padded.

    scores (B, K) in [0, 1], labels (B, K) torchvision ids, boxes (B, K, 4) x1 y1 x2 y2.
    Per image: keep candidates with score > ``score_threshold`` whose label is a real
    class (not background or N/A), suppress per class any box whose IoU with a
    higher-scoring kept box of the same class is > ``iou_threshold`` (torchvision's
    ``batched_nms`` rule), then take the ``max_objects`` best by score, highest first.
    """
    scores = np.asarray(scores, dtype=np.float32)
    labels = np.asarray(labels)
    boxes = np.asarray(boxes, dtype=np.float32)
    if scores.ndim != 2 or labels.shape != scores.shape or boxes.shape != (*scores.shape, 4):
        raise ValueError(
            "expected scores (B, K), labels (B, K) and boxes (B, K, 4), "
            f"got {scores.shape}, {labels.shape} and {boxes.shape}"
        )
    if not 0.0 <= score_threshold < 1.0:
        raise ValueError(f"score_threshold must be in [0, 1), got {score_threshold}")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    if not isinstance(max_objects, int) or max_objects <= 0:
        raise ValueError(f"max_objects must be a positive int, got {max_objects!r}")

    class_ids = contiguous_from_torchvision(labels)  # (B, K)
    out = np.zeros((scores.shape[0], max_objects), dtype=np.int64)
    for row in range(scores.shape[0]):
        candidates = np.flatnonzero((scores[row] > score_threshold) & (class_ids[row] != NO_OBJECT))
        keep = _nms_per_class(boxes[row, candidates], scores[row, candidates], class_ids[row, candidates], iou_threshold)
        chosen = class_ids[row, candidates[keep[:max_objects]]]
        out[row, : len(chosen)] = chosen
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of (N, 4) and (M, 4) boxes x1 y1 x2 y2 -> (N, M); empty boxes give 0."""
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)  # (N,)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)  # (M,)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)  # (N, M)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _nms_per_class(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy per-class NMS, best score first (ties: earlier index first)."""
    order = np.argsort(-scores, kind="stable")
    iou = box_iou(boxes, boxes)  # (N, N); N <= K = 100, so the full matrix is cheap
    same_class = class_ids[:, None] == class_ids[None, :]
    suppressed = np.zeros(len(scores), dtype=bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= same_class[i] & (iou[i] > iou_threshold)
    return np.asarray(keep, dtype=np.int64)
