"""mner.train.vision: grid encoder, detector, weights loading, feature cache.

Random weights on CPU: small inputs, ResNet-50 for the grid where the depth does not
matter (same 2048 channels as ResNet-152), and a 128-pixel detector.
"""

import logging

import cv2
import numpy as np
import pytest
import torch
from torch.nn import functional as F
from torchvision.models.detection.image_list import ImageList

from mner.runtime.coco import select_objects
from mner.runtime.image import preprocess_images
from mner.train.detectors import RetinaNetDetector
from mner.train.vision import (
    DETECTOR_TOP_K,
    FeatureCache,
    GridEncoder,
    ObjectDetector,
)

DETECTOR_TEST_SIZE = 128


@pytest.fixture(scope="module", autouse=True)
def few_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def grid50():
    return GridEncoder.from_weights(None, arch="resnet50", seed=0)


@pytest.fixture(scope="module")
def detector():
    return ObjectDetector.from_weights(None, size=DETECTOR_TEST_SIZE, seed=0)


@pytest.fixture(scope="module")
def grid50_file(grid50, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    torch.save(grid50.resnet.state_dict(), path)
    return path


# --------------------------------------------------------------------------- grid


def test_grid_matches_the_reference_att_layout(grid50):
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        grid = grid50(images)
        r = grid50.resnet  # the reference's myResnet: trunk, then att = adaptive_avg_pool2d(x, [7, 7])
        x = r.layer4(r.layer3(r.layer2(r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(images))))))))
        att = F.adaptive_avg_pool2d(x, [7, 7]).view(-1, 2048, 49).permute(0, 2, 1)
    assert grid.shape == (2, 49, 2048) and grid.dtype == torch.float32
    torch.testing.assert_close(grid, att)


def test_grid_default_is_resnet152():
    encoder = GridEncoder().eval()
    assert encoder.arch == "resnet152" and len(encoder.resnet.layer3) == 36
    with torch.no_grad():
        assert encoder(torch.randn(1, 3, 32, 32)).shape == (1, 49, 2048)


def test_grid_validates():
    with pytest.raises(ValueError, match="arch must be one of"):
        GridEncoder("resnet18")  # 512 channels: not what the tagger reads
    with pytest.raises(ValueError, match=r"expected images \(B, 3, H, W\), got \(3, 32, 32\)"):
        GridEncoder("resnet50")(torch.zeros(3, 32, 32))


def test_grid_random_weights_are_seeded_and_warned(grid50, caplog):
    with caplog.at_level(logging.WARNING, logger="mner.train.vision"):
        again = GridEncoder.from_weights(None, arch="resnet50", seed=0)
    assert "meaningless" in caplog.text
    assert again.weights_identity == grid50.weights_identity == "resnet50:random-0"
    torch.testing.assert_close(again.resnet.conv1.weight, grid50.resnet.conv1.weight, rtol=0, atol=0)
    other = GridEncoder.from_weights(None, arch="resnet50", seed=1)
    assert not torch.equal(other.resnet.conv1.weight, grid50.resnet.conv1.weight)


def test_grid_weights_round_trip(grid50, grid50_file):
    loaded = GridEncoder.from_weights(grid50_file, arch="resnet50")
    assert not loaded.training
    assert loaded.weights_identity.startswith("resnet50:sha256:")
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), grid50(images), rtol=0, atol=0)


def test_grid_wrong_weights_files(grid50, grid50_file, tmp_path):
    with pytest.raises(ValueError, match=rf"{grid50_file} does not hold torchvision resnet152 weights; missing keys: "):
        GridEncoder.from_weights(grid50_file)  # ResNet-50 file, ResNet-152 model
    state = grid50.resnet.state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["fc.bias"]
    extra = tmp_path / "extra.pth"
    torch.save(state, extra)
    with pytest.raises(ValueError, match=r"missing keys: fc\.bias; unexpected keys: extra\.weight"):
        GridEncoder.from_weights(extra, arch="resnet50")
    text = tmp_path / "notes.txt"
    text.write_text("these are not weights")
    with pytest.raises(ValueError, match=rf"{text}: not a PyTorch state_dict file"):
        GridEncoder.from_weights(text, arch="resnet50")
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"epoch": 3, "model": {"w": torch.zeros(1)}}, wrapped)
    with pytest.raises(ValueError, match=rf"{wrapped}: expected a plain state_dict"):
        GridEncoder.from_weights(wrapped, arch="resnet50")
    with pytest.raises(ValueError, match="no such weights file"):
        GridEncoder.from_weights(tmp_path / "missing.pth", arch="resnet50")


# --------------------------------------------------------------------------- detector


