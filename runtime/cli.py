"""Console entry point of the runtime: mner-tag (mner-serve's is runtime.serve_cli).

``mner-tag --engine BUNDLE --input posts.jsonl --output tagged.jsonl``: one JSONL record per
input line (``runtime.tagfile`` says what a record holds and how a run resumes). ``-`` is
stdin for ``--input`` and stdout for ``--output`` (stdout is never resumed and gets no
sidecar; the summary and progress always go to stderr, so stdout holds records only).

Exit status (also in ``mner-tag --help``):

- 0: the run finished and every record of the output is tagged;
- 1: the run failed (the bundle, the input or the output could not be used, a write failed,
  or the pipeline failed on a whole batch): what was written is complete; run again to resume;
- 2: a usage error (click's: an unknown option, a missing --engine, --input and --conll together);
- 3: the run finished, and the output holds error records (this run's, or an earlier run's
  for a resumed file): every line has its record, and some of them say why a line was not tagged.

Which bundle and options wrote an output: ``<output>.meta.json`` (``tagfile.Provenance``); a
resume with another bundle, or with options that change records, is refused naming both, and
an output with records but no such file (an older mner-tag's) is refused as of unknown origin.

Imports click and the cheap command-line kit only at the top, so ``mner-tag --help`` answers
fast; the pipeline (numpy, OpenCV, ONNX Runtime) is imported when the command runs.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from mner.runtime import clikit
from mner.runtime.serve_limits import ServeConfig

# The library's values, written out so that --help needs no pipeline import (tests/runtime/test_tag_cli_io.py
# checks that they equal pipeline.BAD_IMAGE_POLICIES / DEFAULT_BATCH_SIZE, runners.BACKENDS and tagfile's limits).
BACKENDS = ("ort", "trt", "torch")
PRECISIONS = ("fp32", "fp16", "int8")  # runtime.bundle.PRECISIONS (a test keeps them equal)
BAD_IMAGE_POLICIES = ("error", "text-only")
DEFAULT_BATCH_SIZE = 16
DEFAULT_SORT_WINDOW = 1024  # runtime.batching's (a test keeps them equal)
MAX_TEXT_CHARS = ServeConfig.max_text_chars  # mner-serve's limits (serve_limits imports the standard library only)
MAX_LINE_BYTES = ServeConfig.max_body_bytes
PICTURE_CACHE_MIB = 64  # runtime.picture_cache.DEFAULT_PICTURE_CACHE_BYTES in MiB (a test keeps them equal)

EXIT_OK = 0
EXIT_FAILED = 1  # click.ClickException's status
EXIT_USAGE = 2  # click.UsageError's status
EXIT_ERROR_RECORDS = 3

STDIO = "-"

_EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
_EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


class _UnlessRay(click.ParamType):
    """``plain``'s checks, except after --ray (an eager option, so parsed first wherever it is written): then
    any string, since a Ray job's --input may be a folder of shards or a URI and its --output is a folder."""

    def __init__(self, plain: click.ParamType) -> None:
        self.plain = plain
        self.name = plain.name

    def convert(self, value, param, ctx):
        if ctx is not None and ctx.params.get("ray"):
            return value if isinstance(value, str) else os.fspath(value)
        return self.plain.convert(value, param, ctx)

    def to_info_dict(self):
        return self.plain.to_info_dict()

    def shell_complete(self, ctx, param, incomplete):
        return self.plain.shell_complete(ctx, param, incomplete)

EPILOG = f"""\b
Exit status:
  {EXIT_OK}  every record of the output is tagged
  {EXIT_FAILED}  the run failed (bundle, input or output unusable, a write failed, the
     pipeline failed on a whole batch); the records written are complete:
     run again to resume
  {EXIT_USAGE}  usage error
  {EXIT_ERROR_RECORDS}  the run finished and the output holds error records (this run's
     or, resuming, an earlier run's): every line has its record, some say
     why the line was not tagged (grep '"error"' OUTPUT)

Resuming: run again with the same --output and only the lines without a record are tagged. OUTPUT.meta.json
names the bundle that wrote OUTPUT (the sha256 of its manifest.json, which lists every file's sha256) and the
options that change records (--backend, --precision, --on-bad-image, --with-text, --max-text-chars,
--max-line-bytes, --input or --conll); a resume with another bundle or other such options is refused, naming
both. An OUTPUT with records but no OUTPUT.meta.json (an older mner-tag's) is refused as of unknown origin:
start a new one. Move OUTPUT.meta.json along with OUTPUT.

\b
Streams: --input - reads stdin (image paths under the current directory
unless --images is given); --output - writes stdout, which is never resumed
and gets no .meta.json; the summary and progress go to stderr.
"""


