"""benchmarks/gpu.sh: its plan on this machine (the GPU run itself needs a GPU machine)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu.sh"


def run_script(*args, data: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, DATA=str(data), WORK=str(tmp_path / "work"))
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture
def data(tmp_path) -> Path:
    for split in ("train", "test"):
        (tmp_path / f"{split}.txt").write_text("IMGID:1\nParis\tB-LOC\n\n")
    return tmp_path


def test_dry_run_prints_the_whole_plan_and_runs_nothing(data, tmp_path):
    result = run_script("--dry-run", str(tmp_path / "report"), data=data, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    plan = [line for line in result.stdout.splitlines() if line.startswith("+ ")]
    assert len(plan) == 3
    assert "mner.export.random_checkpoint --preset paper" in plan[0]
    assert "--stages tagger --fp16" in plan[1]
    assert "--device cuda" in plan[2] and "--backends torch,torch-fp16" in plan[2] and str(tmp_path / "report") in plan[2]
    assert not (tmp_path / "work" / "best.pt").exists() and not (tmp_path / "report").exists()
    if "no CUDA GPU" in result.stderr:  # this machine: the plan is printed, the run would refuse
        assert "tensorrt does not import" in result.stderr or "--trt" in plan[1]


def test_without_a_gpu_it_refuses_with_the_reason(data, tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = run_script(str(tmp_path / "report"), data=data, tmp_path=tmp_path)
    assert result.returncode == 2 and "torch sees no CUDA GPU" in result.stderr
    assert not (tmp_path / "report").exists()


def test_missing_data_is_named(tmp_path):
    result = run_script("--dry-run", data=tmp_path / "nowhere", tmp_path=tmp_path)
    assert result.returncode == 2 and "nowhere/train.txt is missing" in result.stderr
