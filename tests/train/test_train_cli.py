"""mner-train, mner-eval, mner-convert on the command line: fast help, the shared vocabulary and its old
spellings, the preset, --threads, and what a run leaves beside best.pt (history, file modes, warnings)."""

import dataclasses
import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mner.runtime import conll
from mner.train import config as config_module
from mner.train import trainer as trainer_module
from mner.train.cli import convert_command, eval_command, train_command
from mner.train.history import read_history
from mner.train.sample import write_sample_corpus
from mner.train.trainer import PAPER_WITHOUT_BERT, TrainArgs, set_threads, warn_about_preset

SMALL = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
         "augmentation_dim": 16}  # fmt: skip
COMMANDS = {"mner-train": train_command, "mner-eval": eval_command, "mner-convert": convert_command}
UMASK = 0o002  # neither mkstemp's 0600 nor the usual 0644: the checkpoints must follow the umask


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_sample_corpus(tmp_path_factory.mktemp("corpus"), seed=5, sizes={"train": 24, "valid": 8, "test": 8})


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, corpus):
    """One mner-train run with the new spellings, then --resume for a third epoch with the old ones."""
    out = tmp_path_factory.mktemp("cli") / "run"
    handler = Records()
    trainer_logger = logging.getLogger("mner.train.trainer")
    trainer_logger.addHandler(handler)
    previous_umask = os.umask(UMASK)
    threads = torch.get_num_threads()
    try:
        with pytest.MonkeyPatch.context() as patch:
            # The command line has no size options: narrow the tiny preset for speed.
            patch.setitem(config_module.PRESETS, "tiny", dataclasses.replace(config_module.PRESETS["tiny"], **SMALL))
            first = CliRunner().invoke(train_command, [
                "--data", str(corpus), "-o", str(out), "--epochs", "2", "--batch-size", "8", "--max-length", "12",
                "--device", "cpu", "--threads", "1", "--no-progress"])  # fmt: skip
            assert first.exit_code == 0, first.output
            after_two = (out / "history.jsonl").read_text()
            modes = {name: stat.S_IMODE((out / name).stat().st_mode) for name in
                     ("best.pt", "last.pt", "history.jsonl", "history.png")}  # fmt: skip
            second = CliRunner().invoke(train_command, [
                "--data", str(corpus), "--out", str(out), "--epochs", "3", "--batch-size", "8", "--max-length", "12",
                "--device", "cpu", "--resume", "--no-progress"])  # fmt: skip
            assert second.exit_code == 0, second.output
    finally:
        os.umask(previous_umask)
        torch.set_num_threads(threads)
        trainer_logger.removeHandler(handler)
    return {"out": out, "first": first, "second": second, "after_two": after_two, "modes": modes,
            "records": handler.records}  # fmt: skip


# --- help: fast, -h, --version, shown defaults, one name per concept ----------------------------------


def test_importing_the_cli_imports_no_heavy_library():
    heavy = ("torch", "transformers", "torchvision", "gensim", "matplotlib")
    code = f"import sys, mner.train.cli; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})  # fmt: skip
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("name", sorted(COMMANDS))
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_every_command_has_short_help(name, flag):
    result = CliRunner().invoke(COMMANDS[name], [flag])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and "-h, --help" in result.output


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_version(name):
    result = CliRunner().invoke(COMMANDS[name], ["--version"], prog_name=name)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{name} (mner) ")


def test_train_help_shows_the_vocabulary_and_the_preset_defaults():
    output = CliRunner().invoke(train_command, ["--help"], terminal_width=200).output
    assert "-o, --output DIRECTORY" in output and "--out " not in output  # the old spelling is hidden
    assert "[default: tiny]" in output
    assert "[default: from --preset (paper: 75, tiny: 10)]" in output  # --epochs
    assert "[default: from --preset (paper: 24, tiny: 32)]" in output  # --batch-size
    assert "[default: from --preset (paper: 3e-05, tiny: 0.001)]" in output  # --lr
    assert "[default: from --preset (paper: 64, tiny: 64)]" in output  # --max-length
    for option in ("--threads", "--images", "--max-posts", "--device", "--progress / --no-progress", "-v, --verbose"):
        assert option in output


def test_eval_and_convert_help_show_the_new_spellings_only():
    output = CliRunner().invoke(eval_command, ["--help"], terminal_width=200).output
    assert "--checkpoint FILE" in output and "--ckpt" not in output
    assert "--split [train|valid|test]" in output and "[default: test]" in output
    for option in ("--batch-size", "--max-posts", "--threads", "--images", "--device", "--no-progress", "--verbose"):
        assert option in output
    output = CliRunner().invoke(convert_command, ["--help"], terminal_width=200).output
    assert "-o, --output FILE" in output and "--out " not in output and "-v, --verbose" in output


