"""mner.runtime.image (decoding, the two tensors) and mner.runtime.coco (ids, NMS)."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from mner.runtime import coco, image
from mner.runtime.coco import (
    COCO_CLASSES,
    TORCHVISION_CATEGORIES,
    box_iou,
    class_name,
    contiguous_from_torchvision,
    select_objects,
    torchvision_from_contiguous,
)
from mner.runtime.image import (
    DETECTOR_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    VISION_SIZE,
    ImageError,
    Letterbox,
    decode_image,
    detector_tensor,
    load_image,
    preprocess_images,
    preprocessing_constants,
    vision_tensor,
)

MEAN = np.asarray(IMAGENET_MEAN, np.float32)[:, None, None]
STD = np.asarray(IMAGENET_STD, np.float32)[:, None, None]


def picture(height=40, width=60, seed=0):
    """A smooth RGB picture (smooth so lossy codecs stay close to it)."""
    rng = np.random.default_rng(seed)
    noise = (rng.random((height, width, 3)) * 255).astype(np.uint8)
    return cv2.GaussianBlur(noise, (7, 7), 2)


def encode(rgb, ext, params=()):
    """RGB (or gray / RGBA) -> file bytes through OpenCV, which expects BGR order."""
    if rgb.ndim == 3 and rgb.shape[2] == 3:
        rgb = rgb[..., ::-1]
    elif rgb.ndim == 3 and rgb.shape[2] == 4:
        rgb = rgb[..., [2, 1, 0, 3]]
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(rgb), list(params))
    assert ok
    return buf.tobytes()


def normalised(rgb):
    return (rgb.astype(np.float32).transpose(2, 0, 1) / 255.0 - MEAN) / STD


# --------------------------------------------------------------------------- decode


@pytest.mark.parametrize(
    "ext, params, lossless, header",
    [
        (".png", (), True, b"\x89PNG"),
        (".bmp", (), True, b"BM"),
        (".webp", (cv2.IMWRITE_WEBP_QUALITY, 101), True, b"VP8L"),
        (".webp", (cv2.IMWRITE_WEBP_QUALITY, 80), False, b"VP8 "),
        (".jpg", (cv2.IMWRITE_JPEG_QUALITY, 95), False, b"\xff\xd8"),
        (".jpg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1), False, b"\xff\xd8"),
    ],
)
def test_decode_round_trip(ext, params, lossless, header):
    rgb = picture()
    data = encode(rgb, ext, params)
    assert header in data[:16]
    decoded = decode_image(data)
    assert decoded.dtype == np.uint8 and decoded.shape == (40, 60, 3)
    diff = np.abs(decoded.astype(int) - rgb.astype(int))
    if lossless:
        assert diff.max() == 0
    else:
        assert diff.mean() < 4  # the channels are in RGB order, not BGR (that would differ by far more)


def test_decode_gif():
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:, 20:40] = (255, 0, 0)
    rgb[:, 40:] = (0, 0, 255)
    decoded = decode_image(encode(rgb, ".gif"))
    assert decoded.shape == (40, 60, 3)
    diff = np.abs(decoded.astype(int) - rgb.astype(int))
    assert diff.mean() < 4  # GIF's palette encoder dithers a little at colour edges
    np.testing.assert_allclose(decoded[20, [10, 30, 50]], [(0, 0, 0), (255, 0, 0), (0, 0, 255)], atol=8)


def test_decode_grayscale_and_rgba_become_rgb():
    gray = picture()[..., 0]
    decoded = decode_image(encode(gray, ".png"))
    assert decoded.shape == (40, 60, 3)
    for c in range(3):
        np.testing.assert_array_equal(decoded[..., c], gray)

    rgb = picture()
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])  # nearly transparent
    for data in (encode(rgba, ".png"), encode(rgba, ".webp", (cv2.IMWRITE_WEBP_QUALITY, 80))):
        decoded = decode_image(data)
        assert decoded.shape == (40, 60, 3)
        assert np.abs(decoded.astype(int) - rgb.astype(int)).mean() < 4  # alpha dropped, colours kept


@pytest.mark.parametrize(
    "ext, params",
    [
        (".png", ()),
        (".jpg", ()),
        (".gif", ()),
        (".bmp", ()),
        (".webp", (cv2.IMWRITE_WEBP_QUALITY, 101)),  # VP8L
        (".webp", (cv2.IMWRITE_WEBP_QUALITY, 80)),  # VP8
    ],
)
def test_pixel_limit_reads_the_true_size_from_each_header(ext, params):
    data = encode(picture(), ext, params)
    assert decode_image(data, max_pixels=60 * 40).shape == (40, 60, 3)
    with pytest.raises(ImageError, match=r"image is 60×40 = 2400 pixels, over the limit of 2399"):
        decode_image(data, max_pixels=60 * 40 - 1)


def test_pixel_limit_webp_extended_header():
    rgba = np.dstack([picture(), np.full((40, 60), 200, np.uint8)])
    data = encode(rgba, ".webp", (cv2.IMWRITE_WEBP_QUALITY, 80))
    assert data[12:16] == b"VP8X"
    with pytest.raises(ImageError, match="60×40"):
        decode_image(data, max_pixels=100)


def _png_header(width, height):
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + len(ihdr).to_bytes(4, "big") + b"IHDR" + ihdr + b"\0\0\0\0"


def _with_jpeg_size(data, width, height):
    sof = data.index(b"\xff\xc0")  # baseline frame header: FF C0, length, precision, height, width
    patched = bytearray(data)
    patched[sof + 5 : sof + 7] = height.to_bytes(2, "big")
    patched[sof + 7 : sof + 9] = width.to_bytes(2, "big")
    return bytes(patched)


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if OpenCV is asked to decode anything."""

    def refuse(*args, **kwargs):
        raise AssertionError("cv2.imdecode must not be called")

    monkeypatch.setattr(image.cv2, "imdecode", refuse)


