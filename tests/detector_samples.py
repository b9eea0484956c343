"""Test inputs the detector tests of tests/train and tests/export share (importable: tests/ is on sys.path
through its conftest)."""

import numpy as np
import torch
from torch import nn

from mner.export.vision import synthetic_pictures
from mner.runtime.image import detector_tensor
from mner.train.detectors import ObjectDetector, SSDliteDetector


def pictures_at(size: int, count: int = 3) -> torch.Tensor:
    """(count, 3, size, size) letterboxed synthetic pictures, as the host makes them."""
    rgb = synthetic_pictures(count, np.random.default_rng(3))
    return torch.from_numpy(np.stack([detector_tensor(picture, size)[0] for picture in rgb]))


def calibrated(detector: ObjectDetector, sharpen: float) -> ObjectDetector:
    """BatchNorm statistics from a few pictures (a cumulative average over one batch), and the class
    logits scaled by ``sharpen``: random MobileNetV3 weights in eval mode give every candidate the same
    score, calibrated ones rank candidates by real differences."""
    for module in detector.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    detector.train()
    with torch.no_grad():
        detector(pictures_at(detector.size, 4))
        if isinstance(detector, SSDliteDetector):
            for block in detector.model.head.classification_head.module_list:
                block[-1].weight.mul_(sharpen)
        else:
            detector.model.roi_heads.box_predictor.cls_score.weight.mul_(sharpen)
    return detector.eval()
