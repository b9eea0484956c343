"""mner-export --detector: the SSDlite and Faster R-CNN MobileNetV3 detector stages through the exporter.

Each is exported once (ONNX, parity in ONNX Runtime) from a checkpoint whose training record
names SSDlite: the default export follows the checkpoint, ``--detector`` overrides it. The
weights are random MobileNetV3 weights made to behave (BatchNorm statistics from a few
pictures, sharpened class scores) and passed as a ``--detector-weights`` file, so parity
compares candidates ranked by real differences and the file path is the one a user takes.
(RetinaNet, the default, is exported by the shared bundle fixture.) The two exports are most
of this module's time: about a minute each on two busy cores, far less on idle ones.
"""

import json
import logging

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mner.export.cli import export_command
from mner.export.detector import choose_detector, selection_settings
from mner.export.parity import cpu_session
from mner.export.pipeline import export_bundle
from mner.export.random_checkpoint import make_random_checkpoint
from mner.export.vision import synthetic_pictures
from mner.runtime.bundle import sha256_file
from mner.runtime.coco import select_objects
from mner.runtime.image import detector_tensor, load_image
from mner.train.checkpoint import load_checkpoint, save_checkpoint
from mner.train.detectors import DETECTOR_TOP_K, ObjectDetector
from mner.train.trainer import TrainArgs
from detector_samples import calibrated

SMALL = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
         "augmentation_dim": 16, "vocab_size": 1500}  # fmt: skip
SSDLITE, FRCNN = "ssdlite320_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_320_fpn"
SHARPEN = {SSDLITE: 3.0, FRCNN: 5.0}  # class-logit scale: candidates well apart, few scores saturated at 1


