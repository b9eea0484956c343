"""mner-bench's outputs: report.json, report.md and two PNG plots, from ``bench.run_bench``'s report.

``python -m mner.benchmarks.report --replot DIR`` draws a written report's plots again
from its report.json (after a change to the plots; the measurements are not repeated).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Mapping

import click

from mner.benchmarks.bench import PERCENTILES, SPREAD, STEPS
from mner.runtime import clikit

PLOTS = {"latency": "latency_steps.png", "throughput": "throughput.png"}


def write_report(report: Mapping[str, Any], out_dir: Path, notes: str | None = None) -> dict[str, Path]:
    """Write every output under ``out_dir`` (created); returns their paths by kind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "report.md"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    paths.update(write_plots(report, out_dir))
    paths["markdown"].write_text(markdown(report, notes))
    return paths


def _runs(report: Mapping[str, Any]) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    """(backend, batch size, run summary) for every measured pair, in report order."""
    for name, backend in report["backends"].items():
        for size, run in backend["batches"].items():
            yield name, size, run


def _steps_of(report: Mapping[str, Any]) -> list[str]:
    present = {step for _, _, run in _runs(report) for step in run["steps_ms"]}
    return [step for step in STEPS if step in present]


def _spread(values: Mapping[str, float] | None) -> tuple[float, float, float] | None:
    """(p10, p50, p90) of a run's percentiles, or None for a report written before they were recorded."""
    low, high = (f"p{p}" for p in SPREAD)
    if not values or low not in values or high not in values:
        return None
    return values[low], values["p50"], values[high]


SPREAD_LABEL = f"p{SPREAD[0]}\N{EN DASH}p{SPREAD[1]} of the timed batches"
NO_SPREAD = "(this report.json predates the spread: none shown)"


