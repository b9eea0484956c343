"""Image decoding and the two model inputs made from one decode (numpy + OpenCV, no torch).

A post's picture is decoded once, to RGB uint8, and resized twice:

* ``vision_tensor``   (3, 224, 224): the whole picture squeezed to 224 × 224 (no crop,
  no flip: evaluation must be deterministic), ImageNet-normalised, for the ResNet grid.
* ``detector_tensor`` (3, S, S): the picture letterboxed into an S × S square (aspect
  kept, longer side = S, content top-left), ImageNet-normalised, for the detector.

Where the detector's normalisation happens: torchvision's detection models normally
normalise inside ``GeneralizedRCNNTransform``; our exported detector feeds backbone and
head directly, so the ImageNet mean/std is applied here, and the padding is 0 *after*
normalisation (the mean colour), which is what torchvision's own batching pads with.

Bytes from the outside are untrusted: before OpenCV sees them, the width and height are
read from the header (PNG, JPEG, GIF, BMP, WEBP) and pictures over ``max_pixels`` are
refused, so a small file that claims a huge canvas (a decompression bomb) never
allocates it. Anything else is refused as "not an image".

All constants live at the top of this module; ``preprocessing_constants()`` gives them
as a dict for the bundle manifest and the feature-cache key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import cv2
import numpy as np

# Bump when any constant or resize rule below changes: cached features and exported
# bundles made with an older version no longer describe the same inputs.
PREPROCESS_VERSION = 1

VISION_SIZE = 224  # ResNet-152's ImageNet input size; layer4 gives the 7×7 grid the tagger expects
DETECTOR_SIZE = 512  # square letterbox side; a multiple of 128, the coarsest FPN stride (P7)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, for pixels scaled to [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_PIXELS = 40_000_000  # ~ 7700 × 5200; far above any social-media picture, far below a bomb

_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32)
_STD = np.asarray(IMAGENET_STD, dtype=np.float32)


class ImageError(ValueError):
    """The bytes are not a usable picture: empty, not an image, corrupt, or too large."""


def preprocessing_constants() -> dict:
    """The preprocessing contract, for a manifest or a cache key (JSON-serialisable)."""
    return {
        "version": PREPROCESS_VERSION,
        "channel_order": "RGB",
        "layout": "NCHW",
        "vision_size": VISION_SIZE,
        "detector_size": DETECTOR_SIZE,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "max_pixels": MAX_PIXELS,
        "vision_resize": "whole image to size x size; per axis INTER_AREA when shrinking, INTER_LINEAR when enlarging",
        "detector_resize": "letterbox: longer side to size, aspect kept, content top-left, padding 0 after normalisation",
        "exif_orientation": "applied",
    }


# --------------------------------------------------------------------------- decoding


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode PNG, JPEG, GIF, BMP or WEBP bytes to RGB uint8 (H, W, 3).

    Grayscale and palette pictures become RGB; an alpha channel is dropped (as PIL's
    ``convert("RGB")`` does); a JPEG's EXIF orientation is applied; an animated GIF
    gives its first frame. Raises ``ImageError`` for empty bytes, bytes of no supported
    format, a header claiming more than ``max_pixels`` pixels, and corrupt or truncated
    data.
    """
    if not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"decode_image expects bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise ImageError("empty image: 0 bytes")

    fmt, width, height = read_header(data)
    if width <= 0 or height <= 0:
        raise ImageError(f"corrupt {fmt}: the header gives a size of {width}×{height}")
    if width * height > max_pixels:
        raise ImageError(
            f"{fmt} image is {width}×{height} = {width * height} pixels, over the limit of {max_pixels}"
        )

    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise ImageError(f"corrupt {fmt}: OpenCV could not decode it")
    assert bgr.dtype == np.uint8 and bgr.ndim == 3 and bgr.shape[2] == 3, bgr.shape
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def load_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read a picture file and decode it (see ``decode_image``); errors name the path."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImageError(f"{os.fspath(path)}: cannot read the file ({e.strerror or e})") from e
    try:
        return decode_image(data, max_pixels=max_pixels)
    except ImageError as e:
        raise ImageError(f"{os.fspath(path)}: {e}") from e


