"""Shared fixtures: a small random-weights checkpoint and one full bundle exported from it, and a
small checkpoint really trained by mner-train on text alone.

The model is the tiny preset narrowed further (hidden 32, one layer) so that export
and parity take seconds; the vision stage uses ResNet-50 (the same 2048-channel grid
as ResNet-152) and the detector a 128-pixel input. Parity text: TWITTER-2017's test
posts where the shared data is present, synthetic posts otherwise.
"""

from pathlib import Path

import pytest
import torch

from mner.export.pipeline import export_bundle
from mner.export.random_checkpoint import make_random_checkpoint
from mner.export.spec import Sources
from mner.train.checkpoint import load_checkpoint
from mner.train.data import read_conll
from mner.train.sample import write_sample_corpus
from mner.train.trainer import TrainArgs, train

SMALL = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
         "augmentation_dim": 16, "vocab_size": 1500}  # fmt: skip
TWITTER2017 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "twitter2017"
TEST_TEXT = TWITTER2017 / "test.txt"
FAST = {"vision_arch": "resnet50", "detector_size": 128}


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    # Two OpenMP threads on two shared cores stall each other at every barrier when another
    # process is busy (seen: 70x slower); one thread is predictable.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def small_ckpt(tmp_path_factory) -> Path:
    words = [w for post in read_conll(TEST_TEXT) for w in post.words] if TEST_TEXT.is_file() else None
    return make_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", preset="tiny", seed=0, words=words, **SMALL)


@pytest.fixture(scope="session")
def fast() -> dict:
    """export_bundle options for a quick vision stage and detector."""
    return dict(FAST)


@pytest.fixture(scope="session")
def sources(small_ckpt) -> Sources:
    return Sources(load_checkpoint(small_ckpt), small_ckpt, "unused", seed=0, **FAST)


@pytest.fixture(scope="session")
def bundle(small_ckpt, tmp_path_factory) -> Path:
    """All three stages, FP32 and FP16, parity on TWITTER-2017 test text where present."""
    out = tmp_path_factory.mktemp("bundles") / "full"
    parity_data = TEST_TEXT if TEST_TEXT.is_file() else None
    export_bundle(ckpt=small_ckpt, out=out, fp16=True, parity_data=parity_data, seed=0, **FAST)
    return out


@pytest.fixture(scope="session")
def text_only_ckpt(tmp_path_factory) -> Path:
    """best.pt as mner-train writes it without --images (one epoch on 16 sample posts, ~6 s):
    the model never saw a picture. Its corpus folder is the checkpoint's grandparent."""
    root = tmp_path_factory.mktemp("text-only")
    corpus = write_sample_corpus(root / "corpus", sizes={"train": 16, "valid": 4, "test": 6})
    model = {key: value for key, value in SMALL.items() if key != "vocab_size"}  # the vocabulary comes from the data
    train(TrainArgs(data_dir=corpus, out_dir=root / "run", preset="tiny", epochs=1, batch_size=8, seed=5,
                    device="cpu", model_overrides=model))  # fmt: skip
    return root / "run" / "best.pt"