def test_decompression_bomb_png_refused_before_decoding(no_decoding):
    with pytest.raises(ImageError, match=r"PNG image is 100000×100000 = 10000000000 pixels, over the limit of 40000000"):
        decode_image(_png_header(100_000, 100_000))


def test_decompression_bomb_jpeg_refused_before_decoding(no_decoding):
    data = _with_jpeg_size(encode(picture(), ".jpg"), 65_000, 65_000)  # JPEG sizes are 16-bit
    with pytest.raises(ImageError, match=r"JPEG image is 65000×65000 = 4225000000 pixels"):
        decode_image(data)


def test_decompression_bomb_gif_bmp_webp_refused_before_decoding(no_decoding):
    gif = bytearray(encode(picture(), ".gif"))
    gif[6:10] = (60_000).to_bytes(2, "little") * 2
    bmp = bytearray(encode(picture(), ".bmp"))
    bmp[18:26] = (50_000).to_bytes(4, "little") + (-50_000).to_bytes(4, "little", signed=True)  # top-down
    webp = bytearray(encode(picture(), ".webp", (cv2.IMWRITE_WEBP_QUALITY, 80)))
    webp[26:30] = (16_000).to_bytes(2, "little") * 2
    for data, size in ((gif, "60000×60000"), (bmp, "50000×50000"), (webp, "16000×16000")):
        with pytest.raises(ImageError, match=size):
            decode_image(bytes(data))


def test_decode_errors():
    with pytest.raises(ImageError, match="empty image"):
        decode_image(b"")
    with pytest.raises(ImageError, match=r"not an image .*: the bytes start with b'hello, this is t'"):
        decode_image(b"hello, this is text, not a picture\n")
    with pytest.raises(ImageError, match="not an image"):
        decode_image(b"II*\x00" + bytes(100))  # TIFF: a picture, but not one we accept
    with pytest.raises(ValueError, match="expects bytes, got str"):
        decode_image("photo.jpg")
    with pytest.raises(ValueError, match="max_pixels"):
        decode_image(encode(picture(), ".png"), max_pixels=0)


