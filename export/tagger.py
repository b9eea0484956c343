"""Stage 3, the tagger: word-pieces, masks, augmentation rows, grid and object ids -> emissions.

The graph is MGCMT's forward with only the main CRF's emissions kept (the auxiliary
span head is a training signal). The augmentation table is a buffer of the model, so
the exporter bakes it in as a constant: the runtime sends row ids, never vectors.
Masks are the model's own additive -10000 (finite, FP16 safe). Batch and sequence
are dynamic; the grid is (batch, grid_cells, 2048) and the object ids (batch, K).

The grid's cell axis is dynamic too, 1..49. A post without picture has its grid zeroed
and every cell masked, so its 49 cells are 49 identical rows that attention averages
uniformly: one cell computes the same emissions (to float rounding). The runtime sends
one cell when no post of a batch has a picture, and skips the work of the other 48 --
on text-only posts a quarter of the paper-size tagger's time, near half of the tiny one's.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

from mner.export.spec import BuiltStage, Fp16Policy, Sources, StageSpec, TensorSpec
from mner.runtime.text import AUG_ZERO_ROW
from mner.train.model import MGCMT

MAX_BATCH = 1024  # export-time bound on the batch axis; the graph itself takes any size
MASK_INPUTS = ("attention_mask", "image_mask", "object_ids")  # object id 0 masks an object slot


class TaggerGraph(nn.Module):
    """MGCMT -> emissions only; inputs in the manifest's order."""

    def __init__(self, model: MGCMT) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, L) int64
        attention_mask: torch.Tensor,  # (B, L) int64
        aug_ids: torch.Tensor,  # (B, L) int64
        grid: torch.Tensor,  # (B, C, 2048) float32, C = 49 (or 1 when no post has a picture)
        image_mask: torch.Tensor,  # (B,) int64
        object_ids: torch.Tensor,  # (B, K) int64
    ) -> torch.Tensor:
        emissions, _ = self.model(input_ids, attention_mask, aug_ids, grid, image_mask, object_ids)
        return emissions  # (B, L, T)


def build(sources: Sources) -> BuiltStage:
    model = sources.checkpoint.model.eval()
    config = model.config
    if config.char_cnn:
        raise ValueError(
            f"{sources.checkpoint_path} was trained with the char-CNN ablation; the tagger graph has no "
            "char_ids input yet, so it cannot be exported (train without --char-cnn to deploy)"
        )
    return BuiltStage(
        module=TaggerGraph(model).eval(),
        dims={
            "grid_cells": config.grid_cells,
            "grid_dim": config.grid_dim,
            "num_objects": config.num_objects,
            "num_tags": config.num_tags,
            "vocab_size": config.vocab_size,
            "augmentation_rows": config.augmentation_rows if config.augmentation != "none" else 1,
        },
        axis_bounds={"batch": (1, MAX_BATCH), "sequence": (1, config.max_position_embeddings),
                     "grid_cells": (1, config.grid_cells)},  # fmt: skip
        weights={
            "source": "checkpoint",
            "file": sources.checkpoint_path.name,
            "sha256": sources.checkpoint_sha256,
        },
        info={"max_sequence": config.max_position_embeddings, "max_length": config.max_length},
    )


def dummy_inputs(built: BuiltStage, sizes: Mapping[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Posts of random lengths (the first full, the last half), random pieces and rows, about half with an image
    (none when the grid has fewer than all its cells: the runtime sends fewer only for posts without picture)."""
    batch, length, cells = sizes["batch"], sizes["sequence"], sizes.get("grid_cells", built.dims["grid_cells"])
    dims = built.dims
    lengths = rng.integers(min(2, length), length + 1, size=batch)
    lengths[0] = length
    if batch > 1:
        lengths[-1] = max(min(2, length), length // 2)  # always some padding in the batch
    attention_mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)  # (B, L)
    input_ids = rng.integers(5, dims["vocab_size"], size=(batch, length)) * attention_mask
    aug_ids = rng.integers(AUG_ZERO_ROW, dims["augmentation_rows"], size=(batch, length)) * attention_mask
    image_mask = (rng.random(batch) < 0.5).astype(np.int64)
    image_mask[0] = 1
    if cells < dims["grid_cells"]:
        image_mask[:] = 0
    grid = rng.standard_normal((batch, cells, dims["grid_dim"])).astype(np.float32)
    object_ids = rng.integers(0, 81, size=(batch, dims["num_objects"]))
    object_ids[image_mask == 0] = 0
    return {
        "input_ids": input_ids.astype(np.int64),
        "attention_mask": attention_mask,
        "aug_ids": aug_ids.astype(np.int64),
        "grid": grid * image_mask[:, None, None].astype(np.float32),
        "image_mask": image_mask,
        "object_ids": object_ids.astype(np.int64),
    }


SPEC = StageSpec(
    name="tagger",
    summary="word-pieces, masks, augmentation rows, grid and object ids -> CRF emissions",
    inputs=(
        TensorSpec("input_ids", "int64", ("batch", "sequence")),
        TensorSpec("attention_mask", "int64", ("batch", "sequence")),
        TensorSpec("aug_ids", "int64", ("batch", "sequence")),
        TensorSpec("grid", "float32", ("batch", "grid_cells", "grid_dim")),
        TensorSpec("image_mask", "int64", ("batch",)),
        TensorSpec("object_ids", "int64", ("batch", "num_objects")),
    ),
    outputs=(TensorSpec("emissions", "float32", ("batch", "sequence", "num_tags")),),
    dynamic_axes=("batch", "sequence", "grid_cells"),
    build=build,
    dummy_inputs=dummy_inputs,
    tolerance={"emissions": 1e-4},
    fp16_tolerance={"emissions": 1e-2},  # measured: 1e-3 on the paper model (12 layers), 5e-4 on tiny
    parity_sizes=(
        *({"batch": b, "sequence": s, "grid_cells": 49} for b in (1, 3, 17) for s in (5, 64, 100)),
        {"batch": 3, "sequence": 20, "grid_cells": 1},
        {"batch": 17, "sequence": 64, "grid_cells": 1},
    ),
    trt_profile={"batch": (1, 16, 64), "sequence": (8, 64, 128), "grid_cells": (1, 49, 49)},
    fp16=Fp16Policy(
        fp32_ops=frozenset({"LayerNormalization", "Softmax"}),
        mask_inputs=MASK_INPUTS,
        fp32_heads=("emissions",),
    ),
)