@clikit.command(epilog=EPILOG)
@clikit.option("--engine", "bundle", required=True, type=_EXISTING_DIR, help="Bundle directory written by mner-export.")
@clikit.option("--input", "input_path",
               type=_UnlessRay(click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path)),
               help='JSONL posts, "-" for stdin: {"id", "text", "image" | "image_base64"} per line; image is a path '
                    "to a file under --images (no extension: tried as is, then .jpg), image_base64 the picture "
                    "inline; or neither.")  # fmt: skip
@clikit.option("--conll", "conll_path", type=_EXISTING_FILE,
               help="A CoNLL + IMGID file instead of --input: tags it and reports P/R/F1 against its tags.")
@clikit.option("--output", "-o", "output", required=True, hidden_aliases=("--out",),
               type=_UnlessRay(click.Path(dir_okay=False, allow_dash=True, path_type=Path)),
               help='JSONL, one record per input line, in input order; "-" for stdout (not resumable). An existing '
                    "file is resumed: the lines it has are skipped. With --ray: a folder (or URI) for the output "
                    "shards.")  # fmt: skip
@clikit.option("--images", type=_EXISTING_DIR,
               help="Directory image paths are relative to (--conll: holds <IMGID>.jpg); no picture is read from "
                    "outside it (symlinks and .. are resolved). Default: the --input file's directory; the current "
                    "directory for --input -; with --conll, posts are tagged without pictures.")  # fmt: skip
@clikit.option("--backend", type=click.Choice(BACKENDS), default="ort",
               help="ort: ONNX Runtime; trt: the bundle's TensorRT engines; torch: the PyTorch reference (needs "
                    "--checkpoint and torch).")  # fmt: skip
@clikit.option("--device", type=click.Choice(["cpu", "cuda"]), help="ort: cpu (default) or cuda (onnxruntime-gpu).")
@clikit.option("--precision", type=click.Choice(PRECISIONS), default="fp32",
               help="ort only: which graphs of the bundle to run; int8: each stage's INT8 graph where the bundle "
                    "has one (mner-export --int8 writes the tagger's), FP32 for the others.")
@clikit.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH_SIZE,
               help="Posts per batch; records are appended (and fsynced) after each batch.")
@clikit.option("--sort-window", type=click.IntRange(min=1),
               help="Tag the posts of each run of this many input lines in order of their word-pieces (less "
                    "padding; records are still written in input order, as soon as every line before has its "
                    "record, so a kill costs at most one window's tagging). 1: input order. Default: "
                    f"{DEFAULT_SORT_WINDOW:,} for a file; 1 for --input - (a live feed gets each record once its "
                    "batch is tagged, not once a window has filled).")  # fmt: skip
@clikit.option("--threads", type=click.IntRange(min=1),
               help="ort only: ONNX Runtime's intra-op threads per graph. Default: its own (one per core).")
@clikit.option("--on-bad-image", type=click.Choice(BAD_IMAGE_POLICIES),
               help="A picture that cannot be used: an error record, or tag the text alone. "
                    "Default: error for --input, text-only for --conll.")
@clikit.option("--with-text", is_flag=True,
               help='Each record carries the post\'s text as "text" (--conll: the words joined by spaces); entity '
                    "start/end index it.")  # fmt: skip
@clikit.option("--checkpoint", type=_EXISTING_FILE, hidden_aliases=("--ckpt",),
               help="--backend torch: the best.pt the bundle was exported from.")
