"""mner-tag under hostile and careless input (issue 12, items 4, 5 and 9): pictures only from under
--images and no file's bytes in a record; no line aborts the run (or a rerun); disk errors are one line.

The command runs for real: click's CliRunner in this process, or ``mner-tag``'s entry point in a
child process where memory, file-size limits or mounts are the point. The pipeline is the real
Pipeline with fake runners (test_pipeline.fake_pipeline): a post tagged with a picture lists
objects (["person"] for a red one), without one none.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from test_pipeline import fake_pipeline

import mner.runtime
from mner.runtime import cli, tagfile
from mner.runtime.cli import EXIT_ERROR_RECORDS, tag_command
from mner.runtime.pipeline import Pipeline
from mner.runtime.tagfile import sidecar_path

SECRET = b"SECRET-TOKEN=hunter2\nroot:x:0:0:root:/root:/bin/bash\n"
RED_JPEG = cv2.imencode(".jpg", np.full((32, 32, 3), (0, 0, 255), np.uint8))[1].tobytes()  # BGR: red


@pytest.fixture
def fake_bundle(monkeypatch, tmp_path):
    """mner-tag's Pipeline.from_bundle gives a fake pipeline (with the command's batch size and policy); the
    --engine folder (tmp_path) has a manifest.json, which names the bundle in an output's sidecar."""

    def from_bundle(cls, bundle, *, batch_size=32, on_bad_image="error", **options):
        return fake_pipeline(batch_size=batch_size, on_bad_image=on_bad_image)

    monkeypatch.setattr(Pipeline, "from_bundle", classmethod(from_bundle))
    (tmp_path / "manifest.json").write_text('{"format": "a fake bundle"}\n')


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_bytes(b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines))
    return path


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def run_tag(tmp_path: Path, source: Path, output: Path, *extra: str):
    arguments = ["--engine", str(tmp_path), "--input", str(source), "--output", str(output), "--no-progress", *extra]
    return CliRunner().invoke(tag_command, arguments)


# --------------------------------------------------------------------------- 4: pictures stay under --images


