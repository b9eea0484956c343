"""Console entry point: mner-triton (thin: parse, then ``triton_repository.write_repository``).

Imports click and the command-line kit only, so ``--help`` answers fast.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from mner.runtime import clikit

_EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
# runtime.triton_repository's FLAVOURS, KINDS and RepositoryOptions defaults, spelled out so that --help imports
# nothing heavy (tests/runtime/test_triton_repository.py keeps them equal)
FLAVOURS = ("python", "native")
KINDS = ("cpu", "gpu")
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULTS = {"max_batch_size": 32, "max_queue_delay_us": 2000, "stage_instances": 1, "front_instances": 2,
            "max_text_chars": 10_000}  # fmt: skip


@clikit.command()
@clikit.option("--engine", "bundle", required=True, type=_EXISTING_DIR, help="The bundle directory mner-export wrote.")
@clikit.option("-o", "--output", required=True, type=click.Path(path_type=Path),
               help="The model repository to write (a new or empty directory).")
@clikit.option("--flavour", type=click.Choice(FLAVOURS), default="python",
               help="python: the stages run in Triton's Python backend on mner's ONNX Runtime runner (any Triton, "
                    "CPU); native: Triton's own onnxruntime backend (or tensorrt, with --engines) runs them.")
@clikit.option("--precision", type=click.Choice(PRECISIONS), default="fp32",
               help="Which ONNX graphs the stage models serve; int8: each stage's INT8 graph where the bundle has "
                    "one (mner-export --int8), FP32 for the others; fp16 is for GPUs.")
@clikit.option("--engines", metavar="FOLDER",
               help="native only: serve the TensorRT plans of this folder of the bundle's engines/ (built on the "
                    "serving GPU model with mner-export --trt) as tensorrt_plan models.")
@clikit.option("--kind", type=click.Choice(KINDS), show_default=False,
               help="Where the stage models' instances run [default: gpu for native, cpu for python].")
@clikit.option("--batch-size", type=click.IntRange(min=1), default=DEFAULTS["max_batch_size"],
               help="max_batch_size of every model: posts per call of the front model, rows per stage call.")
@clikit.option("--preferred-batch-size", "preferred", type=click.IntRange(min=1), multiple=True,
               help="A size the dynamic batcher prefers to form (repeat the option for several) [default: none, "
                    "Triton forms the largest batch it can].")
@clikit.option("--max-queue-delay-us", type=click.IntRange(min=0), default=DEFAULTS["max_queue_delay_us"],
               help="How long the dynamic batcher holds a request for others to join it, in microseconds.")
@clikit.option("--instances", type=click.IntRange(min=1), default=DEFAULTS["stage_instances"],
               help="Instances of each stage model (per GPU with --kind gpu).")
@clikit.option("--front-instances", type=click.IntRange(min=1), default=DEFAULTS["front_instances"],
               help="Instances of the front model mner (CPU): one prepares posts while another waits for its stages.")
@clikit.option("--max-text-chars", type=click.IntRange(min=1), default=DEFAULTS["max_text_chars"],
               help="Characters of one post's text; more: that request's error.")
@clikit.verbose_option()
def triton_command(bundle, output, flavour, precision, engines, kind, batch_size, preferred, max_queue_delay_us,
                   instances, front_instances, max_text_chars, verbose) -> None:  # fmt: skip
    """Write a Triton Inference Server model repository for a bundle: the stage models detector, vision and
    tagger, and the front model mner (TEXT, optional IMAGE -> ENTITIES, the JSON mner-serve answers)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from mner.runtime.triton_repository import RepositoryOptions, write_repository  # noqa: PLC0415 -- not for --help

    try:
        options = RepositoryOptions(flavour=flavour, precision=precision, engines=engines, kind=kind,
                                    max_batch_size=batch_size, preferred_batch_sizes=tuple(preferred),
                                    max_queue_delay_us=max_queue_delay_us, stage_instances=instances,
                                    front_instances=front_instances, max_text_chars=max_text_chars)  # fmt: skip
        out = write_repository(bundle, output, options)
    except ValueError as error:  # BundleError is one
        raise click.ClickException(str(error)) from error
    except OSError as error:  # -o under a file, a full disk, no permission: one line, not a traceback (as mner-tag)
        raise click.ClickException(f"{error.filename or 'a file'}: {error.strerror or error}") from error
    models = sorted(p.parent.name for p in out.glob("*/config.pbtxt"))
    click.echo(f"wrote {out}: models {', '.join(models)} ({flavour} flavour); clients call the model 'mner'")


if __name__ == "__main__":
    triton_command()