@clikit.option("--resnet-weights", type=_EXISTING_FILE, help="--backend torch: the vision weights file, if the bundle used one.")
@clikit.option("--detector-weights", type=_EXISTING_FILE,
               help="--backend torch: the detector weights file, if the bundle used one.")
@clikit.option("--metrics", "metrics_path", type=click.Path(dir_okay=False, path_type=Path),
               help="--conll: also write the scores as JSON here.")
@clikit.option("--max-text-chars", type=click.IntRange(min=1), default=MAX_TEXT_CHARS,
               help="A post whose text is longer gets an error record (mner-serve's limit).")
@clikit.option("--max-line-bytes", type=click.IntRange(min=1), default=MAX_LINE_BYTES,
               help="--input: a longer line gets an error record and is skipped unread (mner-serve's body limit).")
@clikit.option("--no-verify", is_flag=True,
               help="Trust the bundle: check its files' sizes but do not hash them (faster start-up).")
@clikit.option("--picture-cache-mib", type=click.IntRange(min=0), default=PICTURE_CACHE_MIB,
               help="Memory for the features of pictures seen before (keyed by the bytes' SHA-256): a repeated "
                    "picture (a retweet) is neither decoded nor run through detector and vision; 0: off. The "
                    "summary says its hits and misses.")  # fmt: skip
@clikit.option("--ray", is_flag=True, is_eager=True,
               help="Tag on Ray Data (pip install 'mner[ray]'): --input is a JSONL or Parquet file, a folder of them "
                    "or a URI; --output a folder getting one shard per input shard, written whole, named after it "
                    "and the bundle's sha256; a rerun skips the shards written.")  # fmt: skip
@clikit.option("--ray-address", help="--ray: the Ray cluster to join (auto: this machine's). Default: a local Ray for the run.")
@clikit.option("--ray-cpus", type=click.IntRange(min=1), help="--ray, local Ray: its CPUs. Default: all.")
@clikit.option("--actors", type=click.IntRange(min=1), default=1, help="--ray: tagging actors, one Pipeline each.")
@clikit.option("--cpus-per-actor", type=click.FloatRange(min=0), default=1.0,
               help="--ray: CPUs per actor (also ONNX Runtime's threads unless --threads).")
@clikit.option("--gpus-per-actor", type=click.FloatRange(min=0), default=0.0, help="--ray: GPUs per actor (--device cuda).")
@clikit.option("--output-format", type=click.Choice(["jsonl", "parquet"]), default="jsonl",
               help="--ray: the output shards' format (Parquet: the same records as columns, id as text).")