def test_detector_fixed_shapes_and_batch_independence(detector):
    images = torch.randn(2, 3, DETECTOR_TEST_SIZE, DETECTOR_TEST_SIZE)
    with torch.no_grad():
        scores, labels, boxes = detector(images)
        one = detector(images[1:])
    assert scores.shape == (2, DETECTOR_TOP_K) and scores.dtype == torch.float32
    assert labels.shape == (2, DETECTOR_TOP_K) and labels.dtype == torch.int64
    assert boxes.shape == (2, DETECTOR_TOP_K, 4) and boxes.dtype == torch.float32
    assert [t.shape for t in one] == [(1, DETECTOR_TOP_K), (1, DETECTOR_TOP_K), (1, DETECTOR_TOP_K, 4)]
    # Batch-size-dependent conv kernels move the last digits, and random-weight scores
    # are near-ties, so compare the sorted scores rather than the candidates' order.
    torch.testing.assert_close(one[0][0], scores[1], rtol=1e-4, atol=1e-5)
    assert torch.all(scores[:, :-1] >= scores[:, 1:])  # best first
    assert labels.min() >= 0 and labels.max() <= 90
    assert boxes.min() >= 0 and boxes.max() <= DETECTOR_TEST_SIZE


def test_detector_agrees_with_torchvision_postprocessing(detector, monkeypatch):
    """Our top-K equals torchvision's own decoding with thresholds and NMS switched off."""
    model = detector.model
    size = DETECTOR_TEST_SIZE
    images = torch.randn(1, 3, size, size)
    with torch.no_grad():
        scores, labels, boxes = detector(images)
        # Keep exactly the candidates scoring at least our K-th (NMS over all 280k would be slow).
        monkeypatch.setattr(model, "score_thresh", float(np.nextafter(scores[0, -1].item(), 0, dtype=np.float32)))
        monkeypatch.setattr(model, "topk_candidates", 10**6)
        monkeypatch.setattr(model, "nms_thresh", 1.0)  # IoU is never > 1: nothing suppressed
        monkeypatch.setattr(model, "detections_per_img", DETECTOR_TOP_K)
        features = list(model.backbone(images).values())
        head = model.head(features)
        anchors = model.anchor_generator(ImageList(images, [(size, size)]), features)  # live, not our buffer
        per_level = [f.shape[-2] * f.shape[-1] * 9 for f in features]
        split = {k: list(v.split(per_level, dim=1)) for k, v in head.items()}
        expected = model.postprocess_detections(split, [list(anchors[0].split(per_level))], [(size, size)])[0]
    torch.testing.assert_close(detector.anchors, anchors[0], rtol=0, atol=0)
    torch.testing.assert_close(scores[0], expected["scores"])
    torch.testing.assert_close(labels[0], expected["labels"])
    torch.testing.assert_close(boxes[0], expected["boxes"])


def test_detector_validates(detector):
    with pytest.raises(ValueError, match="multiple of 128"):
        RetinaNetDetector(size=200)
    with pytest.raises(ValueError, match="top_k"):
        RetinaNetDetector(size=128, top_k=0)
    with pytest.raises(ValueError, match=r"expected images \(B, 3, 128, 128\), got \(1, 3, 256, 256\)"):
        detector(torch.zeros(1, 3, 256, 256))


def test_detector_weights_round_trip_and_wrong_file(detector, grid50_file, tmp_path):
    path = tmp_path / "retinanet.pth"
    torch.save(detector.model.state_dict(), path)
    loaded = ObjectDetector.from_weights(path, size=DETECTOR_TEST_SIZE)
    assert loaded.weights_identity.startswith("retinanet_resnet50_fpn_v2:sha256:") and not loaded.training
    # Same code and same tensors give the same outputs; comparing the tensors spares two
    # cold RetinaNet forwards on CPU.
    theirs = detector.state_dict()
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, theirs[name], rtol=0, atol=0)
    torch.testing.assert_close(loaded.anchors, detector.anchors, rtol=0, atol=0)
    with pytest.raises(ValueError, match=rf"{grid50_file} does not hold torchvision retinanet_resnet50_fpn_v2"):
        ObjectDetector.from_weights(grid50_file, size=DETECTOR_TEST_SIZE)


# --------------------------------------------------------------------------- cache


class CallCounter:
    def __init__(self, *modules):
        self.calls = 0
        self.images = 0
        self.handles = [m.register_forward_hook(self.hook) for m in modules]

    def hook(self, module, inputs, output):
        self.calls += 1
        self.images += inputs[0].shape[0]

    def remove(self):
        for h in self.handles:
            h.remove()


