"""Times CRF Viterbi decoding: native extension vs numpy fallback vs pytorch-crf.

    python -m mner.benchmarks.viterbi [--quick] [--out FILE.md]

Decodes batches of B in {1, 8, 32, 128} sequences, L = 64 positions, T = 13 tags
(the BIO tag set of the Twitter MNER corpora plus padding), with mixed lengths, and
prints a Markdown table of the median milliseconds per call and the speedups.
Before timing, it checks that the three implementations return the same tags.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from mner.benchmarks.machine import cpu_flags, cpu_model, package_version
from mner.runtime.viterbi import native_available, viterbi_decode

logger = logging.getLogger("mner.benchmarks.viterbi")

BATCH_SIZES = (1, 8, 32, 128)
SEQ_LENGTH = 64
NUM_TAGS = 13
# The targets, checked at B = 32.
TARGET_BATCH_SIZE = 32
TARGET_SPEEDUP_OVER_PYTORCH_CRF = 50.0
TARGET_SPEEDUP_OVER_NUMPY = 5.0


def make_inputs(rng: np.random.Generator, batch_size: int, num_tags: int = NUM_TAGS) -> dict[str, np.ndarray]:
    """Random CRF inputs; lengths uniform in [L/4, L] with one full-length sequence, as in a padded batch."""
    lengths = rng.integers(SEQ_LENGTH // 4, SEQ_LENGTH + 1, size=batch_size)
    lengths[0] = SEQ_LENGTH
    return {
        "emissions": rng.standard_normal((batch_size, SEQ_LENGTH, num_tags)).astype(np.float32),
        "lengths": lengths,
        "start": rng.standard_normal(num_tags).astype(np.float32),
        "end": rng.standard_normal(num_tags).astype(np.float32),
        "transitions": rng.standard_normal((num_tags, num_tags)).astype(np.float32),
    }


def pytorch_crf_decoder(inputs: dict[str, np.ndarray]) -> Callable[[], list[list[int]]] | None:
    """A closure decoding inputs with torchcrf.CRF (batch_first), or None when pytorch-crf is missing."""
    try:
        import torch
        import torchcrf
    except ImportError:
        return None
    _, length, num_tags = inputs["emissions"].shape
    crf = torchcrf.CRF(num_tags, batch_first=True)
    with torch.no_grad():
        crf.start_transitions.copy_(torch.from_numpy(inputs["start"]))
        crf.end_transitions.copy_(torch.from_numpy(inputs["end"]))
        crf.transitions.copy_(torch.from_numpy(inputs["transitions"]))
    emissions = torch.from_numpy(inputs["emissions"])
    mask = torch.from_numpy(np.arange(length)[None, :] < inputs["lengths"][:, None])

    def decode() -> list[list[int]]:
        with torch.inference_mode():
            return crf.decode(emissions, mask)

    return decode


def check_agreement(inputs: dict[str, np.ndarray], decoders: dict[str, Callable]) -> None:
    """Raises RuntimeError unless every decoder returns the numpy fallback's tags."""
    expected_tags, expected_scores = viterbi_decode(**inputs, backend="numpy")
    expected = [row[:length].tolist() for row, length in zip(expected_tags, inputs["lengths"])]
    for name, decode in decoders.items():
        result = decode()
        if name == "pytorch-crf":
            tags = result
        else:
            tags = [row[:length].tolist() for row, length in zip(result[0], inputs["lengths"])]
            if not np.array_equal(result[1].view(np.int32), expected_scores.view(np.int32)):
                raise RuntimeError(f"{name} scores differ from the numpy fallback's")
        if tags != expected:
            raise RuntimeError(f"{name} tags differ from the numpy fallback's")


def calls_per_sample(decode: Callable, minimum_seconds: float) -> int:
    """How many calls make one timing sample last at least minimum_seconds (timer noise)."""
    number = 1
    while True:
        started = time.perf_counter()
        for _ in range(number):
            decode()
        if time.perf_counter() - started >= minimum_seconds:
            return number
        number *= 2


def time_decoders(decoders: dict[str, Callable], repeats: int, minimum_seconds: float) -> dict[str, float]:
    """Median milliseconds per call of each decoder.

    Samples are interleaved (one of each decoder per round) so that load from other
    processes on the machine affects every decoder alike.
    """
    numbers = {name: calls_per_sample(decode, minimum_seconds) for name, decode in decoders.items()}
    samples: dict[str, list[float]] = {name: [] for name in decoders}
    for _ in range(repeats):
        for name, decode in decoders.items():
            started = time.perf_counter()
            for _ in range(numbers[name]):
                decode()
            samples[name].append((time.perf_counter() - started) / numbers[name])
    return {name: 1e3 * float(np.median(values)) for name, values in samples.items()}


