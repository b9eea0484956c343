"""The bundle writer: a temporary directory, renamed into place once everything is written and checked.

An interrupted export leaves at most a hidden ``.<name>.partial-*`` directory next to
the destination, never a directory under the bundle's name; ``manifest.json`` is the
last file written. ``verify_bundle`` is the writer's own check (tests, debugging);
the runtime's reader does its own against the schema below.

Layout::

    BUNDLE/
      manifest.json
      crf.npz                     start (T,), end (T,), transitions (T, T) float32; [i, j] = from i to j
      tokenizer/                  TextEncoder.save: tokenizer.json, aug_vocab.json, text_encoder.json
      detector.onnx vision.onnx tagger.onnx              FP32 graphs (the stages exported)
      detector.fp16.onnx vision.fp16.onnx tagger.fp16.onnx   mixed precision (--fp16 or --trt)
      tagger.int8.onnx vision.int8.onnx                  INT8 for CPUs, each behind an accuracy guard (--int8, --int8-vision)
      engines/<gpu>-trt<version>/<stage>.plan, <stage>.meta.json, timing.cache   (--trt)

manifest.json, format version 1 (``MANIFEST_FORMAT_VERSION``); every path is relative
to the bundle, with "/" separators::

    format           "mner-bundle"
    format_version   1; a reader refuses any other
    created          ISO 8601 UTC time of the export
    producer         {"tool": "mner-export", "mner": version}
    versions         {"python", "numpy", "torch", "torchvision", "transformers", "onnx", "onnxruntime",
                      "onnxscript", "tensorrt"}: versions used to export; "tensorrt" is null without --trt
    model            {"config": ModelConfig.to_dict() (mner.train.model),
                      "checkpoint": {"file": checkpoint file name, "sha256": its hash,
                                     "random_weights": {"preset", "seed"} or null}}
    tags             TagScheme.to_json(): {"format_version", "entity_types", "tags", "aux_tags"};
                     "tags" is the emission axis order (T entries)
    crf              {"file": "crf.npz", "dtype": "float32",
                      "arrays": {"start": [T], "end": [T], "transitions": [T, T]}}
    tokenizer        {"dir": "tokenizer", "files": [names], "max_length": word-pieces incl. [CLS]/[SEP]}
    preprocessing    {"text": {"splitter": how raw text is split into words, a name in
                                mner.runtime.splitters.SPLITTERS: "tweet" for a model trained on
                                TWITTER-format data, "whitespace" for text split on spaces; a
                                manifest without it reads as "tweet", see mner.runtime.bundle},
                      "image": mner.runtime.image.preprocessing_constants(), with "detector_size" set to the
                                exported detector's input side,
                      "objects": {"score_threshold", "iou_threshold", "max_objects", "top_k", "labels"}:
                                the arguments of mner.runtime.coco.select_objects and the detector's K}
    stage_selection  {"stages": [names], "chosen_by": "checkpoint" (the default) or "--stages",
                      "pictures_in_training": true / false / null (not recorded), "reason": in words,
                      "untrained_image_stages": image stages exported for a model that never saw a picture}
                     (export/stage_choice.py); absent from bundles exported before it
    stages           {name: stage} for the stages exported, name in "detector", "vision", "tagger":
        summary        one line
        inputs         [{"name", "dtype", "shape"}] in the graph's input order; dtype a numpy name
                       ("float32", "int64"); shape entries are ints or the names of dynamic axes
        outputs        the same, for the outputs
        dynamic_axes   {axis name: {"min": int, "max": int}}  ("batch"; the tagger also "sequence")
        opset          ONNX opset of every graph of the stage
        exporter       how the graph was made
        graphs         {"fp32": {"file"}, "fp16": {"file", "kept_fp32": fp16.Fp16Report.to_json()}};
                       "fp16" only with --fp16/--trt. Both precisions have the same inputs and outputs
                       (FP16 graphs cast at their boundary). "int8": {"file", "method", "guard": {"passed":
                       true, ...the figures}}, the tagger's with --int8 (export/int8.py: "word_agreement",
                       "entity_f1": {"fp32", "int8"}, "f1_drop_points", "limits", "data"), the vision
                       stage's with --int8-vision (export/vision_int8.py); same interface as FP32.
        weights        tagger: {"source": "checkpoint", "file", "sha256"};
                       vision/detector: {"arch", "source": "file", "file", "sha256", "identity"} or
                       {"arch", "source": "random", "seed", "identity"} -- torchvision's initialisation
                       under torch.manual_seed(seed), see mner.train.vision.*.from_weights(None, seed=seed)
        tolerance      {"fp32": {output: max relative error}, "fp16": {...}}; relative error is
                       max |onnx - torch| / max |torch| over the output
        stage facts    detector: "size", "top_k"; vision: "arch"; tagger: "max_sequence" (position
                       embeddings), "max_length"
    engines          {dir name: {"dir", "gpu", "compute_capability", "tensorrt", "cuda", "timing_cache",
                      "stages": {name: {"file", "meta", "source_graph",
                                        "profiles": [{input: {"min", "opt", "max"}}]}}}}; {} without --trt
    parity           {"passed": true, "text": what the tag checks read ({"source": file name, "sha256",
                      "posts"} or {"source": "synthetic", "posts", "seed"}),
                      "checks": [{"stage", "precision", "case", "output", "metric", "value", "limit",
                                  "passed", "max_abs", "note"}]}
    files            {path: {"sha256": hex digest, "bytes": size}} for every file of the bundle except
                     manifest.json itself; a reader refuses a bundle with a missing, changed or
                     unlisted file, naming it
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mner.runtime.bundle import (
    MANIFEST_FORMAT,
    MANIFEST_FORMAT_VERSION,
    MANIFEST_NAME,
    BundleError,
    check_files,
    read_manifest,
    sha256_file,
)

logger = logging.getLogger(__name__)

# The format is defined once, by the runtime's reader; the writer follows it, and checks what
# it wrote with the reader's own functions (one BundleError, one wording for every problem).
__all__ = ["MANIFEST_FORMAT", "MANIFEST_FORMAT_VERSION", "MANIFEST_NAME", "BundleError", "BundleWriter",
           "check_destination", "read_manifest", "sha256_file", "verify_bundle"]


def check_destination(out: Path, overwrite: bool) -> None:
    """Refuse a destination that exists (unless ``overwrite``) or whose parent cannot hold a directory."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or not overwrite):
        what = "a file" if not out.is_dir() else "a directory"
        hint = "" if not out.is_dir() else "; pass --overwrite to replace it"
        raise BundleError(f"--out {out} is {what} that already exists{hint}")
    if out.parent.exists() and not out.parent.is_dir():
        raise BundleError(f"--out {out}: its parent {out.parent} is not a directory")