def test_decode_truncated_and_corrupt():
    jpeg = encode(picture(200, 300), ".jpg")
    with pytest.raises(ImageError, match="corrupt JPEG: truncated"):
        decode_image(jpeg[:-100])
    with pytest.raises(ImageError, match="corrupt JPEG: truncated before the frame header"):
        decode_image(jpeg[:30])
    with pytest.raises(ImageError, match="corrupt JPEG: expected a marker"):
        decode_image(b"\xff\xd8\x00\x00" + bytes(50))
    with pytest.raises(ImageError, match=r"corrupt JPEG: no frame header \(SOF marker\)"):
        decode_image(b"\xff\xd8\xff\xda\x00\x08" + bytes(20))
    png = encode(picture(200, 300), ".png")
    with pytest.raises(ImageError, match="corrupt PNG: OpenCV could not decode it"):
        decode_image(png[: len(png) // 2])  # header intact, pixel data cut
    with pytest.raises(ImageError, match="corrupt PNG: no IHDR"):
        decode_image(b"\x89PNG\r\n\x1a\n" + bytes(30))
    with pytest.raises(ImageError, match=r"corrupt PNG: the header gives a size of 0×5"):
        decode_image(_png_header(0, 5))
    with pytest.raises(ImageError, match="corrupt GIF: the header is truncated"):
        decode_image(b"GIF89a\x01")
    with pytest.raises(ImageError, match="corrupt BMP: the header is truncated"):
        decode_image(b"BM" + bytes(10))
    with pytest.raises(ImageError, match="corrupt WEBP: unrecognised or truncated first chunk b'ABCD'"):
        decode_image(b"RIFF\0\0\0\0WEBPABCD" + bytes(20))


def test_load_image_names_the_path(tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(encode(picture(), ".png"))
    np.testing.assert_array_equal(load_image(good), picture())
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"<html>not found</html>")
    with pytest.raises(ImageError, match=rf"^{bad}: not an image"):
        load_image(bad)
    with pytest.raises(ImageError, match=rf"^{tmp_path / 'missing.jpg'}: cannot read the file"):
        load_image(tmp_path / "missing.jpg")


# --------------------------------------------------------------------------- tensors


@pytest.mark.parametrize("shape", [(40, 60), (600, 500), (1000, 100), (224, 224), (1, 1)])
def test_vision_tensor_shape_range_determinism(shape):
    rgb = picture(*shape)
    out = vision_tensor(rgb)
    assert out.dtype == np.float32 and out.shape == (3, VISION_SIZE, VISION_SIZE)
    assert out.flags.c_contiguous
    low, high = (0 - MEAN) / STD, (1 - MEAN) / STD
    assert np.all(out >= low - 1e-6) and np.all(out <= high + 1e-6)
    np.testing.assert_array_equal(out, vision_tensor(rgb.copy()))


def test_vision_tensor_normalisation_and_no_crop():
    rgb = np.zeros((100, 300, 3), np.uint8)
    rgb[:, 150:] = (200, 100, 50)  # right half coloured: a crop or flip would move it
    out = vision_tensor(rgb)
    np.testing.assert_allclose(out[:, :, :100], np.broadcast_to(normalised(rgb[:1, :1]), (3, 224, 100)), atol=1e-6)
    np.testing.assert_allclose(out[:, :, 124:], np.broadcast_to(normalised(rgb[:1, -1:]), (3, 224, 100)), atol=1e-6)
    same_size = picture(224, 224)
    np.testing.assert_allclose(vision_tensor(same_size), normalised(same_size), atol=1e-6)


def test_vision_tensor_shrinks_with_area_averaging():
    rows, cols = np.indices((896, 896))
    dots = ((rows % 4 == 0) & (cols % 4 == 0)) * 255  # one lit pixel per 4×4 cell
    out = vision_tensor(np.dstack([dots.astype(np.uint8)] * 3))
    # Averaging each cell gives 255/16 everywhere; bilinear sampling would miss every dot.
    expected = normalised(np.full((1, 1, 3), 16, np.float32))  # uint8 rounding of 15.94
    np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), atol=1e-5)


