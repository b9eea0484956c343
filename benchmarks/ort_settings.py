"""ONNX Runtime's session options, measured on the tagger: what to put in runners.DEFAULT_ORT_SETTINGS.

    python -m mner.benchmarks.ort_settings --engine runs/minilm-twitter2017/bundle --data data/twitter2017 \\
        --out benchmarks/results/ort-settings-minilm.md

Each variant is ``runners.DEFAULT_ORT_SETTINGS`` with one thing changed (issue 15, item 3):
intra-op threads (1, 2, ..., the usable cores), inter-op threads with the parallel executor,
spinning off (``session.intra_op.allow_spinning``), memory arena off, memory pattern off, each
graph optimisation level below "all"; and the same cores used as two 1-thread sessions working
in parallel (two Python threads; ONNX Runtime releases the GIL while it runs), on each batch's
two halves (what a batch's latency gains) and on every other batch each (what throughput gains).

The workload is mner-tag's: the test posts of ``--data`` (pre-split words, no pictures: the
grid of one cell, as the pipeline gives a batch without pictures), encoded by the bundle's
encoder and cut into batches of ``--batch-size`` after ordering them by word-pieces in windows
of ``--sort-window`` (``runtime.batching``); each variant tags all of them through an
``OrtRunner`` per round. Rounds visit the variants in turn, each session made afresh, so a
change in the machine's load shows as spread in every variant rather than as one variant's
verdict. A variant's emissions are compared with the defaults' (largest absolute difference).

Verdict: a variant is faster only when its median pass beats the defaults' by at least
``MIN_GAIN`` and its slowest round beats the defaults' fastest; the report names the fastest
such single-session change as the one to apply (in runners.DEFAULT_ORT_SETTINGS), or says to
keep the defaults. Run it on an idle machine: the report records the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mner.benchmarks.machine import machine_facts
from mner.runtime.batching import DEFAULT_SORT_WINDOW, length_order, padded_pieces
from mner.runtime.bundle import Bundle
from mner.runtime.conll import data_file, read_conll
from mner.runtime.runners import DEFAULT_ORT_SETTINGS, GRAPH_OPTIMIZATIONS, OrtRunner, OrtSettings

MIN_GAIN = 0.05  # a median 5 % faster than the defaults', and every round faster than their best, to be called faster
MIN_ROUNDS = 3  # fewer rounds call nothing faster: one lucky round would decide
SPLITS = ("halves", "batches")  # two 1-thread sessions: each batch's two halves, or every other batch each


@dataclass(frozen=True)
class Variant:
    """One way to run the tagger: its settings, and for two sessions how they share the work."""

    name: str
    what: str
    settings: OrtSettings
    split: str | None = None  # None: one session; else one of SPLITS, with two sessions

    def __post_init__(self) -> None:
        if self.split is not None and self.split not in SPLITS:
            raise ValueError(f"split must be None or one of {SPLITS}, got {self.split!r}")


def variants(cores: int, base: OrtSettings = DEFAULT_ORT_SETTINGS) -> list[Variant]:
    """The defaults first, then each one-change variant, then the two-session ones."""
    found = [Variant("defaults", "runners.DEFAULT_ORT_SETTINGS, what the runtime runs", base)]
    for threads in sorted({1, 2, cores}):
        found.append(Variant(f"intra {threads}", f"{threads} intra-op thread{'s' if threads > 1 else ''}",
                             base.replace(intra_op_threads=threads)))  # fmt: skip
    found += [
        Variant("parallel, inter 2", "the parallel executor with 2 inter-op threads",
                base.replace(execution_mode="parallel", inter_op_threads=2)),
        Variant("no spinning" if base.allow_spinning else "spinning", "session.intra_op.allow_spinning "
                + ("0: idle pool threads sleep" if base.allow_spinning else "1"),
                base.replace(allow_spinning=not base.allow_spinning)),
        Variant("no memory arena" if base.memory_arena else "memory arena", "enable_cpu_mem_arena "
                + str(not base.memory_arena), base.replace(memory_arena=not base.memory_arena)),
        Variant("no memory pattern" if base.memory_pattern else "memory pattern", "enable_mem_pattern "
                + str(not base.memory_pattern), base.replace(memory_pattern=not base.memory_pattern)),
    ]  # fmt: skip
    for level in GRAPH_OPTIMIZATIONS:
        if level != base.graph_optimization:
            found.append(Variant(f"graph {level}", f"graph optimisation level {level}",
                                 base.replace(graph_optimization=level)))  # fmt: skip
    one_thread = base.replace(intra_op_threads=1)
    found += [
        Variant("2 x 1 thread, halves", "two 1-thread sessions in parallel, each on half of every batch", one_thread,
                "halves"),
        Variant("2 x 1 thread, batches", "two 1-thread sessions in parallel, each on every other batch", one_thread,
                "batches"),
    ]  # fmt: skip
    return found


# --------------------------------------------------------------------------- the workload


@dataclass
class Workload:
    batches: list[dict[str, np.ndarray]]  # tagger feeds, in tagging order
    posts: int
    source: str
    real_pieces: int
    padded_pieces: int


def load_workload(bundle: Bundle, data: Path, split: str, batch_size: int, sort_window: int,
                  max_posts: int | None) -> Workload:  # fmt: skip
    """The tagger's feeds for the posts of ``data``'s ``split``, as the pipeline makes them for posts without
    pictures, in batches cut after ordering the posts by word-pieces in windows of ``sort_window``."""
    path = data_file(data, split)
    posts = read_conll(path)
    if max_posts is not None:
        posts = posts[:max_posts]
    if not posts:
        raise ValueError(f"--data {path} holds no posts")
    encoder = bundle.text_encoder()
    encoded = encoder.encode_many([post.words for post in posts])
    order = length_order([len(e) for e in encoded], sort_window)
    tagger = bundle.stages["tagger"]
    grid = next(t for t in tagger.inputs if t.name == "grid")
    cells = grid.shape[1]  # a batch without pictures gets the fewest cells (pipeline.grid_cell_bounds)
    cells = tagger.axes[cells][0] if isinstance(cells, str) else cells
    objects = next(t for t in tagger.inputs if t.name == "object_ids").shape[1]
    batches = []
    for start in range(0, len(order), batch_size):
        chunk = [encoded[i] for i in order[start : start + batch_size]]
        arrays = encoder.batch(chunk)
        size = len(chunk)
        batches.append({"input_ids": arrays["input_ids"], "attention_mask": arrays["attention_mask"],
                        "aug_ids": arrays["aug_ids"], "grid": np.zeros((size, cells, grid.shape[2]), np.float32),
                        "image_mask": np.zeros(size, np.int64),
                        "object_ids": np.zeros((size, objects), np.int64)})  # fmt: skip
    lengths = [[len(encoded[i])] for i in order]
    padding = padded_pieces([lengths[i : i + batch_size] for i in range(0, len(lengths), batch_size)], most=batch_size)
    return Workload(batches, len(posts), str(path), padding.real, padding.padded)


# --------------------------------------------------------------------------- measuring


@dataclass
class Pass:
    seconds: float
    batch_ms: list[float] = field(default_factory=list)
    emissions: list[np.ndarray] | None = None


def run_pass(variant: Variant, make_runner: Callable[[OrtSettings], OrtRunner], batches: Sequence[dict[str, np.ndarray]],
             warmup: int, keep: bool = False) -> Pass:  # fmt: skip
    """Tag every batch with ``variant``'s session(s), made afresh; ``warmup`` untimed batches first."""
    sessions = 1 if variant.split is None else 2
    runners = [make_runner(variant.settings).activate() for _ in range(sessions)]
    try:
        for batch in (list(batches) * warmup)[:warmup]:
            for runner in runners:
                runner.infer(batch)
        if variant.split is None:
            return _one_session(runners[0], batches, keep)
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="ort-settings") as pool:
            if variant.split == "halves":
                return _halves(runners, batches, pool, keep)
            return _alternate(runners, batches, pool, keep)
    finally:
        for runner in runners:
            runner.deactivate()