@pytest.fixture
def picture_tree(tmp_path):
    """images/ with pictures, a text file, a FIFO and links; a secret and a picture outside it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    (outside / "red.jpg").write_bytes(RED_JPEG)
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    (images / "red.jpg").write_bytes(RED_JPEG)
    (images / "16_05_01_360.jpg").write_bytes(RED_JPEG)  # TWITTER names pictures <image id>.jpg
    (images / "sub" / "red.png").write_bytes(cv2.imencode(".png", np.full((8, 8, 3), (0, 0, 255), np.uint8))[1].tobytes())
    (images / "notes.jpg").write_bytes(b"PRIVATE NOTES, not a picture\n")
    (images / "empty.jpg").write_bytes(b"")
    (images / "link-to-secret.jpg").symlink_to(outside / "secret.txt")
    (images / "link-to-outside-red.jpg").symlink_to(outside / "red.jpg")
    (images / "link-up").symlink_to(outside)
    (images / "link-inside.jpg").symlink_to(images / "red.jpg")
    os.mkfifo(images / "pipe.jpg")
    return images, outside


OUTSIDE_LINES = {
    "absolute": "{outside}/secret.txt",
    "dotdot": "../outside/secret.txt",
    "dotdot-deep": "sub/../../outside/secret.txt",
    "symlink": "link-to-secret.jpg",
    "symlink-dir": "link-up/secret.txt",
    "symlink-picture": "link-to-outside-red.jpg",  # a real picture, still outside
    "absolute-picture": "{outside}/red.jpg",
    "etc-passwd": "/etc/passwd",
    "proc-environ": "/proc/self/environ",
    "dotdot-missing": "../outside/no-such-file.jpg",  # same refusal: no oracle for what exists outside
    "dev-zero": "/dev/zero",
}


def test_pictures_are_read_only_from_under_images_and_no_record_quotes_a_file(tmp_path, fake_bundle, picture_tree):
    images, outside = picture_tree
    lines = [{"id": name, "text": "Obama in Paris", "image": path.format(outside=outside)}
             for name, path in OUTSIDE_LINES.items()]  # fmt: skip
    lines += [
        {"id": "inside", "text": "Obama in Paris", "image": "red.jpg"},
        {"id": "inside-sub", "text": "Obama in Paris", "image": "sub/red.png"},
        {"id": "inside-dotdot", "text": "Obama in Paris", "image": "sub/../red.jpg"},
        {"id": "inside-link", "text": "Obama in Paris", "image": "link-inside.jpg"},
        {"id": "inside-absolute", "text": "Obama in Paris", "image": str(images / "red.jpg")},
        {"id": "not-a-picture", "text": "Obama in Paris", "image": "notes.jpg"},
        {"id": "empty-file", "text": "Obama in Paris", "image": "empty.jpg"},
        {"id": "fifo", "text": "Obama in Paris", "image": "pipe.jpg"},
        {"id": "directory", "text": "Obama in Paris", "image": "sub"},
    ]
    source = write_jsonl(tmp_path / "posts.jsonl", lines)
    output = tmp_path / "tagged.jsonl"
    result = run_tag(tmp_path, source, output, "--images", str(images))
    assert result.exit_code == EXIT_ERROR_RECORDS, result.output
    by_id = {r["id"]: r for r in read_records(output)}
    for name in OUTSIDE_LINES:
        assert "leads outside --images" in by_id[name]["error"], by_id[name]
        assert by_id[name]["error"].endswith("pictures are read only from files under --images")
    for name in ("inside", "inside-sub", "inside-dotdot", "inside-link", "inside-absolute"):
        assert by_id[name]["objects"] == ["person"], by_id[name]  # tagged with the picture
    assert by_id["not-a-picture"]["error"] == "image: 'notes.jpg' is not a picture (supported: PNG, JPEG, GIF, BMP, WEBP)"
    assert by_id["empty-file"]["error"] == "image: 'empty.jpg' is not a picture (supported: PNG, JPEG, GIF, BMP, WEBP)"
    assert by_id["fifo"]["error"].startswith("image: 'pipe.jpg' is not a regular file")
    assert by_id["directory"]["error"] == "image: 'sub' is a directory, not a picture file"
    written = output.read_bytes()
    for fragment in (b"SECRET", b"hunter2", b"root:x", b"PRIVATE", b"NOTES"):
        assert fragment not in written
    assert os.environ.get("HOME", "/root").encode() not in written.replace(str(tmp_path).encode(), b"")


def test_text_only_policy_drops_a_non_picture_file_without_quoting_it(tmp_path, fake_bundle, picture_tree):
    images, _ = picture_tree
    source = write_jsonl(tmp_path / "posts.jsonl", [{"id": 1, "text": "Obama in Paris", "image": "notes.jpg"},
                                                    {"id": 2, "text": "Obama in Paris", "image": "link-to-secret.jpg"}])  # fmt: skip
    output = tmp_path / "tagged.jsonl"
    result = run_tag(tmp_path, source, output, "--images", str(images), "--on-bad-image", "text-only")
    assert result.exit_code == EXIT_ERROR_RECORDS, result.output
    first, second = read_records(output)
    assert first["image_error"] == "'notes.jpg' is not a picture (supported: PNG, JPEG, GIF, BMP, WEBP)"
    assert first["objects"] == [] and "entities" in first
    assert "leads outside --images" in second["error"]  # a broken rule is an error under any policy


def test_an_image_id_without_extension_is_a_path_tried_with_jpg(tmp_path, fake_bundle, picture_tree):
    images, _ = picture_tree
    (images / "noext").write_bytes(RED_JPEG)
    source = write_jsonl(tmp_path / "posts.jsonl", [
        {"id": "twitter-id", "text": "Obama in Paris", "image": "16_05_01_360"},
        {"id": "as-is", "text": "Obama in Paris", "image": "noext"},
        {"id": "missing-id", "text": "Obama in Paris", "image": "17_06_4242"},
    ])  # fmt: skip
    output = tmp_path / "tagged.jsonl"
    result = run_tag(tmp_path, source, output, "--images", str(images))
    assert result.exit_code == EXIT_ERROR_RECORDS, result.output
    by_id = {r["id"]: r for r in read_records(output)}
    assert by_id["twitter-id"]["objects"] == ["person"] and by_id["as-is"]["objects"] == ["person"]
    assert by_id["missing-id"]["error"] == f"image: no such image file: {images}/17_06_4242 (nor with .jpg)"


def test_inline_pictures_come_in_image_base64_and_image_is_never_decoded(tmp_path, fake_bundle, picture_tree):
    import base64

    images, _ = picture_tree
    encoded = base64.b64encode(RED_JPEG).decode()
    source = write_jsonl(tmp_path / "posts.jsonl", [
        {"id": "inline", "text": "Obama in Paris", "image_base64": encoded},
        {"id": "data-url", "text": "Obama in Paris", "image_base64": f"data:image/jpeg;base64,{encoded}"},
        {"id": "base64-in-image", "text": "Obama in Paris", "image": encoded},
        {"id": "both", "text": "Obama in Paris", "image": "red.jpg", "image_base64": encoded},
        {"id": "bad-inline", "text": "Obama in Paris", "image_base64": "%%%"},
        {"id": "number-image", "text": "Obama in Paris", "image": 5},
        {"id": "null-both", "text": "Obama in Paris", "image": None, "image_base64": None},
    ])  # fmt: skip
    output = tmp_path / "tagged.jsonl"
    result = run_tag(tmp_path, source, output, "--images", str(images))
    assert result.exit_code == EXIT_ERROR_RECORDS, result.output
    by_id = {r["id"]: r for r in read_records(output)}
    assert by_id["inline"]["objects"] == by_id["data-url"]["objects"] == ["person"]
    error = by_id["base64-in-image"]["error"]  # JPEG base64 starts "/9j/": an absolute path, outside --images
    assert error.startswith("image: '/9j/") and "leads outside --images" in error
    assert error.endswith("; inline pictures go in image_base64, image is a path") and len(error) < 300
    assert by_id["both"]["error"] == "give at most one of image (a path under --images) and image_base64"
    assert by_id["bad-inline"]["error"] == "image: image_base64: invalid base64: unexpected character '%'"
    assert by_id["number-image"]["error"].startswith("image must be a path under --images, got int")
    assert by_id["null-both"]["objects"] == []


def test_conll_image_ids_stay_under_images(tmp_path, fake_bundle, picture_tree):
    images, _ = picture_tree
    conll = tmp_path / "data.txt"
    conll.write_text("IMGID:../outside/red\nObama\tB-PER\n\nIMGID:16_05_01_360\nParis\tB-LOC\n\n")
    output = tmp_path / "tagged.jsonl"
    result = CliRunner().invoke(tag_command, ["--engine", str(tmp_path), "--conll", str(conll), "--images", str(images),
                                              "--output", str(output), "--on-bad-image", "error"])  # fmt: skip
    assert result.exit_code == EXIT_ERROR_RECORDS, result.output
    first, second = read_records(output)
    assert "leads outside --images" in first["error"] and second["objects"] == ["person"]


# --------------------------------------------------------------------------- 5: no line aborts the run

HOSTILE_LINES = {
    "int-5000-digits": b'{"id": ' + b"7" * 5000 + b', "text": "Obama in Paris"}',
    "int-in-field": b'{"id": "int-in-field", "text": "Obama", "extra": ' + b"1" * 5000 + b"}",
    "nesting-100000": b'{"id": "nest", "text": "Obama", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "nesting-5000-objects": b'{"id": "nest-obj", "text": "Obama", "x": ' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}",
    "nan": b'{"id": "nan", "text": "Obama", "score": NaN}',
    "infinity": b'{"id": "inf", "text": "Obama", "score": -Infinity}',
    "huge-float": b'{"id": "huge-float", "text": "Obama", "score": 1e999}',
    "text-60000-chars": json.dumps({"id": "long-text", "text": "Obama " * 10_000}).encode(),
    "line-over-limit": json.dumps({"id": "long-line", "text": "x" * 260_000}).encode(),
    "unclosed-nesting": b"[" * 200_000,
}


def test_no_hostile_line_stops_the_run_and_reruns_resume_cleanly(tmp_path, fake_bundle):
    lines = []
    for number, (name, line) in enumerate(HOSTILE_LINES.items()):
        lines += [line, json.dumps({"id": f"good-{number}", "text": "Obama in Paris"}).encode()]
    source = write_jsonl(tmp_path / "posts.jsonl", lines)
    output = tmp_path / "tagged.jsonl"
    result = run_tag(tmp_path, source, output, "--max-line-bytes", "250000")
    assert result.exit_code == EXIT_ERROR_RECORDS, result.output
    records = read_records(output)
    assert [r["line"] for r in records] == list(range(1, len(lines) + 1))
    errors = [r for r in records[::2]]
    assert all("error" in r for r in errors), errors
    assert all("entities" in r for r in records[1::2])
    by_name = dict(zip(HOSTILE_LINES, errors))
    assert by_name["int-5000-digits"]["error"] == "line 1 is refused: a JSON integer with 5000 digits, over the limit of 100"
    assert by_name["nesting-100000"]["error"].startswith("line 5 is refused: JSON nested deeper than 64 levels")
    assert by_name["nesting-5000-objects"]["error"].startswith("line 7 is refused: JSON nested deeper than 64 levels")
    assert by_name["nan"]["error"] == "line 9 is refused: NaN is not a JSON value (JSON numbers are finite)"
    assert "Infinity is not a JSON value" in by_name["infinity"]["error"]
    assert "out of the float range" in by_name["huge-float"]["error"]
    assert by_name["text-60000-chars"] == {"id": "long-text", "line": 15,
                                           "error": "text has 60000 characters, over the limit of 10000 (--max-text-chars)"}  # fmt: skip
    assert by_name["line-over-limit"] == {"id": None, "line": 17, "error": (
        f"line 17 has {len(HOSTILE_LINES['line-over-limit'])} bytes, over the limit of 250000 (--max-line-bytes); it was "
        "skipped unread")}  # fmt: skip
    assert by_name["unclosed-nesting"]["error"].startswith("line 19 is refused: JSON nested deeper than 64 levels")
    assert "20 lines" in result.output and "10 tagged" in result.output and "10 errors" in result.output

    before = output.read_bytes()
    again = run_tag(tmp_path, source, output, "--max-line-bytes", "250000")
    assert again.exit_code == EXIT_ERROR_RECORDS, again.output
    assert "20 already done" in again.output and output.read_bytes() == before


def test_max_text_chars_is_the_servers_limit_by_default_and_can_be_set(tmp_path, fake_bundle):
    source = write_jsonl(tmp_path / "posts.jsonl", [{"id": 1, "text": "Obama " * 1666 + "Pari"},  # 10,000 characters
                                                    {"id": 2, "text": "Obama " * 1667}])  # fmt: skip
    output = tmp_path / "tagged.jsonl"
    assert run_tag(tmp_path, source, output).exit_code == EXIT_ERROR_RECORDS
    first, second = read_records(output)
    assert "entities" in first and second["error"].startswith("text has 10002 characters, over the limit of 10000")
    strict = tmp_path / "strict.jsonl"
    assert run_tag(tmp_path, source, strict, "--max-text-chars", "20").exit_code == EXIT_ERROR_RECORDS
    assert all("over the limit of 20 (--max-text-chars)" in r["error"] for r in read_records(strict))
    bad = run_tag(tmp_path, source, tmp_path / "x.jsonl", "--max-line-bytes", "0")
    assert bad.exit_code == 2 and "--max-line-bytes" in bad.output


@pytest.mark.parametrize(("limits", "message"), [
    ({"max_text_chars": 0}, "max_text_chars must be a positive int, got 0"),
    ({"max_line_bytes": -1}, "max_line_bytes must be a positive int, got -1"),
    ({"max_line_bytes": True}, "max_line_bytes must be a positive int, got True"),
])
def test_tag_jsonl_checks_its_limits(tmp_path, limits, message):
    source = write_jsonl(tmp_path / "posts.jsonl", [{"id": 1, "text": "x"}])
    with pytest.raises(ValueError, match=message):
        tagfile.tag_jsonl(fake_pipeline(), source, tmp_path / "out.jsonl", progress=False, **limits)


def test_a_long_line_is_skipped_in_bounded_reads(tmp_path):
    path = tmp_path / "lines"
    path.write_bytes(b"short\n" + b"x" * 5_000_000 + b"\n" + b"y" * 100 + b"\nlast")
    reads = []

    class Counting:
        def __init__(self, f):
            self.f = f

        def readline(self, limit):
            reads.append(limit)
            return self.f.readline(limit)

    with open(path, "rb") as f:
        got = list(tagfile._bounded_lines(Counting(f), 1000))
    assert got == [(b"short\n", 5), (b"", 5_000_000), (b"y" * 100 + b"\n", 100), (b"last", 4)]
    assert max(reads) == 1 << 20  # never more than 1 MiB held


def _child_env() -> dict[str, str]:
    """PYTHONPATH for a child process that imports this mner and this folder's test helpers."""
    package_root = Path(mner.runtime.__file__).parents[2]
    parts = [str(package_root), str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in parts if p)}


