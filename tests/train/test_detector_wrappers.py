"""mner.train.detectors / detector_choice: the SSDlite and Faster R-CNN MobileNetV3 wrappers, the
choice of detector through mner-train, and the feature cache's key per detector.

(RetinaNet, the default, has its own tests in test_vision.py.) Random MobileNetV3 weights in
eval mode give vanishing activations (BatchNorm's running statistics are 0 and 1), so every
anchor gets the same scores; ``calibrated`` gives the BatchNorm layers statistics from a few
pictures and sharpens the class scores, so candidates are ranked by real differences. Small
inputs (128 px) and one thread keep this module to a few seconds.
"""

import logging
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import concat_box_prediction_layers

from mner.export.vision import synthetic_pictures
from mner.runtime.coco import select_objects
from mner.runtime.image import detector_tensor
from mner.train.cli import train_command
from mner.train.detector_choice import ALIASES, DETECTORS, resolve_detector
from mner.train.detectors import (
    DETECTOR_TOP_K,
    RPN_PROPOSALS,
    FasterRCNNMobileNetDetector,
    ObjectDetector,
    SSDliteDetector,
)
from mner.train.trainer import TrainArgs, split_features
from mner.train.vision import FeatureCache, GridEncoder
from detector_samples import calibrated, pictures_at

SIZE = 128


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ssdlite() -> SSDliteDetector:
    return calibrated(ObjectDetector.from_weights(None, arch="ssdlite", size=SIZE, seed=0), sharpen=3.0)


@pytest.fixture(scope="module")
def frcnn() -> FasterRCNNMobileNetDetector:
    return calibrated(ObjectDetector.from_weights(None, arch="frcnn-mobilenet", size=SIZE, seed=0), sharpen=10.0)


# --------------------------------------------------------------------------- the choice


def test_names_aliases_and_sizes():
    assert list(DETECTORS) == ["retinanet_resnet50_fpn_v2", "ssdlite320_mobilenet_v3_large",
                               "fasterrcnn_mobilenet_v3_large_320_fpn"]  # fmt: skip
    assert resolve_detector(None).name == "retinanet_resnet50_fpn_v2"
    for alias, name in ALIASES.items():
        assert resolve_detector(alias) is resolve_detector(name) is DETECTORS[name]
    assert [c.default_size for c in DETECTORS.values()] == [512, 320, 320]
    with pytest.raises(ValueError, match=r"unknown detector 'yolo'; expected one of retinanet_resnet50_fpn_v2 \(retinanet\)"):
        resolve_detector("yolo")
    for name, multiple, bad in (("retinanet", 128, 320), ("ssdlite", 32, 100), ("frcnn-mobilenet", 64, 96)):
        choice = resolve_detector(name)
        assert choice.check_size(multiple * 3) == multiple * 3
        for size in (bad, 0, -multiple, True, 320.0):
            with pytest.raises(ValueError, match=rf"{choice.name} detector's input size must be a positive multiple "
                                                 rf"of {multiple} \(.*\), got"):  # fmt: skip
                choice.check_size(size)


def test_wrappers_validate():
    with pytest.raises(TypeError, match="common interface"):
        ObjectDetector()
    with pytest.raises(ValueError, match="multiple of 32"):
        SSDliteDetector(size=100)
    with pytest.raises(ValueError, match="multiple of 64"):
        FasterRCNNMobileNetDetector(size=96)
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        SSDliteDetector(size=64, top_k=0)
    with pytest.raises(ValueError, match=r"top_k 20000 exceeds the 135 proposals × 90 classes at size 64"):
        FasterRCNNMobileNetDetector(size=64, top_k=20_000)  # 15 anchors × (2² + 2² + 1²) cells
    with pytest.raises(ValueError, match=r"SSDliteDetector is the ssdlite320_mobilenet_v3_large detector, not 'retinanet'"):
        SSDliteDetector.from_weights(None, arch="retinanet", size=64)
    with pytest.raises(ValueError, match="unknown detector 'yolo'"):
        ObjectDetector.from_weights(None, arch="yolo")