def real_photos() -> list[np.ndarray]:
    """matplotlib's bundled sample photograph (offline), or none where matplotlib is absent."""
    try:
        from matplotlib import cbook  # noqa: PLC0415
    except ImportError:
        return []
    return [load_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict:
    """{architecture: state_dict file} of calibrated random weights."""
    root = tmp_path_factory.mktemp("detector-weights")
    files = {}
    for arch, sharpen in SHARPEN.items():
        detector = calibrated(ObjectDetector.from_weights(None, arch=arch, seed=0), sharpen)
        files[arch] = root / f"{arch}.pth"
        torch.save(detector.model.state_dict(), files[arch])
    return files


@pytest.fixture(scope="module")
def ssdlite_trained_ckpt(tmp_path_factory):
    """A random checkpoint whose training record says: pictures, through SSDlite (as mner-train writes it)."""
    path = make_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", preset="tiny", seed=0, **SMALL)
    checkpoint = load_checkpoint(path)
    record = TrainArgs(data_dir=path.parent, out_dir=path.parent, images_dir=path.parent, detector="ssdlite",
                       seed=3).resolved().to_payload()  # fmt: skip
    save_checkpoint(path, checkpoint.model, checkpoint.scheme, checkpoint.text_encoder, train_args=record)
    return path


@pytest.fixture(scope="module")
def bundles(ssdlite_trained_ckpt, weights, tmp_path_factory) -> dict:
    """{architecture: manifest}: SSDlite as the checkpoint says, Faster R-CNN by --detector."""
    root = tmp_path_factory.mktemp("detector-bundles")
    manifests = {}
    for arch, requested in ((SSDLITE, None), (FRCNN, "frcnn-mobilenet")):
        result = export_bundle(ckpt=ssdlite_trained_ckpt, out=root / arch, stages="detector", detector=requested,
                               detector_weights=weights[arch], progress=False)  # fmt: skip
        manifests[arch] = json.loads((result.path / "manifest.json").read_text())
        manifests[arch]["path"] = result.path
    return manifests


@pytest.mark.slow  # two ONNX exports
@pytest.mark.parametrize("arch", [SSDLITE, FRCNN])
def test_the_manifest_records_the_detector(arch, bundles, weights):
    manifest = bundles[arch]
    stage = manifest["stages"]["detector"]
    assert (stage["arch"], stage["size"], stage["top_k"]) == (arch, 320, DETECTOR_TOP_K)
    assert stage["scores"].startswith("softmax over the 91 classes")
    assert ("converted in the graph" in stage["input"]) == (arch == SSDLITE)
    assert stage["weights"]["arch"] == arch and stage["weights"]["source"] == "file"
    assert stage["weights"]["sha256"] == sha256_file(weights[arch])
    assert stage["weights"]["identity"] == f"{arch}:sha256:{sha256_file(weights[arch])}"
    assert [o["shape"] for o in stage["outputs"]] == [["batch", 100], ["batch", 100], ["batch", 100, 4]]
    assert stage["inputs"][0]["shape"] == ["batch", 3, 320, 320]
    assert manifest["preprocessing"]["image"]["detector_size"] == 320  # what the runtime letterboxes to
    checks = manifest["parity"]["checks"]
    assert checks and all(check["passed"] for check in checks)
    separated = [int(check["note"].split()[1]) for check in checks if check["output"] == "labels"]
    assert min(separated) > DETECTOR_TOP_K // 4  # labels and boxes compared at real, untied candidates


@pytest.mark.slow
@pytest.mark.parametrize("arch", [SSDLITE, FRCNN])
def test_onnx_runtime_matches_eager_and_selects_the_same_objects(arch, bundles, weights):
    manifest = bundles[arch]
    session = cpu_session(manifest["path"] / manifest["stages"]["detector"]["graphs"]["fp32"]["file"])
    eager = ObjectDetector.from_weights(weights[arch], arch=arch)
    settings = {k: v for k, v in selection_settings(5).items() if k != "labels"}
    photos = real_photos() + synthetic_pictures(3 - len(real_photos()), np.random.default_rng(11))
    images = np.stack([detector_tensor(photo, eager.size)[0] for photo in photos])  # (3, 3, 320, 320)
    for batch in (images[:1], images):
        with torch.no_grad():
            expected = [t.numpy() for t in eager(torch.from_numpy(batch))]
        scores, labels, boxes = session.run(["scores", "labels", "boxes"], {"images": batch})
        assert scores.shape == (len(batch), DETECTOR_TOP_K) and labels.dtype == np.int64 and boxes.shape[-1] == 4
        # Faster R-CNN's fixed top-N proposals: a near-tie at the N-th may admit another proposal in
        # one runtime than in the other, so a late candidate may differ slightly; the objects may not.
        np.testing.assert_allclose(scores, expected[0], rtol=0, atol=1e-3 * float(expected[0].max()))
        for threshold in (0.0, settings["score_threshold"]):
            ours = select_objects(scores, labels, boxes, **{**settings, "score_threshold": threshold})
            theirs = select_objects(*expected, **{**settings, "score_threshold": threshold})
            np.testing.assert_array_equal(ours, theirs)
        assert select_objects(scores, labels, boxes, **{**settings, "score_threshold": 0.0})[:, 0].all()


def test_choose_detector_follows_the_checkpoint(caplog):
    assert choose_detector(None, None, {}) == ("retinanet_resnet50_fpn_v2", 512)  # a record from before the choice
    assert choose_detector(None, None, {"detector_size": 128}) == ("retinanet_resnet50_fpn_v2", 128)
    assert choose_detector(None, None, {"detector": SSDLITE, "detector_size": 256}) == (SSDLITE, 256)
    assert choose_detector("ssdlite", 160, {"detector": SSDLITE, "detector_size": 256}) == (SSDLITE, 160)
    with caplog.at_level(logging.WARNING, logger="mner.export.detector"):
        # training's 256 belongs to SSDlite: Faster R-CNN gets its own default
        assert choose_detector("frcnn-mobilenet", None, {"detector": SSDLITE, "detector_size": 256}) == (FRCNN, 320)
        assert not caplog.records  # that model never saw a picture: no detector to be consistent with
        choose_detector("retinanet", None, {"detector": SSDLITE, "detector_size": 320, "images_dir": "images"})
    assert "exporting the retinanet_resnet50_fpn_v2 detector for a model trained with ssdlite320" in caplog.text
    assert "retrain with --detector retinanet" in caplog.text
    with pytest.raises(ValueError, match="ssdlite320_mobilenet_v3_large detector's input size must be a positive multiple of 32"):
        choose_detector("ssdlite", 100, {})
    with pytest.raises(ValueError, match="unknown detector 'yolo'"):
        choose_detector(None, None, {"detector": "yolo"})


def test_mismatched_weights_and_sizes_are_refused_before_anything_is_written(ssdlite_trained_ckpt, weights, tmp_path):
    out = tmp_path / "bundle"
    base = ["--checkpoint", str(ssdlite_trained_ckpt), "-o", str(out), "--stages", "detector"]
    result = CliRunner().invoke(export_command, [*base, "--detector", "frcnn-mobilenet",
                                                 "--detector-weights", str(weights[SSDLITE])])  # fmt: skip
    assert result.exit_code == 1, result.output
    assert f"{weights[SSDLITE]} does not hold torchvision fasterrcnn_mobilenet_v3_large_320_fpn COCO weights" in result.output
    assert "missing keys: " in result.output and not out.exists()
    result = CliRunner().invoke(export_command, [*base, "--detector-size", "100"])  # SSDlite, from the checkpoint
    assert result.exit_code == 1 and "ssdlite320_mobilenet_v3_large detector's input size must be a positive " \
                                     "multiple of 32" in result.output and not out.exists()  # fmt: skip
    result = CliRunner().invoke(export_command, [*base, "--detector", "yolo"])
    assert result.exit_code == 2 and "Invalid value for '--detector'" in result.output
