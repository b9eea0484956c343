"""mner-tag's streams, exit status, provenance sidecar, --with-text and option vocabulary (issue 13, item 4).

Real runs: click's CliRunner, or ``mner-tag`` in a child process where stdin, stdout and stderr
must be real pipes, on the tiny exported bundle (conftest's ``exported_once``); the sidecar's
branches also with test_tag_cli's stub pipeline, which needs no bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import select
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_tag_cli import StubBundlePipeline, StubPipeline, write_lines

import mner.runtime
from mner.runtime import cli, tagfile
from mner.runtime.cli import EXIT_ERROR_RECORDS, EXIT_FAILED, EXIT_OK, EXIT_USAGE, tag_command
from mner.runtime.bundle import manifest_sha256
from mner.runtime.pipeline import Pipeline
from mner.runtime.tagfile import OutputClosed, OutputError, Provenance, sidecar_path, tag_jsonl

POSTS = [
    {"id": "p1", "text": "Kawhi Leonard visits Toronto with the Raptors"},
    {"id": "p2", "text": "Obama in Paris 🇫🇷 today"},
    {"id": "p3", "text": "Merkel\u200b und\u202e Macron in Berlin\u0000!"},  # zero-width, RTL override, NUL
]
BAD = [*POSTS, "not json", {"id": "empty", "text": "   "}]


def child_env() -> dict[str, str]:
    """PYTHONPATH for a child process that imports this mner (the source tree's or the installed one)."""
    package_root = Path(mner.runtime.__file__).parents[2]
    parts = (str(package_root), os.environ.get("PYTHONPATH", ""))
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in parts if p)}


ENTRY = "from mner.runtime.cli import tag_command; tag_command(prog_name='mner-tag')"  # the console script's call