def _one_session(runner: OrtRunner, batches, keep: bool) -> Pass:
    outputs, times = [], []
    started = time.perf_counter()
    for batch in batches:
        begun = time.perf_counter()
        emissions = runner.infer(batch)["emissions"]
        times.append((time.perf_counter() - begun) * 1e3)
        if keep:
            outputs.append(emissions)
    return Pass(time.perf_counter() - started, times, outputs if keep else None)


def _halves(runners: list[OrtRunner], batches, pool: ThreadPoolExecutor, keep: bool) -> Pass:
    outputs, times = [], []
    started = time.perf_counter()
    for batch in batches:
        begun = time.perf_counter()
        size = len(batch["input_ids"])
        cut = (size + 1) // 2
        parts = [{k: v[:cut] for k, v in batch.items()}, {k: v[cut:] for k, v in batch.items()}] if size > 1 else [batch]
        futures = [pool.submit(runner.infer, part) for runner, part in zip(runners, parts)]
        emissions = np.concatenate([future.result()["emissions"] for future in futures])
        times.append((time.perf_counter() - begun) * 1e3)
        if keep:
            outputs.append(emissions)
    return Pass(time.perf_counter() - started, times, outputs if keep else None)


def _alternate(runners: list[OrtRunner], batches, pool: ThreadPoolExecutor, keep: bool) -> Pass:
    def work(which: int) -> list[tuple[int, np.ndarray, float]]:
        done = []
        for index in range(which, len(batches), 2):
            begun = time.perf_counter()
            emissions = runners[which].infer(batches[index])["emissions"]
            done.append((index, emissions if keep else None, (time.perf_counter() - begun) * 1e3))
        return done

    started = time.perf_counter()
    futures = [pool.submit(work, which) for which in (0, 1)]
    done = sorted(item for future in futures for item in future.result())
    seconds = time.perf_counter() - started
    return Pass(seconds, [ms for _, _, ms in done], [e for _, e, _ in done] if keep else None)