def read_header(data: bytes) -> tuple[str, int, int]:
    """(format name, width, height) from the header alone, without decoding pixels."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png_size(data)
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        if len(data) < 10:
            raise ImageError("corrupt GIF: the header is truncated")
        return "GIF", int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    if data.startswith(b"BM"):
        return _bmp_size(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    raise ImageError(
        f"not an image (supported: PNG, JPEG, GIF, BMP, WEBP): the bytes start with {data[:16]!r}"
    )


def _png_size(data: bytes) -> tuple[str, int, int]:
    # Signature (8), then the IHDR chunk: length (4), b"IHDR", width (4, BE), height (4, BE).
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ImageError("corrupt PNG: no IHDR chunk after the signature")
    return "PNG", int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# Start-of-frame markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})  # TEM, SOI, RST0-7: no length


def _jpeg_size(data: bytes) -> tuple[str, int, int]:
    i, n = 2, len(data)
    while i < n:
        if data[i] != 0xFF:
            raise ImageError(f"corrupt JPEG: expected a marker at byte {i}, found 0x{data[i]:02x}")
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            break
        marker = data[i]
        i += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # EOI or start of scan before any frame header
            raise ImageError("corrupt JPEG: no frame header (SOF marker) before the image data")
        if i + 2 > n:
            break
        length = int.from_bytes(data[i : i + 2], "big")
        if length < 2:
            raise ImageError(f"corrupt JPEG: segment 0x{marker:02x} at byte {i} has length {length}")
        if marker in _JPEG_SOF:
            if i + 7 > n:
                break
            height = int.from_bytes(data[i + 3 : i + 5], "big")
            width = int.from_bytes(data[i + 5 : i + 7], "big")
            if height == 0:
                raise ImageError("unsupported JPEG: the height is deferred to a DNL marker")
            # A complete JPEG ends with EOI after its scans (0xFF in scan data is always
            # stuffed, so FF D9 cannot occur inside them). Checking here makes a truncated
            # file an error on every OpenCV version, not a half-grey picture.
            if data.find(b"\xff\xd9", i + length) == -1:
                raise ImageError("corrupt JPEG: truncated, no end-of-image marker")
            return "JPEG", width, height
        i += length
    raise ImageError("corrupt JPEG: truncated before the frame header (SOF marker)")


def _bmp_size(data: bytes) -> tuple[str, int, int]:
    if len(data) < 26:
        raise ImageError("corrupt BMP: the header is truncated")
    dib_size = int.from_bytes(data[14:18], "little")
    if dib_size == 12:  # OS/2 BITMAPCOREHEADER: unsigned 16-bit width and height
        return "BMP", int.from_bytes(data[18:20], "little"), int.from_bytes(data[20:22], "little")
    width = int.from_bytes(data[18:22], "little", signed=True)
    height = int.from_bytes(data[22:26], "little", signed=True)
    return "BMP", width, abs(height)  # negative height = rows stored top-down


def _webp_size(data: bytes) -> tuple[str, int, int]:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:  # extended: 24-bit canvas width-1, height-1
        return "WEBP", int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:  # lossless: 14-bit fields
        bits = int.from_bytes(data[21:25], "little")
        return "WEBP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":  # lossy key frame
        width = int.from_bytes(data[26:28], "little") & 0x3FFF
        height = int.from_bytes(data[28:30], "little") & 0x3FFF
        return "WEBP", width, height
    raise ImageError(f"corrupt WEBP: unrecognised or truncated first chunk {chunk!r}")


# --------------------------------------------------------------------------- tensors


@dataclass(frozen=True)
class Letterbox:
    """Where the picture sits in the detector's S × S square (content at the top-left)."""

    source_height: int
    source_width: int
    resized_height: int
    resized_width: int
    size: int

    @property
    def scale_x(self) -> float:
        return self.resized_width / self.source_width

    @property
    def scale_y(self) -> float:
        return self.resized_height / self.source_height

    def to_source(self, boxes: np.ndarray) -> np.ndarray:
        """Map (..., 4) boxes (x1, y1, x2, y2) from detector pixels to source pixels, clipped."""
        boxes = np.asarray(boxes, dtype=np.float32)
        if boxes.shape[-1:] != (4,):
            raise ValueError(f"boxes must have shape (..., 4), got {boxes.shape}")
        scale = np.array([self.scale_x, self.scale_y, self.scale_x, self.scale_y], dtype=np.float32)
        limit = np.array(
            [self.source_width, self.source_height, self.source_width, self.source_height], dtype=np.float32
        )
        return np.clip(boxes / scale, 0.0, limit)