def mner_tag(*arguments: str, stdin: bytes = b"", cwd: Path | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", ENTRY, *arguments]
    return subprocess.run(command, input=stdin, capture_output=True, env=child_env(), cwd=cwd, timeout=180)


def jsonl(lines: list) -> bytes:
    return b"".join((line.encode() if isinstance(line, str) else json.dumps(line).encode()) + b"\n" for line in lines)


def read_records(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.splitlines()]


@pytest.fixture
def bundle(exported_once) -> Path:
    return exported_once.bundle


# --------------------------------------------------------------------------- fast help, one vocabulary


def test_the_command_module_imports_no_pipeline_so_help_is_fast():
    script = ("import sys; import mner.runtime.cli; "
              "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'cv2', 'onnxruntime', 'tokenizers', "
              "'torch', 'prometheus_client') or m == 'mner.runtime.pipeline'); print(heavy)")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=child_env(), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_commands_written_out_defaults_are_the_librarys():
    from mner.runtime import pipeline, runners
    from mner.runtime.serve_batcher import ServeConfig

    assert cli.BACKENDS == runners.BACKENDS
    assert cli.BAD_IMAGE_POLICIES == pipeline.BAD_IMAGE_POLICIES
    assert cli.DEFAULT_BATCH_SIZE == pipeline.DEFAULT_BATCH_SIZE
    assert cli.MAX_TEXT_CHARS == tagfile.MAX_TEXT_CHARS == ServeConfig.max_text_chars
    assert cli.MAX_LINE_BYTES == tagfile.MAX_LINE_BYTES == ServeConfig.max_body_bytes


def test_h_version_and_the_help_document_every_option_and_the_exit_status():
    runner = CliRunner()
    short, long = (runner.invoke(tag_command, [flag], prog_name="mner-tag") for flag in ("-h", "--help"))
    assert short.exit_code == long.exit_code == 0 and short.output == long.output
    assert "Exit status:" in short.output and "3  the run finished and the output holds error records" in short.output
    assert "OUTPUT.meta.json" in short.output and "--input - reads stdin" in short.output
    assert "--out " not in short.output and "--ckpt" not in short.output  # old spellings hidden
    command = tag_command
    for parameter in command.params:
        if isinstance(parameter, cli.click.Option) and not parameter.hidden:
            assert parameter.help, f"{parameter.name} has no help text"
    version = runner.invoke(tag_command, ["--version"], prog_name="mner-tag")
    assert version.exit_code == 0 and version.output.startswith("mner-tag (mner) ")


# --------------------------------------------------------------------------- the sidecar, on a stub pipeline


def provenance(sha: str = "a" * 64, **options) -> Provenance:
    return Provenance(sha, {"input": "jsonl", "backend": "ort", "with_text": False, **options}, f"/bundles/{sha[:4]}")


def test_a_sidecar_is_written_atomically_and_a_matching_resume_keeps_it(tmp_path):
    source = write_lines(tmp_path / "in.jsonl", POSTS)
    output = tmp_path / "out" / "tagged.jsonl"
    tag_jsonl(StubPipeline(), source, output, progress=False, provenance=provenance())
    meta = json.loads(sidecar_path(output).read_text())
    assert meta == {"format": "mner-tag-output", "format_version": 1, "bundle": {"sha256": "a" * 64, "path": "/bundles/aaaa"},
                    "options": {"input": "jsonl", "backend": "ort", "with_text": False}, "details": {}}  # fmt: skip
    assert sorted(p.name for p in output.parent.iterdir()) == ["tagged.jsonl", "tagged.jsonl.meta.json"]  # no temp file
    assert sidecar_path(output).stat().st_mode & 0o777 == output.stat().st_mode & 0o777  # the umask's, as the output
    before = sidecar_path(output).read_bytes()
    summary = tag_jsonl(StubPipeline(), source, output, progress=False, provenance=provenance())
    assert summary.skipped == 3 and sidecar_path(output).read_bytes() == before


def test_a_resume_by_another_bundle_or_with_other_options_is_refused_naming_both(tmp_path):
    source = write_lines(tmp_path / "in.jsonl", POSTS)
    output = tmp_path / "tagged.jsonl"
    tag_jsonl(StubPipeline(), source, output, progress=False, provenance=provenance())
    written = output.read_bytes()
    with pytest.raises(OutputError) as error:
        tag_jsonl(StubPipeline(), source, output, progress=False, provenance=provenance("b" * 64, with_text=True))
    message = str(error.value)
    assert f"bundle: sha256 {'a' * 64} (/bundles/aaaa) wrote it; this run's is sha256 {'b' * 64} (/bundles/bbbb)" in message
    assert "--with-text: false then, true now" in message
    assert f"delete {output} and tagged.jsonl.meta.json to start again" in message
    with pytest.raises(OutputError, match='--precision: null then, "fp16" now'):
        tag_jsonl(StubPipeline(), source, output, progress=False, provenance=provenance(precision="fp16"))
    assert output.read_bytes() == written


def test_an_output_with_records_but_no_sidecar_is_refused_and_an_empty_one_adopted(tmp_path):
    source = write_lines(tmp_path / "in.jsonl", POSTS)
    output = tmp_path / "tagged.jsonl"
    tag_jsonl(StubPipeline(), source, output, progress=False)  # no provenance: as an older mner-tag wrote it
    assert not sidecar_path(output).exists()
    with pytest.raises(OutputError, match=r"holds 3 records but no tagged.jsonl.meta.json saying which bundle.*"
                                          r"delete \S*tagged.jsonl to start again"):
        tag_jsonl(StubPipeline(), source, output, progress=False, provenance=provenance())
    sidecar_path(output).write_text("not json")
    with pytest.raises(OutputError, match=r"tagged.jsonl.meta.json is not an mner-tag sidecar"):
        tag_jsonl(StubPipeline(), source, output, progress=False, provenance=provenance())
    output.write_bytes(b'{"id": "p1", "line": 1, "entit')  # only a torn record: nothing to mix with
    sidecar_path(output).unlink()
    summary = tag_jsonl(StubPipeline(), source, output, progress=False, provenance=provenance())
    assert summary.tagged == 3 and json.loads(sidecar_path(output).read_text())["bundle"]["sha256"] == "a" * 64


def test_an_unwritable_sidecar_is_one_clear_error(tmp_path, monkeypatch):
    source = write_lines(tmp_path / "in.jsonl", POSTS)
    output = tmp_path / "tagged.jsonl"
    real_replace = os.replace

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tagfile.os, "replace", failing_replace)
    with pytest.raises(OutputError, match=r"cannot write .*tagged.jsonl.meta.json \(which bundle and options wrote "
                                          r"--output\): No space left on device \(ENOSPC\)"):  # fmt: skip
        tag_jsonl(StubPipeline(), source, output, progress=False, provenance=provenance())
    monkeypatch.setattr(tagfile.os, "replace", real_replace)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # the temporary file removed
    assert output.read_bytes() == b""  # created, nothing written: the next run adopts it
    assert tag_jsonl(StubPipeline(), source, output, progress=False, provenance=provenance()).tagged == 3


