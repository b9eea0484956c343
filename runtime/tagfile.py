"""What ``mner-tag`` does: tag a JSONL (or CoNLL) file into a JSONL file that survives being killed.

Input, one JSON object per line::

    {"id": "p1", "text": "Kawhi Leonard in Toronto", "image": "pics/1.jpg"}     image: a path under --images,
    {"id": 2, "text": "...", "image": "iVBORw0KGgo..."}                            or base64 (plain or a data: URL),
    {"id": "p3", "text": "..."}                                                    or absent / null

Output, one line per input line, in input order::

    {"id": "p1", "line": 1, "entities": [{"type", "text", "start", "end", "score"}], "objects": ["person"]}
    {"id": null, "line": 7, "error": "line 7 is not JSON: Expecting value (column 1)"}

No input line is ever dropped: a line that cannot be tagged (not UTF-8, not JSON, a
missing or mistyped field, a duplicate id, empty text, a text with a lone surrogate such
as "\\ud800", an unusable picture, a post whose tagging raised) gets an ``error`` record.
``line`` is the input line number. A record that holds a lone surrogate (in its id, say)
is written with JSON's ASCII escapes, the one form it has. Should tagging fail for every
post of a batch, that is not one post's problem: the run stops (exit 1) with nothing of
that batch written, and a rerun resumes there.

Resuming: records are appended in batches, each followed by flush + fsync. Run again
with the same --output and every input line that already has a record is skipped (by
its id; by its line number for lines without a usable id, and for repeated ids). A
record cut off by a kill (the file's last line without its newline) is removed first,
so a killed run followed by a re-run gives exactly one record per input line.

Image strings: a ``data:`` URL is base64; otherwise an existing file under --images
(default: the input file's directory) is read; otherwise a string containing "." is a
missing file (base64 never contains "."), and anything else must be valid base64.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tqdm.auto import tqdm

from mner.runtime.conll import check_entity_types, evaluate_entities, read_conll
from mner.runtime.pipeline import TAGGING_FAILED, Pipeline, Post, TagResult

logger = logging.getLogger(__name__)

MAX_IMAGE_BYTES = 64 << 20  # a picture file or payload larger than this is refused before decoding
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_BASE64_URLSAFE = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_WHITESPACE = re.compile(r"\s+")


class OutputError(ValueError):
    """--output exists but is not a file mner-tag can resume."""


class PipelineFailed(RuntimeError):
    """Tagging failed for every post of a batch: the run stops rather than record that as each line's error."""


@dataclass
class TagSummary:
    lines: int = 0  # input lines (posts, for --conll)
    skipped: int = 0  # already in the output from an earlier run
    tagged: int = 0
    entities: int = 0
    errors: Counter = field(default_factory=Counter)  # kind -> count
    seconds: float = 0.0
    metrics: dict | None = None  # --conll: evaluate_entities over every post
    unit: str = "lines"  # what `lines` counts: input lines, or CoNLL posts

    def format(self, output: str | os.PathLike) -> str:
        rate = self.tagged / self.seconds if self.seconds > 0 else 0.0
        text = (f"{self.lines} {self.unit} -> {output}: {self.tagged} tagged ({self.entities} entities), "
                f"{sum(self.errors.values())} errors, {self.skipped} already done; {self.seconds:.1f} s, {rate:.1f} posts/s")  # fmt: skip
        if self.errors:
            text += "\nerrors: " + ", ".join(f"{kind} {count}" for kind, count in self.errors.most_common())
        return text


@dataclass
class _Entry:
    """One input line on its way to the output."""

    line: int
    id: Any  # None where the line has no usable id
    post: Post | None = None  # None: the record is already decided (an error)
    record: dict[str, Any] | None = None
    kind: str = ""  # error kind, for the summary
    extra: dict[str, Any] = field(default_factory=dict)  # --conll: image_id
    words: list[str] | None = None  # --conll: pre-split words