def test_mixed_resize_filters_each_axis():
    # 10 × 896: shrink 4× across (must average), enlarge 22.4× down (must interpolate).
    stripes = np.zeros((10, 896), np.uint8)
    stripes[:, ::4] = 255
    out = vision_tensor(np.dstack([stripes] * 3))
    expected = normalised(np.full((1, 1, 3), 64, np.float32))  # 255/4 averaged, not missed
    np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), atol=1e-5)

    gradient = np.repeat((np.arange(10) * 25).astype(np.uint8)[:, None], 896, axis=1)
    out = vision_tensor(np.dstack([gradient] * 3))
    column = cv2.resize(gradient[:, :1], (1, 224), interpolation=cv2.INTER_LINEAR)  # smooth, not blocky
    expected = normalised(np.dstack([np.broadcast_to(column, (224, 224))] * 3))
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_vision_tensor_rejects_non_rgb():
    with pytest.raises(ValueError, match=r"RGB uint8 array of shape \(H, W, 3\), got float32"):
        vision_tensor(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="got uint8 \\(10, 10\\)"):
        vision_tensor(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="non-empty"):
        vision_tensor(np.zeros((0, 10, 3), np.uint8))


@pytest.mark.parametrize(
    "height, width, resized",
    [(150, 300, (32, 64)), (300, 150, (64, 32)), (10, 10, (64, 64)), (1000, 3, (64, 1))],
)
def test_detector_letterbox_geometry(height, width, resized):
    rgb = picture(height, width)
    out, box = detector_tensor(rgb, size=64)
    assert out.dtype == np.float32 and out.shape == (3, 64, 64)
    assert (box.resized_height, box.resized_width) == resized
    assert (box.source_height, box.source_width, box.size) == (height, width, 64)
    content = out[:, : resized[0], : resized[1]]
    padding = out.copy()
    padding[:, : resized[0], : resized[1]] = 0
    assert not padding.any()  # bottom/right padding is exactly 0 (the mean colour)
    low, high = (0 - MEAN) / STD, (1 - MEAN) / STD
    assert np.all(content >= low - 1e-6) and np.all(content <= high + 1e-6)
    np.testing.assert_array_equal(out, detector_tensor(rgb, size=64)[0])


def test_detector_tensor_default_size_and_content():
    rgb = np.full((100, 50, 3), (10, 120, 240), np.uint8)
    out, box = detector_tensor(rgb)
    assert out.shape == (3, DETECTOR_SIZE, DETECTOR_SIZE) and DETECTOR_SIZE == 512
    assert box == Letterbox(100, 50, 512, 256, 512)
    np.testing.assert_allclose(out[:, :, :256], np.broadcast_to(normalised(rgb[:1, :1]), (3, 512, 256)), atol=1e-6)
    with pytest.raises(ValueError, match="size must be a positive int"):
        detector_tensor(rgb, size=0)


def test_letterbox_maps_boxes_back_to_the_source():
    box = Letterbox(source_height=150, source_width=300, resized_height=32, resized_width=64, size=64)
    mapped = box.to_source(np.array([[0, 0, 64, 32], [32, 16, 64, 64]], np.float32))
    np.testing.assert_allclose(mapped, [[0, 0, 300, 150], [150, 75, 300, 150]])  # clipped to the picture
    with pytest.raises(ValueError, match=r"boxes must have shape \(\.\.\., 4\)"):
        box.to_source(np.zeros((2, 3)))


