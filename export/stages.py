"""The one table of export stages: it drives mner-export, parity, FP16, TensorRT and the manifest.

Order is the pipeline's: detector and vision (independent of each other), then the
tagger that reads what they produce.
"""

from __future__ import annotations

from mner.export import detector, tagger, vision
from mner.export.spec import StageSpec

STAGES: dict[str, StageSpec] = {spec.name: spec for spec in (detector.SPEC, vision.SPEC, tagger.SPEC)}


def select_stages(names: str | list[str] | tuple[str, ...] | None) -> list[StageSpec]:
    """Stages by name ("detector,vision" or a list), in pipeline order; None means all of them."""
    if names is None:
        return list(STAGES.values())
    if isinstance(names, str):
        names = [name.strip() for name in names.split(",") if name.strip()]
    unknown = sorted(set(names) - set(STAGES))
    if unknown or not names:
        raise ValueError(f"stages must be a non-empty subset of {list(STAGES)}, got {list(names)}")
    return [spec for name, spec in STAGES.items() if name in names]