# mner-tag's own entry point in a child process, its pipeline the fake one.
DRIVER = """
import sys
from test_pipeline import fake_pipeline
from mner.runtime import cli
from mner.runtime.pipeline import Pipeline
Pipeline.from_bundle = classmethod(lambda cls, bundle, *, batch_size=32, on_bad_image="error", **options:
                                   fake_pipeline(batch_size=batch_size, on_bad_image=on_bad_image))
cli.tag_command(sys.argv[1:], prog_name="mner-tag")
"""


def run_child(tmp_path: Path, *arguments: str, fsize: int | None = None, timeout: float = 120):
    def limit_file_size():  # a file-size limit: writes past it fail with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    _fake_manifest(tmp_path)
    command = [sys.executable, "-c", DRIVER, "--engine", str(tmp_path), "--no-progress", *arguments]
    return subprocess.run(command, capture_output=True, text=True, env=_child_env(), timeout=timeout,
                          preexec_fn=limit_file_size if fsize is not None else None)  # fmt: skip


def _fake_manifest(folder: Path) -> None:
    """The fake bundle's manifest.json: what names it in an output's sidecar (DRIVER fakes the rest)."""
    (folder / "manifest.json").write_text('{"format": "a fake bundle"}\n')


def _peak_rss_mib(tmp_path: Path, *arguments: str) -> tuple[subprocess.CompletedProcess, float]:
    _fake_manifest(tmp_path)
    script = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")  # fmt: skip
    command = [sys.executable, "-c", script, sys.executable, "-c", DRIVER, "--engine", str(tmp_path), "--no-progress",
               *arguments]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=_child_env(), timeout=120)
    return result, int(result.stdout.strip().splitlines()[-1]) / 1024


