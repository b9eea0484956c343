"""Console entry point: mner-bench (thin: parse, measure with bench.run_bench, write with report.write_report)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any, Mapping

import click

from mner.benchmarks.bench import BACKENDS


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
            cells.append(f"B={size} {run['throughput_posts_s']:.1f} posts/s (p50 {run['latency_ms']['p50']:.1f} ms"
                         + (f", {100 * agree:.2f} % agreement" if agree is not None else "") + ")")  # fmt: skip
        lines.append(f"  {name:14s} load {backend['load_s']:.1f} s; " + "; ".join(cells))
    for row in report["targets"] if targets else []:
        verdict = "met" if row["met"] else "MISSED"
        lines.append(f"  target: {row['what']} >= {row['target']:.1f}x at B={row['batch_size']}: "
                     f"{row['measured']:.2f}x ({verdict})")  # fmt: skip
    return lines


@click.command()
@click.option("--engine", "bundle", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The bundle directory mner-export wrote.")
@click.option("--backends", default="torch,ort", show_default=True, callback=_csv(str),
              help=f"Comma-separated, of: {', '.join(BACKENDS)}. torch is the reference (eager FP32, padded to the window).")
@click.option("--batch-sizes", default="1,8,32", show_default=True, callback=_csv(int), help="Comma-separated posts per batch.")
@click.option("--data", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="CoNLL + IMGID file with gold tags (entity F1); default: the built-in sample's test split, with pictures.")
@click.option("--images", "images_dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Pictures of --data as <IMGID>.jpg; default: none (text only).")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path),
              help="The best.pt the bundle was exported from (needed by the torch backends).")
@click.option("--resnet-weights", type=click.Path(dir_okay=False, path_type=Path), help="For torch backends, when the bundle's vision stage came from a weights file.")
@click.option("--detector-weights", type=click.Path(dir_okay=False, path_type=Path), help="For torch backends, when the bundle's detector came from a weights file.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True, help="Where torch and ort run (trt: always the GPU).")
@click.option("--threads", type=int, help="Intra-op threads for torch and ONNX Runtime; default: theirs (all cores).")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True, help="Untimed batches per backend and batch size.")
@click.option("--min-batches", type=click.IntRange(min=1), default=20, show_default=True, help="Timed batches at least (whole passes over the posts).")
@click.option("--max-posts", type=click.IntRange(min=1), help="Use only the first N posts.")
@click.option("--out", "out_dir", default="bench-report", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--notes", type=click.Path(dir_okay=False, exists=True, path_type=Path), help="Markdown appended to report.md as Notes (e.g. why a target was missed).")
def bench_command(out_dir: Path, notes: Path | None, **options) -> None:
    """Measure a bundle's backends against the PyTorch reference: latency, throughput, memory, parity.

    Writes report.json, report.md, latency_steps.png and throughput.png under --out.
    """
    from mner.benchmarks.bench import run_bench  # noqa: PLC0415
    from mner.benchmarks.report import write_report  # noqa: PLC0415

    command = "mner-bench " + shlex.join(sys.argv[1:])
    try:
        report = run_bench(command=command, echo=click.echo, **options)
    except (ValueError, RuntimeError) as error:
        raise click.ClickException(str(error)) from error
    paths = write_report(report, out_dir, notes.read_text() if notes else None)
    click.echo("\n".join(summary_lines(report)))
    click.echo(f"report: {paths['markdown']} and {paths['json']}; plots: {paths['latency']}, {paths['throughput']}")


if __name__ == "__main__":  # python -m mner.benchmarks.cli, where the console script is not installed
    bench_command()
