"""Frozen encoders' weights: seeded random initialisation, strict torchvision state_dict loading,
and a digest of a module's tensors. Shared by the grid encoder (``train/vision.py``) and the
detectors (``train/detectors.py``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from mner.runtime.bundle import sha256_file

# BatchNorm's count of training steps: no effect in eval mode. torchvision's pretrained
# detection files built with FrozenBatchNorm2d (Faster R-CNN MobileNetV3) have none, while
# the same architecture built without weights has BatchNorm2d, which keeps one.
BATCH_COUNTER = "num_batches_tracked"


def seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a module with reproducible random weights without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def state_digest(module: nn.Module) -> str:
    """sha256 over a module's state_dict, names and bytes in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _few(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, … ({len(keys)} in all)" if len(keys) > limit else shown


def load_torchvision_state_dict(module: nn.Module, path: str | os.PathLike, expected: str) -> str:
    """Strictly load a state_dict file into ``module``; returns the file's sha256.

    Every parameter and buffer must be in the file with its shape, and the file must hold
    nothing else; only BatchNorm's ``num_batches_tracked`` counters may be missing (they
    keep the module's own). Raises ValueError naming the file when it is missing, is not a
    state_dict, or its keys or shapes do not match ``module``.
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
    counters = {k for k in own.keys() - state.keys() if k.rsplit(".", 1)[-1] == BATCH_COUNTER}
    missing = sorted(own.keys() - state.keys() - counters)
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
    module.load_state_dict({**{k: own[k] for k in counters}, **state}, strict=True)
    return sha256_file(path)
