"""mner-export: a tagger-only export end to end, and every user mistake as a clear error that writes nothing."""

import importlib.util

import pytest
import torch
from click.testing import CliRunner

from mner.export.bundle import verify_bundle
from mner.export.cli import export_command


def invoke(*args):
    return CliRunner().invoke(export_command, [str(a) for a in args])


def tensorrt_usable() -> bool:
    return importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


def test_cli_exports_the_tagger(small_ckpt, tmp_path):
    out = tmp_path / "bundle"
    result = invoke("--ckpt", small_ckpt, "--out", out, "--stages", "tagger", "--seed", 3)
    assert result.exit_code == 0, result.output
    assert f"bundle: {out}" in result.output and "stages: tagger (fp32)" in result.output
    assert "200 of 200 posts identical" in result.output
    manifest = verify_bundle(out)
    assert list(manifest["stages"]) == ["tagger"]
    assert manifest["parity"]["text"] == {"source": "synthetic", "posts": 200, "seed": 3}


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
    result = invoke("--ckpt", ckpt, "--out", out)
    assert result.exit_code != 0
    assert str(ckpt) in result.output and message in result.output
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == (["model.pt"] if content else [])


@pytest.mark.skipif(tensorrt_usable(), reason="TensorRT and a CUDA GPU are present here: test_trt.py covers --trt")
def test_trt_without_tensorrt_fails_first_and_writes_nothing(tmp_path):
    out = tmp_path / "bundle"
    # The checkpoint does not even exist: the TensorRT check must come before anything else.
    result = invoke("--ckpt", tmp_path / "missing.pt", "--out", out, "--trt")
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
    result = invoke("--ckpt", small_ckpt, "--out", tmp_path / "taken")
    assert result.exit_code != 0 and "already exists; pass --overwrite" in result.output
    result = invoke("--ckpt", small_ckpt, "--out", tmp_path / "b", "--stages", "tagger,ocr")
    assert result.exit_code != 0 and "non-empty subset of ['detector', 'vision', 'tagger']" in result.output
    result = invoke("--ckpt", small_ckpt, "--out", tmp_path / "b", "--resnet-weights", tmp_path / "nope.pth")
    assert result.exit_code != 0 and "--resnet-weights" in result.output and "nope.pth: no such file" in result.output
    result = invoke("--ckpt", small_ckpt, "--out", tmp_path / "b", "--parity-data", tmp_path / "nope.txt")
    assert result.exit_code != 0 and "nope.txt: no such file" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_foreign_vision_weights_are_named(small_ckpt, tmp_path):
    weights = tmp_path / "resnet.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, weights)
    result = invoke("--ckpt", small_ckpt, "--out", tmp_path / "b", "--stages", "vision", "--resnet-weights", weights)
    assert result.exit_code != 0 and str(weights) in result.output and "does not hold torchvision resnet152 weights" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet.pth"]