def test_the_bundle_sha256_is_the_manifests_and_a_missing_manifest_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_bytes(b'{"format": "x"}')
    assert manifest_sha256(tmp_path) == hashlib.sha256(b'{"format": "x"}').hexdigest()
    with pytest.raises(ValueError, match=r"cannot read .*absent/manifest.json to identify the bundle"):
        manifest_sha256(tmp_path / "absent")


# --------------------------------------------------------------------------- streams, on a stub pipeline


def test_threads_go_with_the_ort_backend_only(tmp_path):
    source = write_lines(tmp_path / "in.jsonl", POSTS)
    result = CliRunner().invoke(tag_command, ["--engine", str(tmp_path), "--input", str(source), "-o", "-",
                                              "--backend", "torch", "--threads", "2"])  # fmt: skip
    assert result.exit_code == EXIT_USAGE and "--threads sets ONNX Runtime's threads" in result.stderr


def test_stdin_redirected_from_the_output_file_is_refused(tmp_path):
    output = tmp_path / "tagged.jsonl"
    output.write_bytes(jsonl(POSTS))
    with open(output, "rb") as stdin, pytest.raises(OutputError, match=r"is the --input file \(stdin\)"):
        tag_jsonl(StubPipeline(), stdin, output, progress=False)
    assert output.read_bytes() == jsonl(POSTS)


def test_stdin_to_a_stream_writes_no_sidecar_and_reads_pictures_under_the_current_directory(tmp_path, monkeypatch):
    import io

    monkeypatch.chdir(tmp_path)
    lines = [{"id": 1, "text": "Obama", "image": "missing.jpg"}, {"id": 2, "text": "Paris"}]
    out = io.BytesIO()
    summary = tag_jsonl(StubPipeline(), io.BytesIO(jsonl(lines)), out, progress=False)
    first, second = read_records(out.getvalue())
    assert first["error"] == "image: no such image file: ./missing.jpg" and "entities" in second
    assert summary.lines == 2 and summary.error_records == 1
    assert sorted(os.listdir(tmp_path)) == []  # no sidecar, no file of any kind


def test_a_closed_output_stream_stops_the_run_with_output_closed():
    class ClosedPipe:
        def write(self, data):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    import io

    with pytest.raises(OutputClosed, match="closed by its reader"):
        tag_jsonl(StubPipeline(), io.BytesIO(jsonl(POSTS)), ClosedPipe(), progress=False)


def test_conll_to_stdout_keeps_the_report_on_stderr(tmp_path, monkeypatch):
    monkeypatch.setattr(Pipeline, "from_bundle", classmethod(lambda cls, *args, **kwargs: StubBundlePipeline()))
    (tmp_path / "manifest.json").write_text("{}")
    conll = tmp_path / "data.txt"
    conll.write_text("IMGID:1\nKawhi\tB-PER\nLeonard\tI-PER\n\nIMGID:2\nhi\tO\n\n")
    result = CliRunner().invoke(tag_command, ["--engine", str(tmp_path), "--conll", str(conll), "-o", "-", "--with-text",
                                              "--no-progress"])  # fmt: skip
    assert result.exit_code == EXIT_OK, result.output
    records = read_records(result.stdout_bytes)
    assert [(r["id"], r["text"], r["tags"]) for r in records] == [(1, "Kawhi Leonard", ["B-PER", "I-PER"]),
                                                                  (2, "hi", ["B-PER"])]  # fmt: skip
    assert "micro" in result.stderr and "2 posts -> <stdout>" in result.stderr
    assert not sidecar_path(tmp_path / "-").exists() and not (tmp_path / "-").exists()


# --------------------------------------------------------------------------- on the real bundle