def tag_jsonl(
    pipeline: Pipeline,
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    images: str | os.PathLike | None = None,
    progress: bool = True,
) -> TagSummary:
    """Tag every line of ``input`` into ``output`` (resuming it where it exists); see the module docstring."""
    input, output = Path(input), Path(output)
    if not input.is_file():
        raise ValueError(f"--input {input}: no such file")
    images_dir = Path(images) if images is not None else input.parent
    if not images_dir.is_dir():
        raise ValueError(f"--images {images_dir}: no such directory")
    done_ids, done_lines = _resume(output)
    total = _count_lines(input)
    return _run(pipeline, _jsonl_entries(input, images_dir, done_ids, done_lines), output, total, progress)


def tag_conll(
    pipeline: Pipeline,
    conll: str | os.PathLike,
    output: str | os.PathLike,
    *,
    images: str | os.PathLike | None = None,
    progress: bool = True,
) -> TagSummary:
    """Tag every post of a CoNLL + IMGID file (pictures ``<images>/<IMGID>.jpg``) and score the tags.

    Output records also carry "image_id" and the predicted word "tags"; the returned
    summary's ``metrics`` are P/R/F1 over every post (a post whose record is an error
    counts as predicting no entity). Data whose tags name an entity type the bundle does
    not know is refused before anything is tagged (it would score 0 for that type).
    """
    conll, output = Path(conll), Path(output)
    if not conll.is_file():
        raise ValueError(f"--conll {conll}: no such file")
    if images is not None and not Path(images).is_dir():
        raise ValueError(f"--images {images}: no such directory")
    posts = read_conll(conll)
    if not posts:
        raise ValueError(f"--conll {conll} holds no posts")
    check_entity_types(posts, pipeline.scheme.entity_types, f"--conll {conll}", "the bundle")
    done_ids, _ = _resume(output)

    def entries() -> Iterator[_Entry | int]:
        for number, post in enumerate(posts, start=1):
            if json.dumps(number) in done_ids:
                yield 1
                continue
            entry = _Entry(post.line, number, extra={"image_id": post.image_id}, words=post.words)
            image = None
            if images is not None and post.image_id is not None:
                image, problem = _read_image_file(Path(images) / f"{post.image_id}.jpg")
                if problem is not None:
                    if pipeline.on_bad_image == "error":
                        entry.record, entry.kind = {"error": f"image: {problem}"}, "image"
                        yield entry
                        continue
                    entry.extra["image_error"] = problem
            entry.post = Post(" ".join(post.words), image)
            yield entry

    summary = _run(pipeline, entries(), output, len(posts), progress, unit="posts")
    predicted: dict[Any, list[str]] = {}
    for record in _records(output):
        if "tags" in record:
            predicted[record["id"]] = record["tags"]
    pred = [predicted.get(number, ["O"] * len(post.words)) for number, post in enumerate(posts, start=1)]
    summary.metrics = evaluate_entities([post.tags for post in posts], pred)
    return summary


# --------------------------------------------------------------------------- the loop


def _run(pipeline: Pipeline, entries, output: Path, total: int, progress: bool, unit: str = "lines") -> TagSummary:
    summary = TagSummary(lines=total, unit=unit)
    started = time.perf_counter()
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "ab") as sink, tqdm(total=total, unit=unit[:-1], desc="mner-tag", disable=not progress) as bar:
        pending: list[_Entry] = []
        for entry in entries:
            if isinstance(entry, int):  # lines skipped because the output has them
                summary.skipped += entry
                bar.update(entry)
                continue
            pending.append(entry)
            if len(pending) >= pipeline.batch_size:
                _flush(pipeline, pending, sink, summary)
                bar.update(len(pending))
                pending = []
        if pending:
            _flush(pipeline, pending, sink, summary)
            bar.update(len(pending))
    summary.seconds = time.perf_counter() - started
    return summary