def test_preprocess_images_masks_what_it_cannot_use():
    a, b = picture(seed=1), picture(80, 30, seed=2)
    batch = preprocess_images(
        [encode(a, ".png"), None, b"\x00garbage", encode(b, ".bmp"), b""], detector_size=128
    )
    assert batch.vision.shape == (5, 3, 224, 224) and batch.detector.shape == (5, 3, 128, 128)
    np.testing.assert_array_equal(batch.has_image, [True, False, False, True, False])
    assert batch.errors[0] is None and batch.errors[1] is None and batch.errors[3] is None
    assert batch.errors[2].startswith("not an image") and batch.errors[4].startswith("empty image")
    for row in (1, 2, 4):  # zeros, never another picture
        assert not batch.vision[row].any() and not batch.detector[row].any() and batch.letterboxes[row] is None
    np.testing.assert_array_equal(batch.vision[0], vision_tensor(a))
    np.testing.assert_array_equal(batch.detector[3], detector_tensor(b, 128)[0])
    assert batch.letterboxes[3] == detector_tensor(b, 128)[1]
    vision, detector, has_image, errors, letterboxes = batch  # unpacks as a tuple
    with pytest.raises(ValueError, match="expects bytes, got str"):
        preprocess_images(["a.jpg"])


def test_preprocessing_constants_are_json():
    constants = json.loads(json.dumps(preprocessing_constants()))
    assert constants["vision_size"] == 224 and constants["detector_size"] == 512
    assert constants["mean"] == list(IMAGENET_MEAN) and constants["std"] == list(IMAGENET_STD)
    assert constants["version"] == image.PREPROCESS_VERSION


def test_runtime_modules_do_not_import_torch():
    code = "import sys, mner.runtime.image, mner.runtime.coco; sys.exit('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], env=os.environ.copy(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- COCO ids


def test_coco_names_and_ids():
    assert len(COCO_CLASSES) == 80 == len(set(COCO_CLASSES))
    assert class_name(1) == "person" and class_name(80) == "toothbrush" and class_name(0) == "none"
    assert class_name(np.int64(3)) == "car"
    for bad in (81, -1, 1.0, True):
        with pytest.raises(ValueError, match="class id"):
            class_name(bad)


def test_torchvision_mapping_round_trip():
    assert len(TORCHVISION_CATEGORIES) == 91
    assert TORCHVISION_CATEGORIES[0] == "__background__" and TORCHVISION_CATEGORIES.count("N/A") == 10
    tv = np.arange(91)
    ours = contiguous_from_torchvision(tv)
    assert ours.dtype == np.int64
    real = ours != 0
    np.testing.assert_array_equal(ours[real], np.arange(1, 81))  # order kept, no gaps
    for t, c in zip(tv[real], ours[real]):
        assert TORCHVISION_CATEGORIES[t] == class_name(int(c))
    np.testing.assert_array_equal(torchvision_from_contiguous(ours[real]), tv[real])
    np.testing.assert_array_equal(contiguous_from_torchvision(torchvision_from_contiguous(np.arange(81))), np.arange(81))
    assert contiguous_from_torchvision(np.array([[1, 12], [90, 0]])).tolist() == [[1, 0], [80, 0]]
    with pytest.raises(ValueError, match="0..90"):
        contiguous_from_torchvision(np.array([91]))
    with pytest.raises(ValueError, match="integers"):
        contiguous_from_torchvision(np.array([1.0]))
    with pytest.raises(ValueError, match="0..80"):
        torchvision_from_contiguous(np.array([81]))


def test_torchvision_categories_match_torchvision():
    meta = pytest.importorskip("torchvision.models._meta")
    assert TORCHVISION_CATEGORIES == tuple(meta._COCO_CATEGORIES)


# --------------------------------------------------------------------------- select_objects


def reference_select(scores, labels, boxes, score_threshold, iou_threshold, max_objects):
    """Scalar greedy per-class NMS, written plainly."""

    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = w * h
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    out = []
    for s, l, b in zip(scores, labels, boxes):
        ids = contiguous_from_torchvision(l)
        order = sorted((i for i in range(len(s)) if s[i] > score_threshold and ids[i] != 0), key=lambda i: -s[i])
        kept = []
        for i in order:
            if all(ids[j] != ids[i] or iou(b[i], b[j]) <= iou_threshold for j in kept):
                kept.append(i)
        row = [int(ids[i]) for i in kept[:max_objects]]
        out.append(row + [0] * (max_objects - len(row)))
    return np.array(out, dtype=np.int64)


