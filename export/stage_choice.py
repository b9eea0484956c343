"""Which stages an export writes: their names, and the default a checkpoint's training implies.

Torch-free (only the standard library), so ``mner-export --help`` can name the stages without
loading the stage modules (``export/stages.py``), which import torch.

A model exports the stages it was trained with. ``mner-train`` without ``--images`` gives every
post an all-zero, masked picture: such a model never saw a picture, and a detector and a
ResNet grid in front of it would feed its image path features it never learnt from (seeded
random encoders, on top). So its default is the tagger alone, and the runtime answers a
picture sent to that bundle with a per-post error rather than tagging through untrained
stages. Naming image stages in ``--stages`` still exports them, with a warning, and the
manifest's ``stage_selection`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

STAGE_NAMES = ("detector", "vision", "tagger")  # pipeline order: detector and vision feed the tagger
IMAGE_STAGES = ("detector", "vision")


def parse_stage_names(names: str | Sequence[str]) -> tuple[str, ...]:
    """``"tagger, detector"`` or a list -> the names in pipeline order; ValueError for anything else."""
    if isinstance(names, str):
        names = [name.strip() for name in names.split(",") if name.strip()]
    unknown = sorted(set(names) - set(STAGE_NAMES))
    if unknown or not names:
        raise ValueError(f"stages must be a non-empty subset of {list(STAGE_NAMES)}, got {list(names)}")
    return tuple(name for name in STAGE_NAMES if name in names)


def pictures_in_training(payload: Mapping[str, Any]) -> tuple[bool | None, str]:
    """(whether the model was trained with pictures, how the checkpoint says so); None = it does not say.

    ``payload`` is what ``mner.train.checkpoint.save_checkpoint`` stored besides the weights:
    mner-train's ``train_args`` (with ``images_dir``, None without ``--images``), mner-convert's
    ``converted_from`` (IIE4MNER's models were trained on TWITTER's pictures), or
    ``random_weights`` (export/random_checkpoint.py: no training at all).
    """
    train_args = payload.get("train_args")
    if isinstance(train_args, Mapping) and "images_dir" in train_args:
        images = train_args["images_dir"]
        if images:
            return True, f"trained by mner-train with --images {images}"
        return False, "trained by mner-train without --images"
    if payload.get("converted_from"):
        return True, "converted by mner-convert from an IIE4MNER checkpoint, trained with pictures"
    if payload.get("random_weights"):
        return None, "random weights (export/random_checkpoint.py): no training to follow"
    return None, "the checkpoint does not record whether its training saw pictures"


@dataclass(frozen=True)
class StageSelection:
    """The stages to export and why; ``to_json`` is the manifest's ``stage_selection``."""

    stages: tuple[str, ...]
    chosen_by: str  # "checkpoint" (the default) or "--stages"
    pictures_in_training: bool | None  # None: the checkpoint does not say
    evidence: str  # what the checkpoint records about its training, in words
    reason: str

    @property
    def untrained_image_stages(self) -> tuple[str, ...]:
        """Image stages exported for a model that never saw a picture (only ever by --stages)."""
        return tuple(s for s in self.stages if s in IMAGE_STAGES) if self.pictures_in_training is False else ()

    def warning(self) -> str | None:
        untrained = self.untrained_image_stages
        if not untrained:
            return None
        return (f"exporting {' and '.join(untrained)} for a model that never saw a picture ({self.evidence}): "
                f"pictures sent to this bundle reach a tagger whose image path only ever had masked, all-zero "
                f"features; leave out --stages for a text-only bundle")  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "stages": list(self.stages),
            "chosen_by": self.chosen_by,
            "pictures_in_training": self.pictures_in_training,
            "reason": self.reason,
            "untrained_image_stages": list(self.untrained_image_stages),
        }


def select_for_checkpoint(requested: str | Sequence[str] | None, payload: Mapping[str, Any]) -> StageSelection:
    """The stages to export: ``requested`` if given (validated), else those the checkpoint was trained with.

    Trained without pictures: the tagger alone. Trained with pictures, or not recorded (a random
    or an older checkpoint): all stages, as before this choice existed.
    """
    pictures, how = pictures_in_training(payload)
    if pictures is False:
        how_and_so = f"{how}, so the model never saw a picture"
        if requested is None:
            return StageSelection(("tagger",), "checkpoint", pictures, how, f"{how_and_so}: the tagger only")
        return StageSelection(parse_stage_names(requested), "--stages", pictures, how, f"named by --stages; {how_and_so}")
    if requested is None:
        return StageSelection(STAGE_NAMES, "checkpoint", pictures, how, f"{how}: all stages")
    return StageSelection(parse_stage_names(requested), "--stages", pictures, how, f"named by --stages; {how}")
