"""Which object detector the picture path runs: the names, their input sizes, without torch.

Three torchvision COCO detectors, each wrapped as a fixed-shape candidate graph in
``mner.train.detectors``. RetinaNet v2 is the default (the most accurate); the two
MobileNetV3 models are for CPU deployments, where the detector is most of a picture's
cost. The name is recorded in the checkpoint (``train_args["detector"]``) and in the
bundle's manifest (``stages.detector.arch``), and it is part of the feature cache's key.

Torch-free (standard library only), so ``mner-train --help`` and ``mner-export --help``
can list the choices without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DetectorChoice:
    name: str  # torchvision's builder name: what the checkpoint and the manifest record
    alias: str  # the short name the command lines also accept
    default_size: int  # letterbox side when none is given: the size torchvision's COCO weights were trained at
    size_multiple: int  # the input side must be a positive multiple of this
    why_multiple: str  # why, for the error message
    weights_enum: str  # torchvision.models.detection's Weights enum: published COCO mAP and GFLOPs
    summary: str

    def check_size(self, size: object) -> int:
        """``size`` if it is a valid input side for this detector; ValueError saying the rule otherwise."""
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % self.size_multiple:
            raise ValueError(f"the {self.name} detector's input size must be a positive multiple of "
                             f"{self.size_multiple} ({self.why_multiple}), got {size!r}")  # fmt: skip
        return size


DEFAULT_DETECTOR = "retinanet_resnet50_fpn_v2"
DETECTORS: dict[str, DetectorChoice] = {
    choice.name: choice
    for choice in (
        DetectorChoice(
            "retinanet_resnet50_fpn_v2", "retinanet", 512, 128,
            "its coarsest FPN level, P7, has stride 128, so every level tiles the picture exactly",
            "RetinaNet_ResNet50_FPN_V2_Weights",
            "RetinaNet, ResNet-50-FPN v2: single stage, sigmoid class scores (the most accurate, the slowest)",
        ),
        DetectorChoice(
            "ssdlite320_mobilenet_v3_large", "ssdlite", 320, 32,
            "the MobileNetV3 backbone's coarsest map has stride 32",
            "SSDLite320_MobileNet_V3_Large_Weights",
            "SSDlite, MobileNetV3-Large at 320 px: single stage, softmax class scores (the cheapest)",
        ),
        DetectorChoice(
            "fasterrcnn_mobilenet_v3_large_320_fpn", "frcnn-mobilenet", 320, 64,
            "its coarsest FPN level has stride 64, so every level tiles the picture exactly",
            "FasterRCNN_MobileNet_V3_Large_320_FPN_Weights",
            "Faster R-CNN, MobileNetV3-Large-FPN at 320 px: RPN proposals, RoIAlign, softmax class scores",
        ),
    )
}  # fmt: skip
ALIASES = {choice.alias: name for name, choice in DETECTORS.items()}
CLI_CHOICES = (*DETECTORS, *ALIASES)  # what --detector accepts


def resolve_detector(name: str | None) -> DetectorChoice:
    """The detector named (its torchvision name or short alias); None is the default, RetinaNet v2."""
    if name is None:
        return DETECTORS[DEFAULT_DETECTOR]
    choice = DETECTORS.get(name) or DETECTORS.get(ALIASES.get(name, ""))
    if choice is None:
        known = ", ".join(f"{n} ({c.alias})" for n, c in DETECTORS.items())
        raise ValueError(f"unknown detector {name!r}; expected one of {known}")
    return choice


def cli_help() -> str:
    """One line per choice for --detector's help."""
    return "; ".join(f"{c.alias} = {n} ({c.default_size} px)" for n, c in DETECTORS.items())
