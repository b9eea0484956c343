"""mner-tag's file handling (mner.runtime.tagfile) and command line, with a stub pipeline.

What the model does is test_exported_bundle.py's business; here: reading lines, image
strings, error records, resuming after a kill, the summary and the usage errors.
"""

import base64
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mner.runtime import tagfile
from mner.runtime.cli import tag_command
from mner.runtime.pipeline import Post, TagResult
from mner.runtime.spans import Entity
from mner.runtime.tags import TagScheme
from mner.runtime.tagfile import OutputError, TagSummary, tag_conll, tag_jsonl

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
)  # a 1 x 1 PNG


class StubPipeline:
    """Tags every text as one PER entity; an empty text or an image starting with b"bad" is an error."""

    batch_size = 3
    on_bad_image = "error"
    scheme = TagScheme(("LOC", "MISC", "ORG", "PER"))

    def __init__(self):
        self.batches = []

    def tag(self, posts):
        self.batches.append(len(posts))
        results = []
        for post in posts:
            if not post.text.strip():
                results.append(TagResult(error="text is empty: nothing to tag"))
            elif post.image is not None and post.image.startswith(b"bad"):
                results.append(TagResult(error="image: not an image"))
            else:
                start = len(post.text) - len(post.text.lstrip())
                entity = Entity("PER", post.text.strip(), start, start + len(post.text.strip()), 1.0)
                results.append(TagResult(entities=[entity], tags=["B-PER"] + ["I-PER"] * (len(post.text.split()) - 1)))
        return results

    def tag_words(self, words, images):
        return self.tag([Post(" ".join(w), image) for w, image in zip(words, images)])


def write_lines(path: Path, lines: list) -> Path:
    path.write_bytes(b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines))
    return path


INPUT = [
    {"id": "a", "text": "Kawhi Leonard"},
    {"id": 2, "text": "Toronto", "image_base64": base64.b64encode(PNG).decode()},
    b"not json",
    {"id": "a", "text": "a repeated id"},
    {"text": "no id"},
    {"id": "e", "text": "   "},
    b"\xff\xfe not utf-8",
    {"id": "g", "text": "bad picture", "image_base64": base64.b64encode(b"bad bytes").decode()},
    {"id": True, "text": "boolean id"},
    {"id": "i", "text": 5},
    {"id": "j", "text": "last one", "image": None},
]


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_every_line_gets_one_record_in_order(tmp_path):
    source = write_lines(tmp_path / "in.jsonl", INPUT)
    pipeline = StubPipeline()
    summary = tag_jsonl(pipeline, source, tmp_path / "out.jsonl", progress=False)
    out = records(tmp_path / "out.jsonl")
    assert [r["line"] for r in out] == list(range(1, 12))
    assert [r["id"] for r in out] == ["a", 2, None, "a", None, "e", None, "g", None, "i", "j"]
    assert out[0]["entities"] == [{"type": "PER", "text": "Kawhi Leonard", "start": 0, "end": 13, "score": 1.0}]
    errors = {r["line"]: r["error"] for r in out if "error" in r}
    assert errors == {
        3: "line 3 is not JSON: Expecting value (column 1)",
        4: "duplicate id: the same id is on line 1",
        5: "missing field 'id'",
        6: "text is empty: nothing to tag",
        7: "line 7 is not UTF-8: byte 0xff at position 0",
        8: "image: not an image",
        9: "id must be a string or an integer, got true",
        10: "text must be a string, got int",
    }
    assert (summary.lines, summary.tagged, summary.skipped, summary.entities) == (11, 3, 0, 3)
    assert summary.errors == {"not JSON": 1, "duplicate id": 1, "missing field": 1, "text": 1, "not UTF-8": 1,
                              "image": 1, "bad field": 2}  # fmt: skip
    assert all(size <= 3 for size in pipeline.batches)
    text = summary.format("out.jsonl")
    assert text.startswith("11 lines -> out.jsonl: 3 tagged (3 entities), 8 errors, 0 already done")
    assert "bad field 2" in text


