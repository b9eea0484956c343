"""mner-export: the stages a checkpoint was trained with, exports end to end, the old spellings, a fast
--help, and every user mistake as a clear error that writes nothing."""

import importlib.util
import json
import logging
import re
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from mner.export.bundle import verify_bundle
from mner.export.cli import export_command

# What --help must not wait for: from a tenth of a second (numpy) to several seconds (torch) each.
HEAVY = ("torch", "torchvision", "transformers", "onnx", "onnxruntime", "onnxscript", "tensorrt", "cv2", "numpy")


def invoke(*args):
    return CliRunner().invoke(export_command, [str(a) for a in args])


def tensorrt_usable() -> bool:
    return importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


def progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mner.progress"]


def test_help_and_version_answer_without_loading_the_exporter():
    short = invoke("-h")
    assert short.exit_code == 0 and "Usage:" in short.output and "--checkpoint" in short.output
    for old in ("--ckpt", "--out ", "--parity-data"):  # old spellings work but are not shown
        assert old not in short.output
    assert "[default: from the checkpoint: all of them, or tagger alone" in re.sub(r"\s+", " ", short.output)
    version = invoke("--version")
    assert version.exit_code == 0 and re.search(r"\(mner\) \d+\.\d+", version.output), version.output
    # A fresh interpreter: importing the console module (what --help runs) loads no heavy library.
    code = f"import sys, mner.export.cli; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr


def test_the_split_choices_are_the_runtime_data_splits():
    from mner.export.cli import SPLITS  # the command spells them out: runtime.conll imports numpy
    from mner.runtime.conll import SPLIT_FILES

    assert SPLITS == tuple(SPLIT_FILES)


def test_without_the_train_extra_the_command_names_the_install(monkeypatch, tmp_path):
    from mner.runtime import extras

    monkeypatch.setattr(extras, "missing_modules", lambda modules: [m for m in modules if m == "onnxscript"])
    result = invoke("--checkpoint", tmp_path / "best.pt", "-o", tmp_path / "bundle")
    assert result.exit_code == 1
    assert result.output.endswith("needs onnxscript (not installed): pip install 'mner[train]'\n"), result.output
    assert list(tmp_path.iterdir()) == []


def test_a_text_only_checkpoint_exports_the_tagger_alone(text_only_ckpt, tmp_path, caplog, reuse_exported_graphs):
    # the session's first export of this tagger: traced here (a real trace through the CLI), kept for later exports of it
    caplog.set_level(logging.INFO, logger="mner")
    corpus = text_only_ckpt.parents[1] / "corpus"
    weights = tmp_path / "resnet.pth"
    weights.write_bytes(b"never read: the vision stage is not exported")
    out = tmp_path / "bundle"
    result = invoke("--checkpoint", text_only_ckpt, "-o", out, "--data", corpus, "--split", "valid",
                    "--resnet-weights", weights)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "stages: tagger (fp32)\n" in result.output
    assert "why: trained by mner-train without --images, so the model never saw a picture: the tagger only" in result.output
    assert "4 of 4 posts identical" in result.output  # the valid split of --data
    manifest = verify_bundle(out)
    assert list(manifest["stages"]) == ["tagger"]
    assert manifest["stage_selection"] == {
        "stages": ["tagger"], "chosen_by": "checkpoint", "pictures_in_training": False,
        "reason": "trained by mner-train without --images, so the model never saw a picture: the tagger only",
        "untrained_image_stages": [],
    }  # fmt: skip
    assert manifest["parity"]["text"]["source"] == "valid.txt" and manifest["parity"]["text"]["posts"] == 4
    # Off a terminal, progress is log lines on mner.progress (one per pass at the end of a short one).
    lines = progress_lines(caplog)
    assert any(line.startswith("tags: torch: 4/4 posts") for line in lines), lines
    assert any(line.startswith("tags: onnx fp32: 4/4 posts") for line in lines), lines
    # A vision option without its stage is said, not silently dropped.
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("mner")]
    assert warnings == ["--resnet-weights is not used: the vision stage is not exported "
                        "(stages: tagger; name it in --stages to add it)"]  # fmt: skip


def test_naming_image_stages_for_a_text_only_model_exports_them_and_warns(text_only_ckpt, tmp_path, caplog,
                                                                         stand_in_encoders):  # fmt: skip
    out = tmp_path / "bundle"
    # vision alone, as a stand-in encoder (tests/conftest.py), keeps the test short (the tagger's export is the test
    # above, ResNet's is tests/export/test_stages.py's); what matters is the warning
    result = invoke("--checkpoint", text_only_ckpt, "-o", out, "--stages", "vision", "--vision-arch", "resnet50",
                    "--no-progress")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "stages: vision (fp32)\n" in result.output
    assert "why: named by --stages; trained by mner-train without --images" in result.output
    # (the exporter's only: with the real ResNet-50, mner.train.vision also warns that its weights are random)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("mner.export")]
    assert warnings == ["exporting vision for a model that never saw a picture (trained by mner-train without --images): "
                        "pictures sent to this bundle reach a tagger whose image path only ever had masked, all-zero "
                        "features; leave out --stages for a text-only bundle"]  # fmt: skip
    assert progress_lines(caplog) == []  # --no-progress
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage_selection"]["chosen_by"] == "--stages"
    assert manifest["stage_selection"]["untrained_image_stages"] == ["vision"]
    assert manifest["stage_selection"]["pictures_in_training"] is False


