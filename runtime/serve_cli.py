"""Console entry point: mner-serve (thin: parse, build the pipeline, hand it to runtime.serve).

Imports click, the command-line kit and the limits' dataclasses only (standard library): ``--help`` must
answer in well under a second, so numpy, ONNX Runtime, FastAPI and prometheus_client are imported inside
the command.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from mner.runtime import clikit, serve_logging
from mner.runtime.serve_limits import HttpLimits, ServeConfig

_EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
# runtime.pipeline.BAD_IMAGE_POLICIES, spelled out so --help need not import the pipeline (a test keeps them equal)
ON_BAD_IMAGE = ("error", "text-only")
# runtime.image.MAX_PIXELS, what mner-export writes into a bundle's manifest (a test keeps them equal)
BUNDLE_MAX_PIXELS = 40_000_000
PRECISIONS = ("fp32", "fp16", "int8")  # runtime.bundle.PRECISIONS (a test keeps them equal)
# runtime.picture_cache.DEFAULT_PICTURE_CACHE_BYTES in MiB (a test keeps them equal)
PICTURE_CACHE_MIB = 64


@clikit.command()
@clikit.option("--engine", "bundle", required=True, type=_EXISTING_DIR, help="The bundle directory mner-export wrote.")
@clikit.option("--backend", type=click.Choice(["ort", "trt"]), default="ort",
               help="ort: ONNX Runtime; trt: the bundle's TensorRT engines for this GPU.")
@clikit.option("--device", type=click.Choice(["cpu", "cuda"]), show_default=False,
               help="ort: cpu [default] or cuda (needs onnxruntime-gpu); trt: cuda.")
@clikit.option("--precision", type=click.Choice(PRECISIONS), default="fp32",
               help="ort only: which graphs of the bundle to run (trt engines are built from the fp16 graphs); int8: "
                    "each stage's INT8 graph where the bundle has one (mner-export --int8), FP32 for the others.")
@clikit.option("--threads", type=click.IntRange(min=1), show_default=False,
               help="Intra-op threads of ONNX Runtime per stage [default: ONNX Runtime's, one per core].")
@clikit.option("--no-verify", is_flag=True,
               help="Trust the bundle: skip hashing its files at start (their presence and sizes are still checked).")
@clikit.option("--host", default="127.0.0.1", help="Interface to bind; 0.0.0.0 exposes the service.")
@clikit.option("--port", type=click.IntRange(0, 65535), default=8000,
               help="Port to listen on; 0: one the system chooses (the start-up line names it).")
@clikit.option("--batch-size", hidden_aliases=("--max-batch",), type=click.IntRange(min=1),
               default=ServeConfig.max_batch, help="The largest dynamic batch, in posts.")
@clikit.option("--max-wait-ms", type=click.FloatRange(min=0), default=ServeConfig.max_wait_ms,
               help="How long a batch waits for more requests after its first.")
@clikit.option("--max-queue", type=click.IntRange(min=1), default=ServeConfig.max_queue,
               help="Posts waiting for a batch; beyond it requests get 503 + Retry-After.")
@clikit.option("--timeout-s", type=click.FloatRange(min=0, min_open=True), default=ServeConfig.timeout_s,
               help="A request not answered by then gets 504.")
@clikit.option("--max-body-bytes", type=click.IntRange(min=1), default=ServeConfig.max_body_bytes,
               help="Bytes of one request body; more: 413.")
@clikit.option("--max-text-chars", type=click.IntRange(min=1), default=ServeConfig.max_text_chars,
               help="Characters of one post's text; more: 422 'text too long'.")
@clikit.option("--max-request-posts", hidden_aliases=("--max-posts",), type=click.IntRange(min=1),
               default=ServeConfig.max_request_posts, help="Posts in one /v1/tag/batch call; more: 422 'too many posts'.")
@clikit.option("--max-post-pieces", type=click.IntRange(min=1), default=ServeConfig.max_post_pieces,
               help="Word-pieces in one post's text (its tagger windows follow); more: 422 'over budget'.")
@clikit.option("--max-request-pieces", type=click.IntRange(min=1), default=ServeConfig.max_request_pieces,
               help="Word-pieces in all the posts of one request; more: 422 'over budget'.")
@clikit.option("--max-pixels", type=click.IntRange(min=1), show_default=False,
               help="Pixels (width x height, read from the header before decoding) of one picture; more: 422 "
                    f"'image too large' [default: the bundle's, {BUNDLE_MAX_PIXELS:,} as mner-export writes it].")
@clikit.option("--max-request-pixels", type=click.IntRange(min=1), default=ServeConfig.max_request_pixels,
               help="Pixels of all the pictures of one request; more: 422 'over budget'.")
@clikit.option("--max-batch-pixels", type=click.IntRange(min=1), default=ServeConfig.max_batch_pixels,
               help="Pixels of the pictures decoded in one step of the worker (a larger picture is a step alone).")
@clikit.option("--max-step-pieces", type=click.IntRange(min=1), default=ServeConfig.max_step_pieces,
               help="Word-pieces per step of the worker (one tagger call): what a short request may wait for behind "
                    "a long one.")
@clikit.option("--on-bad-image", type=click.Choice(ON_BAD_IMAGE), default="error",
               help="A picture that cannot be decoded: a 422 (an error result in a batch), or tag the text alone.")
@clikit.option("--picture-cache-mib", type=click.IntRange(min=0), default=PICTURE_CACHE_MIB,
               help="Memory for the features of pictures seen before (keyed by the bytes' SHA-256): a repeated "
                    "picture (a retweet) is neither decoded nor run through detector and vision; 0: off. "
                    "/metrics: mner_picture_cache_*.")  # fmt: skip
@clikit.option("--header-timeout-s", type=click.FloatRange(min=0, min_open=True), default=HttpLimits.header_timeout_s,
               help="Request line and headers must arrive within this; else 408 and the connection closes.")
@clikit.option("--body-timeout-s", type=click.FloatRange(min=0, min_open=True), default=HttpLimits.body_timeout_s,
               help="The whole body must arrive within this of its headers; else 408.")
@clikit.option("--keep-alive-s", type=click.FloatRange(min=0, min_open=True), default=HttpLimits.keep_alive_s,
               help="An idle keep-alive connection is closed after this (keep it above a load balancer's).")
@clikit.option("--max-connections", type=click.IntRange(min=1), default=HttpLimits.max_connections,
               help="Open connections; a connection past it is answered 503 and closed.")
@clikit.option("--drain-s", type=click.FloatRange(min=0), default=HttpLimits.drain_s,
               help="After SIGTERM, keep answering this long (/readyz 503, Connection: close) before stopping; "
                    "a second signal stops at once.")
@clikit.option("--access-log/--no-access-log", default=False,
               help="A log line per request (client, method, path, status, duration); /metrics has the totals.")
@clikit.option("--log-format", type=click.Choice(serve_logging.LOG_FORMATS), default="text",
               help="text, or json: one object per line (time, level, logger, message; access lines add method, "
                    "path, status, duration_ms).")
@clikit.verbose_option()
def serve_command(bundle, backend, device, precision, threads, no_verify, host, port, batch_size, max_wait_ms,
                  max_queue, timeout_s, max_body_bytes, max_text_chars, max_request_posts, max_post_pieces,
                  max_request_pieces, max_pixels, max_request_pixels, max_batch_pixels, max_step_pieces, on_bad_image,
                  picture_cache_mib, header_timeout_s, body_timeout_s, keep_alive_s, max_connections, drain_s,
                  access_log, log_format, verbose) -> None:  # fmt: skip
    """Serve an exported bundle over HTTP on HOST:PORT: POST /v1/tag and /v1/tag/batch; GET /healthz, /readyz,
    /metrics (Prometheus), /docs and /redoc (work offline), /openapi.json. One log line says the URL, bundle
    and limits once listening; SIGTERM drains, then stops."""
    with serve_logging.configured(log_format, level=logging.DEBUG if verbose else logging.INFO):
        from mner.runtime.pipeline import Pipeline  # noqa: PLC0415 -- numpy, ONNX Runtime: not for --help
        from mner.runtime.bundle import describe_precisions, read_manifest, stage_precisions  # noqa: PLC0415
        from mner.runtime.serve import BundleInfo, serve  # noqa: PLC0415 -- the web stack: not for --help

        try:
            config = ServeConfig(max_batch=batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue,
                                 timeout_s=timeout_s, max_body_bytes=max_body_bytes, max_text_chars=max_text_chars,
                                 max_request_posts=max_request_posts, max_post_pieces=max_post_pieces,
                                 max_request_pieces=max_request_pieces, max_request_pixels=max_request_pixels,
                                 max_batch_pixels=max_batch_pixels, max_step_pieces=max_step_pieces)  # fmt: skip
            limits = HttpLimits(header_timeout_s=header_timeout_s, body_timeout_s=body_timeout_s,
                                keep_alive_s=keep_alive_s, max_connections=max_connections, drain_s=drain_s)  # fmt: skip
            pixels = {} if max_pixels is None else {"max_pixels": max_pixels}  # none: the bundle's
            pipeline = Pipeline.from_bundle(bundle, backend=backend, device=device, precision=precision,
                                            threads=threads, verify=not no_verify, batch_size=batch_size,
                                            chunk_pieces=max_step_pieces, on_bad_image=on_bad_image,
                                            picture_cache_bytes=picture_cache_mib << 20, **pixels)  # fmt: skip
        except (ValueError, RuntimeError) as error:
            raise click.ClickException(str(error)) from error
        with pipeline:
            if precision == "int8":  # FP32 runs for the stages without an INT8 graph: say which run what
                precision = describe_precisions(stage_precisions(read_manifest(bundle), precision))
            info = BundleInfo.of(bundle, backend=backend, device=device, precision=precision, verified=not no_verify,
                                 stages=tuple(runner.stage.name for runner in pipeline.runners))  # fmt: skip
            serve(pipeline, config, limits, host=host, port=port, bundle=info, access_log=access_log)

if __name__ == "__main__":
    serve_command()
