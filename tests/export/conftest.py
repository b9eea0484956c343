"""Shared fixtures: the session's random-weights checkpoint and its full bundle (tests/conftest.py's
``small_ckpt`` and ``full_bundle``, also read by tests/benchmarks), and a small checkpoint really
trained by mner-train on text alone.

The model is the tiny preset narrowed further (hidden 32, one layer) so that export
and parity take seconds; the vision stage uses ResNet-50 (the same 2048-channel grid
as ResNet-152) and the detector a 128-pixel input. Parity text: TWITTER-2017's test
posts where the shared data is present, synthetic posts otherwise.
"""

from pathlib import Path

import pytest
import torch

from mner.export.spec import Sources
from mner.train.checkpoint import load_checkpoint
from mner.train.sample import write_sample_corpus
from mner.train.trainer import TrainArgs, train

# tests/conftest.py's SMALL without the vocabulary size: text_only_ckpt's vocabulary comes from its data.
SMALL_MODEL = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
               "augmentation_dim": 16}  # fmt: skip


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    # Two OpenMP threads on two shared cores stall each other at every barrier when another
    # process is busy (seen: 70x slower); one thread is predictable.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def sources(small_ckpt, fast) -> Sources:
    """What ``bundle`` was exported from, for tests that build a stage again to compare with its graph."""
    return Sources(load_checkpoint(small_ckpt), small_ckpt, "unused", seed=0, **fast)


@pytest.fixture(scope="session")
def bundle(full_bundle) -> Path:
    """All three stages, FP32 and FP16, parity on TWITTER-2017 test text where present (tests/conftest.py)."""
    return full_bundle


@pytest.fixture(scope="session")
def text_only_ckpt(tmp_path_factory) -> Path:
    """best.pt as mner-train writes it without --images (one epoch on 16 sample posts, ~6 s):
    the model never saw a picture. Its corpus folder is the checkpoint's grandparent."""
    root = tmp_path_factory.mktemp("text-only")
    corpus = write_sample_corpus(root / "corpus", sizes={"train": 16, "valid": 4, "test": 6})
    train(TrainArgs(data_dir=corpus, out_dir=root / "run", preset="tiny", epochs=1, batch_size=8, seed=5,
                    device="cpu", model_overrides=dict(SMALL_MODEL)))  # fmt: skip
    return root / "run" / "best.pt"
