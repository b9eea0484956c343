"""export_bundle: a checkpoint -> a checked bundle (what mner-export runs).

Order, so that a mistake costs as little as possible and nothing half-done remains:

1. checks that need no work: TensorRT and a GPU (for ``trt``), the stage names, the
   destination, the weight and text files exist;
2. the checkpoint is loaded (a bad or foreign file fails here, named), and the stages chosen:
   those named, else the ones it was trained with (``export/stage_choice.py``: the tagger
   alone for a model that never saw a picture);
3. per stage, in a temporary directory: build the module, export the FP32 graph,
   check it (onnx.checker, interface), run parity; with ``fp16``, convert, check,
   run parity again; the tagger also decodes the parity text;
4. all parity failures, from every stage, raise one ``ParityError`` -- no bundle;
   with ``int8``, the tagger's INT8 graph is then written and guarded (``export/int8.py``):
   a graph less accurate than the guard allows raises ``Int8GuardError`` -- no bundle;
5. TensorRT engines (``trt``), CRF and tokenizer files, the manifest, and the rename.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import onnx

from mner.export import detector as detector_stage
from mner.export import vision_int8
from mner.export.bundle import BundleWriter, check_destination, read_manifest, sha256_file
from mner.export.fp16 import convert_to_fp16
from mner.export.graph import EXPORTER, check_graph, export_graph
from mner.export.int8 import gold_posts, write_int8_tagger
from mner.export.parity import (
    ParityReport,
    TextSource,
    check_outputs,
    compare_tags,
    cpu_session,
    synthetic_text,
    tag_posts,
)
from mner.export.spec import BuiltStage, Sources, StageSpec
from mner.export.stage_choice import parse_stage_names, select_for_checkpoint
from mner.export.stages import select_stages
from mner.export.trt import build_engines, require_tensorrt
from mner.runtime.bundle import stage_info
from mner.runtime.conll import check_entity_types, data_file
from mner.runtime.image import preprocessing_constants
from mner.train.checkpoint import load_checkpoint
from mner.train.data import read_conll
from mner.train.vision import DETECTOR_TOP_K, GRID_ARCHS

logger = logging.getLogger(__name__)

SYNTHETIC_POSTS = 200  # parity posts when no parity data is given


@dataclass
class ExportResult:
    path: Path
    manifest: dict[str, Any]
    seconds: float

    @property
    def bytes(self) -> int:
        return sum(entry["bytes"] for entry in self.manifest["files"].values())


def export_bundle(
    *,
    ckpt: str | os.PathLike,
    out: str | os.PathLike,
    fp16: bool = False,
    int8: bool = False,
    trt: bool = False,
    resnet_weights: str | os.PathLike | None = None,
    detector_weights: str | os.PathLike | None = None,
    stages: str | Sequence[str] | None = None,
    parity_data: str | os.PathLike | None = None,
    split: str = "test",
    seed: int | None = None,
    overwrite: bool = False,
    vision_arch: str | None = None,
    detector: str | None = None,
    detector_size: int | None = None,
    int8_vision: bool = False,
    progress: bool | None = True,
) -> ExportResult:
    """Export ``ckpt`` into the bundle ``out``; see the module docstring for the order of work.

    ``stages`` None exports the stages the checkpoint was trained with (a text-only model: the
    tagger); naming detector or vision for such a model exports them with a warning.
    ``parity_data`` is TWITTER-format CoNLL data, a folder (its ``split`` file) or one file,
    whose every post the tag check decodes; None: seeded synthetic posts. ``progress`` as
    ``mner.runtime.progress``'s ``enabled``.
    ``trt`` builds engines from the FP16 graphs, so it writes them too. ``int8`` also writes
    the tagger's INT8 graph behind its accuracy guard on ``parity_data``, which it needs. ``vision_arch``
    and ``detector_size`` exist for tests and small demos (resnet50, a 128-pixel detector);
    the manifest records both. ``detector`` names the detector (``mner.train.detector_choice``).
    ``seed``, ``vision_arch``, ``detector`` and ``detector_size`` default to what the
    checkpoint was trained with, so random vision weights are the ones training saw (the
    features the tagger learnt from). Raises ValueError (ParityError, BundleError included) for
    what the caller can fix, TensorRTUnavailable where TensorRT or a GPU is missing.
    ``int8_vision`` also writes the vision stage's INT8 graph behind its guard (``export/vision_int8.py``),
    which needs real ``resnet_weights``.
    """
    start = time.perf_counter()
    trt_module = require_tensorrt() if trt else None  # first: nothing is read or written before it
    if stages is not None:
        parse_stage_names(stages)  # a misspelt stage fails before the checkpoint is read
    out = Path(out)
    check_destination(out, overwrite)
    paths = {"--resnet-weights": resnet_weights, "--detector-weights": detector_weights}
    for option, path in paths.items():
        if path is not None and not Path(path).is_file():
            raise ValueError(f"{option} {path}: no such file")
    parity_file = data_file(parity_data, split) if parity_data is not None else None
    if int8_vision:  # refused before any work: with random weights the guard would mean nothing
        vision_int8.require_real_weights(resnet_weights)
    fp16 = fp16 or trt
    gold = None
    if int8:  # the guard's text is read before anything slow: no gold tags, no export
        if parity_file is None:
            raise ValueError("--int8 needs --data: TWITTER-format CoNLL with gold tags, on which the INT8 tagger's "
                             "tag agreement with FP32 and entity F1 are measured before it is written")  # fmt: skip
        gold = gold_posts(read_conll(parity_file), parity_file.name)

    ckpt = Path(ckpt)
    checkpoint = load_checkpoint(ckpt)
    selection = select_for_checkpoint(stages, checkpoint.payload)
    specs = select_stages(selection.stages)
    if gold is not None:
        if "tagger" not in selection.stages:
            raise ValueError(f"--int8 quantizes the tagger, which this export leaves out (stages: {', '.join(selection.stages)})")
        check_entity_types(gold, checkpoint.scheme.entity_types, f"--data {parity_file}", f"the checkpoint {ckpt}")
    logger.info("stages: %s (%s)", ", ".join(selection.stages), selection.reason)
    if int8_vision and "vision" not in selection.stages:
        raise ValueError(f"--int8-vision quantizes the vision stage, which this export does not have (stages: "
                         f"{', '.join(selection.stages)}; name it in --stages to add it)")
    if selection.warning():
        logger.warning("%s", selection.warning())
    _warn_unused_options(selection.stages, resnet_weights=resnet_weights, detector_weights=detector_weights,
                         vision_arch=vision_arch, detector=detector, detector_size=detector_size)  # fmt: skip
    trained_with = checkpoint.payload.get("train_args") or {}
    seed = trained_with.get("seed", 0) if seed is None else seed
    vision_arch = vision_arch or trained_with.get("grid_arch", "resnet152")
    detector, detector_size = detector_stage.choose_detector(detector, detector_size, trained_with)
    if vision_arch not in GRID_ARCHS:
        raise ValueError(f"vision_arch must be one of {GRID_ARCHS}, got {vision_arch!r}")
    sources = Sources(
        checkpoint=checkpoint,
        checkpoint_path=ckpt,
        checkpoint_sha256=sha256_file(ckpt),
        resnet_weights=Path(resnet_weights) if resnet_weights else None,
        detector_weights=Path(detector_weights) if detector_weights else None,
        seed=seed,
        vision_arch=vision_arch,
        detector_arch=detector,
        detector_size=detector_size,
    )
    text = _parity_text(parity_file, checkpoint, seed, gold) if any(s.name == "tagger" for s in specs) else None
    report = ParityReport(text=text.description if text else {})
    precisions = ("fp32", "fp16") if fp16 else ("fp32",)

    with BundleWriter(out, overwrite=overwrite) as writer:
        entries: dict[str, Any] = {}
        built_stages: list[tuple[StageSpec, BuiltStage]] = []
        for spec in specs:
            built = spec.build(sources)
            entries[spec.name] = _export_stage(spec, built, writer.dir, precisions, seed, report)
            if spec.name == "tagger" and text is not None:
                _check_tags(spec, built, writer.dir, precisions, text, checkpoint, seed, report, progress)
            built_stages.append((spec, built))
        report.raise_if_failed()
        if int8_vision:  # after FP32 parity held: its graph is the one quantized and compared
            entries["vision"]["graphs"]["int8"] = vision_int8.write_int8_vision(writer.dir, entries["vision"]["weights"])
        if gold is not None:  # after FP32 parity: the guard measures INT8 against the FP32 graph
            tagger = entries["tagger"]
            tagger["graphs"]["int8"] = write_int8_tagger(
                stage_info(writer.dir, "tagger", tagger), writer.dir / tagger["graphs"]["fp32"]["file"],
                writer.dir / next(s for s in specs if s.name == "tagger").graph_file("int8"), gold, parity_file.name,
                checkpoint.text_encoder, checkpoint.scheme, checkpoint.crf_parameters(),
            )  # fmt: skip
        engines = build_engines(trt_module, writer.dir, built_stages) if trt_module is not None else {}

        crf = checkpoint.crf_parameters()
        crf.save_npz(writer.dir / "crf.npz")
        checkpoint.text_encoder.save(writer.dir / "tokenizer")
        manifest = {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "producer": {"tool": "mner-export", "mner": _version("mner")},
            "versions": _versions(trt_module),
            "model": {
                "config": checkpoint.config.to_dict(),
                "checkpoint": {
                    "file": ckpt.name,
                    "sha256": sources.checkpoint_sha256,
                    "random_weights": checkpoint.payload.get("random_weights"),
                },
            },
            "tags": checkpoint.scheme.to_json(),
            "crf": {
                "file": "crf.npz",
                "dtype": "float32",
                "arrays": {"start": list(crf.start.shape), "end": list(crf.end.shape), "transitions": list(crf.transitions.shape)},
            },
            "tokenizer": {
                "dir": "tokenizer",
                "files": sorted(p.name for p in (writer.dir / "tokenizer").iterdir()),
                "max_length": checkpoint.text_encoder.max_length,
            },
            "preprocessing": {
                "text": {"splitter": checkpoint.splitter},
                "image": {**preprocessing_constants(), "detector_size": detector_size},
                "objects": {**detector_stage.selection_settings(checkpoint.config.num_objects), "top_k": DETECTOR_TOP_K},
            },
            "stage_selection": selection.to_json(),
            "stages": entries,
            "engines": engines,
            "parity": report.to_json(),
        }
        path = writer.commit(manifest)
    result = ExportResult(path, read_manifest(path), time.perf_counter() - start)
    logger.info("exported %s in %.0f s (%.1f MiB)", path, result.seconds, result.bytes / 2**20)
    return result


def _export_stage(spec: StageSpec, built: BuiltStage, directory: Path, precisions, seed: int, report: ParityReport) -> dict:
    inputs, outputs = spec.resolved(built)
    fp32_path = directory / spec.graph_file("fp32")
    started = time.perf_counter()
    export_graph(spec, built, fp32_path, seed)
    logger.info("%s: exported %s in %.0f s", spec.name, fp32_path.name, time.perf_counter() - started)
    graphs: dict[str, Any] = {"fp32": {"file": fp32_path.name}}
    for precision in precisions:
        path = directory / spec.graph_file(precision)
        if precision == "fp16":
            model, fp16_report = convert_to_fp16(onnx.load(str(fp32_path)), spec.fp16)
            onnx.save(model, str(path))
            del model
            check_graph(path, inputs, outputs)
            graphs["fp16"] = {"file": path.name, "kept_fp32": fp16_report.to_json()}
        started = time.perf_counter()
        check_outputs(spec, built, cpu_session(path), precision, seed, report)
        logger.info("%s: %s parity at %d sizes in %.0f s", spec.name, precision, len(spec.parity_sizes), time.perf_counter() - started)
    return {
        "summary": spec.summary,
        "inputs": [t.to_json() for t in inputs],
        "outputs": [t.to_json() for t in outputs],
        "dynamic_axes": {axis: {"min": low, "max": high} for axis, (low, high) in built.axis_bounds.items()},
        "opset": spec.opset,
        "exporter": EXPORTER,
        "graphs": graphs,
        "weights": built.weights,
        "tolerance": {"fp32": dict(spec.tolerance), "fp16": dict(spec.fp16_tolerance)},
        **built.info,
    }


def _check_tags(spec, built, directory, precisions, text: TextSource, checkpoint, seed: int, report: ParityReport,
                progress: bool | None) -> None:  # fmt: skip
    """Decode the parity text with PyTorch and with each graph; FP32 must match on every post."""
    encoder, scheme, crf = checkpoint.text_encoder, checkpoint.scheme, checkpoint.crf_parameters()
    case = f"{text.description['source']} ({len(text.posts)} posts)"
    reference = tag_posts(lambda inputs: built.run(inputs, spec.input_names)[0], text.posts, encoder, scheme, crf,
                          built.dims, seed, "tags: torch", progress)  # fmt: skip
    for precision in precisions:
        session = cpu_session(directory / spec.graph_file(precision))
        candidate = tag_posts(lambda inputs: session.run(["emissions"], inputs)[0], text.posts, encoder, scheme, crf,
                              built.dims, seed, f"tags: onnx {precision}", progress)  # fmt: skip
        report.add(spec.name, precision, case, [compare_tags(reference, candidate, strict=precision == "fp32")])


def _warn_unused_options(stages: tuple[str, ...], **options) -> None:
    """A vision or detector option given for an export without that stage is said, not silently dropped."""
    users = {"resnet_weights": "vision", "vision_arch": "vision", "detector_weights": "detector", "detector": "detector",
             "detector_size": "detector"}  # fmt: skip
    for name, value in options.items():
        if value is not None and users[name] not in stages:
            logger.warning("--%s is not used: the %s stage is not exported (stages: %s; name it in --stages to add it)",
                           name.replace("_", "-"), users[name], ", ".join(stages))  # fmt: skip


def _parity_text(path: Path | None, checkpoint, seed: int, read=None) -> TextSource:
    """The parity posts: ``path``'s (``read``: its posts, when the INT8 guard has read them already), else synthetic."""
    if path is None:
        return synthetic_text(checkpoint.text_encoder, SYNTHETIC_POSTS, seed)
    posts = [post.words for post in (read if read is not None else read_conll(path))]
    if not posts:
        raise ValueError(f"--data {path} holds no posts")
    return TextSource(posts, {"source": path.name, "sha256": sha256_file(path), "posts": len(posts)})


def _versions(trt_module) -> dict[str, str | None]:
    versions = {"python": platform.python_version()}
    for name in ("numpy", "torch", "torchvision", "transformers", "onnx", "onnxruntime", "onnxscript"):
        versions[name] = _version(name)
    versions["tensorrt"] = trt_module.__version__ if trt_module is not None else None
    return versions


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