@clikit.progress_option()
@clikit.verbose_option()
def tag_command(bundle, input_path, conll_path, output, images, backend, device, precision, batch_size, sort_window, threads,
                on_bad_image, with_text, checkpoint, resnet_weights, detector_weights, metrics_path, max_text_chars,
                max_line_bytes, no_verify, picture_cache_mib, ray, ray_address, ray_cpus, actors, cpus_per_actor,
                gpus_per_actor, output_format, progress, verbose) -> None:  # fmt: skip
    """Tag posts with an exported bundle: entities with character offsets, one JSONL record per input line."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    ray_options = {"--ray-address": ray_address, "--ray-cpus": ray_cpus, "--actors": actors != 1,
                   "--cpus-per-actor": cpus_per_actor != 1.0, "--gpus-per-actor": gpus_per_actor != 0.0,
                   "--output-format": output_format != "jsonl"}  # fmt: skip
    if ray:
        _tag_on_ray(bundle=bundle, input_path=input_path, conll_path=conll_path, output=output, images=images,
                    backend=backend, device=device, precision=precision, batch_size=batch_size, sort_window=sort_window,
                    threads=threads, on_bad_image=on_bad_image, with_text=with_text, checkpoint=checkpoint,
                    metrics_path=metrics_path, max_text_chars=max_text_chars, max_line_bytes=max_line_bytes,
                    no_verify=no_verify, picture_cache_mib=picture_cache_mib, address=ray_address, num_cpus=ray_cpus,
                    actors=actors, cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor,
                    output_format=output_format, progress=progress, verbose=verbose)  # fmt: skip
        return
    given = [name for name, value in ray_options.items() if value not in (None, False)]
    if given:
        raise click.UsageError(f"{', '.join(given)} go(es) with --ray")
    if progress is not False:  # on a non-terminal, progress is an INFO line of mner.progress every few seconds
        logging.getLogger("mner.progress").setLevel(logging.INFO)
    if (input_path is None) == (conll_path is None):
        raise click.UsageError("give exactly one of --input (JSONL) and --conll (CoNLL + IMGID)")
    if input_path is not None and str(input_path).lower().endswith(".parquet"):
        raise click.UsageError(f"--input {input_path}: mner-tag reads JSONL; Parquet shards are read with --ray")
    if metrics_path is not None and conll_path is None:
        raise click.UsageError("--metrics goes with --conll")
    if threads is not None and backend != "ort":
        raise click.UsageError(f"--threads sets ONNX Runtime's threads: it goes with --backend ort, not {backend}")
    if on_bad_image is None:
        on_bad_image = "error" if input_path is not None else "text-only"
    if sort_window is None:
        sort_window = 1 if str(input_path) == STDIO else DEFAULT_SORT_WINDOW
    to_stdout = str(output) == STDIO
    from mner.runtime.conll import format_report  # noqa: PLC0415 -- the pipeline's imports wait until a run
    from mner.runtime.pipeline import Pipeline  # noqa: PLC0415
    from mner.runtime.bundle import manifest_sha256, read_manifest, stage_precisions  # noqa: PLC0415
    from mner.runtime.batching import PaddingCount  # noqa: PLC0415
    from mner.runtime.tagfile import OutputClosed, Provenance, tag_conll, tag_jsonl  # noqa: PLC0415

    sink = click.open_file(STDIO, "wb") if to_stdout else output
    try:
        pipeline = Pipeline.from_bundle(
            bundle, backend=backend, device=device, precision=precision, checkpoint=checkpoint,
            resnet_weights=resnet_weights, detector_weights=detector_weights, threads=threads, verify=not no_verify,
            batch_size=batch_size, on_bad_image=on_bad_image, picture_cache_bytes=picture_cache_mib << 20,
        )  # fmt: skip
        with pipeline:
            provenance = None
            if not to_stdout:
                options = {"input": "jsonl" if input_path is not None else "conll", "backend": backend,
                           "precision": precision, "on_bad_image": on_bad_image, "with_text": with_text,
                           "max_text_chars": max_text_chars}  # fmt: skip
                if input_path is not None:
                    options["max_line_bytes"] = max_line_bytes
                details = {"device": device or "cpu", "batch_size": batch_size, "sort_window": sort_window,
                           "mner_version": _version(),
                           "input": str(input_path or conll_path), "images": None if images is None else str(images),
                           "started": _now()}  # fmt: skip
                if precision == "int8":  # which graph each stage runs: FP32 where a stage has no INT8 graph
                    details["graphs"] = stage_precisions(read_manifest(bundle), precision)
                provenance = Provenance(manifest_sha256(bundle), options, os.path.abspath(bundle), details)
            common = {"images": images, "progress": progress, "max_text_chars": max_text_chars, "with_text": with_text,
                      "provenance": provenance, "sort_window": sort_window}  # fmt: skip
            pipeline.padding = PaddingCount()  # for the summary line
            if input_path is not None:
                source = click.open_file(STDIO, "rb") if str(input_path) == STDIO else input_path
                summary = tag_jsonl(pipeline, input=source, output=sink, max_line_bytes=max_line_bytes, **common)
            else:
                summary = tag_conll(pipeline, conll=conll_path, output=sink, **common)
            summary.padding = pipeline.padding
    except OutputClosed as error:
        _silence_stdout()
        raise click.ClickException(str(error)) from error
    except (ValueError, RuntimeError) as error:
        raise click.ClickException(str(error)) from error
    except OSError as error:  # reading --input or --conll failed (a disk error): one line, not a traceback
        raise click.ClickException(f"{error.filename or 'a file'}: {error.strerror or error}") from error
    click.echo(summary.format("<stdout>" if to_stdout else output), err=True)
    picture_cache = getattr(pipeline, "picture_cache", None)  # None: no picture stages or --picture-cache-mib 0
    cache = picture_cache.stats() if picture_cache is not None else None
    if cache is not None and cache.hits + cache.misses:
        from mner.runtime.picture_cache import format_stats  # noqa: PLC0415

        click.echo(format_stats(cache), err=True)
    if summary.metrics is not None:
        click.echo(format_report(summary.metrics), err=to_stdout)  # stdout holds records only
        if metrics_path is not None:
            try:
                metrics_path.write_text(json.dumps(summary.metrics, indent=2) + "\n", encoding="utf-8")
            except OSError as error:
                raise click.ClickException(f"cannot write --metrics {metrics_path}: {error.strerror or error}") from error
    if summary.error_records:
        click.get_current_context().exit(EXIT_ERROR_RECORDS)


def _tag_on_ray(*, bundle, input_path, conll_path, output, images, backend, device, precision, batch_size, sort_window,
                threads, on_bad_image, with_text, checkpoint, metrics_path, max_text_chars, max_line_bytes, no_verify,
                picture_cache_mib, address, num_cpus, actors, cpus_per_actor, gpus_per_actor, output_format,
                progress, verbose) -> None:  # fmt: skip
    """mner-tag --ray: check what a Ray job cannot take, run ``ray_tag.tag_ray``, print its counts."""
    if input_path is None or conll_path is not None:
        raise click.UsageError("--ray tags --input (JSONL or Parquet shards), not --conll")
    refused = {"--checkpoint": checkpoint is not None,
               "--metrics": metrics_path is not None, "--input -": str(input_path) == STDIO,
               "--output -": str(output) == STDIO, "--backend torch": backend == "torch"}  # fmt: skip
    given = [name for name, value in refused.items() if value]
    if given:
        raise click.UsageError(f"--ray does not take {', '.join(given)} (files and folders only; ort or trt)")
    from mner.runtime.extras import require_extra  # noqa: PLC0415

    require_extra("ray", command="mner-tag --ray")
    if not verbose:
        # Ray and Ray Data log each start, plan and finish at INFO to stderr through handlers of their own; the
        # user gets mner-tag's summary line instead, and Ray's warnings and errors as they come (-v: all of it)
        import ray.data  # noqa: F401, PLC0415 -- configures Ray Data's loggers, which this then turns down

        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.WARNING)
    from mner.runtime.ray_tag import tag_ray  # noqa: PLC0415

    try:
        summary = tag_ray(
            bundle, input_path, output, images=images, address=address, num_cpus=num_cpus, actors=actors,
            cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor, batch_size=batch_size, backend=backend,
            device=device, precision=precision, threads=threads, on_bad_image=on_bad_image or "error",
            with_text=with_text, max_text_chars=max_text_chars, max_line_bytes=max_line_bytes, verify=not no_verify,
            sort_window=sort_window or DEFAULT_SORT_WINDOW, picture_cache_bytes=picture_cache_mib << 20,
            output_format=output_format,
            # Ray Data's bars where a person watches (as mner-tag's own progress), none with --no-progress
            progress=progress if progress is not None else sys.stderr.isatty(),
            bundle_details={"mner_version": _version(), "started": _now(), "input": str(input_path)},
        )  # fmt: skip
    except (ValueError, RuntimeError) as error:
        raise click.ClickException(str(error)) from error
    except OSError as error:
        raise click.ClickException(f"{error.filename or 'a file'}: {error.strerror or error}") from error
    click.echo(summary.format(), err=True)
    if summary.failed:
        raise click.ClickException(f"{len(summary.failed)} of {summary.shards} shards could not be tagged (above)")
    if summary.error_records:
        click.get_current_context().exit(EXIT_ERROR_RECORDS)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version("mner")
    except PackageNotFoundError:
        return "unknown"


def _now() -> str:
    from datetime import datetime, timezone  # noqa: PLC0415

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _silence_stdout() -> None:
    """The reader of stdout is gone: point stdout at /dev/null, so that the interpreter's last flush at exit
    does not fail again with a second, unhandled BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file descriptor (a test runner's stdout)
        pass


if __name__ == "__main__":
    tag_command()