@pytest.fixture
def pictures(tmp_path):
    rng = np.random.default_rng(0)
    paths = {}
    for name, ext, shape in (("a", ".png", (50, 70)), ("b", ".jpg", (90, 40))):
        rgb = cv2.GaussianBlur((rng.random((*shape, 3)) * 255).astype(np.uint8), (5, 5), 1)
        ok, buf = cv2.imencode(ext, rgb)
        paths[name] = tmp_path / f"{name}{ext}"
        paths[name].write_bytes(buf.tobytes())
    paths["a_copy"] = tmp_path / "a_copy.png"
    paths["a_copy"].write_bytes(paths["a"].read_bytes())
    paths["corrupt"] = tmp_path / "corrupt.jpg"
    paths["corrupt"].write_bytes(b"<html>rate limited</html>")
    paths["missing"] = tmp_path / "missing.jpg"
    return paths


def test_feature_cache_computes_once_and_masks_bad_pictures(grid50, detector, pictures, tmp_path, caplog):
    cache_dir = tmp_path / "cache"
    order = [pictures["a"], pictures["missing"], None, pictures["b"], pictures["corrupt"], pictures["a_copy"]]
    counter = CallCounter(grid50)
    try:
        with caplog.at_level(logging.WARNING, logger="mner.train.vision"):
            first = FeatureCache(cache_dir, grid50, detector, score_threshold=0.0).get_or_compute(order)
        assert counter.images == 2  # a and b; a_copy has a's bytes, the bad ones never reach the encoder
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "masked out" in r.message]
        assert len(warnings) == 1 and "2 of 6 pictures" in warnings[0].message
        assert str(pictures["missing"]) in warnings[0].message and str(pictures["corrupt"]) in warnings[0].message

        assert first.grid.shape == (6, 49, 2048) and first.grid.dtype == np.float32
        np.testing.assert_array_equal(first.grid_mask, [True, False, False, True, False, True])
        assert first.object_ids.shape == (6, 5) and first.object_ids.dtype == np.int64
        for row in (1, 2, 4):
            assert not first.grid[row].any() and not first.object_ids[row].any()
        assert first.problems[0] is None and first.problems[2] is None
        assert first.problems[1].startswith(f"{pictures['missing']}: cannot read the file")
        assert first.problems[4] == f"{pictures['corrupt']}: not an image (supported: PNG, JPEG, GIF, BMP, WEBP): " \
            "the bytes start with b'<html>rate limit'"
        np.testing.assert_array_equal(first.grid[5], first.grid[0])

        # What the encoders give for the same pictures, computed directly.
        batch = preprocess_images([pictures["a"].read_bytes(), pictures["b"].read_bytes()], detector_size=128)
        with torch.no_grad():
            grid = grid50(torch.from_numpy(batch.vision)).numpy()
            candidates = [t.numpy() for t in detector(torch.from_numpy(batch.detector))]
        np.testing.assert_allclose(first.grid[[0, 3]], grid, rtol=1e-5, atol=1e-5)
        expected_ids = select_objects(*candidates, score_threshold=0.0)
        assert expected_ids.any()  # threshold 0: random weights still give objects
        np.testing.assert_array_equal(first.object_ids[[0, 3]], expected_ids)

        # A new cache on the same folder: no encoder runs; new thresholds need no recomputation.
        counter.images = 0
        again = FeatureCache(cache_dir, grid50, detector, score_threshold=0.0).get_or_compute(order)
        stricter = FeatureCache(cache_dir, grid50, detector, score_threshold=0.5).get_or_compute(order)
        assert counter.images == 0
        np.testing.assert_array_equal(again.grid, first.grid)
        np.testing.assert_array_equal(again.object_ids, first.object_ids)
        np.testing.assert_array_equal(again.grid_mask, first.grid_mask)
        assert not stricter.object_ids.any()  # random scores are ~0.05
    finally:
        counter.remove()


def test_feature_cache_keys_on_weights_and_survives_a_corrupt_entry(grid50, detector, pictures, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    counter = CallCounter(grid50)
    try:
        both = [pictures["a"], pictures["b"]]
        FeatureCache(cache_dir, grid50, detector, batch_size=1).get_or_compute(both)
        assert (counter.calls, counter.images) == (2, 2)  # one batch per picture
        entries = list(cache_dir.glob("*.npz"))
        assert len(entries) == 2
        entries[0].write_bytes(b"half-written")
        with pytest.raises(ValueError, match="batch_size"):
            FeatureCache(cache_dir, grid50, detector, batch_size=0)
        result = FeatureCache(cache_dir, grid50, detector).get_or_compute(both)
        assert counter.images == 3 and result.grid_mask.tolist() == [True, True]  # one recomputed and rewritten
        FeatureCache(cache_dir, grid50, detector).get_or_compute(both)
        assert counter.images == 3

        monkeypatch.setattr(grid50, "_weights_identity", "resnet50:sha256:other")
        FeatureCache(cache_dir, grid50, detector).get_or_compute([pictures["a"]])
        assert counter.images == 4  # other weights, other entry
        assert len(list(cache_dir.glob("*.npz"))) == 3 and not list(cache_dir.glob("*.tmp"))
    finally:
        counter.remove()