def measure(bundle_path: Path, data: Path, *, split: str = "test", batch_size: int = 8, rounds: int = 3,
            warmup: int = 2, sort_window: int = DEFAULT_SORT_WINDOW, max_posts: int | None = None,
            precision: str = "fp32", only: Sequence[str] | None = None,
            echo: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """Every variant, ``rounds`` times in turn; returns the report (``markdown`` writes it)."""
    if batch_size < 1 or rounds < 1 or warmup < 0 or sort_window < 1:
        raise ValueError(f"batch size, rounds and sort window must be >= 1 and warm-up >= 0, got {batch_size}, "
                         f"{rounds}, {sort_window} and {warmup}")  # fmt: skip
    machine = machine_facts("cpu")  # before measuring: the load average says how idle the machine was
    bundle = Bundle.open(bundle_path, verify=False)
    graph = bundle.graph("tagger", precision)
    stage = bundle.stages["tagger"]
    workload = load_workload(bundle, data, split, batch_size, sort_window, max_posts)
    chosen = variants(machine["usable_cores"])
    if only:
        unknown = sorted(set(only) - {v.name for v in chosen})
        if unknown:
            raise ValueError(f"unknown variants {unknown}; expected some of {[v.name for v in chosen]}")
        chosen = [v for v in chosen if v.name in only or v.name == "defaults"]

    def make_runner(settings: OrtSettings) -> OrtRunner:
        return OrtRunner(stage, graph, settings=settings)

    results = {v.name: {"seconds": [], "batch_ms": [], "max_abs_diff": None} for v in chosen}
    reference: list[np.ndarray] | None = None
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    for round_number in range(rounds):
        for variant in chosen:
            first = round_number == 0
            measured = run_pass(variant, make_runner, workload.batches, warmup, keep=first)
            results[variant.name]["seconds"].append(measured.seconds)
            results[variant.name]["batch_ms"] += measured.batch_ms
            if first:
                reference = reference if reference is not None else measured.emissions
                results[variant.name]["max_abs_diff"] = max(float(np.abs(a - b).max())
                                                            for a, b in zip(reference, measured.emissions))  # fmt: skip
            echo(f"round {round_number + 1}/{rounds}: {variant.name:24s} {workload.posts / measured.seconds:8.1f} posts/s")
    report = {
        "started": started,
        "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine,
        "bundle": {"path": str(bundle_path), "precision": precision, "window": bundle.text_encoder().max_length},
        "workload": {"source": workload.source, "posts": workload.posts, "batches": len(workload.batches),
                     "batch_size": batch_size, "sort_window": sort_window, "real_pieces": workload.real_pieces,
                     "padded_pieces": workload.padded_pieces},  # fmt: skip
        "settings": {"rounds": rounds, "warmup": warmup, "min_gain": MIN_GAIN},
        "variants": [],
    }
    defaults = results["defaults"]["seconds"]
    for variant in chosen:
        seconds = results[variant.name]["seconds"]
        rates = [workload.posts / s for s in seconds]
        row = {"name": variant.name, "what": variant.what, "settings": asdict(variant.settings), "split": variant.split,
               "posts_s": {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "rounds": rates},
               "batch_ms_p50": float(np.percentile(results[variant.name]["batch_ms"], 50)),
               "max_abs_diff": results[variant.name]["max_abs_diff"],
               "vs_defaults": statistics.median(defaults) / statistics.median(seconds)}  # fmt: skip
        row["faster"] = is_faster(seconds, defaults) and variant.name != "defaults"
        report["variants"].append(row)
    report["verdict"] = verdict(report["variants"], rounds)
    return report


def is_faster(seconds: Sequence[float], defaults: Sequence[float]) -> bool:
    """Robustly faster than the defaults: at least MIN_ROUNDS rounds, a median pass MIN_GAIN shorter, and the
    slowest round faster than the defaults' fastest."""
    return (len(seconds) >= MIN_ROUNDS and statistics.median(defaults) / statistics.median(seconds) >= 1 + MIN_GAIN
            and max(seconds) < min(defaults))  # fmt: skip


def verdict(rows: Sequence[dict[str, Any]], rounds: int) -> dict[str, Any]:
    """The fastest single-session variant that is robustly faster than the defaults, if any."""
    if rounds < MIN_ROUNDS:
        return {"apply": None, "why": f"{rounds} round{'s' if rounds > 1 else ''}, fewer than the {MIN_ROUNDS} it takes "
                                      "to call any variant faster: run again with --rounds 3 or more"}  # fmt: skip
    faster = [row for row in rows if row["faster"] and row["split"] is None]
    if not faster:
        return {"apply": None, "why": f"no single-session change beat the defaults by {MIN_GAIN:.0%} in its median "
                                      "with every round faster than the defaults' best: keep them"}  # fmt: skip
    best = max(faster, key=lambda row: row["vs_defaults"])
    changed = {key: value for key, value in best["settings"].items() if value != asdict(DEFAULT_ORT_SETTINGS)[key]}
    return {"apply": changed, "variant": best["name"],
            "why": f"{best['name']} ran {best['vs_defaults']:.2f}x the defaults (median of rounds), every round faster"}


# --------------------------------------------------------------------------- the report


def markdown(report: dict[str, Any], command: str = "") -> str:
    machine, workload, bundle = report["machine"], report["workload"], report["bundle"]
    settings = report["settings"]
    ratio = workload["real_pieces"] / workload["padded_pieces"]
    lines = [
        "# ONNX Runtime session settings, measured on the tagger",
        "",
        f"Command: `{command}`" if command else "Command: (library call)",
        "",
        f"Measured from {report['started']} to {report['created']}.",
        "",
        f"- Machine: {machine['cpu']} ({machine['logical_cores']} logical cores, {machine['usable_cores']} usable; "
        f"{', '.join(machine['simd']) or 'no AVX2'}); load average when measuring began: "
        f"{', '.join(map(str, machine['load_average']))}; onnxruntime {machine['packages'].get('onnxruntime')}.",
        f"- Bundle: `{bundle['path']}`, tagger {bundle['precision']}, window {bundle['window']} word-pieces.",
        f"- Workload: {workload['posts']} posts of {workload['source']} (words as given, no pictures), "
        f"{workload['batches']} batches of {workload['batch_size']} cut after ordering by word-pieces in windows of "
        f"{workload['sort_window']} ({100 * ratio:.1f} % of the padded pieces real).",
        f"- {settings['rounds']} round{'s' if settings['rounds'] > 1 else ''}; in each, every variant in turn: a "
        f"fresh session, {settings['warmup']} untimed batches, then one timed pass over every batch. Posts/s: "
        "posts over a pass's wall time; median (min-max) over the rounds. Batch p50: the median batch's wall "
        "time (two sessions on halves: both halves; on every other batch: one batch).",
        "",
    ]
    if machine["load_average"][0] > 0.25 * machine["usable_cores"]:
        lines += [f"**The machine was not idle** (load {machine['load_average'][0]} on {machine['usable_cores']} "
                  "cores): these figures are noise; measure again on an idle machine.", ""]  # fmt: skip
    lines += [
        "| variant | what | posts/s median | rounds min\N{EN DASH}max | vs defaults | batch p50 ms | "
        "max abs emission diff |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in report["variants"]:
        rate = row["posts_s"]
        mark = " (faster)" if row["faster"] else ""
        lines.append(f"| {row['name']} | {row['what']} | {rate['median']:.1f} | {rate['min']:.1f}\N{EN DASH}"
                     f"{rate['max']:.1f} | {row['vs_defaults']:.2f}x{mark} | {row['batch_ms_p50']:.1f} | "
                     f"{row['max_abs_diff']:.1e} |")  # fmt: skip
    decided = report["verdict"]
    lines += ["", "## Verdict", "", decided["why"] + "."]
    if decided["apply"]:
        arguments = ", ".join(f"{key}={value!r}" for key, value in decided["apply"].items())
        lines += ["", f"Apply in `runtime/runners.py`: `DEFAULT_ORT_SETTINGS = OrtSettings({arguments})`."]
    lines += ["", f"A variant is called faster only when, over at least {MIN_ROUNDS} rounds, its median is at least "
              f"{MIN_GAIN:.0%} above the defaults' and its slowest round beats the defaults' fastest. Two-session "
              "variants are reported, not applied: the runtime runs one session per stage (mner-serve's worker and "
              "mner-tag tag one batch at a time).", ""]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mner.benchmarks.ort_settings", description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", type=Path, required=True, help="the bundle (its tagger is measured)")
    parser.add_argument("--data", type=Path, required=True, help="TWITTER-format folder or CoNLL file")
    parser.add_argument("--split", default="test", help="[default: %(default)s]")
    parser.add_argument("--batch-size", type=int, default=8, help="[default: %(default)s]")
    parser.add_argument("--rounds", type=int, default=3, help="[default: %(default)s]")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches per session [default: %(default)s]")
    parser.add_argument("--sort-window", type=int, default=DEFAULT_SORT_WINDOW, help="[default: %(default)s]")
    parser.add_argument("--max-posts", type=int, help="the first N posts only (a quick check)")
    parser.add_argument("--precision", default="fp32", help="which tagger graph of the bundle [default: %(default)s]")
    parser.add_argument("--only", nargs="+", metavar="VARIANT", help="these variants (and the defaults) only")
    parser.add_argument("--out", type=Path, help="the Markdown report [default: benchmarks/results/ort-settings-NAME.md, "
                        "NAME the bundle's parent folder]")  # fmt: skip
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        report = measure(args.engine, args.data, split=args.split, batch_size=args.batch_size, rounds=args.rounds,
                         warmup=args.warmup, sort_window=args.sort_window, max_posts=args.max_posts,
                         precision=args.precision, only=args.only,
                         echo=lambda line: print(line, file=sys.stderr, flush=True))  # fmt: skip
    except (OSError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = args.out or Path("benchmarks/results") / f"ort-settings-{args.engine.resolve().parent.name}.md"
    command = "python -m mner.benchmarks.ort_settings " + shlex.join(argv if argv is not None else sys.argv[1:])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(report, command), encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(markdown(report, command))
    print(f"report: {out} and {out.with_suffix('.json')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