def test_cli_exports_the_tagger_with_the_old_spellings(small_ckpt, tmp_path, reuse_exported_graphs):
    """`mner-export --ckpt best.pt --out BUNDLE` is how users were told to call it: it keeps working.
    (The tagger's graph is the session's: test_a_text_only_checkpoint_exports_the_tagger_alone traces one.)"""
    out = tmp_path / "bundle"
    result = invoke("--ckpt", small_ckpt, "--out", out, "--stages", "tagger", "--seed", 3)
    assert result.exit_code == 0, result.output
    assert f"bundle: {out}" in result.output and "stages: tagger (fp32)" in result.output
    assert "why: named by --stages; random weights" in result.output
    assert "200 of 200 posts identical" in result.output
    manifest = verify_bundle(out)
    assert list(manifest["stages"]) == ["tagger"]
    assert manifest["parity"]["text"] == {"source": "synthetic", "posts": 200, "seed": 3}
    assert manifest["stage_selection"]["pictures_in_training"] is None


def test_a_random_checkpoint_exports_every_stage_by_default(bundle):
    """A random-weights checkpoint stands in for any model (export and timing at real size): all stages."""
    selection = verify_bundle(bundle)["stage_selection"]
    assert selection["stages"] == ["detector", "vision", "tagger"] and selection["chosen_by"] == "checkpoint"
    assert selection["reason"] == "random weights (export/random_checkpoint.py): no training to follow: all stages"


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        (b"this is not a checkpoint", "not a readable PyTorch checkpoint"),
        ("foreign", "not an mner checkpoint"),
    ],
)
def test_bad_or_foreign_checkpoint_is_a_clear_error(tmp_path, content, message):
    ckpt = tmp_path / "model.pt"
    if content == "foreign":
        torch.save({"classifier.weight": torch.zeros(2, 2)}, ckpt)
    elif content is not None:
        ckpt.write_bytes(content)
    out = tmp_path / "bundle"
    result = invoke("--checkpoint", ckpt, "-o", out)
    assert result.exit_code != 0
    assert str(ckpt) in result.output and message in result.output
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == (["model.pt"] if content else [])


@pytest.mark.skipif(tensorrt_usable(), reason="TensorRT and a CUDA GPU are present here: test_trt.py covers --trt")
def test_trt_without_tensorrt_fails_first_and_writes_nothing(tmp_path):
    out = tmp_path / "bundle"
    # The checkpoint does not even exist: the TensorRT check must come before anything else.
    result = invoke("--checkpoint", tmp_path / "missing.pt", "-o", out, "--trt")
    assert result.exit_code != 0
    output = result.output
    assert "--trt needs" in output and "pip install" in output
    if importlib.util.find_spec("tensorrt") is None:
        assert "the `tensorrt` Python module" in output
    if not torch.cuda.is_available():
        assert "a CUDA GPU" in output
    assert "missing.pt" not in output
    assert list(tmp_path.iterdir()) == []


def test_existing_destination_and_bad_options_are_refused_before_loading(small_ckpt, tmp_path):
    (tmp_path / "taken").mkdir()
    result = invoke("--checkpoint", small_ckpt, "-o", tmp_path / "taken")
    assert result.exit_code != 0 and "already exists; pass --overwrite" in result.output
    result = invoke("--checkpoint", small_ckpt, "-o", tmp_path / "b", "--stages", "tagger,ocr")
    assert result.exit_code != 0 and "non-empty subset of ['detector', 'vision', 'tagger']" in result.output
    result = invoke("--checkpoint", small_ckpt, "-o", tmp_path / "b", "--resnet-weights", tmp_path / "nope.pth")
    assert result.exit_code != 0 and "--resnet-weights" in result.output and "nope.pth: no such file" in result.output
    result = invoke("--checkpoint", small_ckpt, "-o", tmp_path / "b", "--data", tmp_path / "nope.txt")
    assert result.exit_code != 0 and "--data" in result.output and "nope.txt: no such file or folder" in result.output
    result = invoke("--checkpoint", small_ckpt, "-o", tmp_path / "b", "--parity-data", tmp_path / "nope.txt")  # old spelling
    assert result.exit_code != 0 and "--data" in result.output and "nope.txt: no such file or folder" in result.output
    (tmp_path / "corpus").mkdir()
    result = invoke("--checkpoint", small_ckpt, "-o", tmp_path / "b", "--data", tmp_path / "corpus", "--split", "valid")
    assert result.exit_code != 0 and "is a folder without valid.txt (the valid split)" in result.output
    result = invoke("--checkpoint", small_ckpt, "-o", tmp_path / "b", "--split", "dev")
    assert result.exit_code != 0 and "'dev' is not one of 'train', 'valid', 'test'" in result.output
    result = invoke("-o", tmp_path / "b")
    assert result.exit_code != 0 and "Missing option '--checkpoint'" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "taken"]


def test_foreign_vision_weights_are_named(small_ckpt, tmp_path):
    weights = tmp_path / "resnet.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, weights)
    result = invoke("--checkpoint", small_ckpt, "-o", tmp_path / "b", "--stages", "vision", "--resnet-weights", weights)
    assert result.exit_code != 0 and str(weights) in result.output and "does not hold torchvision resnet152 weights" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet.pth"]