def test_split_choices_are_the_runtime_s():
    assert tuple(conll.SPLIT_FILES) == config_module.SPLITS


def test_threads_must_be_positive(tmp_path, corpus):
    result = CliRunner().invoke(train_command, ["--data", str(corpus), "-o", str(tmp_path / "x"), "--threads", "0"])
    assert result.exit_code == 2 and "0 is not in the range x>=1" in result.output
    with pytest.raises(ValueError, match="threads must be >= 1"):
        TrainArgs(data_dir=corpus, out_dir=tmp_path / "x", threads=0).resolved()
    with pytest.raises(ValueError, match="threads must be >= 1"):
        set_threads(0)


def test_set_threads_sets_torch_s_threads():
    threads = torch.get_num_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
        set_threads(None)  # leaves them as they are
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_train_without_data_or_output_is_a_usage_error(tmp_path, corpus):
    result = CliRunner().invoke(train_command, ["--data", str(corpus)])
    assert result.exit_code == 2 and "--data and --output are required" in result.output


# --- the preset ---------------------------------------------------------------------------------------


def test_the_default_preset_is_tiny(tmp_path, corpus):
    assert TrainArgs(data_dir=corpus, out_dir=tmp_path).preset == "tiny"
    result = CliRunner().invoke(train_command, ["--describe"])
    assert result.exit_code == 0 and "MGCMT, preset 'tiny'" in result.output


def test_paper_without_bert_warns_before_training(tmp_path, caplog):
    # A folder without valid.txt: the run stops right after the warning, before building BERT-base.
    data = tmp_path / "partial"
    data.mkdir()
    (data / "train.txt").write_text("IMGID:1\nParis\tB-LOC\n\n")
    with caplog.at_level(logging.WARNING, logger="mner.train.trainer"):
        result = CliRunner().invoke(train_command, ["--data", str(data), "-o", str(tmp_path / "run"),
                                                    "--preset", "paper"])  # fmt: skip
    assert result.exit_code == 1 and "valid.txt is missing" in result.output
    [warning] = [r.getMessage() for r in caplog.records if r.name == "mner.train.trainer"]
    assert warning == PAPER_WITHOUT_BERT
    assert "starts from random weights" in warning and "--bert DIR" in warning and "--preset tiny" in warning


def test_preset_warnings_only_where_they_apply(tmp_path, caplog):
    bert = tmp_path / "bert"
    with caplog.at_level(logging.WARNING, logger="mner.train.trainer"):
        warn_about_preset(TrainArgs(data_dir=tmp_path, out_dir=tmp_path, preset="paper", bert=bert))
        warn_about_preset(TrainArgs(data_dir=tmp_path, out_dir=tmp_path, preset="tiny"))
        warn_about_preset(TrainArgs(data_dir=tmp_path, out_dir=tmp_path, preset="tiny", bert=bert, learning_rate=5e-5))
        assert caplog.records == []
        warn_about_preset(TrainArgs(data_dir=tmp_path, out_dir=tmp_path, preset="tiny", bert=bert))
    [record] = caplog.records
    assert "--preset tiny with --bert" in record.getMessage() and "--preset paper" in record.getMessage()


# --- what a run leaves beside best.pt ------------------------------------------------------------------


