"""Console entry points of the runtime: mner-tag and mner-serve."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from mner.runtime.conll import format_report
from mner.runtime.pipeline import BAD_IMAGE_POLICIES, DEFAULT_BATCH_SIZE, Pipeline
from mner.runtime.runners import BACKENDS
from mner.runtime.serve_batcher import ServeConfig
from mner.runtime.serve_limits import HttpLimits
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


@click.command()
@click.option("--engine", "bundle", required=True, type=_EXISTING_DIR, help="Bundle directory written by mner-export.")
@click.option("--backend", type=click.Choice(["ort", "trt"]), default="ort", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="ort: cpu (default) or cuda (onnxruntime-gpu).")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="ort only: which graphs of the bundle to run.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind; 0.0.0.0 exposes the service.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--max-batch", type=click.IntRange(min=1), default=ServeConfig.max_batch, show_default=True,
              help="Posts per dynamic batch.")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=ServeConfig.max_wait_ms, show_default=True,
              help="How long a batch waits for more requests after its first.")
@click.option("--max-queue", type=click.IntRange(min=1), default=ServeConfig.max_queue, show_default=True,
              help="Posts waiting for a batch; beyond it requests get 503 + Retry-After.")
@click.option("--timeout-s", type=click.FloatRange(min=0, min_open=True), default=ServeConfig.timeout_s, show_default=True,
              help="A request not answered by then gets 504.")
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=ServeConfig.max_body_bytes, show_default=True)
@click.option("--max-text-chars", type=click.IntRange(min=1), default=ServeConfig.max_text_chars, show_default=True)
@click.option("--max-posts", type=click.IntRange(min=1), default=ServeConfig.max_posts, show_default=True,
              help="Posts in one /v1/tag/batch call.")
@click.option("--max-post-pieces", type=click.IntRange(min=1), default=ServeConfig.max_post_pieces, show_default=True,
              help="Word-pieces in one post's text (its tagger windows follow); more: 422 over budget.")
@click.option("--max-request-pieces", type=click.IntRange(min=1), default=ServeConfig.max_request_pieces,
              show_default=True, help="Word-pieces in all the posts of one request; more: 422 over budget.")
@click.option("--max-request-pixels", type=click.IntRange(min=1), default=ServeConfig.max_request_pixels,
              show_default=True, help="Decoded pixels of all the pictures of one request; more: 422 over budget.")
@click.option("--max-batch-pixels", type=click.IntRange(min=1), default=ServeConfig.max_batch_pixels, show_default=True,
              help="Pictures decoded in one step of the worker (a larger picture is a step alone).")
@click.option("--max-step-pieces", type=click.IntRange(min=1), default=ServeConfig.max_step_pieces, show_default=True,
              help="Word-pieces per step of the worker (one tagger call): what a short request may wait for behind "
                   "a long one.")
@click.option("--on-bad-image", type=click.Choice(BAD_IMAGE_POLICIES), default="error", show_default=True,
              help="A picture that cannot be decoded: a 422 (an error result in a batch), or tag the text alone.")
@click.option("--header-timeout-s", type=click.FloatRange(min=0, min_open=True), default=HttpLimits.header_timeout_s,
              show_default=True, help="Request line and headers must arrive within this; else 408 and the connection closes.")
@click.option("--body-timeout-s", type=click.FloatRange(min=0, min_open=True), default=HttpLimits.body_timeout_s,
              show_default=True, help="The whole body must arrive within this of its headers; else 408.")
@click.option("--keep-alive-s", type=click.FloatRange(min=0, min_open=True), default=HttpLimits.keep_alive_s,
              show_default=True, help="An idle keep-alive connection is closed after this (keep it above a load balancer's).")
@click.option("--max-connections", type=click.IntRange(min=1), default=HttpLimits.max_connections, show_default=True,
              help="Open connections; a connection past it is answered 503 and closed.")
@click.option("--drain-s", type=click.FloatRange(min=0), default=HttpLimits.drain_s, show_default=True,
              help="After SIGTERM, keep answering this long (/readyz 503, Connection: close) before stopping; "
                   "a second signal stops at once.")
def serve_command(bundle, backend, device, precision, host, port, max_batch, max_wait_ms, max_queue, timeout_s,
                  max_body_bytes, max_text_chars, max_posts, max_post_pieces, max_request_pieces, max_request_pixels,
                  max_batch_pixels, max_step_pieces, on_bad_image, header_timeout_s, body_timeout_s, keep_alive_s,
                  max_connections, drain_s) -> None:  # fmt: skip
    """Serve an exported bundle over HTTP: POST /v1/tag and /v1/tag/batch, /healthz, /readyz, /metrics, /docs."""
    from mner.runtime.serve import serve  # noqa: PLC0415 -- mner-tag need not import the web stack

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = ServeConfig(max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue, timeout_s=timeout_s,
                             max_body_bytes=max_body_bytes, max_text_chars=max_text_chars, max_posts=max_posts,
                             max_post_pieces=max_post_pieces, max_request_pieces=max_request_pieces,
                             max_request_pixels=max_request_pixels, max_batch_pixels=max_batch_pixels,
                             max_step_pieces=max_step_pieces)  # fmt: skip
        limits = HttpLimits(header_timeout_s=header_timeout_s, body_timeout_s=body_timeout_s, keep_alive_s=keep_alive_s,
                            max_connections=max_connections, drain_s=drain_s)  # fmt: skip
        pipeline = Pipeline.from_bundle(bundle, backend=backend, device=device, precision=precision,
                                        batch_size=max_batch, chunk_pieces=max_step_pieces,
                                        on_bad_image=on_bad_image)  # fmt: skip
    except (ValueError, RuntimeError) as error:
        raise click.ClickException(str(error)) from error
    with pipeline:
        serve(pipeline, config, limits, host=host, port=port)


if __name__ == "__main__":
    tag_command()