def test_default_sizes_and_random_weights_warned(caplog):
    with caplog.at_level(logging.WARNING, logger="mner.train.detectors"):
        detector = ObjectDetector.from_weights(None, arch="ssdlite", seed=4)
    assert isinstance(detector, SSDliteDetector) and detector.size == 320 and not detector.training
    assert detector.weights_identity == "ssdlite320_mobilenet_v3_large:random-4"
    assert "meaningless" in caplog.text and "ssdlite320_mobilenet_v3_large COCO state_dict" in caplog.text
    assert detector.anchors.shape == (3234, 4)  # SSDlite320's 6 maps: 6 boxes per cell, 4 on the first


# --------------------------------------------------------------------------- the graphs


@pytest.mark.parametrize("name", ["ssdlite", "frcnn"])
def test_fixed_shapes_and_batch_independence(name, request):
    detector = request.getfixturevalue(name)
    images = pictures_at(SIZE)
    with torch.no_grad():
        scores, labels, boxes = detector(images)
        one = detector(images[1:2])
    assert scores.shape == (3, DETECTOR_TOP_K) and scores.dtype == torch.float32
    assert labels.shape == (3, DETECTOR_TOP_K) and labels.dtype == torch.int64
    assert boxes.shape == (3, DETECTOR_TOP_K, 4) and boxes.dtype == torch.float32
    torch.testing.assert_close(one[0][0], scores[1], rtol=1e-4, atol=1e-5)
    assert torch.all(scores[:, :-1] >= scores[:, 1:]) and scores.min() >= 0 and scores.max() <= 1
    assert labels.min() >= 1 and labels.max() <= 90  # softmax scores: background's column is never a candidate
    assert boxes.min() >= 0 and boxes.max() <= SIZE and torch.all(boxes[..., 2:] >= boxes[..., :2])
    assert len(torch.unique(scores[0])) > DETECTOR_TOP_K // 2  # ranked by real differences, not ties
    ids = select_objects(scores.numpy(), labels.numpy(), boxes.numpy(), score_threshold=0.0)
    assert ids.shape == (3, 5) and ids.min() >= 0 and ids.max() <= 80 and ids[:, 0].all()
    with pytest.raises(ValueError, match=rf"expected images \(B, 3, {SIZE}, {SIZE}\), got \(1, 3, 64, 64\)"):
        detector(torch.zeros(1, 3, 64, 64))