def test_a_run_writes_history_jsonl_one_line_per_epoch(cli_run):
    records = read_history(cli_run["out"] / "history.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]  # the resumed epoch 3 appended, 1 and 2 not repeated
    assert cli_run["after_two"].count("\n") == 2
    assert (cli_run["out"] / "history.jsonl").read_text().startswith(cli_run["after_two"])
    keys = ["epoch", "loss", "dev_precision", "dev_recall", "dev_f1", "learning_rate", "seconds", "elapsed_s"]
    for record in records:
        assert list(record) == keys
        assert record["loss"] > 0 and 0 <= record["dev_f1"] <= 1 and record["seconds"] > 0
    assert records[0]["learning_rate"] > records[1]["learning_rate"]  # decays after the warm-up
    assert records[0]["elapsed_s"] < records[1]["elapsed_s"] < records[2]["elapsed_s"]  # counted across --resume
    # The same records as last.pt's, which --resume continues from.
    last = torch.load(cli_run["out"] / "last.pt", weights_only=False)
    assert last["progress"]["history"] == records


def test_a_run_draws_history_png(cli_run):
    png = (cli_run["out"] / "history.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width > 600 and height > 400
    assert "history.jsonl" in cli_run["first"].output and "history.png" in cli_run["first"].output


def test_best_and_last_pt_get_the_mode_of_a_normal_file(cli_run):
    expected = 0o666 & ~UMASK
    assert cli_run["modes"] == {"best.pt": expected, "last.pt": expected, "history.jsonl": expected,
                                "history.png": expected}  # fmt: skip
    assert not list(cli_run["out"].glob("*.tmp"))


def test_the_truncation_warning_comes_once_per_run_naming_each_split(cli_run):
    warnings = [r.getMessage() for r in cli_run["records"] if "word-pieces" in r.getMessage()]
    assert len(warnings) == 2  # one for the first run, one for the resumed run
    assert warnings[0].startswith("posts longer than 12 word-pieces were cut at that length")
    assert "train " in warnings[0] and "valid " in warnings[0] and "of 24" in warnings[0]


def test_max_length_reaches_the_tokenizer(cli_run):
    from mner.train.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(cli_run["out"] / "best.pt")
    assert checkpoint.text_encoder.max_length == checkpoint.config.max_length == 12


def test_resume_rewrites_a_history_that_ran_ahead_of_last_pt(tmp_path, corpus, monkeypatch):
    """A history.jsonl with a line for an epoch last.pt does not have is cut back to last.pt's records."""
    monkeypatch.setitem(config_module.PRESETS, "tiny", dataclasses.replace(config_module.PRESETS["tiny"], **SMALL))
    args = TrainArgs(data_dir=corpus, out_dir=tmp_path / "run", epochs=1, batch_size=8, device="cpu", progress=False)
    trainer_module.train(args)
    history = tmp_path / "run" / "history.jsonl"
    with history.open("a") as file:
        file.write(json.dumps({"epoch": 2, "loss": 1.0, "dev_f1": 0.5}) + "\n")  # logged, then the run died
    trainer_module.train(dataclasses.replace(args, epochs=2, resume=True))
    assert [r["epoch"] for r in read_history(history)] == [1, 2]
    assert read_history(history)[1]["loss"] != 1.0


# --- mner-eval's vocabulary ----------------------------------------------------------------------------


def _metrics(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{") :])


def test_eval_accepts_a_data_folder_and_split_and_the_old_spelling(cli_run, corpus):
    best = str(cli_run["out"] / "best.pt")
    runner = CliRunner()
    common = ["--device", "cpu", "--no-progress", "--json"]
    by_folder = _metrics(runner.invoke(eval_command, ["--checkpoint", best, "--data", str(corpus), *common]))
    by_file = _metrics(runner.invoke(eval_command, ["--ckpt", best, "--data", str(corpus / "test.txt"), *common]))
    assert by_folder == by_file  # a folder's default split is test
    valid = _metrics(runner.invoke(eval_command, ["--checkpoint", best, "--data", str(corpus), "--split", "valid",
                                                  "--batch-size", "3", "--threads", "1", *common]))  # fmt: skip
    dev = torch.load(cli_run["out"] / "best.pt", weights_only=False)["metrics"]["dev"]
    assert valid["micro"]["f1"] == pytest.approx(dev["micro"]["f1"])  # the same posts best.pt was chosen on
    first_two = _metrics(runner.invoke(eval_command, ["--checkpoint", best, "--data", str(corpus), "--max-posts", "2",
                                                      *common]))  # fmt: skip
    assert first_two["micro"]["support"] < by_file["micro"]["support"]


def test_eval_refuses_a_folder_without_the_split(cli_run, tmp_path):
    (tmp_path / "train.txt").write_text("IMGID:1\nParis\tB-LOC\n\n")
    best = str(cli_run["out"] / "best.pt")
    result = CliRunner().invoke(eval_command, ["--checkpoint", best, "--data", str(tmp_path)])
    assert result.exit_code == 1 and "is a folder without test.txt" in result.output


def test_evaluate_checkpoint_validates_batch_size_and_max_posts(tmp_path):
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        trainer_module.evaluate_checkpoint(tmp_path / "best.pt", tmp_path / "test.txt", batch_size=0)
    with pytest.raises(ValueError, match="max_posts must be >= 1"):
        trainer_module.evaluate_checkpoint(tmp_path / "best.pt", tmp_path / "test.txt", max_posts=0)
