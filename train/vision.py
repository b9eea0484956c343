"""Frozen vision features: the ResNet grid, the object detector, and an on-disk cache.

* ``GridEncoder``    image (B, 3, 224, 224) -> grid (B, 49, 2048): ResNet-152 up to layer4,
  adaptive-average-pooled to 7 × 7, flattened row-major with channels last — the
  reference's ``myResnet`` ``att`` after ``.view(-1, 2048, 49).permute(0, 2, 1)``.
* ``ObjectDetector`` letterboxed image (B, 3, S, S) -> the K best (score, label, box)
  candidates per image, fixed shape (``mner.train.detectors``, re-exported here): a
  torchvision COCO detector chosen by name -- RetinaNet v2 by default, standing in for
  the reference's Mask R-CNN, or SSDlite / Faster R-CNN MobileNetV3 for CPUs. NMS and
  the choice of the top objects run on the host (``mner.runtime.coco.select_objects``),
  so the graph exports to ONNX with a batch axis and no data-dependent control flow.
* ``FeatureCache``   computes both once per picture and keeps them on disk, keyed by the
  picture's bytes, the weights (the detector's identity names its architecture) and the
  preprocessing contract.

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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from mner.runtime.coco import select_objects
from mner.runtime.image import MAX_PIXELS, preprocess_images, preprocessing_constants
from mner.runtime.progress import progress as progress_bar
from mner.train.detectors import DETECTOR_TOP_K, TORCHVISION_COCO_LABELS, ObjectDetector  # noqa: F401 (re-exported)
from mner.train.weights import load_torchvision_state_dict, seeded, state_digest

logger = logging.getLogger(__name__)

GRID_SIDE = 7  # the reference pools layer4 to 7 × 7 (its att_size)
GRID_CELLS = GRID_SIDE * GRID_SIDE  # 49 regions the tagger attends over
GRID_CHANNELS = 2048  # ResNet-50/101/152 layer4 width; the tagger's grid input size
GRID_ARCHS = ("resnet152", "resnet101", "resnet50")  # all give 2048 channels; 152 is the paper's


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
            encoder = seeded(lambda: cls(arch), seed)
            encoder._weights_identity = f"{arch}:random-{seed}"
        else:
            encoder = cls(arch)
            digest = load_torchvision_state_dict(encoder.resnet, path, f"torchvision {arch}")
            encoder._weights_identity = f"{arch}:sha256:{digest}"
        return encoder.eval()

    @property
    def weights_identity(self) -> str:
        """What the cache keys on: the weights file's sha256, the random seed, or a hash of the tensors."""
        return self._weights_identity or f"{self.arch}:state-sha256:{state_digest(self)}"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(images.shape)}")
        r = self.resnet
        x = r.maxpool(r.relu(r.bn1(r.conv1(images))))
        x = r.layer4(r.layer3(r.layer2(r.layer1(x))))  # (B, 2048, H/32, W/32)
        x = F.adaptive_avg_pool2d(x, (GRID_SIDE, GRID_SIDE))  # (B, 2048, 7, 7)
        return x.flatten(2).transpose(1, 2)  # (B, 49, 2048), row-major cells


class FeatureBatch(NamedTuple):
    grid: np.ndarray  # (B, 49, 2048) float32; zeros where grid_mask is False
    grid_mask: np.ndarray  # (B,) bool: the row has a usable picture
    object_ids: np.ndarray  # (B, max_objects) int64, contiguous COCO ids, 0 = none
    problems: list[str | None]  # why a given picture was unusable (path named); None otherwise


class FeatureCache:
    """Grid features and detector candidates, computed once per picture and kept on disk.

    One ``.npz`` per picture under ``cache_dir``, named by a hash of: the picture's
    sha256, both encoders' ``weights_identity`` (the detector's starts with its
    architecture's name, so each detector has its own entries), the preprocessing
    constants and the detector's size and K. It stores the grid (float32, so training features equal
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