def vision_tensor(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> float32 (3, 224, 224): whole picture resized, ImageNet-normalised."""
    _check_rgb(rgb)
    return _normalise(_resize(rgb, VISION_SIZE, VISION_SIZE))


def detector_tensor(rgb: np.ndarray, size: int = DETECTOR_SIZE) -> tuple[np.ndarray, Letterbox]:
    """RGB uint8 (H, W, 3) -> (float32 (3, S, S), Letterbox): aspect kept, longer side S,
    ImageNet-normalised, zero padding (the mean colour) at the bottom and right."""
    _check_rgb(rgb)
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"size must be a positive int, got {size!r}")
    height, width = rgb.shape[:2]
    scale = size / max(height, width)
    resized_w = min(size, max(1, round(width * scale)))
    resized_h = min(size, max(1, round(height * scale)))
    out = np.zeros((3, size, size), dtype=np.float32)  # (3, S, S)
    out[:, :resized_h, :resized_w] = _normalise(_resize(rgb, resized_w, resized_h))
    return out, Letterbox(height, width, resized_h, resized_w, size)


class ImageBatch(NamedTuple):
    vision: np.ndarray  # (B, 3, 224, 224) float32
    detector: np.ndarray  # (B, 3, S, S) float32
    has_image: np.ndarray  # (B,) bool; False rows are all zeros and must be masked out
    errors: list[str | None]  # why a given picture was unusable; None for usable or absent
    letterboxes: list[Letterbox | None]


def preprocess_images(
    images: Sequence[bytes | None],
    *,
    detector_size: int = DETECTOR_SIZE,
    max_pixels: int = MAX_PIXELS,
) -> ImageBatch:
    """Decode each picture once and make both model inputs.

    ``None`` means the post has no picture. A picture that cannot be used becomes zeros
    with ``has_image`` False and its ``ImageError`` message in ``errors`` — never another
    picture in its place.
    """
    batch = len(images)
    vision = np.zeros((batch, 3, VISION_SIZE, VISION_SIZE), dtype=np.float32)
    detector = np.zeros((batch, 3, detector_size, detector_size), dtype=np.float32)
    has_image = np.zeros(batch, dtype=bool)
    errors: list[str | None] = [None] * batch
    letterboxes: list[Letterbox | None] = [None] * batch
    for row, data in enumerate(images):
        if data is None:
            continue
        try:
            rgb = decode_image(data, max_pixels=max_pixels)
        except ImageError as e:
            errors[row] = str(e)
            continue
        vision[row] = vision_tensor(rgb)
        detector[row], letterboxes[row] = detector_tensor(rgb, detector_size)
        has_image[row] = True
    return ImageBatch(vision, detector, has_image, errors, letterboxes)


def _check_rgb(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        got = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ValueError(f"expected an RGB uint8 array of shape (H, W, 3), got {got}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"expected a non-empty picture, got shape {rgb.shape}")


def _interpolation(source: int, target: int) -> int:
    # Area averaging when shrinking (no aliasing); bilinear when enlarging (INTER_AREA
    # degrades to nearest-neighbour there).
    return cv2.INTER_AREA if target <= source else cv2.INTER_LINEAR


def _resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    source_h, source_w = rgb.shape[:2]
    if (source_w, source_h) == (width, height):
        return rgb
    interp_w, interp_h = _interpolation(source_w, width), _interpolation(source_h, height)
    if interp_w == interp_h:
        return cv2.resize(rgb, (width, height), interpolation=interp_w)
    # One axis shrinks and the other grows (a panorama, a tall strip): resize each axis
    # with its own filter rather than alias the shrinking one.
    wide = cv2.resize(rgb, (width, source_h), interpolation=interp_w)
    return cv2.resize(wide, (width, height), interpolation=interp_h)


def _normalise(rgb: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (3, H, W), as torchvision's ToTensor then Normalize."""
    pixels = rgb.astype(np.float32) / 255.0  # (H, W, 3)
    return np.ascontiguousarray(((pixels - _MEAN) / _STD).transpose(2, 0, 1))
