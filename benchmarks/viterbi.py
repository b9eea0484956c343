"""Times CRF Viterbi decoding: native extension vs numpy fallback vs pytorch-crf.

    python -m mner.benchmarks.viterbi [--quick] [--out FILE.md]

Decodes batches of B in {1, 8, 32, 128} sequences, L = 64 positions, T = 13 tags
(the BIO tag set of the Twitter MNER corpora plus padding), with mixed lengths, and
prints a Markdown table of the median milliseconds per call and the speedups.
Before timing, it checks that the three implementations return the same tags.

A second table times what the runtime's decode step does at B = 32 (word-piece posts
with [CLS], words of 1 to 3 pieces, [SEP]): the position-masked decode it did before
word-level BIO constraints (Viterbi on the 13 tags, log-space marginals) against
``mner.runtime.decode``'s BIO lattice (Viterbi on 21 states, scaled marginals).
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
from mner.runtime.decode import FORBIDDEN_SCORE, CRFParameters
from mner.runtime.tags import Role, TagScheme
from mner.runtime.viterbi import crf_marginals, native_available, viterbi_decode

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


def make_posts(rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, L) roles and (B,) lengths of word-piece posts: [CLS], words of 1-3 pieces, [SEP]."""
    roles = np.zeros((batch_size, SEQ_LENGTH), dtype=np.int8)
    lengths = rng.integers(SEQ_LENGTH // 4, SEQ_LENGTH + 1, size=batch_size)
    lengths[0] = SEQ_LENGTH
    for row, length in zip(roles, lengths):
        row[0], row[length - 1] = Role.CLS, Role.SEP
        position = 1
        while position < length - 1:
            pieces = min(int(rng.integers(1, 4)), length - 1 - position)
            row[position] = Role.WORD
            row[position + 1 : position + pieces] = Role.CONTINUATION
            position += pieces
    return roles, lengths


def run_word_decoding_benchmark(repeats: int, minimum_seconds: float, seed: int) -> dict[str, float]:
    """Median ms at B = 32 of the decode step before and after BIO constraints, tags alone and with marginals."""
    rng = np.random.default_rng(seed)
    scheme = TagScheme(("LOC", "MISC", "ORG", "PER"))
    inputs = make_inputs(rng, TARGET_BATCH_SIZE, scheme.num_tags)
    roles, lengths = make_posts(rng, TARGET_BATCH_SIZE)
    emissions = inputs["emissions"]
    crf = CRFParameters(inputs["start"], inputs["end"], inputs["transitions"])
    lattice = crf.bio_lattice(scheme)

    def before_tags():
        allowed = scheme.allowed_mask(roles)
        return viterbi_decode(emissions, lengths, crf.start, crf.end, crf.transitions, allowed=allowed)

    def before_with_marginals():
        allowed = scheme.allowed_mask(roles)
        viterbi_decode(emissions, lengths, crf.start, crf.end, crf.transitions, allowed=allowed)
        masked = np.where(allowed, emissions, np.float32(FORBIDDEN_SCORE))
        return crf_marginals(masked, lengths, crf.start, crf.end, crf.transitions)

    def after_tags():
        return lattice.decode(emissions, lengths, roles)

    def after_with_marginals():
        lattice.decode(emissions, lengths, roles)
        return lattice.marginals(emissions, lengths, roles)

    return time_decoders(
        {"before: tags": before_tags, "before: tags + marginals": before_with_marginals,
         "BIO lattice: tags": after_tags, "BIO lattice: tags + marginals": after_with_marginals},
        repeats, minimum_seconds,
    )  # fmt: skip


def format_word_table(timings: dict[str, float]) -> str:
    lines = [
        f"| B = {TARGET_BATCH_SIZE}, L = {SEQ_LENGTH} | before (position mask, 13 tags) ms "
        "| BIO lattice (21 states) ms | after / before |",
        "|---|---:|---:|---:|",
    ]
    for what in ("tags", "tags + marginals"):
        before, after = timings[f"before: {what}"], timings[f"BIO lattice: {what}"]
        lines.append(f"| {what} | {before:.3f} | {after:.3f} | {after / before:.2f} |")
    return "\n".join(lines)


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


def markdown_report(
    rows: list[dict[str, float]], command: str, torch_threads: int, repeats: int, word_timings: dict[str, float]
) -> str:
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
        "",
        "## The runtime's decode step: before and after word-level BIO constraints",
        "",
        f"Median milliseconds per call over {repeats} interleaved samples, {TARGET_BATCH_SIZE} posts of word-pieces "
        "([CLS], words of 1 to 3 pieces, [SEP]; lengths as above), 4 entity types, native extension where built. "
        "before: Viterbi under the position-level allowed-tag mask and log-space `crf_marginals`, what "
        "`decode_words` ran until the BIO constraints. BIO lattice: `BioLattice.decode` (Viterbi over the 13 tags "
        "plus one X state per entity tag) and `BioLattice.marginals` (`crf_marginals_scaled`). "
        "The runtime's pipeline decodes with marginals (each word's score).",
        "",
        format_word_table(word_timings),
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
    logger.info("B = %d: timing the decode step before and after BIO constraints", TARGET_BATCH_SIZE)
    word_timings = run_word_decoding_benchmark(repeats, minimum_seconds, args.seed)
    command = shlex.join(["python", "-m", "mner.benchmarks.viterbi", *(sys.argv[1:] if argv is None else argv)])
    report = markdown_report(rows, command, args.torch_threads, repeats, word_timings)
    print(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
        logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
