"""Console entry point of the runtime: mner-tag (mner-serve's is runtime.serve_cli)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from mner.runtime.conll import format_report
from mner.runtime.pipeline import BAD_IMAGE_POLICIES, DEFAULT_BATCH_SIZE, Pipeline
from mner.runtime.runners import BACKENDS
from mner.runtime.serve_batcher import ServeConfig
from mner.runtime.tagfile import tag_conll, tag_jsonl

_EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
_EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command()
@click.option("--engine", "bundle", required=True, type=_EXISTING_DIR, help="Bundle directory written by mner-export.")
@click.option("--input", "input_path", type=_EXISTING_FILE,
              help='JSONL posts: {"id", "text", "image" | "image_base64"} per line; image is a path to a file under '
                   "--images (no extension: tried as is, then .jpg), image_base64 the picture inline; or neither.")
@click.option("--conll", "conll_path", type=_EXISTING_FILE,
              help="A CoNLL + IMGID file instead of --input: tags it and reports P/R/F1 against its tags.")
@click.option("--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="JSONL, one record per input line. An existing file is resumed: lines it has are skipped.")
@click.option("--images", type=_EXISTING_DIR,
              help="Directory image paths are relative to (--conll: holds <IMGID>.jpg); no picture is read from "
                   "outside it (symlinks and .. are resolved). Default: the input's directory; with --conll and no "
                   "--images, posts are tagged without pictures.")
@click.option("--backend", type=click.Choice(BACKENDS), default="ort", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="ort: cpu (default) or cuda (onnxruntime-gpu).")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="ort only: which graphs of the bundle to run.")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH_SIZE, show_default=True)
@click.option("--on-bad-image", type=click.Choice(BAD_IMAGE_POLICIES),
              help="A picture that cannot be used: an error record, or tag the text alone. "
                   "Default: error for --input, text-only for --conll.")
@click.option("--checkpoint", type=_EXISTING_FILE, help="--backend torch: the best.pt the bundle was exported from.")
@click.option("--resnet-weights", type=_EXISTING_FILE, help="--backend torch: the vision weights file, if the bundle used one.")
@click.option("--detector-weights", type=_EXISTING_FILE, help="--backend torch: the detector weights file, if the bundle used one.")
@click.option("--metrics", "metrics_path", type=click.Path(dir_okay=False, path_type=Path),
              help="--conll: also write the scores as JSON here.")
@click.option("--max-text-chars", type=click.IntRange(min=1), default=ServeConfig.max_text_chars, show_default=True,
              help="A post whose text is longer gets an error record (mner-serve's limit).")
@click.option("--max-line-bytes", type=click.IntRange(min=1), default=ServeConfig.max_body_bytes, show_default=True,
              help="--input: a longer line gets an error record and is skipped unread (mner-serve's body limit).")
@click.option("--progress/--no-progress", default=True, show_default=True)
def tag_command(bundle, input_path, conll_path, output, images, backend, device, precision, batch_size, on_bad_image,
                checkpoint, resnet_weights, detector_weights, metrics_path, max_text_chars, max_line_bytes,
                progress) -> None:  # fmt: skip
    """Tag posts with an exported bundle: entities with character offsets, one JSONL record per input line."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if (input_path is None) == (conll_path is None):
        raise click.UsageError("give exactly one of --input (JSONL) and --conll (CoNLL + IMGID)")
    if metrics_path is not None and conll_path is None:
        raise click.UsageError("--metrics goes with --conll")
    if on_bad_image is None:
        on_bad_image = "error" if input_path is not None else "text-only"
    try:
        pipeline = Pipeline.from_bundle(
            bundle, backend=backend, device=device, precision=precision, checkpoint=checkpoint,
            resnet_weights=resnet_weights, detector_weights=detector_weights, batch_size=batch_size,
            on_bad_image=on_bad_image,
        )  # fmt: skip
        with pipeline:
            if input_path is not None:
                summary = tag_jsonl(pipeline, input=input_path, output=output, images=images, progress=progress,
                                    max_text_chars=max_text_chars, max_line_bytes=max_line_bytes)  # fmt: skip
            else:
                summary = tag_conll(pipeline, conll=conll_path, output=output, images=images, progress=progress,
                                    max_text_chars=max_text_chars)  # fmt: skip
    except (ValueError, RuntimeError) as error:
        raise click.ClickException(str(error)) from error
    except OSError as error:  # reading --input or --conll failed (a disk error): one line, not a traceback
        raise click.ClickException(f"{error.filename or 'a file'}: {error.strerror or error}") from error
    click.echo(summary.format(output), err=True)
    if summary.metrics is not None:
        click.echo(format_report(summary.metrics))
        if metrics_path is not None:
            try:
                metrics_path.write_text(json.dumps(summary.metrics, indent=2) + "\n", encoding="utf-8")
            except OSError as error:
                raise click.ClickException(f"cannot write --metrics {metrics_path}: {error.strerror or error}") from error


if __name__ == "__main__":
    tag_command()