def _flush(pipeline: Pipeline, entries: list[_Entry], sink, summary: TagSummary) -> None:
    """Tag the batch's posts and append every entry's record, then flush and fsync."""
    to_tag = [e for e in entries if e.record is None]
    if to_tag and to_tag[0].words is not None:
        results = pipeline.tag_words([e.words for e in to_tag], [e.post.image for e in to_tag])
    else:
        results = pipeline.tag([e.post for e in to_tag])
    failed = [result.error for result in results if not result.ok and result.error.startswith(TAGGING_FAILED)]
    if len(to_tag) > 1 and len(failed) == len(to_tag):
        # Not one post's problem (a runner that died, a device lost): error records would mark every line
        # done for good, so stop with nothing of this batch written; a rerun resumes here.
        raise PipelineFailed(f"the pipeline failed on every one of {len(to_tag)} posts in a batch ({failed[0]}); "
                             "nothing of this batch was written: fix the cause and run again to resume")  # fmt: skip
    for entry, result in zip(to_tag, results):
        entry.record = result_record(result, with_tags=entry.words is not None)
        if not result.ok:
            entry.kind = "image" if result.error.startswith("image:") else "text"
    lines = []
    for entry in entries:
        record = {"id": entry.id, "line": entry.line, **entry.extra, **entry.record}
        if "error" in record:
            record.pop("image_error", None)
            summary.errors[entry.kind] += 1
        else:
            summary.tagged += 1
            summary.entities += len(record["entities"])
        lines.append(record_line(record))
    sink.write(b"".join(lines))
    sink.flush()
    os.fsync(sink.fileno())


def record_line(record: dict[str, Any]) -> bytes:
    """One output line: JSON as UTF-8, except that a record holding a lone surrogate (an id such as
    "\\ud800" read from the input, or an image path echoed in an error) is written with ASCII escapes,
    which json reads back to the same record; raw, it has no UTF-8 form and would stop the run."""
    text = json.dumps(record, ensure_ascii=False)
    try:
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(record) + "\n").encode("ascii")


def result_record(result: TagResult, with_tags: bool) -> dict[str, Any]:
    record = result.to_dict()
    if with_tags and result.ok:
        record["tags"] = result.tags
    return record


# --------------------------------------------------------------------------- input lines


def _count_lines(path: Path) -> int:
    count, last = 0, b"\n"
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def _jsonl_entries(path: Path, images_dir: Path, done_ids: set[str], done_lines: set[int]) -> Iterator[_Entry | int]:
    first_line_of: dict[str, int] = {}  # canonical id -> the line it first appeared on
    with open(path, "rb") as lines:
        for number, raw in enumerate(lines, start=1):
            entry = _parse_line(number, raw, images_dir, first_line_of)
            key = json.dumps(entry.id) if entry.id is not None else None
            repeated = key is not None and first_line_of.get(key, number) != number
            if key is not None and not repeated:
                done = key in done_ids
            else:
                done = number in done_lines
            yield 1 if done else entry


def _parse_line(number: int, raw: bytes, images_dir: Path, first_line_of: dict[str, int]) -> _Entry:
    def error(kind: str, message: str, id: Any = None) -> _Entry:
        return _Entry(number, id, record={"error": message}, kind=kind)

    raw = raw.rstrip(b"\r\n")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return error("not UTF-8", f"line {number} is not UTF-8: byte 0x{raw[e.start]:02x} at position {e.start}")
    if not text.strip():
        return error("not JSON", f"line {number} is blank; expected a JSON object")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return error("not JSON", f"line {number} is not JSON: {e.msg} (column {e.colno})")
    if not isinstance(value, dict):
        return error("not JSON", f"line {number} is JSON {type(value).__name__}, expected an object with id, text, image")
    if "id" not in value:
        return error("missing field", "missing field 'id'")
    post_id = value["id"]
    if isinstance(post_id, bool) or not isinstance(post_id, (str, int)):
        return error("bad field", f"id must be a string or an integer, got {json.dumps(post_id)}")
    key = json.dumps(post_id)
    first = first_line_of.setdefault(key, number)
    if first != number:
        return error("duplicate id", f"duplicate id: the same id is on line {first}", post_id)
    if "text" not in value:
        return error("missing field", "missing field 'text'", post_id)
    if not isinstance(value["text"], str):
        return error("bad field", f"text must be a string, got {type(value['text']).__name__}", post_id)
    image = value.get("image")
    data = None
    if image is not None:
        if not isinstance(image, str):
            return error("bad field", f"image must be a path or base64 string, got {type(image).__name__}", post_id)
        data, problem = _image_bytes(image, images_dir)
        if problem is not None:
            return error("image", f"image: {problem}", post_id)
    return _Entry(number, post_id, post=Post(value["text"], data))


