"""Frozen vision features: the ResNet grid, the object detector, and an on-disk cache.

* ``GridEncoder``    image (B, 3, 224, 224) -> grid (B, 49, 2048): ResNet-152 up to layer4,
  adaptive-average-pooled to 7 × 7, flattened row-major with channels last — the
  reference's ``myResnet`` ``att`` after ``.view(-1, 2048, 49).permute(0, 2, 1)``.
* ``ObjectDetector`` letterboxed image (B, 3, S, S) -> the K best (score, label, box)
  candidates per image, fixed shape. torchvision's RetinaNet v2 (single stage, dense
  head, no RoI ops) stands in for the reference's Mask R-CNN; NMS and the choice of the
  top objects run on the host (``mner.runtime.coco.select_objects``), so the graph
  exports to ONNX with a batch axis and no data-dependent control flow.
* ``FeatureCache``   computes both once per picture and keeps them on disk, keyed by the
  picture's bytes, the weights and the preprocessing contract.

Inputs come from ``mner.runtime.image`` (normalisation included), so training and
serving see the same tensors. Weights are torchvision state_dict files given by path;
nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torchvision.models.detection.image_list import ImageList

from mner.runtime.bundle import sha256_file
from mner.runtime.coco import select_objects
from mner.runtime.progress import progress as progress_bar
from mner.runtime.image import DETECTOR_SIZE, MAX_PIXELS, preprocess_images, preprocessing_constants

logger = logging.getLogger(__name__)

GRID_SIDE = 7  # the reference pools layer4 to 7 × 7 (its att_size)
GRID_CELLS = GRID_SIDE * GRID_SIDE  # 49 regions the tagger attends over
GRID_CHANNELS = 2048  # ResNet-50/101/152 layer4 width; the tagger's grid input size
GRID_ARCHS = ("resnet152", "resnet101", "resnet50")  # all give 2048 channels; 152 is the paper's
DETECTOR_TOP_K = 100  # candidates per image handed to the host; NMS then keeps a handful
DETECTOR_STRIDE = 128  # coarsest FPN level (P7): the input side must be a multiple of it
TORCHVISION_COCO_LABELS = 91  # torchvision's COCO heads: background + ids 1..90 with gaps


class GridEncoder(nn.Module):
    """ResNet trunk -> 7 × 7 grid of 2048-d region features, (B, 49, 2048)."""

    def __init__(self, arch: str = "resnet152"):
        super().__init__()
        if arch not in GRID_ARCHS:
            raise ValueError(f"arch must be one of {GRID_ARCHS}, got {arch!r}")
        self.arch = arch
        # The whole torchvision model, fc included, so a torchvision state_dict file loads
        # strictly; fc is never run.
        self.resnet = getattr(torchvision.models, arch)(weights=None)
        self._weights_identity: str | None = None

    @classmethod
    def from_weights(cls, path: str | os.PathLike | None, *, arch: str = "resnet152", seed: int = 0) -> GridEncoder:
        """Load a torchvision ImageNet state_dict file (strict), or seeded random weights for None."""
        if path is None:
            logger.warning(
                "GridEncoder: no weights file given; %s has random weights (seed %d), so its grid "
                "features are meaningless. Pass torchvision's ImageNet %s state_dict file.",
                arch, seed, arch,
            )  # fmt: skip
            encoder = _seeded(lambda: cls(arch), seed)
            encoder._weights_identity = f"{arch}:random-{seed}"
        else:
            encoder = cls(arch)
            digest = _load_torchvision_state_dict(encoder.resnet, path, f"torchvision {arch}")
            encoder._weights_identity = f"{arch}:sha256:{digest}"
        return encoder.eval()

    @property
    def weights_identity(self) -> str:
        """What the cache keys on: the weights file's sha256, the random seed, or a hash of the tensors."""
        return self._weights_identity or f"{self.arch}:state-sha256:{_state_digest(self)}"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(images.shape)}")
        r = self.resnet
        x = r.maxpool(r.relu(r.bn1(r.conv1(images))))
        x = r.layer4(r.layer3(r.layer2(r.layer1(x))))  # (B, 2048, H/32, W/32)
        x = F.adaptive_avg_pool2d(x, (GRID_SIDE, GRID_SIDE))  # (B, 2048, 7, 7)
        return x.flatten(2).transpose(1, 2)  # (B, 49, 2048), row-major cells