def test_a_50_mb_line_is_one_error_record_in_bounded_memory(tmp_path):
    source = tmp_path / "posts.jsonl"
    head, words, tail = b'{"id": "huge", "text": "', b"Obama Paris " * (50_000_000 // 12), b'"}'
    with open(source, "wb") as f:
        f.write(head + words + tail + b"\n")
        f.write(b'{"id": "after", "text": "Obama in Paris"}\n')
    baseline, baseline_rss = _peak_rss_mib(tmp_path, "--input", str(source), "--output", str(tmp_path / "b.jsonl"),
                                           "--max-line-bytes", "1000")  # fmt: skip
    output = tmp_path / "tagged.jsonl"
    result, rss = _peak_rss_mib(tmp_path, "--input", str(source), "--output", str(output))
    assert result.returncode == baseline.returncode == EXIT_ERROR_RECORDS, result.stderr
    huge, after = read_records(output)
    assert huge == {"id": None, "line": 1, "error": f"line 1 has {len(head + words + tail)} bytes, over the limit of "
                                                    "16777216 (--max-line-bytes); it was skipped unread"}  # fmt: skip
    assert "entities" in after
    # at most one --max-line-bytes read (16 MiB) held beyond the command's own footprint
    assert rss - baseline_rss < 64, (rss, baseline_rss)


def test_a_foreign_or_hostile_output_file_is_refused_cleanly_on_resume(tmp_path, fake_bundle):
    source = write_jsonl(tmp_path / "posts.jsonl", [{"id": 1, "text": "Obama"}])
    for content in (b'{"line": 1, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
                    b'{"line": ' + b"1" * 5000 + b"}\n", b'{"line": true}\n', b"[" * 3_000_000 + b"\n"):  # fmt: skip
        output = tmp_path / "foreign.jsonl"
        output.write_bytes(content)
        result = run_tag(tmp_path, source, output)
        assert result.exit_code == 1 and "line 1 is not an mner-tag record" in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert output.read_bytes() == content


# --------------------------------------------------------------------------- 9: disk errors and --output = --input


RECORD_LIKE = b'{"id": "a", "line": 1, "text": "Obama in Paris"}\n{"id": "b", "line": 2, "text": "Merkel in Berlin"}'


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link", "relative path"])
def test_output_that_is_the_input_file_is_refused_and_the_input_is_untouched(tmp_path, fake_bundle, monkeypatch, how):
    source = tmp_path / "posts.jsonl"
    source.write_bytes(RECORD_LIKE)  # record-like lines, the last without its newline: once cut as a torn record
    output = {"same path": source, "symlink": tmp_path / "link.jsonl", "hard link": tmp_path / "hard.jsonl",
              "relative path": Path("sub/../posts.jsonl")}[how]  # fmt: skip
    if how == "symlink":
        output.symlink_to(source)
    elif how == "hard link":
        os.link(source, output)
    elif how == "relative path":
        (tmp_path / "sub").mkdir()
        monkeypatch.chdir(tmp_path)
    result = run_tag(tmp_path, source, output)
    assert result.exit_code == 1
    assert f"--output {output} is the --input file {source}" in result.output
    assert source.read_bytes() == RECORD_LIKE


def test_conll_refuses_its_input_as_output(tmp_path, fake_bundle):
    conll = tmp_path / "data.txt"
    conll.write_text("IMGID:1\nObama\tB-PER\n\n")
    result = CliRunner().invoke(tag_command, ["--engine", str(tmp_path), "--conll", str(conll), "--output", str(conll)])
    assert result.exit_code == 1 and f"--output {conll} is the --conll file {conll}" in result.output
    assert conll.read_text() == "IMGID:1\nObama\tB-PER\n\n"


def _posts(tmp_path: Path, count: int) -> Path:
    return write_jsonl(tmp_path / "posts.jsonl", [{"id": f"p{i}", "text": f"Obama in Paris number {i}"} for i in range(count)])


def _assert_complete_records_only(output: Path) -> list[dict]:
    data = output.read_bytes()
    assert data == b"" or data.endswith(b"\n")
    records = read_records(output)
    assert [r["line"] for r in records] == list(range(1, len(records) + 1))
    return records


def test_a_file_size_limit_mid_run_is_one_line_and_the_output_resumes(tmp_path):
    source = _posts(tmp_path, 300)
    output = tmp_path / "tagged.jsonl"
    result = run_child(tmp_path, "--input", str(source), "--output", str(output), "--batch-size", "16", fsize=20_000)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: cannot write --output {output}: File too large (EFBIG); the records before this batch "
                      "are complete: fix the cause and run again to resume"]  # fmt: skip
    written = _assert_complete_records_only(output)
    assert 0 < len(written) < 300 and len(written) % 16 == 0  # whole batches only
    resumed = run_child(tmp_path, "--input", str(source), "--output", str(output))
    assert resumed.returncode == 0, resumed.stderr
    assert [r["id"] for r in _assert_complete_records_only(output)] == [f"p{i}" for i in range(300)]