def test_stdin_to_stdout_is_pure_jsonl_with_progress_and_summary_on_stderr(bundle, tmp_path):
    result = mner_tag("--engine", str(bundle), "--input", "-", "--output", "-", stdin=jsonl(POSTS), cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr.decode()
    records = read_records(result.stdout)
    assert [(r["id"], r["line"]) for r in records] == [("p1", 1), ("p2", 2), ("p3", 3)]
    assert all(r["entities"] for r in records)
    stderr = result.stderr.decode()
    assert "INFO mner.progress: mner-tag: 3 lines" in stderr and "done in" in stderr  # a log line, not a bar
    assert "3 lines -> <stdout>: 3 tagged" in stderr and "\r" not in stderr
    assert os.listdir(tmp_path) == []  # no file named "-", no sidecar


def test_a_reader_that_stops_early_is_one_error_line(bundle, tmp_path):
    posts = tmp_path / "posts.jsonl"
    posts.write_bytes(jsonl([{"id": i, "text": f"Obama in Paris number {i}"} for i in range(400)]))
    command = [sys.executable, "-c", ENTRY,
               "--engine", str(bundle), "--input", str(posts), "-o", "-", "--batch-size", "8", "--no-progress"]  # fmt: skip
    tagger = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env())
    first = tagger.stdout.readline()
    tagger.stdout.close()  # as `| head -1` does
    stderr = tagger.stderr.read().decode()
    assert tagger.wait(timeout=120) == EXIT_FAILED
    assert json.loads(first)["id"] == 0
    assert stderr.strip().splitlines() == ["Error: the output stream was closed by its reader (a pipe into head, say): "
                                           "the run stopped there"]  # fmt: skip


def test_exit_status_0_3_2_1_on_real_runs(bundle, tmp_path):
    runner = CliRunner()
    good = tmp_path / "good.jsonl"
    good.write_bytes(jsonl(POSTS))
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(jsonl(BAD))
    base = ["--engine", str(bundle), "--no-progress"]
    ok = runner.invoke(tag_command, [*base, "--input", str(good), "-o", str(tmp_path / "ok.jsonl")])
    assert ok.exit_code == EXIT_OK, ok.output
    some = runner.invoke(tag_command, [*base, "--input", str(bad), "-o", str(tmp_path / "some.jsonl")])
    assert some.exit_code == EXIT_ERROR_RECORDS and "5 lines" in some.stderr and "2 errors" in some.stderr
    again = runner.invoke(tag_command, [*base, "--input", str(bad), "-o", str(tmp_path / "some.jsonl")])
    assert again.exit_code == EXIT_ERROR_RECORDS and "5 already done (2 of them errors)" in again.stderr
    usage = runner.invoke(tag_command, [*base, "--input", str(good), "--conll", str(good), "-o", str(tmp_path / "u")])
    assert usage.exit_code == EXIT_USAGE and "exactly one of --input (JSONL) and --conll" in usage.stderr
    failed = runner.invoke(tag_command, ["--engine", str(tmp_path), "--input", str(good), "-o", str(tmp_path / "f")])
    assert failed.exit_code == EXIT_FAILED and "is not an mner bundle" in failed.stderr
    # the same codes from the process itself
    assert mner_tag(*base, "--input", str(good), "-o", "-").returncode == EXIT_OK
    assert mner_tag(*base, "--input", str(bad), "-o", "-").returncode == EXIT_ERROR_RECORDS


def another_bundle(bundle: Path, tmp_path: Path) -> Path:
    """A copy of ``bundle`` exported "again": the same files, another manifest (its export time), so another sha."""
    copy = tmp_path / "bundle-2"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["created"] = "another export"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_the_sidecar_names_the_bundle_and_a_resume_with_another_is_refused_naming_both(bundle, tmp_path):
    source = tmp_path / "posts.jsonl"
    source.write_bytes(jsonl(POSTS))
    output = tmp_path / "tagged.jsonl"
    runner = CliRunner()
    first = runner.invoke(tag_command, ["--engine", str(bundle), "--input", str(source), "--out", str(output),
                                        "--no-progress"])  # fmt: skip  (--out: the old spelling still works)
    assert first.exit_code == EXIT_OK, first.output
    meta = json.loads(sidecar_path(output).read_text())
    sha = hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    assert meta["bundle"] == {"sha256": sha, "path": os.path.abspath(bundle)}
    assert meta["options"] == {"input": "jsonl", "backend": "ort", "precision": "fp32", "on_bad_image": "error",
                               "with_text": False, "max_text_chars": 10_000, "max_line_bytes": 16 << 20}  # fmt: skip
    assert meta["details"]["device"] == "cpu" and meta["details"]["input"] == str(source)

    other = another_bundle(bundle, tmp_path)
    other_sha = hashlib.sha256((other / "manifest.json").read_bytes()).hexdigest()
    before = output.read_bytes()
    refused = runner.invoke(tag_command, ["--engine", str(other), "--input", str(source), "-o", str(output)])
    assert refused.exit_code == EXIT_FAILED
    both = f"bundle: sha256 {sha} ({os.path.abspath(bundle)}) wrote it; this run's is sha256 {other_sha} ({other})"
    assert both in refused.stderr
    assert output.read_bytes() == before
    fresh = runner.invoke(tag_command, ["--engine", str(other), "--input", str(source), "-o", str(tmp_path / "new.jsonl"),
                                        "--no-progress"])  # fmt: skip
    assert fresh.exit_code == EXIT_OK, fresh.output
    assert json.loads(sidecar_path(tmp_path / "new.jsonl").read_text())["bundle"]["sha256"] == other_sha