def write_plots(report: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """latency_steps.png and throughput.png; each shows the p10-p90 spread where the report records it."""
    import matplotlib  # noqa: PLC0415 -- only mner-bench draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    backends = report["backends"]
    steps = _steps_of(report)
    paths = {}

    # Stacked bars: mean milliseconds per batch of each step, one bar per (backend, batch size);
    # a whisker over each bar: the end-to-end latency's p50 and p10-p90.
    labels, bars, whiskers = [], {step: [] for step in steps + ["other"]}, []
    for name, size, run in _runs(report):
        labels.append(f"{name}\nB={size}")
        measured = [run["steps_ms"].get(step, 0.0) for step in steps]
        for step, value in zip(steps, measured):
            bars[step].append(value)
        bars["other"].append(max(0.0, run["latency_ms"]["mean"] - sum(measured)))
        whiskers.append(_spread(run["latency_ms"]))
    # constrained layout keeps the axes, labels and legend inside the figure, and
    # bbox_inches="tight" on saving grows the canvas for anything still outside (a long title).
    figure, axis = plt.subplots(figsize=(max(7.0, 0.9 * len(labels) + 4.5), 4.8), layout="constrained")  # + the legend
    positions = list(range(len(labels)))
    bottoms = [0.0] * len(labels)
    for step, values in bars.items():
        axis.bar(positions, values, bottom=bottoms, label=step)
        bottoms = [b + v for b, v in zip(bottoms, values)]
    spread = [(x, w) for x, w in zip(positions, whiskers) if w is not None]
    if spread:
        xs = [x for x, _ in spread]
        p50 = [w[1] for _, w in spread]
        axis.errorbar(xs, p50, yerr=[[w[1] - w[0] for _, w in spread], [w[2] - w[1] for _, w in spread]], fmt="_",
                      color="black", markersize=14, capsize=4, label=f"end to end: p50, {SPREAD_LABEL}")  # fmt: skip
    tops = [max(b, w[2] if w else 0.0) for b, w in zip(bottoms, whiskers)]
    lows = [w[0] if w else b for b, w in zip(bottoms, whiskers)]
    if max(tops, default=1) / max(min(lows, default=1), 1e-3) > 200:
        axis.set_yscale("log")
    else:
        axis.set_ylim(bottom=0)
    axis.set_xticks(positions, labels)
    axis.set_ylabel("ms per batch")
    axis.set_title("Time per batch by step (bars: mean of each step;\ndetector and vision overlap in two threads)"
                   + ("" if spread else "\n" + NO_SPREAD), fontsize=11)  # fmt: skip
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never over them
    axis.tick_params(axis="x", labelsize=7)
    paths["latency"] = out_dir / PLOTS["latency"]
    figure.savefig(paths["latency"], dpi=110, bbox_inches="tight")
    plt.close(figure)

    # Throughput against batch size, one line per backend (all posts over all timed seconds), and
    # each batch's own posts/s as a p10-p90 bar, dodged a little so that backends do not overlap.
    figure, axis = plt.subplots(figsize=(6.5, 4.5), layout="constrained")
    shown_spread = False
    for index, (name, backend) in enumerate(backends.items()):
        sizes = sorted(int(size) for size in backend["batches"])
        runs = [backend["batches"][str(s)] for s in sizes]
        line = axis.plot(sizes, [run["throughput_posts_s"] for run in runs], marker="o", label=name)[0]
        dodge = 2 ** (0.04 * (index - (len(backends) - 1) / 2))
        for size, run in zip(sizes, runs):
            spread_of_batches = _spread(run.get("throughput_batches_posts_s"))
            if spread_of_batches is not None:
                low, _, high = spread_of_batches
                axis.vlines(size * dodge, low, high, color=line.get_color(), alpha=0.6, linewidth=3)
                shown_spread = True
    every_size = sorted({int(size) for backend in backends.values() for size in backend["batches"]})
    axis.set_xscale("log", base=2)
    axis.set_xticks(every_size, [str(size) for size in every_size])
    axis.minorticks_off()
    axis.set_ylim(bottom=0)
    axis.set_xlabel("batch size (posts)")
    axis.set_ylabel("posts / s, end to end")
    axis.set_title("Throughput (line: all posts over all timed seconds)\n"
                   + (f"bars: each batch's posts/s, {SPREAD_LABEL}" if shown_spread else NO_SPREAD), fontsize=11)  # fmt: skip
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    paths["throughput"] = out_dir / PLOTS["throughput"]
    figure.savefig(paths["throughput"], dpi=110, bbox_inches="tight")
    plt.close(figure)
    return paths


def replot(folder: Path) -> dict[str, Path]:
    """Draw a report folder's plots again from its report.json (the Markdown and JSON are left as they are)."""
    path = folder / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ValueError(f"{path}: {error.strerror or error}; give a folder mner-bench wrote") from None
    except ValueError as error:
        raise ValueError(f"{path} is not JSON ({error})") from None
    if not isinstance(report, dict) or not isinstance(report.get("backends"), dict):
        raise ValueError(f"{path} is not an mner-bench report (no 'backends' table)")
    return write_plots(report, folder)


def _num(value: Any, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(report: Mapping[str, Any], notes: str | None = None) -> str:
    machine, bundle, workload, settings = report["machine"], report["bundle"], report["workload"], report["settings"]
    model = bundle["model"]
    packages = ", ".join(f"{k} {v}" for k, v in machine["packages"].items() if v != "not installed")
    lines = [
        "# mner-bench report",
        "",
        f"Command: `{report['command']}`" if report["command"] else "Command: (library call)",
        "",
        f"Measured from {report['started']} to {report['created']}." if report.get("started") else f"Written {report['created']}.",
        "",
        "## Machine",
        "",
        f"- CPU: {machine['cpu']} ({machine['logical_cores']} logical cores, {machine['usable_cores']} usable; "
        f"{', '.join(machine['simd']) or 'no AVX2'}), {machine['memory_gib']} GiB",
        f"- GPU: {machine['gpu'] or 'none'}; device measured: {machine['device']}",
        f"- Load average when the measuring began: {', '.join(map(str, machine['load_average']))}",
        f"- {machine['os']}, Python {machine['python']}",
        f"- Packages: {packages}",
        "",
        "## What was measured",
        "",
        f"- Bundle: `{bundle['path']}` ({bundle['size_mib']} MiB; stages {', '.join(bundle['stages'])}); model hidden "
        f"{model['hidden_size']}, {model['num_hidden_layers']} layers, {model['num_attention_heads']} heads, "
        f"intermediate {model['intermediate_size']}, window {bundle['window']} word-pieces; exported from "
        f"`{bundle['checkpoint']['file']}` (sha256 {bundle['checkpoint']['sha256'][:12]}...).",
        f"- Workload: {workload['posts']} posts, {workload['words']} words, {workload['with_pictures']} with pictures, "
        f"from {workload['source']}.",
        f"- Each backend ran in a fresh process: {settings['warmup']} warm-up batches, then whole passes over the "
        f"posts until at least {settings['min_batches']} batches were timed. Threads: "
        f"{settings['threads'] or 'library default'}.",
        "- Latency is the wall time of one `Pipeline.tag_words` call on one batch (pictures decoded, detector and "
        "vision, word-pieces, tagger, Viterbi, entities). Tagger throughput counts the tagger runner's time only.",
        "",
        "Backends:",
        "",
        *[f"- `{name}`: {backend['description']}" for name, backend in report["backends"].items()],
        "",
    ]
    lines += _targets_section(report)
    lines += [
        "## Latency and throughput",
        "",
        "Latency: wall ms of one batch; it, the step times and each batch's own posts/s are over the timed batches "
        "of the full size (a pass's last, smaller batch is left out of them). Posts/s: all posts over all timed seconds.",
        "",
        "| backend | batch | batches timed | p10 ms | p50 ms | p90 ms | p99 ms | max ms | posts/s | per batch p10\N{EN DASH}p90 "
        "posts/s | tagger posts/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, size, run in _runs(report):
        latency = run["latency_ms"]
        per_batch = _spread(run.get("throughput_batches_posts_s"))
        per_batch_cell = "n/a" if per_batch is None else f"{per_batch[0]:.1f}\N{EN DASH}{per_batch[2]:.1f}"
        lines.append(f"| {name} | {size} | {run['batches']} | {_num(latency.get('p10'), 2)} | {_num(latency['p50'], 2)} | "
                     f"{_num(latency['p90'], 2)} | {_num(latency['p99'], 2)} | {_num(latency.get('max'), 2)} | "
                     f"{_num(run['throughput_posts_s'])} | {per_batch_cell} | {_num(run['tagger_posts_s'])} |")  # fmt: skip
    lines += _padding_section(report)
    steps = _steps_of(report)
    lines += [
        "",
        f"![time per batch by step]({PLOTS['latency']})",
        f"![throughput]({PLOTS['throughput']})",
        "",
        "## Time per batch by step (mean ms)",
        "",
        "| backend | batch | " + " | ".join(steps) + " | end to end |",
        "|---|---:|" + "---:|" * (len(steps) + 1),
    ]
    for name, size, run in _runs(report):
        cells = " | ".join(_num(run["steps_ms"].get(step), 2) for step in steps)
        lines.append(f"| {name} | {size} | {cells} | {_num(run['latency_ms']['mean'], 2)} |")
    lines += ["", "## Time per batch by step, p50 / p90 / p99 ms", "",
              "| backend | batch | " + " | ".join(steps) + " |", "|---|---:|" + "---:|" * len(steps)]  # fmt: skip
    for name, size, run in _runs(report):
        spread = run["steps_percentiles_ms"]
        cells = " | ".join(" / ".join(_num(spread[step][f"p{p}"], 2) for p in PERCENTILES) if step in spread else "n/a"
                           for step in steps)  # fmt: skip
        lines.append(f"| {name} | {size} | {cells} |")
    lines += ["", "## Parity", ""]
    reference = report["reference"]
    if reference is None:
        lines += ["No `torch` run in this report, so no agreement with the PyTorch FP32 reference; entity F1 only.", ""]
    else:
        lines += [f"Word-level tag agreement with `{reference}` (the PyTorch FP32 reference, same weights) at the same "
                  "batch size, over the first pass; entity F1 against the workload's gold tags.", ""]  # fmt: skip
    lines += ["| backend | batch | word agreement | posts differing | entity F1 | posts refused |",
              "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, size, run in _runs(report):
        parity = run["parity"]
        agree = parity.get("word_agreement")
        agree_cell = "n/a" if agree is None else f"{100 * agree:.2f} %"
        differing = parity.get("posts_differing")
        lines.append(f"| {name} | {size} | {agree_cell} | {'n/a' if differing is None else differing} | "
                     f"{_num(parity['f1'], 4)} | {run['errors']} |")  # fmt: skip
    lines += ["", "## Load time and memory", "",
              "| backend | bundle load s | peak RSS MiB | peak GPU MiB |", "|---|---:|---:|---:|"]  # fmt: skip
    for name, backend in report["backends"].items():
        gpu = backend.get("gpu_memory")
        gpu_cell = "n/a" if not gpu or gpu.get("peak_mib") is None else f"{gpu['peak_mib']:.0f} ({gpu['how']})"
        lines.append(f"| {name} | {backend['load_s']:.2f} | {backend['peak_rss_mib']:.0f} | {gpu_cell} |")
    verify_s = bundle.get("verify_s")
    if settings.get("verify") is False:
        checks = "the bundle's files checked for presence and size only (--no-verify)"
    elif verify_s is not None:
        checks = (f"the bundle's file checks with its files already verified -- hashing every file, what a first start "
                  f"or a start after a change adds, took {verify_s:.2f} s here, before any backend loaded --")  # fmt: skip
    else:
        checks = "checksums of every bundle file"
    lines += ["", f"Load: `Pipeline.from_bundle` in a fresh process (imports, {checks}, sessions or the rebuilt PyTorch "
              "model). Peak RSS: the whole measuring process, loading and every batch size.", ""]  # fmt: skip
    lines += _decode_section(report["decode"])
    if notes:
        lines += ["## Notes", "", notes.strip(), ""]
    return "\n".join(lines) + "\n"


def _padding_section(report: Mapping[str, Any]) -> list[str]:
    """Real word-pieces over padded ones per backend and batch size: as run, and in input order."""
    rows = [(name, size, run) for name, size, run in _runs(report) if run.get("padding")]
    if not rows:  # a report of an mner-bench before issue 15
        return []
    window = report["settings"].get("sort_window", 1)
    order = (f"the runtime's backends took the posts of each run of {window} in order of their word-pieces, as "
             "mner-tag does, the torch backends in input order" if window > 1 else "every backend took the posts in "
             "input order")  # fmt: skip
    lines = ["", "## Padding", "",
             "Each tagger call is padded to its longest window (`torch`, the reference: every window to the model's "
             f"window). Real word-pieces over padded ones in the first pass: as run ({order}), and what input order "
             "gives (simulated exactly, `runtime.batching.padded_pieces`).", "",
             "| backend | batch | order | real pieces | padded pieces, as run | real / padded, as run | "
             "real / padded, input order |", "|---|---:|---|---:|---:|---:|---:|"]  # fmt: skip
    for name, size, run in rows:
        measured, unsorted = run["padding"]["measured"], run["padding"]["input_order"]
        by = f"by length, windows of {run['sort_window']}" if run.get("sort_window", 1) > 1 else "input"
        lines.append(f"| {name} | {size} | {by} | {measured['real_pieces']} | {measured['padded_pieces']} | "
                     f"{_percent(measured['ratio'])} | {_percent(unsorted['ratio'])} |")  # fmt: skip
    return lines


def _percent(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{100 * ratio:.1f} %"


def _targets_section(report: Mapping[str, Any]) -> list[str]:
    rows = report["targets"]
    if not rows:
        return []
    lines = ["## Targets (this CPU, batch 8)", ""]
    if report["workload"]["with_pictures"]:
        lines += ["The targets were set for TWITTER-2017's text-only test posts. This workload has pictures: the "
                  "detector and the vision stage, the same convolutions on both backends, take most of its time.", ""]  # fmt: skip
    lines += ["| target | needed | measured | |", "|---|---:|---:|---|"]
    for row in rows:
        measured = row["measured"]
        if row["met"]:
            verdict = "met"
        elif measured is None:
            verdict = "not measured"
        else:
            verdict = f"missed by {row['target'] - measured:.2f}x ({100 * (1 - measured / row['target']):.0f} % short)"
        lines.append(f"| {row['what']} | {row['target']:.1f}x | {_num(measured, 2)}x | {verdict} |")
    return lines + [""]


def _decode_section(decode: Mapping[str, Any]) -> list[str]:
    lines = [
        "## CRF decoding: the reference's (pytorch-crf) and mner's",
        "",
        f"Median ms per batch, L = {decode['sequence_length']} (every post padded to the window, as the reference "
        f"decodes), T = {decode['num_tags']}; mner's decoder: {decode['mner_decoder']} Viterbi. Both give the same tags "
        "(checked before timing).",
        "",
        "| batch | mner ms | pytorch-crf ms | speed-up |",
        "|---:|---:|---:|---:|",
    ]
    for size, row in decode["ms"].items():
        reference = row.get("pytorch-crf")
        speedup = f"{reference / row['mner']:.0f}x" if reference else "n/a"
        lines.append(f"| {size} | {row['mner']:.3f} | {_num(reference, 3) if reference else 'not installed'} | {speedup} |")
    return lines + [""]



@clikit.command()
@clikit.option("--replot", "folders", multiple=True, required=True,
               type=click.Path(exists=True, file_okay=False, path_type=Path),
               help="A report folder mner-bench wrote; its PNGs are drawn again from its report.json (repeatable).")  # fmt: skip
def replot_command(folders: tuple[Path, ...]) -> None:
    """Draw mner-bench reports' plots again from their report.json (after a change to the plots)."""
    for folder in folders:
        try:
            paths = replot(folder)
        except ValueError as error:
            raise click.ClickException(str(error)) from None
        click.echo(f"{folder}: {paths['latency'].name}, {paths['throughput'].name}")


if __name__ == "__main__":  # python -m mner.benchmarks.report --replot DIR [--replot DIR ...]
    replot_command()