def test_a_short_write_then_enospc_cuts_the_batch_off_again(tmp_path, fake_bundle, monkeypatch):
    source = _posts(tmp_path, 10)
    output = tmp_path / "tagged.jsonl"
    real_write, calls = os.write, []

    def filling_up(fd, data):
        calls.append(len(data))
        if len(calls) == 3:  # the second batch: half of it fits, then the disk is full
            return real_write(fd, bytes(data)[: len(data) // 2])
        if len(calls) == 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(tagfile.os, "write", filling_up)
    result = run_tag(tmp_path, source, output, "--batch-size", "4")
    assert result.exit_code == 1
    assert f"Error: cannot write --output {output}: No space left on device (ENOSPC)" in result.output
    assert "Traceback" not in result.output and " tagged (" not in result.output  # no summary
    assert len(_assert_complete_records_only(output)) == 8  # two whole batches, the third cut off again
    monkeypatch.setattr(tagfile.os, "write", real_write)
    assert run_tag(tmp_path, source, output).exit_code == 0
    assert [r["id"] for r in _assert_complete_records_only(output)] == [f"p{i}" for i in range(10)]


def _mount_tmpfs(path: Path, options: str) -> bool:
    """A small tmpfs at ``path`` (root only, where mounts are allowed); False where it cannot be made."""
    if os.geteuid() != 0:
        return False
    path.mkdir(exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode == 0


@pytest.fixture
def full_disk(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "size=64k"):
        pytest.skip("cannot mount a 64 KiB tmpfs here (needs root and mount rights)")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def test_a_full_disk_is_one_line_and_the_output_resumes_elsewhere(tmp_path, full_disk):
    source = _posts(tmp_path, 2000)
    output = full_disk / "tagged.jsonl"
    result = run_child(tmp_path, "--input", str(source), "--output", str(output), "--batch-size", "32")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"Error: cannot write --output {output}: No space left on device (ENOSPC)" in result.stderr
    written = _assert_complete_records_only(output)
    assert 0 < len(written) < 2000
    moved = tmp_path / "tagged.jsonl"  # room found: the same file, resumed (its sidecar moves with it)
    moved.write_bytes(output.read_bytes())
    sidecar_path(moved).write_bytes(sidecar_path(output).read_bytes())
    resumed = run_child(tmp_path, "--input", str(source), "--output", str(moved))
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(written)} already done" in resumed.stderr
    assert [r["id"] for r in _assert_complete_records_only(moved)] == [f"p{i}" for i in range(2000)]


@pytest.fixture
def read_only_folder(tmp_path):
    folder = tmp_path / "read-only"
    if os.geteuid() != 0:
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
    elif _mount_tmpfs(folder, "ro,size=64k"):
        yield folder
        subprocess.run(["umount", str(folder)], check=True)
    else:
        pytest.skip("root ignores file modes, and no read-only tmpfs can be mounted here")


def test_a_read_only_output_folder_is_one_line(tmp_path, read_only_folder):
    source = _posts(tmp_path, 3)
    for output in (read_only_folder / "tagged.jsonl", read_only_folder / "new-folder" / "tagged.jsonl"):
        result = run_child(tmp_path, "--input", str(source), "--output", str(output))
        assert result.returncode == 1 and "Traceback" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and errors[0].startswith(f"Error: cannot open --output {output} for writing: ")
        assert "(EROFS)" in errors[0] or "(EACCES)" in errors[0]


def test_dev_full_as_output_is_refused_as_not_a_file(tmp_path, fake_bundle):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    result = run_tag(tmp_path, _posts(tmp_path, 1), Path("/dev/full"))
    assert result.exit_code == 1 and "--output /dev/full is not a file" in result.output
