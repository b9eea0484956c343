"""Console entry point: mner-bench (thin: parse, measure with bench.run_bench, write with report.write_report).

Imports click, the command-line kit and torch-free tables only at the top, so that
``mner-bench --help`` answers fast; the measuring code (numpy, the runtime, and torch in
the workers) is imported when the command runs.
"""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import Any, Mapping

import click

from mner.benchmarks.backends import BACKENDS
from mner.runtime import clikit
from mner.runtime.extras import require_extra

SORT_WINDOW = 1024  # runtime.batching.DEFAULT_SORT_WINDOW, written out so --help imports no numpy (a test keeps them equal)
SPLITS = clikit.SPLITS  # the keys of mner.runtime.conll.SPLIT_FILES (a test checks they agree)


def _csv(kind: type):
    def parse(ctx, param, value: str):
        try:
            items = [kind(item.strip()) for item in value.split(",") if item.strip()]
        except ValueError:
            raise click.BadParameter(f"expected comma-separated {kind.__name__}s, got {value!r}") from None
        if not items:
            raise click.BadParameter("must not be empty")
        return items

    return parse


def summary_lines(report: Mapping[str, Any], targets: bool = True) -> list[str]:
    """A few lines: throughput per backend and batch size, agreement, and (``targets``) the CPU targets."""
    lines = []
    for name, backend in report["backends"].items():
        cells = []
        for size, run in backend["batches"].items():
            agree = run["parity"].get("word_agreement")
            real = (run.get("padding") or {}).get("measured", {}).get("ratio")
            cells.append(f"B={size} {run['throughput_posts_s']:.1f} posts/s (p50 {run['latency_ms']['p50']:.1f} ms"
                         + (f", {100 * agree:.2f} % agreement" if agree is not None else "")
                         + (f", {100 * real:.0f} % of tagger pieces real" if real is not None else "") + ")")  # fmt: skip
        lines.append(f"  {name:14s} load {backend['load_s']:.1f} s; " + "; ".join(cells))
    for row in report["targets"] if targets else []:
        verdict = "met" if row["met"] else "MISSED"
        lines.append(f"  target: {row['what']} >= {row['target']:.1f}x at B={row['batch_size']}: "
                     f"{row['measured']:.2f}x ({verdict})")  # fmt: skip
    return lines


def _show_progress_logs(enabled: bool | None) -> None:
    """Let runtime.progress's periodic INFO lines (stderr not a terminal) reach stderr, unless --no-progress."""
    if enabled is False:
        return
    logger = logging.getLogger("mner.progress")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


_EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
_FILE = click.Path(dir_okay=False, path_type=Path)


@clikit.command()
@clikit.option("--engine", "bundle", required=True, type=click.Path(file_okay=False, path_type=Path),
               help="The bundle directory mner-export wrote.")
@clikit.option("--backends", default="torch,ort", callback=_csv(str),
               help=f"Comma-separated, of: {', '.join(BACKENDS)}. torch is the reference (eager FP32, padded to the window).")
@clikit.option("--batch-size", "batch_sizes", default="1,8,32", callback=_csv(int), hidden_aliases=("--batch-sizes",),
               help="Posts per batch: a comma-separated list, each measured.")
@clikit.option("--data", type=click.Path(exists=True, path_type=Path),
               help="TWITTER-format CoNLL data with gold tags (entity F1): a folder with train.txt, valid.txt and "
                    "test.txt (its --split is used), or one such file.  [default: the built-in sample, with pictures]")
@clikit.option("--split", type=click.Choice(SPLITS), default="test",
               help="Which file of a --data folder (or of the built-in sample); unused when --data is a file.")
@clikit.option("--images", "images_dir", type=_EXISTING_DIR,
               help="Pictures of --data as <IMGID>.jpg.  [default: none, text only; the built-in sample has its own]")
@clikit.option("--checkpoint", type=_FILE, hidden_aliases=("--ckpt",),
               help="The best.pt the bundle was exported from (needed by the torch backends).")
@clikit.option("--resnet-weights", type=_FILE, help="For torch backends, when the bundle's vision stage came from a weights file.")
@clikit.option("--detector-weights", type=_FILE, help="For torch backends, when the bundle's detector came from a weights file.")
@clikit.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", help="Where torch and ort run (trt: always the GPU).")
@clikit.option("--threads", type=click.IntRange(min=1),
               help="Intra-op threads for torch and ONNX Runtime.  [default: theirs (all cores)]")
@clikit.option("--warmup", type=click.IntRange(min=0), default=3, help="Untimed batches per backend and batch size.")
@clikit.option("--min-batches", type=click.IntRange(min=1), default=20, help="Timed batches at least (whole passes over the posts).")
@clikit.option("--max-posts", type=click.IntRange(min=1), help="Use only the first N posts of the data.  [default: all]")
@clikit.option("--sort-window", type=click.IntRange(min=1), default=SORT_WINDOW,
               help="The runtime's backends (ort, trt) take the posts of each run of this many in order of their "
                    "word-pieces, as mner-tag does; the torch backends keep input order. 1: input order for all.")
@clikit.option("--no-verify", is_flag=True,
               help="Trust the bundle: hash none of its files. Without it, every file is hashed once before "
                    "measuring (a first start's cost, reported) and each backend's load finds them in the verification cache.")
@clikit.option("--output", "-o", "out_dir", default="bench-report", hidden_aliases=("--out",),
               type=click.Path(file_okay=False, path_type=Path),
               help="The report folder: report.json, report.md, latency_steps.png, throughput.png.")
@clikit.option("--notes", type=click.Path(dir_okay=False, exists=True, path_type=Path),
               help="Markdown appended to report.md as Notes (e.g. why a target was missed).")
@clikit.progress_option()
def bench_command(out_dir: Path, notes: Path | None, no_verify: bool, **options) -> None:
    """Measure a bundle's backends against the PyTorch reference: latency, throughput, memory, parity.

    Writes report.json, report.md, latency_steps.png and throughput.png under --output.
    Re-draw a report's plots from its report.json with `python -m mner.benchmarks.report --replot DIR`.
    """
    # the reference backends, the plots and pytorch-crf: one line naming pip install 'mner[bench]' where missing
    require_extra("bench")
    from mner.benchmarks.bench import run_bench  # noqa: PLC0415
    from mner.benchmarks.report import write_report  # noqa: PLC0415

    _show_progress_logs(options["progress"])
    command = "mner-bench " + shlex.join(sys.argv[1:])
    try:
        report = run_bench(command=command, echo=click.echo, verify=not no_verify, **options)
    except (ValueError, RuntimeError) as error:
        raise click.ClickException(str(error)) from error
    paths = write_report(report, out_dir, notes.read_text() if notes else None)
    click.echo("\n".join(summary_lines(report)))
    click.echo(f"report: {paths['markdown']} and {paths['json']}; plots: {paths['latency']}, {paths['throughput']}")


if __name__ == "__main__":  # python -m mner.benchmarks.cli, where the console script is not installed
    bench_command()
