"""Without --seed/--vision-arch/--detector-size, the export rebuilds the encoders training used."""

import json

import pytest
import torch

from mner.export.pipeline import export_bundle
from mner.train.sample import write_sample_corpus
from mner.train.trainer import TrainArgs, train

SMALL = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
         "augmentation_dim": 16}  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_export_defaults_to_the_training_seed_and_encoders(tmp_path, stand_in_encoders):
    # The stand-in encoders (tests/conftest.py) take the same arch, seed and size as ResNet and RetinaNet: what is
    # checked is which of them export passes on and records, not the encoders' graphs (tests/export/test_stages.py).
    corpus = write_sample_corpus(tmp_path / "corpus", sizes={"train": 16, "valid": 4, "test": 4})
    train(TrainArgs(data_dir=corpus, out_dir=tmp_path / "run", preset="tiny", epochs=1, batch_size=8, seed=11,
                    device="cpu", grid_arch="resnet50", detector_size=128, model_overrides=dict(SMALL)))  # fmt: skip
    result = export_bundle(ckpt=tmp_path / "run" / "best.pt", out=tmp_path / "bundle", stages="vision,detector")
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    vision = manifest["stages"]["vision"]["weights"]
    assert vision["source"] == "random" and vision["seed"] == 11 and vision["arch"] == "resnet50"
    assert vision["identity"] == "tiny-grid-resnet50:random-11"  # the encoder itself was built with that arch and seed
    detector = manifest["stages"]["detector"]
    assert detector["weights"]["seed"] == 11 and detector["weights"]["identity"] == "tiny-detector:random-11"
    assert manifest["preprocessing"]["image"]["detector_size"] == 128 and detector["size"] == 128
    assert result.path == tmp_path / "bundle"