def random_candidates(rng, batch=4, k=30):
    centres = rng.uniform(20, 80, size=(batch, k, 2)).round(0)  # coarse grid: many overlaps
    sizes = rng.uniform(10, 40, size=(batch, k, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=-1).astype(np.float32)
    labels = rng.choice([1, 2, 3, 12, 18], size=(batch, k))  # 12 is an N/A slot
    scores = rng.uniform(0, 1, size=(batch, k)).astype(np.float32)
    return scores, labels, boxes


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("score_threshold, iou_threshold, max_objects", [(0.5, 0.5, 5), (0.2, 0.3, 8), (0.0, 0.7, 3)])
def test_select_objects_matches_scalar_reference(seed, score_threshold, iou_threshold, max_objects):
    scores, labels, boxes = random_candidates(np.random.default_rng(seed))
    got = select_objects(scores, labels, boxes, score_threshold, iou_threshold, max_objects)
    assert got.dtype == np.int64 and got.shape == (4, max_objects)
    np.testing.assert_array_equal(got, reference_select(scores, labels, boxes, score_threshold, iou_threshold, max_objects))


def test_select_objects_matches_torchvision_batched_nms():
    torch = pytest.importorskip("torch")
    ops = pytest.importorskip("torchvision.ops")
    scores, labels, boxes = random_candidates(np.random.default_rng(7), batch=6, k=60)
    got = select_objects(scores, labels, boxes, 0.3, 0.5, 6)
    for row in range(len(scores)):
        ids = contiguous_from_torchvision(labels[row])
        candidates = np.flatnonzero((scores[row] > 0.3) & (ids != 0))
        keep = ops.batched_nms(
            torch.from_numpy(boxes[row, candidates]),
            torch.from_numpy(scores[row, candidates]),
            torch.from_numpy(ids[candidates]),
            0.5,
        ).numpy()
        expected = ids[candidates[keep[:6]]]
        np.testing.assert_array_equal(got[row], np.pad(expected, (0, 6 - len(expected))))


def test_select_objects_hand_made_cases():
    boxes = np.array(
        [[
            [0, 0, 10, 10],  # person, best
            [1, 0, 11, 10],  # person, IoU 0.82 with the first: suppressed
            [1, 0, 11, 10],  # dog on the same spot: another class, kept
            [50, 50, 60, 60],  # person elsewhere: kept
            [0, 0, 10, 10],  # car below the threshold: dropped
            [0, 0, 10, 10],  # an N/A id (12): dropped whatever its score
        ]],
        np.float32,
    )  # fmt: skip
    labels = np.array([[1, 1, 18, 1, 3, 12]])
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.4, 0.95]], np.float32)
    assert select_objects(scores, labels, boxes).tolist() == [[1, 17, 1, 0, 0]]  # dog = 17, padded with 0
    assert select_objects(scores, labels, boxes, max_objects=2).tolist() == [[1, 17]]
    assert select_objects(scores, labels, boxes, iou_threshold=0.9).tolist() == [[1, 1, 17, 1, 0]]
    assert select_objects(scores, labels, boxes, score_threshold=0.95).tolist() == [[0, 0, 0, 0, 0]]
    assert select_objects(scores[:0], labels[:0], boxes[:0]).shape == (0, 5)


def test_select_objects_validates():
    scores, labels, boxes = np.zeros((2, 4)), np.zeros((2, 4), np.int64), np.zeros((2, 4, 4))
    with pytest.raises(ValueError, match=r"expected scores \(B, K\), labels \(B, K\) and boxes \(B, K, 4\)"):
        select_objects(scores, labels[:, :3], boxes)
    with pytest.raises(ValueError, match="score_threshold"):
        select_objects(scores, labels, boxes, score_threshold=1.0)
    with pytest.raises(ValueError, match="iou_threshold"):
        select_objects(scores, labels, boxes, iou_threshold=-0.1)
    with pytest.raises(ValueError, match="max_objects"):
        select_objects(scores, labels, boxes, max_objects=0)


def test_box_iou():
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], np.float32)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150, 0], [0, 0]])
    assert coco.NUM_CLASSES == 80
