"""best.pt: a self-contained checkpoint.

It holds everything export and evaluation need and nothing they must fetch: the
model config, the BERT config, the tag scheme, the tokenizer and augmentation
vocabulary, the unwrapped module's state_dict (with the augmentation table and
both CRFs), the training arguments, data-file hashes and package versions.
"""

from __future__ import annotations

import os
import platform
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from transformers import BertConfig, BertModel

from mner.runtime.bundle import LEGACY_SPLITTER
from mner.runtime.decode import CRFParameters
from mner.runtime.tags import TagScheme
from mner.runtime.text import TextEncoder
from mner.runtime.files import write_atomically
from mner.train.model import MGCMT, ModelConfig

CHECKPOINT_FORMAT = "mner-checkpoint"
CHECKPOINT_VERSION = 1


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("mner", "torch", "torchvision", "transformers", "tokenizers", "numpy", "onnx", "onnxruntime", "gensim"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@dataclass
class Checkpoint:
    model: MGCMT
    scheme: TagScheme
    text_encoder: TextEncoder
    payload: dict[str, Any]  # everything else stored: train_args, data_hashes, versions, metrics

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def splitter(self) -> str:
        """How raw text must be split for this model; checkpoints from before mner-train
        recorded it (and mner-convert's, from the authors' TWITTER models) read as the
        bundle reader's legacy default, "tweet"."""
        return (self.payload.get("train_args") or {}).get("splitter", LEGACY_SPLITTER)

    def crf_parameters(self) -> CRFParameters:
        return self.model.crf.host_parameters()


def unwrap(model: torch.nn.Module) -> MGCMT:
    """The MGCMT inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            break
    if not isinstance(model, MGCMT):
        raise TypeError(f"expected an MGCMT module, got {type(model).__name__}")
    return model


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    scheme: TagScheme,
    text_encoder: TextEncoder,
    **payload: Any,
) -> None:
    """Write atomically (temporary file + rename): an interrupted save never leaves a half file.

    The file gets the mode any new file of the user's gets (``files.write_atomically``).
    """
    module = unwrap(model)
    with tempfile.TemporaryDirectory() as tmp:
        text_encoder.save(tmp)
        text_files = {name: Path(tmp, name).read_text(encoding="utf-8") for name in sorted(os.listdir(tmp))}
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_config": module.config.to_dict(),
        "bert_config": module.bert.config.to_dict(),
        "tags": scheme.to_json(),
        "text_encoder_files": text_files,
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "versions": package_versions(),
        **payload,
    }
    write_atomically(path, lambda file: torch.save(state, file))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild model, tag scheme and text encoder from a checkpoint alone."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist or is not a file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for a non-checkpoint file
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {error}") from error
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not an mner checkpoint (no format={CHECKPOINT_FORMAT!r} entry); "
            "to import an IIE4MNER checkpoint, use mner-convert"
        )
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path} has checkpoint version {state.get('version')}; this mner reads {CHECKPOINT_VERSION}")
    config = ModelConfig.from_dict(state["model_config"])
    bert_config = BertConfig.from_dict(state["bert_config"])
    bert_config._attn_implementation = "eager"
    model = MGCMT(config, bert=BertModel(bert_config, add_pooling_layer=False))
    missing, unexpected = model.load_state_dict(state["state_dict"], strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not fit the stored config: missing {missing}, unexpected {unexpected}")
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in state["text_encoder_files"].items():
            Path(tmp, name).write_text(text, encoding="utf-8")
        text_encoder = TextEncoder.load(tmp)
    scheme = TagScheme.from_json(state["tags"])
    if scheme.num_tags != config.num_tags:
        raise ValueError(f"{path}: the tag scheme has {scheme.num_tags} tags but the model {config.num_tags}")
    skip = {"format", "version", "model_config", "bert_config", "tags", "text_encoder_files", "state_dict"}
    payload = {k: v for k, v in state.items() if k not in skip}
    return Checkpoint(model=model, scheme=scheme, text_encoder=text_encoder, payload=payload)
