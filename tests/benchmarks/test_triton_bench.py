"""benchmarks/triton.py: mner-serve and the wheel's tritonserver (python flavour) on one bundle, one run.

The end-to-end test starts both servers on the session's tiny bundle (all three stages, stand-in encoders), sends
TWITTER-2017 test posts with real photos from 1 and 2 client threads, and reads the report. It skips, saying why,
where the Triton client, the nvidia-pytriton wheel or the stub's NumPy < 2 is missing (``make install`` puts them
in), or where TWITTER-2017 is absent.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mner.benchmarks import triton as bench
from mner.runtime import triton_local
from mner.runtime.image import decode_image

TWITTER2017 = Path(__file__).resolve().parents[3] / "shared" / "data" / "twitter2017"
TRITON_NUMPY = Path(sys.prefix) / "triton-numpy"
# what a machine that cannot run the wheel's binary says (an old glibc, a missing system library)
CANNOT_RUN = ("error while loading shared libraries", "GLIBC_", "cannot execute binary file")


def triton_or_skip() -> None:
    try:
        bench.check_triton(TRITON_NUMPY)
    except RuntimeError as error:
        pytest.skip(f"cannot run the Triton side here: {error} (make install installs it)")


def text_only_copy(bundle: Path, target: Path) -> Path:
    """A linked copy of ``bundle`` whose manifest lists the tagger alone (the graphs stay, unlisted as stages)."""
    shutil.copytree(bundle, target, copy_function=os.link)
    manifest = json.loads((target / "manifest.json").read_text())
    for name in ("detector", "vision"):
        manifest["stages"].pop(name)
    (target / "manifest.json").unlink()  # a linked file: replaced, not edited in place
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def invoke(*args: str):
    return CliRunner().invoke(bench.triton_bench_command, list(args), catch_exceptions=False)


# --------------------------------------------------------------------------- end to end


def test_both_servers_answer_every_post_alike_and_the_report_says_so(exported_once, tmp_path):
    if not (TWITTER2017 / "test.txt").is_file():
        pytest.skip(f"TWITTER-2017 is not at {TWITTER2017}")
    triton_or_skip()
    out = tmp_path / "report"
    args = ["--engine", str(exported_once.bundle), "-o", str(out), "--concurrency", "1,2", "--requests", "10",
            "--warmup", "2", "--batch-size", "4", "--pictures", "--data", str(TWITTER2017)]  # fmt: skip
    # as a user runs it: the report records this command line
    result = subprocess.run([sys.executable, "-m", "mner.benchmarks.triton", *args], capture_output=True, text=True,
                            timeout=240)  # fmt: skip
    if result.returncode and any(sign in result.stderr for sign in CANNOT_RUN):
        pytest.skip(f"the nvidia-pytriton tritonserver cannot run here: {result.stderr[-500:]}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mismatches: 0 of" in result.stdout

    report = json.loads((out / "triton.json").read_text())
    assert report["command"] == "python -m mner.benchmarks.triton " + " ".join(args)
    assert report["bundle"]["manifest_sha256"] == hashlib.sha256((exported_once.bundle / "manifest.json").read_bytes()).hexdigest()
    assert report["bundle"]["has_images"] and report["settings"]["pictures"]
    # both servers got the same batch: mner-serve's flag and Triton's max_batch_size
    assert "--batch-size 4" in report["settings"]["mner_serve"]
    assert report["settings"]["triton_repository"]["max_batch_size"] == 4
    assert report["settings"]["triton_repository"]["max_queue_delay_us"] == 5000
    rows = {(row["server"], row["concurrency"]): row for row in report["results"]}
    assert set(rows) == {(server, level) for server in ("mner-serve", "triton") for level in (1, 2)}
    for row in rows.values():
        assert row["answered"] == 10 and row["errors"] == 0 and row["warmup_errors"] == 0, row
        assert row["posts_per_s"] > 0
        assert 0 < row["latency_ms"]["p50"] <= row["latency_ms"]["p99"]
        assert row["mean_batch"] is not None and 1 <= row["mean_batch"] <= 4
    # every request of the run (warm-up included) answered by both, and alike: 2 + 10 at C=1, 2 + 10 at C=2
    assert report["agreement"] == {"compared": 24, "mismatches": 0, "examples": []}
    assert report["versions"]["triton_server"].count(".") == 2  # "2.51.0", from the server's metadata
    assert report["versions"]["tritonclient"] not in (None, "not installed")
    assert report["versions"]["triton_numpy"].startswith("1.")
    assert report["machine"]["usable_cores"] >= 1 and "load_average" in report["machine"]
    assert not list(out.glob("triton-repository-*")), "the repository is removed after the run"
    assert (out / "mner-serve.log").is_file() and (out / "tritonserver.log").is_file()

    markdown = (out / "triton.md").read_text()
    assert f"Command: `{report['command']}`" in markdown
    assert "**mismatches: 0**" in markdown and "## How to read" in markdown and "python flavour" in markdown
    assert report["bundle"]["manifest_sha256"][:16] in markdown
    assert f"Triton server {report['versions']['triton_server']}" in markdown
    assert "| 2 | triton | 10 | 0 |" in markdown


# --------------------------------------------------------------------------- refusals, before any server starts


@pytest.mark.parametrize("value, says", [
    ("", "one or more client counts"),
    ("1,four", "comma-separated whole numbers"),
    ("4,0", "one or more client counts >= 1"),
    ("4,4", "each client count once"),
])  # fmt: skip
def test_concurrency_must_be_distinct_positive_counts(tmp_path, value, says):
    result = invoke("--engine", str(tmp_path), "-o", str(tmp_path / "out"), "--concurrency", value)
    assert result.exit_code == 2 and says in result.output, result.output


def test_pictures_need_a_bundle_with_picture_stages(exported_once, tmp_path):
    bundle = text_only_copy(exported_once.bundle, tmp_path / "text-only")
    result = invoke("--engine", str(bundle), "-o", str(tmp_path / "out"), "--pictures")
    assert result.exit_code == 1
    assert "is a text-only bundle (stages ['tagger'])" in result.output and "leave --pictures out" in result.output
    assert not (tmp_path / "out").exists()


def test_the_stub_s_numpy_folder_must_hold_numpy(exported_once, tmp_path):
    result = invoke("--engine", str(exported_once.bundle), "-o", str(tmp_path / "out"),
                    "--triton-numpy", str(tmp_path))  # fmt: skip
    assert result.exit_code == 1
    assert f"--triton-numpy {tmp_path} holds no numpy: pip install --target {tmp_path} 'numpy<2'" in result.output


def test_a_missing_triton_client_is_named_with_its_install_command(exported_once, tmp_path, monkeypatch):
    (tmp_path / "numpy").mkdir()
    monkeypatch.setitem(sys.modules, "tritonclient.http", None)  # import tritonclient.http raises ImportError
    result = invoke("--engine", str(exported_once.bundle), "-o", str(tmp_path / "out"), "--triton-numpy", str(tmp_path))
    assert result.exit_code == 1 and "pip install 'tritonclient[http]'" in result.output


def test_a_missing_triton_server_is_named_with_its_install_command(exported_once, tmp_path, monkeypatch):
    pytest.importorskip("tritonclient.http", reason="the Triton client is checked first")
    (tmp_path / "numpy").mkdir()

    def no_wheel():
        raise triton_local.TritonUnavailable(f"no Triton server here: {triton_local.INSTALL}")

    monkeypatch.setattr(triton_local, "wheel_server", no_wheel)
    result = invoke("--engine", str(exported_once.bundle), "-o", str(tmp_path / "out"), "--triton-numpy", str(tmp_path))
    assert result.exit_code == 1 and triton_local.INSTALL in result.output


# --------------------------------------------------------------------------- parts


def test_each_post_s_photo_has_its_own_bytes_and_the_photo_s_pixels():
    pictures = bench.distinct_pictures(10, sources=3)
    assert len({hashlib.sha256(p).digest() for p in pictures}) == 10
    # the marker segment changes the bytes, not the picture: post k and post k + 3 show the same photo
    assert np.array_equal(decode_image(pictures[0]), decode_image(pictures[3]))
    assert not np.array_equal(decode_image(pictures[0])[:8, :8], decode_image(pictures[1])[:8, :8])
    with pytest.raises(ValueError, match="count must be >= 1, got 0"):
        bench.distinct_pictures(0)


def test_answers_are_the_same_with_the_same_entities_and_objects_and_close_scores():
    answer = {"entities": [{"type": "PER", "text": "Obama", "start": 0, "end": 5, "score": 0.91}], "objects": ["person"]}

    def changed(**entity) -> dict:
        return {**answer, "entities": [{**answer["entities"][0], **entity}]}

    assert bench.same_answer(answer, json.loads(json.dumps(answer)))
    assert bench.same_answer(changed(score=0.9109), answer)
    assert not bench.same_answer(changed(score=0.912), answer)
    assert not bench.same_answer(changed(type="ORG"), answer)
    assert not bench.same_answer(changed(end=4, text="Obam"), answer)
    assert not bench.same_answer({**answer, "objects": []}, answer)
    assert not bench.same_answer({**answer, "entities": []}, answer)
    assert not bench.same_answer({**answer, "image_error": "not a picture"}, answer)


def test_compare_counts_the_requests_both_answered_and_shows_those_that_differ():
    posts = [{"text": "Obama in Paris"}, {"text": "Nice day"}]
    same = {"entities": [], "objects": []}
    other = {"entities": [{"type": "LOC", "text": "Nice", "start": 0, "end": 4, "score": 0.5}], "objects": []}
    answers = {"mner-serve": {0: same, 1: same, 2: same, 3: same}, "triton": {0: same, 1: other, 3: same}}
    assert bench.compare(answers, posts) == {
        "compared": 3, "mismatches": 1,
        "examples": [{"request": 1, "text": "Nice day", "mner-serve": same, "triton": other}],
    }  # fmt: skip