class BundleWriter:
    """``with BundleWriter(out) as writer:`` write under ``writer.dir``, then ``writer.commit(manifest)``.

    Leaving the block without a commit (an exception) removes everything written.
    """

    def __init__(self, out: str | os.PathLike, overwrite: bool = False) -> None:
        self.out = Path(out)
        self.overwrite = overwrite
        check_destination(self.out, overwrite)
        self.dir: Path | None = None
        self.committed = False

    def __enter__(self) -> BundleWriter:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-", dir=self.out.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.dir, 0o777 & ~umask)  # mkdtemp's 0700 would otherwise become the bundle's mode
        return self

    def __exit__(self, *exc_info) -> None:
        if not self.committed and self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def commit(self, manifest: dict[str, Any]) -> Path:
        """Hash every file, write manifest.json last, and rename the directory into place."""
        assert self.dir is not None and not self.committed, "commit() once, inside the with block"
        files = {}
        for path in sorted(p for p in self.dir.rglob("*") if p.is_file()):
            files[path.relative_to(self.dir).as_posix()] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        manifest = {**manifest, "format": MANIFEST_FORMAT, "format_version": MANIFEST_FORMAT_VERSION, "files": files}
        _check_references(manifest, files)
        (self.dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        check_destination(self.out, self.overwrite)  # something may have appeared there meanwhile
        if self.out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.old-", dir=self.out.parent))
            os.rename(self.out, old / self.out.name)
            os.rename(self.dir, self.out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.dir, self.out)
        self.committed = True
        logger.info("bundle written to %s (%d files)", self.out, len(files) + 1)
        return self.out


def verify_bundle(bundle: str | os.PathLike) -> dict[str, Any]:
    """The manifest, after checking that every file is present, listed and has the recorded size and sha256.

    Raises BundleError naming every missing, changed or unlisted file (the runtime's check).
    """
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    check_files(bundle, manifest)
    return manifest


def _check_references(manifest: dict[str, Any], files: dict[str, Any]) -> None:
    """Every file the manifest names is in the bundle (an internal invariant of the writer)."""
    named = [manifest["crf"]["file"]]
    named += [f"{manifest['tokenizer']['dir']}/{name}" for name in manifest["tokenizer"]["files"]]
    named += [graph["file"] for stage in manifest["stages"].values() for graph in stage["graphs"].values()]
    for engine in manifest["engines"].values():
        named.append(engine["timing_cache"])
        named += [path for stage in engine["stages"].values() for path in (stage["file"], stage["meta"])]
    absent = [name for name in named if name not in files]
    assert not absent, f"the manifest names files the bundle lacks: {absent}"
