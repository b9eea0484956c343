"""Stage 2, vision: the whole picture (batch, 3, 224, 224) -> the ResNet grid (batch, 49, 2048).

``mner.train.vision.GridEncoder`` as is: ResNet-152 to layer4, pooled to 7 x 7, cells
row-major, channels last. The input is ``mner.runtime.image.vision_tensor``'s output
(ImageNet-normalised RGB), so parity is checked on real preprocessed pictures.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from mner.export.spec import BuiltStage, Fp16Policy, Sources, StageSpec, TensorSpec
from mner.runtime.image import VISION_SIZE, vision_tensor
from mner.train.vision import GRID_CELLS, GRID_CHANNELS, GridEncoder

MAX_BATCH = 1024


def build(sources: Sources) -> BuiltStage:
    encoder = GridEncoder.from_weights(sources.resnet_weights, arch=sources.vision_arch, seed=sources.seed)
    return BuiltStage(
        module=encoder.eval(),
        dims={"vision_size": VISION_SIZE, "grid_cells": GRID_CELLS, "grid_dim": GRID_CHANNELS},
        axis_bounds={"batch": (1, MAX_BATCH)},
        weights=weights_identity(sources.vision_arch, sources.resnet_weights, sources.seed, encoder.weights_identity),
        info={"arch": sources.vision_arch},
    )


def weights_identity(arch: str, path, seed: int, identity: str) -> dict:
    """The manifest's record of frozen weights: a file's sha256, or "random" and the seed that rebuilds them."""
    if path is None:
        return {"arch": arch, "source": "random", "seed": seed, "identity": identity}
    return {"arch": arch, "source": "file", "file": path.name, "sha256": identity.rsplit(":", 1)[-1], "identity": identity}


def synthetic_pictures(count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """RGB uint8 pictures of varied sizes and aspect ratios: colour ramps with noise and a bright block."""
    pictures = []
    for _ in range(count):
        height, width = (int(v) for v in rng.integers(48, 400, size=2))
        ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None] * rng.random(3, dtype=np.float32)
        noise = rng.normal(0, 20, size=(height, width, 3)).astype(np.float32)
        picture = np.clip(ramp + noise + rng.integers(0, 128, size=3), 0, 255).astype(np.uint8)
        top, left = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
        picture[top : top + height // 3, left : left + width // 3] = rng.integers(0, 256, size=3, dtype=np.uint8)
        pictures.append(picture)
    return pictures


def dummy_inputs(built: BuiltStage, sizes: Mapping[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    pictures = synthetic_pictures(sizes["batch"], rng)
    return {"images": np.stack([vision_tensor(picture) for picture in pictures])}  # (B, 3, 224, 224)


SPEC = StageSpec(
    name="vision",
    summary="picture (ImageNet-normalised, 224 x 224) -> ResNet grid of 49 region features",
    inputs=(TensorSpec("images", "float32", ("batch", 3, "vision_size", "vision_size")),),
    outputs=(TensorSpec("grid", "float32", ("batch", "grid_cells", "grid_dim")),),
    dynamic_axes=("batch",),
    build=build,
    dummy_inputs=dummy_inputs,
    tolerance={"grid": 1e-4},
    fp16_tolerance={"grid": 3e-2},
    parity_sizes=({"batch": 1}, {"batch": 3}),
    trt_profile={"batch": (1, 16, 64)},
    fp16=Fp16Policy(fp32_ops=frozenset({"BatchNormalization"})),
)