def test_ssdlite_converts_the_host_normalisation(ssdlite):
    """ImageNet-normalised letterbox in; the graph sees what SSDlite's own transform (mean 0.5, std 0.5)
    makes of the same pixels, and the letterbox padding stays the ImageNet mean colour."""
    rgb = synthetic_pictures(1, np.random.default_rng(8))[0]
    host, box = detector_tensor(rgb, SIZE)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    pixels = torch.from_numpy(host) * std + mean  # (3, S, S) in [0, 1]
    own = ssdlite.to_own_normalisation(torch.from_numpy(host)[None])[0]
    assert ssdlite.model.transform.image_mean == [0.5] * 3 and ssdlite.model.transform.image_std == [0.5] * 3
    torch.testing.assert_close(own, ssdlite.model.transform.normalize(pixels), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(own, pixels * 2 - 1, rtol=1e-5, atol=1e-5)
    outside = torch.ones(SIZE, SIZE, dtype=torch.bool)
    outside[: box.resized_height, : box.resized_width] = False
    assert outside.sum() > 0  # the seeded picture is not square: the letterbox pads it
    padding = own[:, outside]  # (3, padded pixels)
    torch.testing.assert_close(padding, (mean.view(3, 1) * 2 - 1).expand_as(padding))


def test_ssdlite_agrees_with_torchvision_postprocessing(ssdlite, monkeypatch):
    """Our top-K equals torchvision's own SSD decoding with thresholds and NMS switched off."""
    model = ssdlite.model
    images = pictures_at(SIZE, 1)
    with torch.no_grad():
        scores, labels, boxes = ssdlite(images)
        own = ssdlite.to_own_normalisation(images)
        features = list(model.backbone(own).values())
        head = model.head(features)
        anchors = model.anchor_generator(ImageList(own, [(SIZE, SIZE)]), features)  # live, not our buffer
        monkeypatch.setattr(model, "score_thresh", float(np.nextafter(scores[0, -1].item(), 0, dtype=np.float32)))
        monkeypatch.setattr(model, "topk_candidates", 10**6)
        monkeypatch.setattr(model, "nms_thresh", 1.0)  # IoU is never > 1: nothing suppressed
        monkeypatch.setattr(model, "detections_per_img", DETECTOR_TOP_K)
        expected = model.postprocess_detections(head, anchors, [(SIZE, SIZE)])[0]
    torch.testing.assert_close(ssdlite.anchors, anchors[0], rtol=0, atol=0)
    torch.testing.assert_close(scores[0], expected["scores"])
    torch.testing.assert_close(labels[0], expected["labels"])
    torch.testing.assert_close(boxes[0], expected["boxes"])


def test_frcnn_agrees_with_torchvision_without_nms(frcnn, monkeypatch):
    """Proposals: torchvision's RPN filter with per-level limits, thresholds and NMS off keeps our top N.
    Boxes: torchvision's RoI heads (MultiScaleRoIAlign included) on our proposals, NMS off, give our top K."""
    model = frcnn.model
    images = pictures_at(SIZE, 1)
    with torch.no_grad():
        scores, labels, boxes = frcnn(images)
        features = model.backbone(images)
        maps = list(features.values())
        top_objectness, proposals = frcnn.proposals_for(maps)  # (1, N), (1, N, 4)

        objectness, deltas = model.rpn.head(maps)
        per_level = [o[0].numel() for o in objectness]
        anchors = model.rpn.anchor_generator(ImageList(images, [(SIZE, SIZE)]), maps)
        flat_objectness, flat_deltas = concat_box_prediction_layers(objectness, deltas)
        decoded = model.rpn.box_coder.decode(flat_deltas, anchors).view(1, -1, 4)
        monkeypatch.setattr(model.rpn, "_pre_nms_top_n", {"training": 10**6, "testing": 10**6})
        monkeypatch.setattr(model.rpn, "_post_nms_top_n", {"training": RPN_PROPOSALS, "testing": RPN_PROPOSALS})
        monkeypatch.setattr(model.rpn, "nms_thresh", 1.0)
        monkeypatch.setattr(model.rpn, "score_thresh", 0.0)
        monkeypatch.setattr(model.rpn, "min_size", 0.0)
        expected_proposals, expected_objectness = model.rpn.filter_proposals(decoded, flat_objectness,
                                                                             [(SIZE, SIZE)], per_level)  # fmt: skip

        heads = model.roi_heads
        pooled = heads.box_roi_pool(features, [proposals[0]], [(SIZE, SIZE)])
        class_logits, box_regression = heads.box_predictor(heads.box_head(pooled))
        monkeypatch.setattr(heads, "score_thresh", float(np.nextafter(scores[0, -1].item(), 0, dtype=np.float32)))
        monkeypatch.setattr(heads, "nms_thresh", 1.0)
        monkeypatch.setattr(heads, "detections_per_img", DETECTOR_TOP_K)
        expected_boxes, expected_scores, expected_labels = heads.postprocess_detections(
            class_logits, box_regression, [proposals[0]], [(SIZE, SIZE)])  # fmt: skip
    torch.testing.assert_close(frcnn.anchors, anchors[0], rtol=0, atol=0)
    torch.testing.assert_close(proposals[0], expected_proposals[0])
    torch.testing.assert_close(top_objectness[0].sigmoid(), expected_objectness[0])
    torch.testing.assert_close(scores[0], expected_scores[0])
    torch.testing.assert_close(labels[0], expected_labels[0])
    torch.testing.assert_close(boxes[0], expected_boxes[0])


# --------------------------------------------------------------------------- weights files


def test_weights_files_load_strictly_per_architecture(ssdlite, frcnn, tmp_path):
    ssd_file = tmp_path / "ssdlite.pth"
    torch.save(ssdlite.model.state_dict(), ssd_file)
    loaded = ObjectDetector.from_weights(ssd_file, arch="ssdlite320_mobilenet_v3_large", size=SIZE)
    assert isinstance(loaded, SSDliteDetector) and loaded.weights_identity.startswith("ssdlite320_mobilenet_v3_large:sha256:")
    for name, tensor in ssdlite.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)

    # torchvision publishes this model built with FrozenBatchNorm2d: no num_batches_tracked in the file.
    published = {k: v for k, v in frcnn.model.state_dict().items() if not k.endswith("num_batches_tracked")}
    frcnn_file = tmp_path / "frcnn.pth"
    torch.save(published, frcnn_file)
    loaded = FasterRCNNMobileNetDetector.from_weights(frcnn_file, size=SIZE)
    assert loaded.weights_identity.startswith("fasterrcnn_mobilenet_v3_large_320_fpn:sha256:")
    torch.testing.assert_close(loaded.model.roi_heads.box_predictor.cls_score.weight,
                               frcnn.model.roi_heads.box_predictor.cls_score.weight, rtol=0, atol=0)  # fmt: skip

    with pytest.raises(ValueError, match=rf"{ssd_file} does not hold torchvision fasterrcnn_mobilenet_v3_large_320_fpn "
                                         r"COCO weights; missing keys: .*unexpected keys: "):  # fmt: skip
        ObjectDetector.from_weights(ssd_file, arch="frcnn-mobilenet", size=SIZE)
    with pytest.raises(ValueError, match=rf"{frcnn_file} does not hold torchvision ssdlite320_mobilenet_v3_large COCO"):
        ObjectDetector.from_weights(frcnn_file, arch="ssdlite", size=SIZE)
    broken = ssdlite.model.state_dict()
    broken.pop("head.classification_head.module_list.0.1.bias")
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"missing keys: head.classification_head.module_list.0.1.bias$"):
        ObjectDetector.from_weights(tmp_path / "broken.pth", arch="ssdlite", size=SIZE)


