"""Per-picture cost of each detector on this CPU, beside its published COCO accuracy.

    python -m mner.benchmarks.detectors [--detectors retinanet,ssdlite,frcnn-mobilenet] [--threads 2]
        [--batch 1] [--repeats 20] [--warmup 3] [--size ssdlite=256] [--weights ssdlite=FILE]
        [--no-ort] [--quick] [--out benchmarks/results/detectors-cpu.md]

For each detector (``mner.train.detector_choice``), at its own input size unless ``--size``:

* torch eager: the fixed-shape wrapper (``mner.train.detectors``) under ``torch.inference_mode``
  with ``--threads`` intra-op threads -- the reference the bundle is checked against;
* ONNX Runtime: the same wrapper exported as ``mner-export`` exports the detector stage
  (``export.graph.export_graph`` with the stage's spec), CPU provider, ``--threads`` intra-op
  threads, one inter-op thread, all graph optimisations;
* per picture: the median and the fastest of ``--repeats`` timed calls on ``--batch``
  letterboxed photos, divided by the batch;
* G multiply-adds counted at that size by ``torch.utils.flop_counter`` (convolutions and
  matrix products; RoIAlign and elementwise work not counted);
* published: torchvision's COCO-val2017 box mAP, its GFLOPS figure (multiply-adds, as
  torchvision counts them: ResNet-50 is 4.09) and parameter count, from the weights'
  ``meta`` in the installed torchvision (nothing downloaded). torchvision measured its GFLOPS
  at its own input sizes: RetinaNet v2 with the shorter side at 800 px, the 320 models at 320.

Pictures: the sample photographs installed offline (``export.vision_int8.calibration_photos``:
matplotlib's, scikit-image's where installed), letterboxed per detector; seeded synthetic
pictures fill the batch when there are fewer. Weights: random (seeded) unless ``--weights ARCH=FILE`` (a
torchvision COCO state_dict): the graphs have fixed shapes and no data-dependent work, so
the cost does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from mner.benchmarks.machine import machine_facts, package_version
from mner.export.vision import synthetic_pictures
from mner.runtime.image import detector_tensor
from mner.train.detector_choice import DETECTORS, DetectorChoice, resolve_detector

logger = logging.getLogger("mner.benchmarks.detectors")

DEFAULT_OUT = Path("benchmarks/results/detectors-cpu.md")


@dataclass
class Row:
    choice: DetectorChoice
    size: int
    box_map: float
    published_gflops: float
    params_m: float
    gmacs_here: float
    torch_ms: tuple[float, float]  # (median, fastest) per picture
    ort_ms: tuple[float, float] | None  # None: --no-ort


def photos(count: int, seed: int = 0) -> tuple[list[np.ndarray], str]:
    """``count`` RGB pictures: the sample photographs installed offline first (the vision INT8
    calibration's: matplotlib's, scikit-image's where installed), then seeded synthetic ones."""
    from mner.export.vision_int8 import calibration_photos  # noqa: PLC0415

    try:
        named = calibration_photos()[:count]
    except ValueError as error:  # none installed
        logger.info("%s", error)
        named = []
    synthetic = count - len(named)
    pictures = [picture for _, picture in named] + synthetic_pictures(synthetic, np.random.default_rng(seed))
    described = ", ".join(name for name, _ in named) or "no sample photograph installed"
    return pictures, described + (f", {synthetic} synthetic" if synthetic else "")


def published(choice: DetectorChoice) -> tuple[float, float, float]:
    """(COCO-val2017 box mAP, GFLOPS, parameters in millions) from torchvision's weights table."""
    from torchvision.models import detection  # noqa: PLC0415

    meta = getattr(detection, choice.weights_enum).COCO_V1.meta
    return meta["_metrics"]["COCO-val2017"]["box_map"], meta["_ops"], meta["num_params"] / 1e6


def multiply_adds(module, images) -> float:
    """G multiply-adds of one forward (torch's FLOP counter counts a multiply-add as 2 FLOPs)."""
    import torch  # noqa: PLC0415
    from torch.utils.flop_counter import FlopCounterMode  # noqa: PLC0415

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        module(images)
    return counter.get_total_flops() / 2 / 1e9


def timed(call: Callable[[], object], repeats: int, warmup: int) -> tuple[float, float]:
    """(median, fastest) seconds of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), min(seconds)


def export_detector(detector, path: Path) -> None:
    """The wrapper -> ONNX exactly as mner-export writes the detector stage (its spec, exporter and checks)."""
    from mner.export import detector as stage  # noqa: PLC0415
    from mner.export.graph import export_graph  # noqa: PLC0415
    from mner.export.spec import BuiltStage  # noqa: PLC0415

    built = BuiltStage(module=detector, dims={"detector_size": detector.size, "top_k": detector.top_k, "max_objects": 5},
                       axis_bounds={"batch": (1, stage.MAX_BATCH)}, weights={}, info={})  # fmt: skip
    export_graph(stage.SPEC, built, path)


def ort_session(path: Path, threads: int):
    import onnxruntime as ort  # noqa: PLC0415

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def measure(choice: DetectorChoice, size: int, weights: Path | None, pictures: list[np.ndarray], threads: int,
            repeats: int, warmup: int, ort: bool, workdir: Path) -> Row:  # fmt: skip
    import torch  # noqa: PLC0415

    from mner.train.detectors import ObjectDetector  # noqa: PLC0415

    torch.set_num_threads(threads)
    detector = ObjectDetector.from_weights(weights, arch=choice.name, size=size, seed=0)
    batch = np.stack([detector_tensor(picture, size)[0] for picture in pictures])  # (B, 3, S, S)
    images = torch.from_numpy(batch)
    box_map, gflops, params = published(choice)
    gmacs = multiply_adds(detector, images[:1])

    def eager() -> object:
        with torch.inference_mode():
            return detector(images)

    logger.info("%s at %d px: torch eager, %d threads", choice.name, size, threads)
    torch_s = timed(eager, repeats, warmup)
    ort_s = None
    if ort:
        path = workdir / f"{choice.name}-{size}.onnx"
        logger.info("%s: exporting to ONNX (a minute or more)", choice.name)
        export_detector(detector, path)
        session = ort_session(path, threads)
        logger.info("%s at %d px: ONNX Runtime, %d threads", choice.name, size, threads)
        ort_s = timed(lambda: session.run(None, {"images": batch}), repeats, warmup)
    per_picture = 1000 / len(pictures)
    return Row(choice, size, box_map, gflops, params, gmacs,
               (torch_s[0] * per_picture, torch_s[1] * per_picture),
               None if ort_s is None else (ort_s[0] * per_picture, ort_s[1] * per_picture))  # fmt: skip


def format_table(rows: list[Row]) -> str:
    lines = [
        "| detector | input px | COCO box mAP (published) | GFLOPS (published, torchvision's size) | G mult-adds here "
        "| params (M) | torch eager ms/picture (median / best) | ORT ms/picture (median / best) | ORT vs eager |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ort = f"{row.ort_ms[0]:.0f} / {row.ort_ms[1]:.0f}" if row.ort_ms else "not run"
        ratio = f"{row.torch_ms[0] / row.ort_ms[0]:.2f}x" if row.ort_ms else "-"
        lines.append(f"| {row.choice.name} (`{row.choice.alias}`) | {row.size} | {row.box_map:.1f} | "
                     f"{row.published_gflops:.2f} | {row.gmacs_here:.2f} | {row.params_m:.1f} | "
                     f"{row.torch_ms[0]:.0f} / {row.torch_ms[1]:.0f} | {ort} | {ratio} |")  # fmt: skip
    return "\n".join(lines)


def markdown_report(rows: list[Row], command: str, threads: int, batch: int, repeats: int, warmup: int,
                    described: str, weights: dict[str, Path]) -> str:  # fmt: skip
    facts = machine_facts()
    load = ", ".join(f"{value:.2f}" for value in facts["load_average"])
    weights_note = ", ".join(f"{arch}: {path.name}" for arch, path in weights.items()) or "random (seeded) for all"
    lines = [
        "# Detectors on CPU: cost per picture beside published COCO accuracy",
        "",
        f"Command: `{command}`",
        "",
        f"Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {facts['cpu']} ({facts['usable_cores']} usable cores; "
        f"SIMD: {', '.join(facts['simd']) or 'n/a'}); load average (1, 5, 15 min) at the end: {load}. "
        f"torch {package_version('torch')}, torchvision {package_version('torchvision')}, "
        f"onnxruntime {package_version('onnxruntime')}.",
        "",
        f"Batches of {batch} letterboxed pictures ({described}); {threads} intra-op threads in both backends; "
        f"median and fastest of {repeats} timed calls after {warmup} warm-up calls, divided by the batch. "
        f"Weights: {weights_note}.",
        "",
        format_table(rows),
        "",
        "- Each detector is the fixed-shape graph the bundle holds: the K = 100 best (anchor or proposal, class) "
        "pairs, no NMS (the host's `select_objects` does it, the same for every detector). Faster R-CNN sends the "
        "150 best RPN proposals by objectness (no NMS) to its box head.",
        "- Published figures are torchvision's (`Weights.meta`), measured by torchvision with its own "
        "post-processing and input sizes (RetinaNet v2: shorter side 800 px); the accuracy of these wrappers at "
        "the sizes above, with host-side selection, is not measured here (no COCO data offline).",
        "- G mult-adds here: `torch.utils.flop_counter` at the size above, halved (convolutions and matrix "
        "products only).",
    ]
    return "\n".join(lines) + "\n"


def _pairs(values: list[str], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, sep, setting = value.partition("=")
        if not sep or not setting:
            raise ValueError(f"{option} takes DETECTOR=VALUE, got {value!r}")
        pairs[resolve_detector(name).name] = setting
    return pairs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mner.benchmarks.detectors", description=__doc__.split("\n\n")[0])
    parser.add_argument("--detectors", default=",".join(choice.alias for choice in DETECTORS.values()),
                        help="comma-separated names or aliases (default: all three)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of torch and ONNX Runtime (default 2)")
    parser.add_argument("--batch", type=int, default=1, help="pictures per call (default 1)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--size", action="append", default=[], metavar="DETECTOR=PX", help="another input side")
    parser.add_argument("--weights", action="append", default=[], metavar="DETECTOR=FILE",
                        help="torchvision COCO state_dict file (default: random weights; cost does not depend on them)")
    parser.add_argument("--no-ort", action="store_true", help="torch eager only (no export)")
    parser.add_argument("--quick", action="store_true", help="2 repeats, 1 warm-up: checks the script, times nothing")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"Markdown report (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    # Our progress at INFO; the exporter's optimiser logs hundreds of INFO lines per graph, so the rest at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logger.setLevel(logging.INFO)
    logging.getLogger("mner.train.detectors").setLevel(logging.ERROR)  # the random-weights warning, once per detector
    for name, value in (("--threads", args.threads), ("--batch", args.batch), ("--repeats", args.repeats)):
        if value < 1:
            parser.error(f"{name} must be >= 1, got {value}")
    if args.quick:
        args.repeats, args.warmup = 2, 1
    try:
        choices = [resolve_detector(name.strip()) for name in args.detectors.split(",") if name.strip()]
        sizes = {name: int(value) for name, value in _pairs(args.size, "--size").items()}
        weights = {name: Path(value) for name, value in _pairs(args.weights, "--weights").items()}
        for choice in choices:
            choice.check_size(sizes.get(choice.name, choice.default_size))
    except ValueError as error:
        parser.error(str(error))
    pictures, described = photos(args.batch)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mner-detectors-") as workdir:
        for choice in choices:
            rows.append(measure(choice, sizes.get(choice.name, choice.default_size), weights.get(choice.name), pictures,
                                args.threads, args.repeats, args.warmup, not args.no_ort, Path(workdir)))  # fmt: skip
    command = shlex.join(["python", "-m", "mner.benchmarks.detectors", *(sys.argv[1:] if argv is None else argv)])
    report = markdown_report(rows, command, args.threads, args.batch, args.repeats, args.warmup, described, weights)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
