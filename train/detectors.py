"""The object detectors: torchvision COCO models wrapped as fixed-shape candidate graphs.

Every wrapper has the same contract (``ObjectDetector``)::

    forward(images (B, 3, S, S)) -> scores (B, K) float32, labels (B, K) int64, boxes (B, K, 4) float32

``images`` are what ``mner.runtime.image.detector_tensor`` makes: ImageNet-normalised,
letterboxed (aspect kept, longer side S, content top-left, the rest the mean colour).
``labels`` are torchvision COCO ids (0..90), ``boxes`` x1 y1 x2 y2 in input pixels clipped
to [0, S], and the K candidates come best first. The graph has no NMS, no score
threshold and no data-dependent shape, so it exports to ONNX with a batch axis; the
host picks the objects (``mner.runtime.coco.select_objects``: threshold, per-class NMS,
the best few), the same for every detector.

* ``RetinaNetDetector``  retinanet_resnet50_fpn_v2 (the default, 41.5 COCO box mAP)
* ``SSDliteDetector``    ssdlite320_mobilenet_v3_large (21.3)
* ``FasterRCNNMobileNetDetector`` fasterrcnn_mobilenet_v3_large_320_fpn (22.8)

What each wrapper changes from torchvision's own post-processing is in its docstring;
in common: no resizing inside the model (the host letterboxes to S), no per-class NMS,
and the top K (anchor or proposal, class) pairs over the whole picture in one TopK.
Names, default sizes and size rules live in ``mner.train.detector_choice`` (torch-free).
"""

from __future__ import annotations

import logging
import os
from typing import ClassVar

import torch
import torchvision
from torch import nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.ops import roi_align
from torchvision.ops.poolers import _infer_scale

from mner.runtime.image import IMAGENET_MEAN, IMAGENET_STD
from mner.train.detector_choice import DETECTORS, resolve_detector
from mner.train.weights import load_torchvision_state_dict, seeded, state_digest

logger = logging.getLogger(__name__)

DETECTOR_TOP_K = 100  # candidates per image handed to the host; NMS then keeps a handful
TORCHVISION_COCO_LABELS = 91  # torchvision's COCO heads: background + ids 1..90 with gaps
# Faster R-CNN: proposals per image sent to the box head. torchvision's 320 model keeps 150
# after NMS (rpn_post_nms_top_n_test); here the 150 best by objectness, without NMS.
RPN_PROPOSALS = 150