def test_with_text_records_carry_the_text_the_offsets_index(bundle, tmp_path):
    source = tmp_path / "posts.jsonl"
    source.write_bytes(jsonl(BAD))
    output = tmp_path / "tagged.jsonl"
    result = CliRunner().invoke(tag_command, ["--engine", str(bundle), "--input", str(source), "-o", str(output),
                                              "--with-text", "--no-progress"])  # fmt: skip
    assert result.exit_code == EXIT_ERROR_RECORDS, result.output
    records = read_records(output.read_bytes())
    for record, post in zip(records, POSTS):
        assert list(record)[:3] == ["id", "line", "text"] and record["text"] == post["text"]
        assert record["entities"]
        for entity in record["entities"]:
            assert record["text"][entity["start"] : entity["end"]] == entity["text"]
    assert "text" not in records[3]  # not JSON: no text to carry
    assert records[4]["text"] == "   " and "error" in records[4]
    assert json.loads(sidecar_path(output).read_text())["options"]["with_text"] is True
    plain = CliRunner().invoke(tag_command, ["--engine", str(bundle), "--input", str(source), "-o", str(output)])
    assert plain.exit_code == EXIT_FAILED and "--with-text: true then, false now" in plain.stderr


def test_no_verify_opens_the_bundle_without_hashing_it(bundle, tmp_path, monkeypatch):
    from mner.runtime import bundle as bundle_module

    def no_hashing(path):
        raise AssertionError(f"hashed {path}")

    monkeypatch.setattr(bundle_module, "sha256_file", no_hashing)
    monkeypatch.setenv("MNER_CACHE_DIR", "")  # no verification cache: an open that verifies hashes every file
    source = tmp_path / "posts.jsonl"
    source.write_bytes(jsonl(POSTS))
    verified = CliRunner().invoke(tag_command, ["--engine", str(bundle), "--input", str(source), "-o", "-"])
    assert verified.exit_code == EXIT_FAILED and "hashed" in str(verified.exception)
    result = CliRunner().invoke(tag_command, ["--engine", str(bundle), "--input", str(source), "-o", "-", "--no-verify",
                                              "--no-progress"])  # fmt: skip
    assert result.exit_code == EXIT_OK, result.output
    assert len(read_records(result.stdout_bytes)) == 3


def test_stdin_is_tagged_in_input_order_by_default_so_a_live_feed_gets_each_record_at_once(bundle, tmp_path):
    # Ordering by length waits for a window of lines; on stdin that would hold a live feed's
    # records back until 1,024 lines had come, so stdin defaults to --sort-window 1.
    command = [sys.executable, "-c", ENTRY, "--engine", str(bundle), "--input", "-", "--output", "-",
               "--batch-size", "1", "--no-progress"]  # fmt: skip
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=child_env(), cwd=tmp_path)  # fmt: skip
    try:
        child.stdin.write(jsonl(POSTS[:1]))
        child.stdin.flush()
        ready, _, _ = select.select([child.stdout], [], [], 120)
        assert ready, "no record while stdin stays open"
        first = json.loads(child.stdout.readline())
        assert (first["id"], first["line"]) == ("p1", 1) and first["entities"]
        child.stdin.write(jsonl(POSTS[1:]))
        child.stdin.close()
        rest = read_records(child.stdout.read())
        assert [(r["id"], r["line"]) for r in rest] == [("p2", 2), ("p3", 3)]
        assert child.wait(timeout=60) == EXIT_OK, child.stderr.read().decode()
    finally:
        child.kill()
        child.wait()
        for stream in (child.stdout, child.stderr):
            stream.close()
