"""Console entry point: mner-serve (thin: parse, build the pipeline, hand it to runtime.serve)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from mner.runtime.pipeline import BAD_IMAGE_POLICIES, Pipeline
from mner.runtime.serve_batcher import ServeConfig
from mner.runtime.serve_limits import HttpLimits

_EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


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
    serve_command()