class ObjectDetector(nn.Module):
    """The detectors' common contract (see the module docstring); one subclass per architecture.

    ``ObjectDetector.from_weights(path, arch=...)`` builds the named one; a subclass's
    ``from_weights`` builds itself.
    """

    arch: ClassVar[str] = ""  # a key of detector_choice.DETECTORS
    score_kind: ClassVar[str] = ""  # how a candidate's score is made, for the manifest
    # What the graph's input is, for the manifest: every detector takes the host's one letterbox.
    input_normalisation: ClassVar[str] = "ImageNet mean/std, as preprocessing.image says: the model's own"

    def __init__(self, size: int | None = None, top_k: int = DETECTOR_TOP_K):
        super().__init__()
        if not self.arch:
            raise TypeError("ObjectDetector is the common interface; build one with ObjectDetector.from_weights(arch=...)")
        choice = DETECTORS[self.arch]
        size = choice.default_size if size is None else size
        choice.check_size(size)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0:
            raise ValueError(f"top_k must be a positive int, got {top_k!r}")
        self.size = size
        self.top_k = top_k
        self.model = self._torchvision_model()
        self._weights_identity: str | None = None

    def _torchvision_model(self) -> nn.Module:
        return getattr(torchvision.models.detection, self.arch)(
            weights=None, weights_backbone=None, num_classes=TORCHVISION_COCO_LABELS
        )

    @staticmethod
    def class_for(arch: str | None) -> type[ObjectDetector]:
        """The wrapper class of a detector name or alias (None: the default, RetinaNet v2)."""
        return DETECTOR_CLASSES[resolve_detector(arch).name]

    @classmethod
    def from_weights(
        cls,
        path: str | os.PathLike | None,
        *,
        arch: str | None = None,
        size: int | None = None,
        top_k: int = DETECTOR_TOP_K,
        seed: int = 0,
    ) -> ObjectDetector:
        """The ``arch`` detector with torchvision's COCO state_dict file (strict), or seeded random
        weights for None. ``size`` None: the detector's own (512 RetinaNet, 320 the others)."""
        if cls is ObjectDetector:
            cls = ObjectDetector.class_for(arch)
        elif arch is not None and resolve_detector(arch).name != cls.arch:
            raise ValueError(f"{cls.__name__} is the {cls.arch} detector, not {arch!r}")
        if path is None:
            logger.warning(
                "ObjectDetector: no weights file given; %s has random weights (seed %d), so its object ids are "
                "meaningless. Pass torchvision's %s COCO state_dict file.", cls.arch, seed, cls.arch,
            )  # fmt: skip
            detector = seeded(lambda: cls(size, top_k), seed)
            detector._weights_identity = f"{cls.arch}:random-{seed}"
        else:
            detector = cls(size, top_k)
            digest = load_torchvision_state_dict(detector.model, path, f"torchvision {cls.arch} COCO")
            detector._weights_identity = f"{cls.arch}:sha256:{digest}"
        return detector.eval()

    @property
    def weights_identity(self) -> str:
        """What the feature cache keys on; it starts with the architecture's name."""
        return self._weights_identity or f"{self.arch}:state-sha256:{state_digest(self.model)}"

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, self.size, self.size):
            raise ValueError(f"expected images (B, 3, {self.size}, {self.size}), got {tuple(images.shape)}")
        return self._candidates(images)

    def _candidates(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _feature_shapes(self, images: torch.Tensor) -> dict[str, tuple[int, int]]:
        """Name -> (H, W) of each backbone output for one S × S picture (one pass, in eval mode, no
        gradient: BatchNorm's statistics and the weights stay as they are)."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                return {name: tuple(f.shape[-2:]) for name, f in self.model.backbone(images).items()}
        finally:
            self.model.train(was_training)

    def _top_pairs(
        self, class_scores: torch.Tensor, regression: torch.Tensor, anchors: torch.Tensor, box_coder, first_label: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The K best (anchor, class) pairs over all anchors, with their boxes decoded.

        class_scores (B, A, C) (ranked as given), regression (B, A, 4) per anchor, anchors
        (A, 4); a column c is label ``first_label + c``.
        """
        batch, _, classes = class_scores.shape
        top_scores, flat_index = class_scores.flatten(1).topk(self.top_k, dim=1)  # (B, K)
        anchor_index = torch.div(flat_index, classes, rounding_mode="floor")  # (B, K)
        labels = flat_index % classes + first_label  # (B, K)
        deltas = regression.gather(1, anchor_index.unsqueeze(-1).expand(-1, -1, 4))  # (B, K, 4)
        boxes = box_coder.decode_single(deltas.reshape(-1, 4), anchors[anchor_index].reshape(-1, 4))  # (B·K, 4)
        return top_scores, labels, boxes.reshape(batch, self.top_k, 4).clamp(0, self.size)


class RetinaNetDetector(ObjectDetector):
    """RetinaNet (ResNet-50-FPN v2, COCO): dense head, sigmoid class scores.

    torchvision's own post-processing resizes to 800 px, keeps the top 1000 per FPN level
    above 0.05 and runs NMS: here the K best (anchor, class) pairs over all levels are
    taken in one ``topk`` (on the logits; sigmoid is monotonic, so only those K are
    squashed), and NMS is left to the host. Anchors depend only on S: a buffer.
    """

    arch = "retinanet_resnet50_fpn_v2"
    score_kind = "sigmoid of each class logit (label 0 included, as torchvision's RetinaNet head has it)"

    def __init__(self, size: int | None = None, top_k: int = DETECTOR_TOP_K):
        super().__init__(size, top_k)
        self.register_buffer("anchors", self._anchors_for_size(self.size), persistent=False)  # (A, 4)

    def _anchors_for_size(self, size: int) -> torch.Tensor:
        # torchvision's generator only reads the feature maps' shapes: P3..P7 at strides 8..128.
        grids = [torch.empty(1, 0, size // stride, size // stride) for stride in (8, 16, 32, 64, 128)]
        images = ImageList(torch.empty(1, 3, size, size), [(size, size)])
        return self.model.anchor_generator(images, grids)[0]  # (A, 4), A = 9 · Σ (S/stride)²

    def _candidates(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = list(self.model.backbone(images).values())  # 5 × (B, 256, S/stride, S/stride)
        head = self.model.head(features)
        logits = head["cls_logits"]  # (B, A, 91), anchors ordered as self.anchors
        box_coder = self.model.head.regression_head.box_coder
        top_logits, labels, boxes = self._top_pairs(logits, head["bbox_regression"], self.anchors, box_coder, 0)
        return top_logits.sigmoid(), labels, boxes


class SSDliteDetector(ObjectDetector):
    """SSDlite (MobileNetV3-Large, 320 px, COCO): dense head, softmax over 91 classes.

    Input: SSDlite's backbone was trained on pixels scaled to [-1, 1] (mean 0.5, std 0.5),
    not ImageNet's mean/std. The host sends every detector the same ImageNet-normalised
    letterbox, and this graph converts it with one per-channel multiply-add (x · s + t):
    one preprocessing for every bundle and the training cache, manifest image constants
    that mean the same for every detector, at a cost of 3·S² multiply-adds (about 0.05 %
    of the network). The letterbox's padding, the ImageNet mean colour, stays the mean
    colour after the conversion.

    Differences from torchvision's SSD post-processing: torchvision stretches the picture
    to 320 × 320 (aspect not kept) where the host letterboxes; it keeps per class the 300
    best above 0.001 and runs NMS at 0.55; here the K best (anchor, class) pairs over all
    anchors, background's column dropped from the softmax, and NMS on the host. Anchors
    are SSDlite's own ``DefaultBoxGenerator``'s for an S × S picture, computed once.
    """

    arch = "ssdlite320_mobilenet_v3_large"
    score_kind = "softmax over the 91 classes (background included), background's column dropped"
    input_normalisation = ("ImageNet mean/std, as preprocessing.image says; converted in the graph to the model's own "
                           "(mean 0.5, std 0.5: pixels in [-1, 1])")  # fmt: skip

    def __init__(self, size: int | None = None, top_k: int = DETECTOR_TOP_K):
        super().__init__(size, top_k)
        host_mean, host_std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        own_mean = torch.tensor(self.model.transform.image_mean)
        own_std = torch.tensor(self.model.transform.image_std)
        # pixel = host · host_std + host_mean; own = (pixel - own_mean) / own_std = host · s + t
        self.register_buffer("input_scale", (host_std / own_std).view(3, 1, 1), persistent=False)
        self.register_buffer("input_shift", ((host_mean - own_mean) / own_std).view(3, 1, 1), persistent=False)
        picture = torch.zeros(1, 3, self.size, self.size)
        grids = [torch.empty(1, 0, h, w) for h, w in self._feature_shapes(picture).values()]
        anchors = self.model.anchor_generator(ImageList(picture, [(self.size, self.size)]), grids)[0]
        self.register_buffer("anchors", anchors, persistent=False)  # (A, 4) x1 y1 x2 y2 pixels

    def to_own_normalisation(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised (B, 3, S, S) -> SSDlite's own (pixels in [0, 1] mapped to [-1, 1])."""
        return images * self.input_scale + self.input_shift

    def _candidates(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = list(self.model.backbone(self.to_own_normalisation(images)).values())  # 6 maps
        head = self.model.head(features)
        probabilities = head["cls_logits"].softmax(dim=-1)[..., 1:]  # (B, A, 90): ids 1..90
        return self._top_pairs(probabilities, head["bbox_regression"], self.anchors, self.model.box_coder, 1)


class FasterRCNNMobileNetDetector(ObjectDetector):
    """Faster R-CNN (MobileNetV3-Large-FPN, 320 px, COCO): RPN proposals, RoIAlign, box head.

    Two stages, both fixed-shape:

    1. proposals: the RPN's objectness over all anchors (three FPN levels), the
       ``RPN_PROPOSALS`` best in one TopK, their boxes decoded and clipped to the picture;
    2. per proposal: RoIAlign 7 × 7 (sampling ratio 2) on the FPN map torchvision's
       ``MultiScaleRoIAlign`` would choose, the two-layer box head, softmax over 91
       classes (background's column dropped), class-specific box deltas; then the K best
       (proposal, class) pairs, their boxes decoded from their proposals and clipped.

    Differences from torchvision's post-processing: it resizes the shorter side to 320
    (longer up to 640), where the host letterboxes the longer side to S; its RPN takes
    the 150 best per level, drops those under 0.05 objectness and tiny boxes, and runs
    NMS at 0.7 before keeping 150 -- here the 150 best over all levels, no NMS, so
    proposals may overlap; its box stage drops scores under 0.05 and tiny boxes and runs
    per-class NMS at 0.5 -- here the K best pairs, NMS on the host.
    """

    arch = "fasterrcnn_mobilenet_v3_large_320_fpn"
    score_kind = "softmax over the 91 classes per proposal (background included), background's column dropped"

    def __init__(self, size: int | None = None, top_k: int = DETECTOR_TOP_K):
        super().__init__(size, top_k)
        picture = torch.zeros(1, 3, self.size, self.size)
        shapes = self._feature_shapes(picture)
        grids = [torch.empty(1, 0, h, w) for h, w in shapes.values()]
        anchors = self.model.rpn.anchor_generator(ImageList(picture, [(self.size, self.size)]), grids)[0]
        self.register_buffer("anchors", anchors, persistent=False)  # (A, 4), ordered as the RPN's outputs
        self.proposals = min(RPN_PROPOSALS, anchors.shape[0])
        if self.proposals * (TORCHVISION_COCO_LABELS - 1) < top_k:
            raise ValueError(f"top_k {top_k} exceeds the {self.proposals} proposals × 90 classes at size {self.size}")
        self.roi_map, self.roi_scale = self._roi_level(shapes)

    def _roi_level(self, shapes: dict[str, tuple[int, int]]) -> tuple[int, float]:
        """(index, spatial scale) of the backbone map RoIAlign reads, as MultiScaleRoIAlign picks it."""
        names = self.model.roi_heads.box_roi_pool.featmap_names
        used = [i for i, name in enumerate(shapes) if name in names]
        scales = [_infer_scale(torch.empty(1, 0, *shape), [self.size, self.size]) for name, shape in shapes.items()
                  if name in names]  # fmt: skip
        # Its level mapper sends a box to level floor(4 + log2(sqrt(area) / 224)) clamped to the
        # levels present, named by their scales. MobileNetV3's two FPN maps it reads ('0', '1')
        # both have stride 32, so the range is one level and every box pools from '0'.
        assert len(set(scales)) == 1, f"expected one RoIAlign level, got scales {scales}"
        return used[0], scales[0]

    def proposals_for(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1: features -> (objectness logits (B, N), proposal boxes (B, N, 4)), best first."""
        objectness, deltas = self.model.rpn.head(features)  # per level (B, a, H, W), (B, 4a, H, W)
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)  # (B·A, 1), (B·A, 4)
        batch = features[0].shape[0]
        objectness = objectness.reshape(batch, -1)  # (B, A), anchors ordered as self.anchors
        deltas = deltas.reshape(batch, -1, 4)  # (B, A, 4)
        top, index = objectness.topk(self.proposals, dim=1)  # (B, N)
        chosen = deltas.gather(1, index.unsqueeze(-1).expand(-1, -1, 4))  # (B, N, 4)
        boxes = self.model.rpn.box_coder.decode_single(chosen.reshape(-1, 4), self.anchors[index].reshape(-1, 4))
        return top, boxes.reshape(batch, self.proposals, 4).clamp(0, self.size)  # (B, N, 4)

    def _candidates(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = list(self.model.backbone(images).values())  # '0', '1' (stride 32), 'pool' (64): (B, 256, h, w)
        _, proposals = self.proposals_for(features)  # (B, N, 4)
        batch, count = proposals.shape[:2]
        image_index = torch.arange(batch, dtype=proposals.dtype, device=proposals.device)
        rois = torch.cat([image_index.view(batch, 1, 1).expand(batch, count, 1), proposals], dim=2)  # (B, N, 5)
        pooled = roi_align(features[self.roi_map], rois.reshape(-1, 5), output_size=(7, 7),
                           spatial_scale=self.roi_scale, sampling_ratio=2, aligned=False)  # (B·N, 256, 7, 7)
        heads = self.model.roi_heads
        class_logits, box_deltas = heads.box_predictor(heads.box_head(pooled))  # (B·N, 91), (B·N, 91·4)
        probabilities = class_logits.softmax(dim=-1)[:, 1:].reshape(batch, count, -1)  # (B, N, 90)
        top_scores, flat_index = probabilities.flatten(1).topk(self.top_k, dim=1)  # (B, K)
        classes = probabilities.shape[-1]
        proposal_index = torch.div(flat_index, classes, rounding_mode="floor")  # (B, K)
        labels = flat_index % classes + 1  # (B, K) ids 1..90
        per_class = box_deltas.reshape(batch, count * TORCHVISION_COCO_LABELS, 4)  # (B, N·91, 4)
        deltas = per_class.gather(1, (proposal_index * TORCHVISION_COCO_LABELS + labels).unsqueeze(-1).expand(-1, -1, 4))
        sources = proposals.gather(1, proposal_index.unsqueeze(-1).expand(-1, -1, 4))  # (B, K, 4)
        boxes = heads.box_coder.decode_single(deltas.reshape(-1, 4), sources.reshape(-1, 4))  # (B·K, 4)
        return top_scores, labels, boxes.reshape(batch, self.top_k, 4).clamp(0, self.size)


DETECTOR_CLASSES: dict[str, type[ObjectDetector]] = {
    cls.arch: cls for cls in (RetinaNetDetector, SSDliteDetector, FasterRCNNMobileNetDetector)
}
assert tuple(DETECTOR_CLASSES) == tuple(DETECTORS), "detector_choice.DETECTORS and the wrappers must name the same detectors"
