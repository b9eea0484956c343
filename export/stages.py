"""The one table of export stages: it drives mner-export, parity, FP16, TensorRT and the manifest.

Order is the pipeline's: detector and vision (independent of each other), then the
tagger that reads what they produce. The names alone, and which stages a checkpoint
exports by default, live in ``export/stage_choice.py`` (torch-free, for ``--help``).
"""

from __future__ import annotations

from typing import Sequence

from mner.export import detector, tagger, vision
from mner.export.spec import StageSpec
from mner.export.stage_choice import STAGE_NAMES, parse_stage_names

STAGES: dict[str, StageSpec] = {spec.name: spec for spec in (detector.SPEC, vision.SPEC, tagger.SPEC)}
assert tuple(STAGES) == STAGE_NAMES, "stage_choice.STAGE_NAMES must name this table's stages, in its order"


def select_stages(names: str | Sequence[str] | None) -> list[StageSpec]:
    """Stages by name ("detector,vision" or a list), in pipeline order; None means all of them."""
    if names is None:
        return list(STAGES.values())
    return [STAGES[name] for name in parse_stage_names(names)]
