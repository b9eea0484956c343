"""mner-tag (mner.runtime.tagfile) on odd text: lone surrogates from JSON escapes in a text, an id or an
image path; records that hold one; resuming; a batch the pipeline fails on whole. A real Pipeline with
fake runners (test_pipeline.py); test_odd_text.py runs the command on a real bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_pipeline import fake_pipeline
from test_pipeline_errors import POISON, poisoned_tagger

from mner.runtime.pipeline import TAGGING_FAILED
from mner.runtime.tagfile import PipelineFailed, record_line, tag_jsonl

# As such lines appear in a file: JSON escapes, which json.loads turns into lone surrogates.
LINES = [
    '{"id": "ok", "text": "Obama in Paris"}',
    '{"id": "cut", "text": "Obama in Paris \\ud83d"}',  # a tweet cut inside an emoji
    '{"id": "emoji", "text": "Obama \\ud83d\\ude00 Paris"}',  # a whole pair: one character, fine
    '{"id": "\\udc00", "text": "an id with half a pair"}',
    '{"id": "pic", "text": "a picture path with half a pair", "image": "\\ud800.jpg"}',
    '{"id": "nul", "text": "Obama\\u0000 in \\u202eParis"}',
    '{"id": "last", "text": "Merkel in Berlin"}',
]


def write(path: Path, lines: list[str]) -> Path:
    path.write_bytes("".join(line + "\n" for line in lines).encode("ascii"))
    return path


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def test_a_surrogate_line_gets_one_error_record_and_the_run_completes(tmp_path):
    source = write(tmp_path / "in.jsonl", LINES)
    output = tmp_path / "out.jsonl"
    summary = tag_jsonl(fake_pipeline(batch_size=3), source, output, progress=False)
    out = records(output)
    assert [r["line"] for r in out] == list(range(1, len(LINES) + 1))
    assert [r["id"] for r in out] == ["ok", "cut", "emoji", "\udc00", "pic", "nul", "last"]  # the id round-trips
    errors = {r["id"]: r["error"] for r in out if "error" in r}
    assert set(errors) == {"cut", "pic"}
    assert errors["cut"].startswith("text has a lone surrogate U+D83D at character 15; ")
    assert errors["pic"].startswith("image: no such image file: ") and errors["pic"].endswith("\ud800.jpg")
    for record, line in zip(out, LINES):
        text = json.loads(line)["text"]
        assert all(text[e["start"] : e["end"]] == e["text"] for e in record.get("entities", []))
    assert summary.tagged == 5 and summary.errors == {"text": 1, "image": 1}
    # Lines holding a surrogate are ASCII with escapes; the others UTF-8 as before.
    raw = output.read_bytes().splitlines()
    assert b'"id": "\\udc00"' in raw[3] and b"\\ud800.jpg" in raw[4]
    raw[5].decode("utf-8")

    before = output.read_bytes()
    again = tag_jsonl(fake_pipeline(batch_size=3), source, output, progress=False)
    assert again.skipped == len(LINES) and again.tagged == 0 and output.read_bytes() == before


@pytest.mark.parametrize("kept", [1, 3, 4, 5])
def test_a_run_killed_around_the_surrogate_lines_resumes_to_the_same_file(tmp_path, kept):
    source = write(tmp_path / "in.jsonl", LINES)
    complete = tmp_path / "complete.jsonl"
    tag_jsonl(fake_pipeline(batch_size=2), source, complete, progress=False)
    lines = complete.read_bytes().splitlines(keepends=True)
    partial = tmp_path / "partial.jsonl"
    partial.write_bytes(b"".join(lines[:kept]) + lines[kept][: len(lines[kept]) // 2])  # killed mid-write
    summary = tag_jsonl(fake_pipeline(batch_size=2), source, partial, progress=False)
    assert summary.skipped == kept and partial.read_bytes() == complete.read_bytes()


def test_record_line_writes_utf8_and_escapes_only_what_has_no_utf8_form():
    assert record_line({"text": "Café 🇫🇷"}) == '{"text": "Café 🇫🇷"}\n'.encode()
    line = record_line({"id": "x\ud800", "text": "Café"})
    assert line == b'{"id": "x\\ud800", "text": "Caf\\u00e9"}\n'
    assert json.loads(line) == {"id": "x\ud800", "text": "Café"}


def test_a_post_whose_tagging_raises_gets_an_error_record_and_the_rest_are_tagged(tmp_path):
    source = write(tmp_path / "in.jsonl", [json.dumps({"id": i, "text": text}) for i, text in
                                           enumerate(["Obama in Paris", POISON, "Merkel in Berlin", "Paris"])])  # fmt: skip
    output = tmp_path / "out.jsonl"
    summary = tag_jsonl(fake_pipeline(tagger=poisoned_tagger(), batch_size=4), source, output, progress=False)
    out = records(output)
    assert out[1]["error"] == f"{TAGGING_FAILED}: RuntimeError: the tagger cannot take piece Q"
    assert all("entities" in r for i, r in enumerate(out) if i != 1)
    assert summary.tagged == 3 and summary.errors == {"text": 1}


def test_a_batch_failing_whole_stops_the_run_without_writing_it_and_a_rerun_resumes(tmp_path):
    source = write(tmp_path / "in.jsonl", [json.dumps({"id": i, "text": text}) for i, text in
                                           enumerate(["Obama in Paris", "Paris", POISON, f"{POISON} {POISON}", "Berlin"])])  # fmt: skip
    output = tmp_path / "out.jsonl"
    with pytest.raises(PipelineFailed, match=r"failed on every one of 2 posts in a batch \(tagging failed: RuntimeError"):
        tag_jsonl(fake_pipeline(tagger=poisoned_tagger(), batch_size=2), source, output, progress=False)
    assert [r["id"] for r in records(output)] == [0, 1]  # the batch before it, nothing of the failed one
    summary = tag_jsonl(fake_pipeline(batch_size=2), source, output, progress=False)  # the cause fixed
    assert summary.skipped == 2 and [r["id"] for r in records(output)] == [0, 1, 2, 3, 4]
    assert all("entities" in r for r in records(output))
