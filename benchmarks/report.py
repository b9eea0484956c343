"""mner-bench's outputs: report.json, report.md and two PNG plots, from ``bench.run_bench``'s report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Mapping

from mner.benchmarks.bench import PERCENTILES, STEPS

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


def write_plots(report: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    import matplotlib  # noqa: PLC0415 -- only mner-bench draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    backends = report["backends"]
    steps = _steps_of(report)
    paths = {}

    # Stacked bars: mean milliseconds per batch of each step, one bar per (backend, batch size).
    labels, bars = [], {step: [] for step in steps + ["other"]}
    for name, size, run in _runs(report):
        labels.append(f"{name}\nB={size}")
        measured = [run["steps_ms"].get(step, 0.0) for step in steps]
        for step, value in zip(steps, measured):
            bars[step].append(value)
        bars["other"].append(max(0.0, run["latency_ms"]["mean"] - sum(measured)))
    figure, axis = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) + 2), 4.5))
    bottoms = [0.0] * len(labels)
    for step, values in bars.items():
        axis.bar(labels, values, bottom=bottoms, label=step)
        bottoms = [b + v for b, v in zip(bottoms, values)]
    axis.set_ylabel("ms per batch (mean)")
    axis.set_yscale("log" if max(bottoms, default=1) / max(min(bottoms, default=1), 1e-3) > 200 else "linear")
    axis.set_title("Time per batch by step (detector and vision overlap in two threads)")
    axis.legend(fontsize=8)
    axis.tick_params(axis="x", labelsize=7)
    figure.tight_layout()
    paths["latency"] = out_dir / PLOTS["latency"]
    figure.savefig(paths["latency"], dpi=110)
    plt.close(figure)

    # Throughput against batch size, one line per backend.
    figure, axis = plt.subplots(figsize=(6.0, 4.0))
    for name, backend in backends.items():
        sizes = sorted(int(size) for size in backend["batches"])
        axis.plot(sizes, [backend["batches"][str(s)]["throughput_posts_s"] for s in sizes], marker="o", label=name)
    every_size = sorted({int(size) for backend in backends.values() for size in backend["batches"]})
    axis.set_xscale("log", base=2)
    axis.set_xticks(every_size, [str(size) for size in every_size])
    axis.set_xlabel("batch size (posts)")
    axis.set_ylabel("posts / s, end to end")
    axis.set_title("Throughput")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    paths["throughput"] = out_dir / PLOTS["throughput"]
    figure.savefig(paths["throughput"], dpi=110)
    plt.close(figure)
    return paths


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
        "| backend | batch | batches timed | p50 ms | p90 ms | p99 ms | posts/s | tagger posts/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, size, run in _runs(report):
        latency = run["latency_ms"]
        lines.append(f"| {name} | {size} | {run['batches']} | {_num(latency['p50'], 2)} | {_num(latency['p90'], 2)} | "
                     f"{_num(latency['p99'], 2)} | {_num(run['throughput_posts_s'])} | {_num(run['tagger_posts_s'])} |")  # fmt: skip
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
    lines += ["", "Load: `Pipeline.from_bundle` in a fresh process (imports, checksums of every bundle file, sessions or "
              "the rebuilt PyTorch model). Peak RSS: the whole measuring process, loading and every batch size.", ""]  # fmt: skip
    lines += _decode_section(report["decode"])
    if notes:
        lines += ["## Notes", "", notes.strip(), ""]
    return "\n".join(lines) + "\n"


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