def run_benchmark(repeats: int, minimum_seconds: float, seed: int) -> list[dict[str, float]]:
    """One row per batch size: median ms per call for each available decoder."""
    rng = np.random.default_rng(seed)
    rows = []
    for batch_size in BATCH_SIZES:
        inputs = make_inputs(rng, batch_size)
        decoders: dict[str, Callable] = {}
        if native_available():
            decoders["native"] = lambda inputs=inputs: viterbi_decode(**inputs, backend="native")
        decoders["numpy"] = lambda inputs=inputs: viterbi_decode(**inputs, backend="numpy")
        pytorch_crf = pytorch_crf_decoder(inputs)
        if pytorch_crf is not None:
            decoders["pytorch-crf"] = pytorch_crf
        check_agreement(inputs, decoders)
        logger.info("B = %d: timing %s", batch_size, ", ".join(decoders))
        rows.append({"batch_size": batch_size, **time_decoders(decoders, repeats, minimum_seconds)})
    return rows


def format_table(rows: list[dict[str, float]]) -> str:
    def cell(row: dict[str, float], name: str) -> str:
        return f"{row[name]:.3f}" if name in row else "n/a"

    def speedup(row: dict[str, float], slower: str) -> str:
        return f"{row[slower] / row['native']:.1f}x" if "native" in row and slower in row else "n/a"

    lines = [
        "| B | native ms | numpy ms | pytorch-crf ms | native vs numpy | native vs pytorch-crf |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['batch_size']} | {cell(row, 'native')} | {cell(row, 'numpy')} | {cell(row, 'pytorch-crf')} "
            f"| {speedup(row, 'numpy')} | {speedup(row, 'pytorch-crf')} |"
        )
    return "\n".join(lines)


def target_summary(rows: list[dict[str, float]]) -> str:
    row = next(row for row in rows if row["batch_size"] == TARGET_BATCH_SIZE)
    if "native" not in row:
        return "Targets not checked: the native extension is not built."
    parts = []
    for slower, target in (("pytorch-crf", TARGET_SPEEDUP_OVER_PYTORCH_CRF), ("numpy", TARGET_SPEEDUP_OVER_NUMPY)):
        if slower not in row:
            parts.append(f"vs {slower}: not measured")
            continue
        speedup = row[slower] / row["native"]
        verdict = "met" if speedup >= target else "MISSED"
        parts.append(f"vs {slower} {speedup:.1f}x (target >= {target:.0f}x, {verdict})")
    return f"Targets at B = {TARGET_BATCH_SIZE}: " + "; ".join(parts) + "."


def machine_info(torch_threads: int) -> list[str]:
    usable_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    simd = [flag for flag in ("sse4_1", "avx2", "avx512f") if flag in cpu_flags()]
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return [
        f"- CPU: {cpu_model()} ({os.cpu_count()} logical cores, {usable_cores} usable; SIMD: {', '.join(simd) or 'n/a'})",
        f"- Load average (1, 5, 15 min) when the run ended: {load}",
        f"- OS: {platform.platform()}",
        f"- Python {platform.python_version()}, numpy {package_version('numpy')}, "
        f"torch {package_version('torch')} ({torch_threads} thread(s)), pytorch-crf {package_version('pytorch-crf')}",
        f"- Native extension: {'built' if native_available() else 'NOT built (numpy fallback only)'}",
    ]


def markdown_report(rows: list[dict[str, float]], command: str, torch_threads: int, repeats: int) -> str:
    lines = [
        "# CRF Viterbi decoding: native vs numpy vs pytorch-crf",
        "",
        f"Command: `{command}`",
        "",
        f"Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on:",
        "",
        *machine_info(torch_threads),
        "",
        f"Median milliseconds per decode call over {repeats} interleaved samples; L = {SEQ_LENGTH}, "
        f"T = {NUM_TAGS}, lengths uniform in [{SEQ_LENGTH // 4}, {SEQ_LENGTH}]. native and numpy are "
        "`mner.runtime.viterbi_decode` (input validation included); pytorch-crf is `torchcrf.CRF.decode`. "
        "All three return the same tags (checked before timing).",
        "",
        format_table(rows),
        "",
        target_summary(rows),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mner.benchmarks.viterbi", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter samples (a smoke run, noisier)")
    parser.add_argument("--out", type=Path, help="also write the Markdown report, with command and machine, here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads for pytorch-crf (default 1: native and numpy decode on one thread too)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.torch_threads < 1:
        parser.error(f"--torch-threads must be >= 1, got {args.torch_threads}")
    try:
        import torch

        torch.set_num_threads(args.torch_threads)
    except ImportError:
        logger.info("torch is not installed: pytorch-crf is not timed")

    repeats, minimum_seconds = (5, 0.002) if args.quick else (25, 0.02)
    rows = run_benchmark(repeats, minimum_seconds, args.seed)
    command = shlex.join(["python", "-m", "mner.benchmarks.viterbi", *(sys.argv[1:] if argv is None else argv)])
    report = markdown_report(rows, command, args.torch_threads, repeats)
    print(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
        logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