# --------------------------------------------------------------------------- training


def test_train_args_resolve_and_record_the_detector(tmp_path):
    args = TrainArgs(data_dir=tmp_path, out_dir=tmp_path, detector="ssdlite").resolved()
    assert (args.detector, args.detector_size) == ("ssdlite320_mobilenet_v3_large", 320)
    payload = args.to_payload()
    assert payload["detector"] == "ssdlite320_mobilenet_v3_large" and payload["detector_size"] == 320
    default = TrainArgs(data_dir=tmp_path, out_dir=tmp_path).resolved()
    assert (default.detector, default.detector_size) == ("retinanet_resnet50_fpn_v2", 512)
    assert TrainArgs(data_dir=tmp_path, out_dir=tmp_path, detector="frcnn-mobilenet", detector_size=128).resolved().detector_size == 128
    with pytest.raises(ValueError, match="fasterrcnn_mobilenet_v3_large_320_fpn detector's input size must be a positive multiple of 64"):
        TrainArgs(data_dir=tmp_path, out_dir=tmp_path, detector="frcnn-mobilenet", detector_size=160).resolved()
    with pytest.raises(ValueError, match="unknown detector 'yolo'"):
        TrainArgs(data_dir=tmp_path, out_dir=tmp_path, detector="yolo").resolved()
    result = CliRunner().invoke(train_command, ["--detector", "yolo", "--describe"])
    assert result.exit_code == 2 and "Invalid value for '--detector'" in result.output


def test_feature_cache_keys_on_the_detector(ssdlite, frcnn, tmp_path):
    """Each detector has its own cache entries; training computes them with the detector it names."""
    grid = GridEncoder.from_weights(None, arch="resnet50", seed=0)
    caches = [FeatureCache(tmp_path / "cache", grid, detector) for detector in (ssdlite, frcnn)]
    keys = [cache._path("0" * 64) for cache in caches]
    assert keys[0][0] != keys[1][0]
    assert "ssdlite320_mobilenet_v3_large" in keys[0][1] and "fasterrcnn_mobilenet_v3_large_320_fpn" in keys[1][1]

    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.jpg"), synthetic_pictures(1, np.random.default_rng(5))[0])
    args = TrainArgs(data_dir=tmp_path, out_dir=tmp_path, images_dir=images, grid_arch="resnet50", detector="ssdlite",
                     detector_size=64, feature_cache=tmp_path / "train-cache", device="cpu", seed=2).resolved()  # fmt: skip
    features = split_features(args, [SimpleNamespace(image_id="a"), SimpleNamespace(image_id=None)],
                              SimpleNamespace(num_objects=5))  # fmt: skip
    assert features.image_mask.tolist() == [1, 0] and features.object_ids.shape == (2, 5)
    (entry,) = (tmp_path / "train-cache").glob("*.npz")
    with np.load(entry) as stored:
        assert '"detector": "ssdlite320_mobilenet_v3_large:random-2"' in str(stored["key"])
        assert stored["scores"].shape == (DETECTOR_TOP_K,) and stored["labels"].min() >= 1