class ObjectDetector(nn.Module):
    """RetinaNet (ResNet-50-FPN v2, COCO) -> fixed-shape top-K candidates per image.

    forward(images (B, 3, S, S), ImageNet-normalised and letterboxed by
    ``mner.runtime.image.detector_tensor``) returns
      scores (B, K) float32 sigmoid class scores,
      labels (B, K) int64 torchvision COCO ids (0..90),
      boxes  (B, K, 4) float32 x1 y1 x2 y2 in input pixels, clipped to [0, S].

    This differs from torchvision's own post-processing, which resizes to 800 px,
    keeps the top 1000 per FPN level above 0.05 and runs NMS: here the K best
    (anchor, class) pairs over all levels are taken in one ``topk``, and NMS is left
    to the host. Anchors depend only on S, so they are computed once, as a buffer.
    """

    def __init__(self, size: int = DETECTOR_SIZE, top_k: int = DETECTOR_TOP_K):
        super().__init__()
        if not isinstance(size, int) or size <= 0 or size % DETECTOR_STRIDE:
            raise ValueError(f"size must be a positive multiple of {DETECTOR_STRIDE}, got {size!r}")
        if not isinstance(top_k, int) or top_k <= 0:
            raise ValueError(f"top_k must be a positive int, got {top_k!r}")
        self.size = size
        self.top_k = top_k
        self.model = torchvision.models.detection.retinanet_resnet50_fpn_v2(
            weights=None, weights_backbone=None, num_classes=TORCHVISION_COCO_LABELS
        )
        self.register_buffer("anchors", self._anchors_for_size(size), persistent=False)  # (A, 4)
        self._weights_identity: str | None = None

    @classmethod
    def from_weights(
        cls,
        path: str | os.PathLike | None,
        *,
        size: int = DETECTOR_SIZE,
        top_k: int = DETECTOR_TOP_K,
        seed: int = 0,
    ) -> ObjectDetector:
        """Load torchvision's retinanet_resnet50_fpn_v2 COCO state_dict file (strict), or
        seeded random weights for None."""
        if path is None:
            logger.warning(
                "ObjectDetector: no weights file given; RetinaNet has random weights (seed %d), so its "
                "object ids are meaningless. Pass torchvision's retinanet_resnet50_fpn_v2 COCO state_dict file.",
                seed,
            )
            detector = _seeded(lambda: cls(size, top_k), seed)
            detector._weights_identity = f"retinanet_resnet50_fpn_v2:random-{seed}"
        else:
            detector = cls(size, top_k)
            digest = _load_torchvision_state_dict(detector.model, path, "torchvision retinanet_resnet50_fpn_v2 COCO")
            detector._weights_identity = f"retinanet_resnet50_fpn_v2:sha256:{digest}"
        return detector.eval()

    @property
    def weights_identity(self) -> str:
        return self._weights_identity or f"retinanet_resnet50_fpn_v2:state-sha256:{_state_digest(self.model)}"

    def _anchors_for_size(self, size: int) -> torch.Tensor:
        # torchvision's generator only reads the feature maps' shapes: P3..P7 at strides 8..128.
        grids = [torch.empty(1, 0, size // stride, size // stride) for stride in (8, 16, 32, 64, 128)]
        images = ImageList(torch.empty(1, 3, size, size), [(size, size)])
        return self.model.anchor_generator(images, grids)[0]  # (A, 4), A = 9 · Σ (S/stride)²

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, self.size, self.size):
            raise ValueError(f"expected images (B, 3, {self.size}, {self.size}), got {tuple(images.shape)}")
        features = list(self.model.backbone(images).values())  # 5 × (B, 256, S/stride, S/stride)
        head = self.model.head(features)
        logits = head["cls_logits"]  # (B, A, 91), anchors ordered as self.anchors
        regression = head["bbox_regression"]  # (B, A, 4)
        num_labels = logits.shape[-1]

        # sigmoid is monotonic: take the top K logits, then squash only those.
        top_logits, flat_index = logits.flatten(1).topk(self.top_k, dim=1)  # (B, K)
        anchor_index = torch.div(flat_index, num_labels, rounding_mode="floor")  # (B, K)
        labels = flat_index % num_labels  # (B, K)
        deltas = regression.gather(1, anchor_index.unsqueeze(-1).expand(-1, -1, 4))  # (B, K, 4)
        anchors = self.anchors[anchor_index]  # (B, K, 4)
        box_coder = self.model.head.regression_head.box_coder
        boxes = box_coder.decode_single(deltas.reshape(-1, 4), anchors.reshape(-1, 4))  # (B·K, 4)
        boxes = boxes.reshape(anchor_index.shape[0], self.top_k, 4).clamp(0, self.size)  # (B, K, 4)
        return top_logits.sigmoid(), labels, boxes


class FeatureBatch(NamedTuple):
    grid: np.ndarray  # (B, 49, 2048) float32; zeros where grid_mask is False
    grid_mask: np.ndarray  # (B,) bool: the row has a usable picture
    object_ids: np.ndarray  # (B, max_objects) int64, contiguous COCO ids, 0 = none
    problems: list[str | None]  # why a given picture was unusable (path named); None otherwise


class FeatureCache:
    """Grid features and detector candidates, computed once per picture and kept on disk.

    One ``.npz`` per picture under ``cache_dir``, named by a hash of: the picture's
    sha256, both encoders' ``weights_identity``, the preprocessing constants and the
    detector's size and K. It stores the grid (float32, so training features equal
    what the served model computes) and the K raw candidates, so the object-selection
    thresholds can change without recomputing anything.

    A missing, unreadable or undecodable picture gives a zero grid, mask False and no
    objects, and is named in one warning per call; it is never cached, never an error,
    and never replaced by another picture. The encoders are run in eval mode under
    ``torch.no_grad`` on whatever device their parameters are on.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        grid_encoder: GridEncoder,
        detector: ObjectDetector,
        *,
        batch_size: int = 16,
        score_threshold: float = 0.5,
        iou_threshold: float = 0.5,
        max_objects: int = 5,
        max_pixels: int = MAX_PIXELS,
        progress_min: int = 64,
        progress: bool | None = True,
    ):
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.grid_encoder = grid_encoder
        self.detector = detector
        self.batch_size = batch_size
        self.selection = {"score_threshold": score_threshold, "iou_threshold": iou_threshold, "max_objects": max_objects}
        select_objects(np.zeros((0, 1)), np.zeros((0, 1), np.int64), np.zeros((0, 1, 4)), **self.selection)  # validates
        self.max_pixels = max_pixels
        self.progress_min = progress_min  # fewer pictures to compute than this: no progress shown
        self.progress = progress  # False (--no-progress): none at all
        constants = preprocessing_constants()
        constants["detector_size"] = detector.size
        constants["max_pixels"] = max_pixels
        self._key_base = {
            "grid": grid_encoder.weights_identity,
            "detector": detector.weights_identity,
            "detector_top_k": detector.top_k,
            "preprocessing": constants,
        }

    def get_or_compute(self, image_paths: Sequence[str | os.PathLike | None]) -> FeatureBatch:
        """Features for each path (None = the post has no picture), from the cache where possible."""
        batch = len(image_paths)
        grid = np.zeros((batch, GRID_CELLS, GRID_CHANNELS), dtype=np.float32)
        grid_mask = np.zeros(batch, dtype=bool)
        candidates: list[tuple[np.ndarray, np.ndarray, np.ndarray] | None] = [None] * batch
        problems: list[str | None] = [None] * batch

        # Hash every picture; rows sharing one picture's bytes share one computation. Only
        # paths are kept meanwhile, so a whole data set can go through in one call.
        pending: dict[str, list[int]] = {}
        for row, path in enumerate(image_paths):
            if path is None:
                continue
            try:
                data = Path(path).read_bytes()
            except OSError as e:
                problems[row] = f"{os.fspath(path)}: cannot read the file ({e.strerror or e})"
                continue
            digest = hashlib.sha256(data).hexdigest()
            cached = self._load(digest)
            if cached is not None:
                grid[row], candidates[row] = cached[0], cached[1:]
                grid_mask[row] = True
            else:
                pending.setdefault(digest, []).append(row)

        work = list(pending.items())
        shown = self.progress is not False and len(work) >= self.progress_min
        with progress_bar(len(work), desc="image features", unit="img", enabled=shown) as bar:
            for start in range(0, len(work), self.batch_size):
                chunk = work[start : start + self.batch_size]
                results = self._compute([(image_paths[rows[0]], digest) for digest, rows in chunk])
                for (digest, rows), (features, error) in zip(chunk, results, strict=True):
                    if features is None:
                        for row in rows:
                            problems[row] = f"{os.fspath(image_paths[row])}: {error}"
                        continue
                    self._store(digest, *features)
                    for row in rows:
                        grid[row], candidates[row] = features[0], features[1:]
                        grid_mask[row] = True
                bar.update(len(chunk))

        object_ids = np.zeros((batch, self.selection["max_objects"]), dtype=np.int64)
        rows = np.flatnonzero(grid_mask)
        if len(rows):
            scores, labels, boxes = (np.stack([candidates[r][i] for r in rows]) for i in range(3))
            object_ids[rows] = select_objects(scores, labels, boxes, **self.selection)

        failed = [p for p in problems if p is not None]
        if failed:
            shown = "; ".join(failed[:10]) + (f"; and {len(failed) - 10} more" if len(failed) > 10 else "")
            logger.warning(
                "%d of %d pictures could not be used and are masked out (no grid, no objects): %s",
                len(failed), batch, shown,
            )  # fmt: skip
        return FeatureBatch(grid, grid_mask, object_ids, problems)

    def _compute(self, pictures: list[tuple[str | os.PathLike, str]]) -> list[tuple[tuple | None, str | None]]:
        """Encode one batch of (path, sha256): per picture ((grid, scores, labels, boxes), None) or (None, error)."""
        data: list[bytes | None] = []
        for path, digest in pictures:
            try:
                content = Path(path).read_bytes()
            except OSError:
                content = None
            data.append(content if content is not None and hashlib.sha256(content).hexdigest() == digest else None)
        images = preprocess_images(data, detector_size=self.detector.size, max_pixels=self.max_pixels)
        results: list[tuple[tuple | None, str | None]] = []
        for error, content in zip(images.errors, data, strict=True):
            if content is None:  # read and hashed a moment ago
                error = "the file changed or vanished while its features were being computed"
            results.append((None, error))
        good = np.flatnonzero(images.has_image)
        if len(good):
            grid, scores, labels, boxes = self._encode(images.vision[good], images.detector[good])
            for i, row in enumerate(good):
                results[row] = ((grid[i], scores[i], labels[i], boxes[i]), None)
        return results

    def _encode(self, vision: np.ndarray, detector: np.ndarray) -> tuple[np.ndarray, ...]:
        with torch.no_grad(), _eval_mode(self.grid_encoder), _eval_mode(self.detector):
            grid = self.grid_encoder(torch.from_numpy(vision).to(_device_of(self.grid_encoder)))  # (n, 49, 2048)
            scores, labels, boxes = self.detector(torch.from_numpy(detector).to(_device_of(self.detector)))
        return (
            grid.float().cpu().numpy(),
            scores.float().cpu().numpy(),
            labels.cpu().numpy().astype(np.int64),
            boxes.float().cpu().numpy(),
        )

    def _path(self, digest: str) -> tuple[Path, str]:
        key = json.dumps({"image_sha256": digest, **self._key_base}, sort_keys=True)
        name = hashlib.sha256(key.encode()).hexdigest()
        return self.cache_dir / f"{name}.npz", key

    def _load(self, digest: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        path, key = self._path(digest)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as f:
                if str(f["key"]) != key:
                    raise ValueError("the stored key does not match")
                entry = (f["grid"], f["scores"], f["labels"], f["boxes"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # a damaged entry
            logger.warning("feature cache entry %s is unreadable (%s); recomputing it", path, e)
            return None
        if entry[0].shape != (GRID_CELLS, GRID_CHANNELS) or entry[1].shape != (self.detector.top_k,):
            logger.warning("feature cache entry %s has unexpected shapes; recomputing it", path)
            return None
        return entry

    def _store(self, digest: str, grid: np.ndarray, scores: np.ndarray, labels: np.ndarray, boxes: np.ndarray) -> None:
        path, key = self._path(digest)
        # Write then rename, so a crash never leaves a half-written entry under the real name.
        with tempfile.NamedTemporaryFile(dir=self.cache_dir, suffix=".tmp", delete=False) as f:
            np.savez(f, key=np.array(key), grid=grid, scores=scores, labels=labels, boxes=boxes)
        os.replace(f.name, path)


# --------------------------------------------------------------------------- helpers


def _seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a module with reproducible random weights without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Put a module in eval mode for a block, then restore its previous mode."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _state_digest(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _few(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, … ({len(keys)} in all)" if len(keys) > limit else shown


def _load_torchvision_state_dict(module: nn.Module, path: str | os.PathLike, expected: str) -> str:
    """Strictly load a state_dict file into ``module``; returns the file's sha256.

    Raises ValueError naming the file when it is missing, is not a state_dict, or its
    keys or shapes do not match ``module``.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such weights file (expected {expected} weights)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for non-checkpoint bytes; re-raised with the file named
        raise ValueError(f"{path}: not a PyTorch state_dict file ({type(e).__name__}: {e})") from e
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        top = list(state)[:5] if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(f"{path}: expected a plain state_dict (parameter name -> tensor) of {expected}, found {top}")
    own = module.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own.keys() & state.keys()
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or mismatched:
        parts = [
            f"missing keys: {_few(missing)}" if missing else "",
            f"unexpected keys: {_few(unexpected)}" if unexpected else "",
            f"shape mismatches (file vs model): {_few(mismatched)}" if mismatched else "",
        ]
        raise ValueError(f"{path} does not hold {expected} weights; " + "; ".join(p for p in parts if p))
    module.load_state_dict(state, strict=True)
    return sha256_file(path)