def _image_bytes(value: str, images_dir: Path) -> tuple[bytes | None, str | None]:
    """(bytes, None) or (None, why not) for an input line's image string."""
    if value.startswith("data:"):
        header, comma, payload = value.partition(",")
        if not comma or not header.endswith(";base64"):
            return None, f"a data URL must look like data:image/jpeg;base64,<payload>, got {value[:40]!r}..."
        return decode_base64(payload)
    if not value:
        return None, "empty image string (omit the field, or use null, for a post without a picture)"
    path = images_dir / value
    try:
        is_file = path.is_file()
    except (OSError, ValueError):  # a long base64 string is not a valid file name
        is_file = False
    if is_file:
        return _read_image_file(path)
    if "." in value:  # base64 has no "."
        return None, f"no such image file: {path}"
    data, problem = decode_base64(value)
    if problem is not None:
        return None, f"not a file under {images_dir} and not valid base64 ({problem})"
    return data, None


def decode_base64(payload: str) -> tuple[bytes | None, str | None]:
    text = _WHITESPACE.sub("", payload)  # MIME base64 wraps its lines
    if len(text) * 3 // 4 > MAX_IMAGE_BYTES:
        return None, f"the base64 payload decodes to more than {MAX_IMAGE_BYTES >> 20} MiB"
    if _BASE64.fullmatch(text):
        altchars = None
    elif _BASE64_URLSAFE.fullmatch(text):
        altchars = b"-_"
    else:
        bad = next((c for c in text if not (c.isascii() and c.isalnum()) and c not in "+/-_"), "=")
        return None, f"invalid base64: unexpected character {bad!r}"
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=altchars, validate=True), None
    except (binascii.Error, ValueError) as e:
        return None, f"invalid base64: {e}"


def _read_image_file(path: Path) -> tuple[bytes | None, str | None]:
    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_BYTES:
            return None, f"{path} is {size} bytes, over the {MAX_IMAGE_BYTES >> 20} MiB limit"
        return path.read_bytes(), None
    except FileNotFoundError:
        return None, f"no such image file: {path}"
    except OSError as e:
        return None, f"{path}: cannot read the file ({e.strerror or e})"


# --------------------------------------------------------------------------- resuming


def _resume(output: Path) -> tuple[set[str], set[int]]:
    """Ids (canonical JSON) and line numbers already in ``output``, after cutting off a torn last record."""
    if not output.exists():
        return set(), set()
    if not output.is_file():
        raise OutputError(f"--output {output} is not a file")
    done_ids: set[str] = set()
    done_lines: set[int] = set()
    offset = 0
    with open(output, "rb+") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):  # the last record, torn by a kill: it is written again
                logger.warning("%s: dropping an incomplete last record (%d bytes) left by an interrupted run", output, len(raw))
                f.truncate(offset)
                break
            record = _parse_record(raw, output, number)
            done_lines.add(record["line"])
            if record.get("id") is not None:
                done_ids.add(json.dumps(record["id"]))
            offset += len(raw)
    return done_ids, done_lines


def _records(output: Path) -> Iterator[dict[str, Any]]:
    with open(output, "rb") as f:
        for number, raw in enumerate(f, start=1):
            yield _parse_record(raw, output, number)


def _parse_record(raw: bytes, output: Path, number: int) -> dict[str, Any]:
    try:
        record = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("line"), int):
        raise OutputError(f"--output {output} line {number} is not an mner-tag record, so the file cannot be resumed; "
                          "pass another --output (or delete this one)")  # fmt: skip
    return record