@pytest.mark.parametrize("kept", [0, 1, 3, 4, 6, 10])
def test_a_torn_or_partial_output_is_completed_to_exactly_one_record_per_line(tmp_path, kept):
    source = write_lines(tmp_path / "in.jsonl", INPUT)
    complete = tmp_path / "complete.jsonl"
    tag_jsonl(StubPipeline(), source, complete, progress=False)
    lines = complete.read_bytes().splitlines(keepends=True)
    partial = tmp_path / "partial.jsonl"
    partial.write_bytes(b"".join(lines[:kept]) + lines[kept][: len(lines[kept]) // 2])  # killed mid-write
    pipeline = StubPipeline()
    summary = tag_jsonl(pipeline, source, partial, progress=False)
    assert partial.read_bytes() == complete.read_bytes()
    assert summary.skipped == kept


def test_resuming_refuses_a_file_that_is_not_mner_tag_output(tmp_path):
    source = write_lines(tmp_path / "in.jsonl", INPUT[:1])
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text('{"something": "else"}\n')
    with pytest.raises(OutputError, match="line 1 is not an mner-tag record"):
        tag_jsonl(StubPipeline(), source, foreign, progress=False)
    with pytest.raises(OutputError, match="is not a file"):
        tag_jsonl(StubPipeline(), source, tmp_path, progress=False)
    with pytest.raises(ValueError, match="no such file"):
        tag_jsonl(StubPipeline(), tmp_path / "absent.jsonl", tmp_path / "o.jsonl", progress=False)
    with pytest.raises(ValueError, match="no such directory"):
        tag_jsonl(StubPipeline(), source, tmp_path / "o.jsonl", images=tmp_path / "absent", progress=False)


def test_inline_image_strings():
    encoded = base64.b64encode(PNG).decode()
    wrapped = "\n".join(encoded[i : i + 20] for i in range(0, len(encoded), 20))
    urlsafe = base64.urlsafe_b64encode(PNG + b"\xfb\xff").decode().rstrip("=")
    cases = {
        encoded: (PNG, None),
        wrapped: (PNG, None),
        urlsafe: (PNG + b"\xfb\xff", None),
        f"data:image/png;base64,{encoded}": (PNG, None),
        "A" * 5000: (base64.b64decode("A" * 5000), None),
        "not base64!": (None, "invalid base64: unexpected character '!'"),
        "abcde": (None, "invalid base64: "),
        "data:image/png,rawbytes": (None, "a data URL must look like data:image/jpeg;base64,"),
        "data:image/png;base64,***": (None, "invalid base64: unexpected character '*'"),
        "": (None, "empty (omit the field"),
    }
    for value, (data, problem) in cases.items():
        got, why = tagfile.inline_image(value)
        assert got == data, value[:30]
        if problem is None:
            assert why is None
        else:
            assert why.startswith(problem), (value[:30], why)


def test_image_paths_under_images(tmp_path):
    (tmp_path / "pic.png").write_bytes(PNG)
    (tmp_path / "noext").write_bytes(PNG)
    (tmp_path / "16_05_01_360.jpg").write_bytes(PNG)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep.png").write_bytes(PNG)
    encoded = base64.b64encode(PNG).decode()
    cases = {
        "pic.png": (PNG, None),
        "noext": (PNG, None),
        "16_05_01_360": (PNG, None),  # a TWITTER image id: <id>.jpg
        "sub/deep.png": (PNG, None),
        "sub/../pic.png": (PNG, None),
        str(tmp_path / "pic.png"): (PNG, None),  # absolute, but under --images
        "missing.jpg": (None, f"no such image file: {tmp_path}/missing.jpg"),
        "missing": (None, f"no such image file: {tmp_path}/missing (nor with .jpg)"),
        encoded: (None, "no such image file: "),  # base64 in image is a path, never decoded
        "sub": (None, "'sub' is a directory, not a picture file"),
        "": (None, "empty image path"),
        "a\x00b.png": (None, "no such image file: "),
    }
    root = tmp_path.resolve()
    for value, (data, problem) in cases.items():
        got, why = tagfile.read_image_under(tmp_path, root, value)
        assert got == data, value[:30]
        if problem is None:
            assert why is None
        else:
            assert why.startswith(problem), (value[:30], why)
    _, why = tagfile.read_image_under(tmp_path, root, encoded)
    assert why.endswith("(nor with .jpg); inline pictures go in image_base64, image is a path") and len(why) < 250


def test_an_oversized_image_file_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(tagfile, "MAX_IMAGE_BYTES", 10)
    (tmp_path / "big.png").write_bytes(PNG)
    data, problem = tagfile.read_image_under(tmp_path, tmp_path.resolve(), "big.png")
    assert data is None and "over the 0 MiB limit" in problem


def test_line_counting(tmp_path):
    for content, expected in ((b"", 0), (b"a", 1), (b"a\n", 1), (b"a\nb", 2), (b"\n\n", 2)):
        (tmp_path / "f").write_bytes(content)
        assert tagfile._count_lines(tmp_path / "f") == expected


def test_conll_mode_scores_the_written_tags(tmp_path):
    conll = tmp_path / "data.txt"
    conll.write_text("IMGID:1\nKawhi\tB-PER\nLeonard\tI-PER\n\nIMGID:2\nin\tO\nToronto\tB-LOC\n\nIMGID:3\nhi\tO\n\n")
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    (pictures / "1.jpg").write_bytes(PNG)
    (pictures / "3.jpg").write_bytes(b"bad picture")
    output = tmp_path / "out.jsonl"
    summary = tag_conll(StubPipeline(), conll, output, images=pictures, progress=False)
    out = records(output)
    assert [(r["id"], r["line"], r["image_id"]) for r in out] == [(1, 1, "1"), (2, 5, "2"), (3, 9, "3")]
    assert "no such image file" in out[1]["error"]
    assert out[2]["error"] == "image: '3.jpg' is not a picture (supported: PNG, JPEG, GIF, BMP, WEBP)"  # no bytes quoted
    # post 1 is right (PER), posts 2 and 3 are errors: predicted as no entities
    assert summary.metrics["micro"] == {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    again = tag_conll(StubPipeline(), conll, output, images=pictures, progress=False)
    assert again.skipped == 3 and again.metrics == summary.metrics


OTHER_DATA = "IMGID:1\nKawhi\tB-PER\nat\tO\nCoachella\tB-OTHER\n\nIMGID:2\nhi\tO\n\n"  # TWITTER-2015's fourth type


def test_conll_mode_refuses_entity_types_the_bundle_does_not_know_before_tagging(tmp_path):
    conll = tmp_path / "data.txt"
    conll.write_text(OTHER_DATA)
    pipeline = StubPipeline()
    with pytest.raises(ValueError) as error:
        tag_conll(pipeline, conll, tmp_path / "out.jsonl", progress=False)
    message = str(error.value)
    assert f"--conll {conll} has entity types ['OTHER', 'PER']" in message
    assert "the bundle knows ['LOC', 'MISC', 'ORG', 'PER']" in message
    assert pipeline.batches == [] and not (tmp_path / "out.jsonl").exists()


class StubBundlePipeline(StubPipeline):
    """What Pipeline.from_bundle gives the command, as a context manager."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_mner_tag_conll_refuses_a_label_set_the_bundle_does_not_know(tmp_path, monkeypatch):
    from mner.runtime.pipeline import Pipeline

    monkeypatch.setattr(Pipeline, "from_bundle", classmethod(lambda cls, *args, **kwargs: StubBundlePipeline()))
    (tmp_path / "manifest.json").write_text("{}")
    conll = tmp_path / "data.txt"
    conll.write_text(OTHER_DATA)
    result = CliRunner().invoke(tag_command, ["--engine", str(tmp_path), "--conll", str(conll), "--output",
                                              str(tmp_path / "out.jsonl")])  # fmt: skip
    assert result.exit_code == 1
    assert "has entity types ['OTHER', 'PER'] but the bundle knows ['LOC', 'MISC', 'ORG', 'PER']" in result.output
    assert not (tmp_path / "out.jsonl").exists()
    conll.write_text(OTHER_DATA.replace("OTHER", "MISC"))
    result = CliRunner().invoke(tag_command, ["--engine", str(tmp_path), "--conll", str(conll), "--output",
                                              str(tmp_path / "out.jsonl"), "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output


def test_usage_errors_are_clear(tmp_path):
    source = write_lines(tmp_path / "in.jsonl", INPUT[:1])
    runner = CliRunner()
    both = runner.invoke(tag_command, ["--engine", str(tmp_path), "--input", str(source), "--conll", str(source),
                                       "--output", str(tmp_path / "o")])  # fmt: skip
    assert both.exit_code == 2 and "exactly one of --input (JSONL) and --conll" in both.output
    neither = runner.invoke(tag_command, ["--engine", str(tmp_path), "--output", str(tmp_path / "o")])
    assert neither.exit_code == 2 and "exactly one of" in neither.output
    metrics = runner.invoke(tag_command, ["--engine", str(tmp_path), "--input", str(source), "--output",
                                          str(tmp_path / "o"), "--metrics", str(tmp_path / "m.json")])  # fmt: skip
    assert metrics.exit_code == 2 and "--metrics goes with --conll" in metrics.output
    not_a_bundle = runner.invoke(tag_command, ["--engine", str(tmp_path), "--input", str(source), "--output",
                                               str(tmp_path / "o")])  # fmt: skip
    assert not_a_bundle.exit_code == 1 and "is not an mner bundle: manifest.json is missing" in not_a_bundle.output
    assert runner.invoke(tag_command, ["--help"]).exit_code == 0


def test_summary_formatting_without_work():
    assert TagSummary(lines=0).format("x") == "0 lines -> x: 0 tagged (0 entities), 0 errors, 0 already done; 0.0 s, 0.0 posts/s"
