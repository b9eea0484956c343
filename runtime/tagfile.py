"""What ``mner-tag`` does: tag a JSONL (or CoNLL) file into a JSONL file that survives being killed.

Input, one JSON object per line::

    {"id": "p1", "text": "Kawhi Leonard in Toronto", "image": "pics/1.jpg"}    image: a file under --images
    {"id": "p2", "text": "...", "image": "16_05_01_360"}                       (no extension: tried as is, then .jpg)
    {"id": 3, "text": "...", "image_base64": "iVBORw0KGgo..."}                 or the picture inline (base64 or a data: URL)
    {"id": "p4", "text": "..."}                                                or neither / null

Output, one line per input line, in input order::

    {"id": "p1", "line": 1, "entities": [{"type", "text", "start", "end", "score"}], "objects": ["person"]}
    {"id": null, "line": 7, "error": "line 7 is not JSON: Expecting value (column 1)"}

With ``with_text`` (``--with-text``) a record also carries the post's text, right after
"line", wherever the line had a text string (error records too): entity ``start``/``end``
index it, so a renderer (displaCy, Label Studio) needs no join with the input::

    {"id": "p1", "line": 1, "text": "Kawhi Leonard in Toronto", "entities": [...], "objects": []}

No input line is ever dropped and no line stops the run: a line that cannot be tagged
(not UTF-8, not JSON, JSON past the limits of ``runtime.jsonlimits`` -- nested deeper than
64 levels, an integer of more than 100 digits, NaN --, a line longer than
``max_line_bytes``, which is skipped without being read whole, a missing or mistyped field,
a duplicate id, empty text, a text over ``max_text_chars`` or with a lone surrogate such
as "\\ud800", an unusable picture, a post whose tagging raised) gets an ``error`` record.
``line`` is the input line number. A record that holds a lone surrogate (in its id, say)
is written with JSON's ASCII escapes, the one form it has. Should tagging fail for every
post of a batch, that is not one post's problem: the run stops (exit 1) with nothing of
that batch written, and a rerun resumes there.

Less padding (``sort_window``, mner-tag's ``--sort-window``, default 1,024 there): the tagger
pads each call to its longest window, so the posts of each window of ``sort_window`` input
lines are tagged in order of their word-pieces (those without a picture first;
``runtime.batching``), in batches cut from that order, and their records are still written
in input order: after each batch, as far as every line before has its record. A window
also ends once its pictures hold ``batching.PICTURE_BYTES_PER_WINDOW`` bytes. A window of
one batch or less keeps input order (so does ``sort_window`` 1, the library's default): the
pipeline orders a batch's windows itself. Records are the same in either order.

Pictures are read only from regular files under --images (default: the input file's
directory): a path is resolved, ``..`` and symlinks included, and one that leads outside
is refused by that rule, whether or not the file exists; an error never quotes a file's
bytes. ``image`` is always a path, never guessed to be base64: inline pictures go in
``image_base64``, as in mner-serve's API.

Resuming: records are appended in batches, each followed by fsync, always in input order
(ordering by length included: a line's record is written once every line before it has
its own, so a kill mid-window leaves no hole, and loses at most the window's tagging not
yet written). Run again with the same --output and every input line that already has a
record is skipped (by its id; by its line number for lines without a usable id, and for
repeated ids). A record cut off by a kill (the file's last line without its newline) is
removed first, so a killed run followed by a re-run gives exactly one record per input line. Should a write fail (a full
disk, a read-only folder), the batch is cut off the file again, the run stops with one
line naming the file and the OS error, and a rerun resumes there. --output may not be the
--input file (by any name: links are followed).

Which model wrote an output: beside ``out.jsonl``, ``out.jsonl.meta.json`` (written
atomically, once the output is open and before its first record) names the bundle -- the sha256 of its manifest.json,
which lists the sha256 of every file of the bundle -- and the options that change records
(``Provenance``). A resume is refused, naming both sides of each difference, when the
bundle or one of those options differs: records of two models in one file would be scored
as one. An output that holds records but no sidecar (written by an mner-tag older than
the sidecar, or by something else) is refused too: which model wrote it is unknown. Move
or copy the sidecar with its output.

``input`` may also be a binary stream (stdin: no total for progress) and ``output`` a
writable binary stream (stdout: each batch written and flushed, nothing resumed, no sidecar).
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
import logging
import os
import re
import stat
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator, Mapping

from mner.runtime import jsonlimits
from mner.runtime.batching import (PICTURE_BYTES_PER_WINDOW, PaddingCount, length_order, padded_pieces, post_windows,
                                   sort_key, text_windows)
from mner.runtime.conll import check_entity_types, evaluate_entities, read_conll
from mner.runtime.files import write_atomically
from mner.runtime.image import ImageError, read_header
from mner.runtime.pipeline import TAGGING_FAILED, Pipeline, Post, TagResult
from mner.runtime.progress import progress as progress_bar
from mner.runtime.serve_limits import ServeConfig

logger = logging.getLogger(__name__)

MAX_IMAGE_BYTES = 64 << 20  # a picture file or payload larger than this is refused before decoding
# mner-serve's limits (ServeConfig.max_text_chars and .max_body_bytes; a test keeps them equal), written out
# here so that mner-tag does not import the server's batcher and its metrics library.
MAX_TEXT_CHARS = ServeConfig.max_text_chars  # what mner-serve accepts; longer posts are windowed, not truncated
MAX_LINE_BYTES = ServeConfig.max_body_bytes  # one input line is at most what mner-serve accepts as one body
SIDECAR_SUFFIX = ".meta.json"  # out.jsonl -> out.jsonl.meta.json: which bundle and options wrote out.jsonl
SIDECAR_FORMAT = "mner-tag-output"
SIDECAR_VERSION = 1
_RECORD_LINE_SLACK = 4  # an output record is at most ~3x its input line (a surrogate id written with \u escapes)
_SHOWN_CHARS = 60  # an echoed image path or id is cut to this in an error
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_BASE64_URLSAFE = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_WHITESPACE = re.compile(r"\s+")


class OutputError(ValueError):
    """--output cannot be used: not a file mner-tag can resume, the --input file itself, written by another
    bundle or with other options, or not writable."""


class PipelineFailed(RuntimeError):
    """Tagging failed for every post of a batch: the run stops rather than record that as each line's error."""


@dataclass
class TagSummary:
    lines: int | None = 0  # input lines (posts, for --conll); None: not known ahead (stdin) and no line read
    skipped: int = 0  # already in the output from an earlier run
    tagged: int = 0
    entities: int = 0
    errors: Counter = field(default_factory=Counter)  # kind -> count, of this run's records
    seconds: float = 0.0
    metrics: dict | None = None  # --conll: evaluate_entities over every post
    unit: str = "lines"  # what `lines` counts: input lines, or CoNLL posts
    earlier_errors: int = 0  # error records an earlier run left in the output
    padding: PaddingCount | None = None  # the tagger's word-pieces in this run, real and padded (Pipeline.padding)
    unsorted_padding: int = 0  # padded pieces that ordering by length saved (exactly, by batching.padded_pieces)

    @property
    def error_records(self) -> int:
        """Error records in the output: this run's and, for a resumed file, the earlier runs'."""
        return sum(self.errors.values()) + self.earlier_errors

    def format(self, output: str | os.PathLike) -> str:
        rate = self.tagged / self.seconds if self.seconds > 0 else 0.0
        earlier = f" ({self.earlier_errors} of them errors)" if self.earlier_errors else ""
        text = (f"{self.lines} {self.unit} -> {output}: {self.tagged} tagged ({self.entities} entities), "
                f"{sum(self.errors.values())} errors, {self.skipped} already done{earlier}; {self.seconds:.1f} s, "
                f"{rate:.1f} posts/s")  # fmt: skip
        if self.padding is not None and self.padding.ratio is not None:
            text += f"; tagger pieces {100 * self.padding.ratio:.1f} % real"
            if self.unsorted_padding:
                text += f" ({100 * self.padding.real / (self.padding.padded + self.unsorted_padding):.1f} % in input order)"
        if self.errors:
            text += "\nerrors: " + ", ".join(f"{kind} {count}" for kind, count in self.errors.most_common())
        return text


@dataclass(frozen=True)
class Provenance:
    """What writes an output file: the bundle and the options that change its records.

    ``bundle_sha256`` is the sha256 of the bundle's manifest.json (``bundle.manifest_sha256()``), which
    lists the size and sha256 of every file of the bundle: it names the model, the tokenizer,
    the splitter and the decoding settings together. ``options`` are compared on resume
    (backend, precision, on_bad_image, with_text, the limits that make error records, the
    input kind); ``details`` are written for the reader only (device, batch size, paths,
    the mner version, when the output was started).
    """

    bundle_sha256: str
    options: Mapping[str, Any]
    bundle_path: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"format": SIDECAR_FORMAT, "format_version": SIDECAR_VERSION,
                "bundle": {"sha256": self.bundle_sha256, "path": self.bundle_path},
                "options": dict(self.options), "details": dict(self.details)}  # fmt: skip


def sidecar_path(output: str | os.PathLike) -> Path:
    """Where the provenance of ``output`` is written: ``<output>.meta.json``."""
    output = Path(output)
    return output.with_name(output.name + SIDECAR_SUFFIX)


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
    text: str | None = None  # the post's text where the line had one (--with-text); offsets index it


def tag_jsonl(
    pipeline: Pipeline,
    input: str | os.PathLike | IO[bytes],
    output: str | os.PathLike | IO[bytes],
    *,
    images: str | os.PathLike | None = None,
    progress: bool | None = True,
    max_text_chars: int = MAX_TEXT_CHARS,
    max_line_bytes: int = MAX_LINE_BYTES,
    with_text: bool = False,
    provenance: Provenance | None = None,
    sort_window: int = 1,
) -> TagSummary:
    """Tag every line of ``input`` into ``output`` (resuming it where it exists); see the module docstring.

    ``input``: a file, or a binary stream such as stdin (``images`` then defaults to the current
    directory, not the input's). ``output``: a file, or a writable binary stream such as stdout
    (nothing resumed, no sidecar). ``with_text``: each record carries the post's text as "text".
    ``provenance``: checked against the output's sidecar (a resume by another bundle or with
    other options is refused) and written there; None: no sidecar is read or written.
    ``sort_window``: posts ordered by length together before batches are cut (see the module
    docstring); 1, or at most the pipeline's batch size, keeps input order.
    """
    _check_limits(max_text_chars=max_text_chars, max_line_bytes=max_line_bytes, sort_window=sort_window)
    streamed = not isinstance(input, (str, os.PathLike))
    if not streamed:
        input = Path(input)
        if not input.is_file():
            raise ValueError(f"--input {input}: no such file")
    images_dir = Path(images) if images is not None else Path(".") if streamed else input.parent
    if not images_dir.is_dir():
        raise ValueError(f"--images {images_dir}: no such directory")
    limits = _Limits(images_dir, images_dir.resolve(), pipeline.on_bad_image, max_text_chars, max_line_bytes)
    with ExitStack() as stack:
        lines = input if streamed else stack.enter_context(open(input, "rb"))
        sink, done = _claim_output(output, lines if streamed else input, "--input", provenance, max_line_bytes)
        stack.enter_context(sink)
        total = None if streamed else _count_lines(input)
        entries = _jsonl_entries(lines, limits, done.ids, done.lines)
        summary = _run(pipeline, entries, sink, total, progress, with_text=with_text, sort_window=sort_window)
    summary.earlier_errors = done.errors
    return summary


def tag_conll(
    pipeline: Pipeline,
    conll: str | os.PathLike,
    output: str | os.PathLike | IO[bytes],
    *,
    images: str | os.PathLike | None = None,
    progress: bool | None = True,
    max_text_chars: int = MAX_TEXT_CHARS,
    with_text: bool = False,
    provenance: Provenance | None = None,
    sort_window: int = 1,
) -> TagSummary:
    """Tag every post of a CoNLL + IMGID file (pictures ``<images>/<IMGID>.jpg``) and score the tags.

    Output records also carry "image_id" and the predicted word "tags" (and, ``with_text``,
    "text": the words joined by spaces, which the offsets index); the returned
    summary's ``metrics`` are P/R/F1 over every post (a post whose record is an error
    counts as predicting no entity). Data whose tags name an entity type the bundle does
    not know is refused before anything is tagged (it would score 0 for that type).
    Pictures are read as for JSONL: only files under ``images`` (an IMGID such as
    ``../x`` is refused by that rule). ``output``, ``provenance`` and ``sort_window`` as for ``tag_jsonl``.
    """
    conll = Path(conll)
    _check_limits(max_text_chars=max_text_chars, sort_window=sort_window)
    if not conll.is_file():
        raise ValueError(f"--conll {conll}: no such file")
    if images is not None and not Path(images).is_dir():
        raise ValueError(f"--images {images}: no such directory")
    _refuse_same_file(conll, output, "--conll")
    posts = read_conll(conll)
    if not posts:
        raise ValueError(f"--conll {conll} holds no posts")
    check_entity_types(posts, pipeline.scheme.entity_types, f"--conll {conll}", "the bundle")
    root = Path(images).resolve() if images is not None else None

    def entries(done_ids: set[str]) -> Iterator[_Entry | int]:
        for number, post in enumerate(posts, start=1):
            if json.dumps(number) in done_ids:
                yield 1
                continue
            text = " ".join(post.words)
            entry = _Entry(post.line, number, extra={"image_id": post.image_id}, words=post.words, text=text)
            if len(text) > max_text_chars:
                entry.record, entry.kind = {"error": _text_too_long(text, max_text_chars)}, "text too long"
                yield entry
                continue
            image = None
            if root is not None and post.image_id is not None:
                image, problem = read_image_under(Path(images), root, f"{post.image_id}.jpg")
                if problem is not None:
                    if pipeline.on_bad_image == "error":
                        entry.record, entry.kind = {"error": f"image: {problem}"}, "image"
                        yield entry
                        continue
                    entry.extra["image_error"] = problem
                    image = None
            entry.post = Post(text, image)
            yield entry

    written_tags: dict[Any, list[str]] | None = None if isinstance(output, (str, os.PathLike)) else {}
    sink, done = _claim_output(output, conll, "--conll", provenance, MAX_LINE_BYTES)
    with sink:
        summary = _run(pipeline, entries(done.ids), sink, len(posts), progress, unit="posts", with_text=with_text,
                       written_tags=written_tags, sort_window=sort_window)  # fmt: skip
    summary.earlier_errors = done.errors
    if written_tags is None:  # a file: the tags of earlier runs are in it too
        written_tags = {r["id"]: r["tags"] for r in _records(Path(output), MAX_LINE_BYTES) if "tags" in r}
    pred = [written_tags.get(number, ["O"] * len(post.words)) for number, post in enumerate(posts, start=1)]
    summary.metrics = evaluate_entities([post.tags for post in posts], pred)
    return summary


def _check_limits(**limits: int) -> None:
    for name, value in limits.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _refuse_same_file(source: Path | IO[bytes], output: Any, flag: str) -> None:
    """--output naming the file being read (itself, through a symlink or a hard link, or the file stdin
    was redirected from) would be appended to while it is read, and resuming would cut off its last
    line as a torn record."""
    if not isinstance(output, (str, os.PathLike)):
        return  # a stream is not appended to
    try:
        read = os.stat(source) if isinstance(source, (str, os.PathLike)) else os.fstat(source.fileno())
        written = os.stat(output)
    except (OSError, ValueError, AttributeError):  # no output yet, or a stream without a file: it cannot be the input
        return
    if stat.S_ISREG(read.st_mode) and (read.st_dev, read.st_ino) == (written.st_dev, written.st_ino):
        shown = source if isinstance(source, (str, os.PathLike)) else "(stdin)"
        raise OutputError(f"--output {output} is the {flag} file {shown} (the same file, by a link or another name): "
                          "records are appended to --output, so pass another file")  # fmt: skip


# --------------------------------------------------------------------------- the output and its sidecar


@dataclass
class _Done:
    """What an output already holds: the ids (canonical JSON) and input line numbers of its records."""

    ids: set[str] = field(default_factory=set)
    lines: set[int] = field(default_factory=set)
    errors: int = 0  # how many of its records are errors
    records: int = 0


def _claim_output(output: Any, source: Path | IO[bytes], flag: str, provenance: Provenance | None,
                  max_line_bytes: int) -> tuple[_Sink | _StreamSink, _Done]:  # fmt: skip
    """Open ``output`` for this run: a stream as it is; a file after refusing it where it is the input,
    not mner-tag output, or written by another bundle or with other options, then with a torn last
    record cut off and the sidecar written. Returns the sink and what the file already holds."""
    if not isinstance(output, (str, os.PathLike)):
        return _StreamSink(output), _Done()
    output = Path(output)
    _refuse_same_file(source, output, flag)
    done, torn = _scan(output, max_line_bytes)
    known = _check_provenance(output, provenance, done) if provenance is not None else True
    if torn is not None:
        logger.warning("%s: dropping an incomplete last record (%d bytes) left by an interrupted run", output, torn[1])
        try:
            os.truncate(output, torn[0])
        except OSError as error:
            raise OutputError(f"cannot resume --output {output}: {_os_error(error)}") from None
    sink = _Sink(output)
    if not known:
        try:
            _write_sidecar(output, provenance)
        except BaseException:
            sink.close()
            raise
    return sink, done


def _check_provenance(output: Path, provenance: Provenance, done: _Done) -> bool:
    """Refuse to resume ``output`` where its sidecar names another bundle or other options, or where it holds
    records and has no sidecar. True: the sidecar matches and is kept; False: a sidecar is to be written."""
    path = sidecar_path(output)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raw = None
    except OSError as error:
        raise OutputError(f"cannot read {path} (which bundle and options wrote --output): {_os_error(error)}") from None
    if done.records == 0:
        return False  # nothing to mix with: this run's sidecar replaces any other
    start_again = f"pass another --output, or delete {output} and {path.name} to start again"
    if raw is None:
        raise OutputError(f"--output {output} holds {done.records} records but no {path.name} saying which bundle and "
                          f"options wrote them (an mner-tag older than that file, or another program, wrote it), so "
                          f"resuming could mix two models' records in one file: pass another --output, or delete "
                          f"{output} to start again")  # fmt: skip
    meta = parse_sidecar(raw)
    if meta is None:
        raise OutputError(f"{path} is not an mner-tag sidecar (format {SIDECAR_FORMAT!r}), so which bundle wrote "
                          f"--output {output} is unknown: {start_again}")  # fmt: skip
    then_sha, then_path = meta["bundle"].get("sha256"), meta["bundle"].get("path", "")
    differences = []
    if then_sha != provenance.bundle_sha256:
        differences.append(f"bundle: sha256 {then_sha} ({then_path}) wrote it; this run's is sha256 "
                           f"{provenance.bundle_sha256} ({provenance.bundle_path})")  # fmt: skip
    differences += option_differences(meta["options"], provenance.options)
    if differences:
        raise OutputError(f"--output {output} was written by another bundle or with other options ({path.name}), so "
                          "resuming it would mix two runs' records in one file:\n  " + "\n  ".join(differences)
                          + f"\n{start_again}, or run with the bundle and options that wrote it")  # fmt: skip
    return True


def parse_sidecar(raw: bytes) -> dict[str, Any] | None:
    """The document of a sidecar's bytes (format, bundle, options), or None where they are no mner-tag sidecar.
    Also read by ``ray_tag`` for an output folder's sidecar."""
    try:
        meta = jsonlimits.loads(raw)
    except (jsonlimits.JsonLimitError, UnicodeDecodeError):
        return None
    if not (isinstance(meta, dict) and meta.get("format") == SIDECAR_FORMAT and isinstance(meta.get("bundle"), dict)
            and isinstance(meta.get("options"), dict)):  # fmt: skip
        return None
    return meta


def option_differences(then: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """One line per option whose value differs between a sidecar's options and this run's, as the command line
    names it: ``--with-text: false then, true now``."""
    return [f"{_option_name(name)}: {json.dumps(then.get(name))} then, {json.dumps(now.get(name))} now"
            for name in sorted(set(then) | set(now)) if then.get(name) != now.get(name)]  # fmt: skip


def _option_name(name: str) -> str:
    """How an option of the sidecar is called on the command line (input: --input or --conll)."""
    return "input" if name == "input" else "splitter" if name == "splitter" else "--" + name.replace("_", "-")


def _write_sidecar(output: Path, provenance: Provenance) -> None:
    """``<output>.meta.json`` written whole or not at all, fsynced, with the mode the umask gives (a reader never
    sees half a sidecar, a kill leaves the old one or none)."""
    path = sidecar_path(output)
    data = (json.dumps(provenance.to_json(), indent=2, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")
    try:
        write_atomically(path, lambda f: f.write(data), fsync=True)
    except OSError as error:
        raise OutputError(f"cannot write {path} (which bundle and options wrote --output): {_os_error(error)}") from None


# --------------------------------------------------------------------------- the loop


def _run(pipeline: Pipeline, entries, sink: _Sink | _StreamSink, total: int | None, progress: bool | None,
         unit: str = "lines", with_text: bool = False, written_tags: dict | None = None,
         sort_window: int = 1) -> TagSummary:  # fmt: skip
    """Tag ``entries`` window by window: a window is ``sort_window`` entries (at least a batch; fewer where
    their pictures reach PICTURE_BYTES_PER_WINDOW), tagged in batches and written in input order."""
    summary = TagSummary(lines=total, unit=unit)
    started = time.perf_counter()
    read = 0
    size = max(sort_window, pipeline.batch_size)
    with progress_bar(total=total, desc="mner-tag", unit=unit[:-1], enabled=progress) as bar:
        window: list[_Entry] = []
        held = 0  # bytes of the window's pictures
        for entry in entries:
            if isinstance(entry, int):  # lines skipped because the output has them
                summary.skipped += entry
                read += entry
                bar.update(entry)
                continue
            read += 1
            window.append(entry)
            held += len(entry.post.image) if entry.post is not None and entry.post.image is not None else 0
            if len(window) >= size or held >= PICTURE_BYTES_PER_WINDOW:
                _tag_window(pipeline, window, sink, summary, bar, with_text, written_tags)
                window, held = [], 0
        if window:
            _tag_window(pipeline, window, sink, summary, bar, with_text, written_tags)
    if summary.lines is None:  # stdin: known once read
        summary.lines = read
    summary.seconds = time.perf_counter() - started
    return summary


def _tag_window(pipeline: Pipeline, window: list[_Entry], sink: _Sink | _StreamSink, summary: TagSummary, bar,
                with_text: bool, written_tags: dict | None) -> None:  # fmt: skip
    """Tag the window's posts in batches, ordered by length where they make more than one batch, and after
    each batch append the records of the window's longest prefix that has them all: the output holds
    whole records in input order only, so a kill or a failure anywhere leaves no hole for a rerun."""
    to_tag = [entry for entry in window if entry.record is None]
    bar.update(len(window) - len(to_tag))  # error records decided while reading
    if len(to_tag) > pipeline.batch_size:
        windows = [_post_windows(pipeline, entry) for entry in to_tag]
        order = length_order([sort_key(w, entry.post.image is not None) for w, entry in zip(windows, to_tag)],
                             len(to_tag))  # fmt: skip
        summary.unsorted_padding += _padding_saved(pipeline, windows, order)
        to_tag = [to_tag[i] for i in order]
    written = 0
    for start in range(0, len(to_tag), pipeline.batch_size):
        batch = to_tag[start : start + pipeline.batch_size]
        try:
            _tag(pipeline, batch)
        finally:  # also where the batch failed as a whole: what is complete before it is kept
            written = _append_done(window, written, sink, summary, with_text, written_tags)
        bar.update(len(batch))
    written = _append_done(window, written, sink, summary, with_text, written_tags)
    assert written == len(window), "every entry of a window has its record once it is tagged"


def _post_windows(pipeline: Pipeline, entry: _Entry) -> list[int]:
    """The entry's tagger windows (their lengths), which order a window's posts."""
    try:
        return post_windows(pipeline, entry.words) if entry.words is not None else text_windows(pipeline, entry.post.text)
    except Exception:  # noqa: BLE001 -- only the order depends on it; tagging the post gives it its own error
        logger.debug("line %d: its word-pieces could not be counted; it is ordered as if it had none", entry.line,
                     exc_info=True)  # fmt: skip
        return []


def _padding_saved(pipeline: Pipeline, windows: list[list[int]], order: list[int]) -> int:
    """Padded pieces that tagging the posts in ``order`` saves over input order (batching.padded_pieces)."""
    most = min(pipeline.batch_size, pipeline.tagger.axis_bounds("batch")[1])
    min_sequence = pipeline.tagger.axis_bounds("sequence")[0]

    def padded(posts: list[list[int]]) -> int:
        batches = [posts[i : i + pipeline.batch_size] for i in range(0, len(posts), pipeline.batch_size)]
        return padded_pieces(batches, most, min_sequence, pipeline.chunk_pieces).padded

    return padded(windows) - padded([windows[i] for i in order])


class _Sink:
    """--output opened for appending whole batches: each batch is written and fsynced, or, should the
    OS refuse (a full disk, a read-only or vanished file system, a file-size limit), cut off again so
    the file holds only complete records, and the run stops with an OutputError naming the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as error:
            raise OutputError(f"cannot open --output {path} for writing: {_os_error(error)}") from None

    def __enter__(self) -> _Sink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def append(self, data: bytes) -> None:
        start = os.lseek(self.fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:  # a write may be short (a disk filling up): the next one says why
                view = view[os.write(self.fd, view) :]
            os.fsync(self.fd)
        except OSError as error:
            try:
                os.ftruncate(self.fd, start)  # leave complete records only
            except OSError:
                pass  # the next run's resume cuts off a torn last record all the same
            raise OutputError(f"cannot write --output {self.path}: {_os_error(error)}; the records before this batch are "
                              "complete: fix the cause and run again to resume") from None  # fmt: skip


class OutputClosed(OutputError):
    """The reader of the output stream went away (``mner-tag ... -o - | head``): the run stops there."""


class _StreamSink:
    """--output - (stdout): each batch written and flushed as it is tagged; nothing to resume or cut off."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream

    def __enter__(self) -> _StreamSink:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def close(self) -> None:
        pass

    def append(self, data: bytes) -> None:
        try:
            self.stream.write(data)
            self.stream.flush()
        except BrokenPipeError:
            raise OutputClosed("the output stream was closed by its reader (a pipe into head, say): the run "
                               "stopped there") from None  # fmt: skip
        except OSError as error:
            raise OutputError(f"cannot write the output stream: {_os_error(error)}") from None


def _os_error(error: OSError) -> str:
    code = errno.errorcode.get(error.errno, "") if error.errno is not None else ""
    return f"{error.strerror or error} ({code})" if code else f"{error.strerror or error}"


def _tag(pipeline: Pipeline, entries: list[_Entry]) -> None:
    """Tag a batch's posts: each entry gets its record (nothing is written here)."""
    if entries and entries[0].words is not None:
        results = pipeline.tag_words([e.words for e in entries], [e.post.image for e in entries])
    else:
        results = pipeline.tag([e.post for e in entries])
    failed = [result.error for result in results if not result.ok and result.error.startswith(TAGGING_FAILED)]
    if len(entries) > 1 and len(failed) == len(entries):
        # Not one post's problem (a runner that died, a device lost): error records would mark every line
        # done for good, so stop with nothing of this batch written; a rerun resumes here.
        raise PipelineFailed(f"the pipeline failed on every one of {len(entries)} posts in a batch ({failed[0]}); "
                             "nothing of this batch was written: fix the cause and run again to resume")  # fmt: skip
    for entry, result in zip(entries, results):
        entry.record = result_record(result, with_tags=entry.words is not None)
        if not result.ok:
            entry.kind = "image" if result.error.startswith("image:") else "text"


def _append_done(window: list[_Entry], written: int, sink: _Sink | _StreamSink, summary: TagSummary,
                 with_text: bool = False, written_tags: dict | None = None) -> int:  # fmt: skip
    """Append the records of ``window[written:]`` up to the first entry without one (written and fsynced
    as one); returns how many of the window are written now."""
    end = written
    while end < len(window) and window[end].record is not None:
        end += 1
    if end == written:
        return written
    lines = []
    counts = Counter()
    tagged = entities = 0
    for entry in window[written:end]:
        text = {"text": entry.text} if with_text and entry.text is not None else {}
        record = {"id": entry.id, "line": entry.line, **text, **entry.extra, **entry.record}
        if "error" in record:
            record.pop("image_error", None)
            counts[entry.kind] += 1
        else:
            tagged += 1
            entities += len(record["entities"])
            if written_tags is not None and "tags" in record:
                written_tags[record["id"]] = record["tags"]
        lines.append(record_line(record))
    sink.append(b"".join(lines))
    summary.errors.update(counts)  # counted once written: a failed write leaves the summary as the file
    summary.tagged += tagged
    summary.entities += entities
    return end


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


@dataclass(frozen=True)
class _Limits:
    """How input lines are read: where pictures may come from, and how long a line and a text may be."""

    images_dir: Path  # as given, for messages
    root: Path  # images_dir resolved: pictures must resolve under it
    on_bad_image: str
    max_text_chars: int
    max_line_bytes: int


def _count_lines(path: Path) -> int:
    count, last = 0, b"\n"
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def _bounded_lines(f, max_line_bytes: int) -> Iterator[tuple[bytes, int]]:
    """(line, its length) for each line of binary file ``f``, the line b"" where it is longer than
    ``max_line_bytes`` (its newline not counted): such a line is skipped in 1 MiB reads, never held whole."""
    while True:
        raw = f.readline(max_line_bytes + 1)
        if not raw:
            return
        content = len(raw) - raw.endswith(b"\n")
        if content <= max_line_bytes:
            yield raw, content
            continue
        while not raw.endswith(b"\n"):
            raw = f.readline(1 << 20)
            if not raw:
                break
            content += len(raw) - raw.endswith(b"\n")
        yield b"", content


def _jsonl_entries(lines: IO[bytes], limits: _Limits, done_ids: set[str], done_lines: set[int]) -> Iterator[_Entry | int]:
    first_line_of: dict[str, int] = {}  # canonical id -> the line it first appeared on
    for number, (raw, length) in enumerate(_bounded_lines(lines, limits.max_line_bytes), start=1):
        if length > limits.max_line_bytes:
            entry = _Entry(number, None, kind="line too long", record={"error": (
                f"line {number} has {length} bytes, over the limit of {limits.max_line_bytes} (--max-line-bytes); "
                "it was skipped unread")})  # fmt: skip
        else:
            entry = _parse_line(number, raw, limits, first_line_of)
        key = json.dumps(entry.id) if entry.id is not None else None
        repeated = key is not None and first_line_of.get(key, number) != number
        if key is not None and not repeated:
            done = key in done_ids
        else:
            done = number in done_lines
        yield 1 if done else entry


def _parse_line(number: int, raw: bytes, limits: _Limits, first_line_of: dict[str, int]) -> _Entry:
    def error(kind: str, message: str, id: Any = None) -> _Entry:
        text = value.get("text") if isinstance(value, dict) else None  # kept with the error (--with-text)
        return _Entry(number, id, record={"error": message}, kind=kind, text=text if isinstance(text, str) else None)

    value = None

    raw = raw.rstrip(b"\r\n")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return error("not UTF-8", f"line {number} is not UTF-8: byte 0x{raw[e.start]:02x} at position {e.start}")
    if not text.strip():
        return error("not JSON", f"line {number} is blank; expected a JSON object")
    try:
        value = jsonlimits.loads(text)
    except jsonlimits.MalformedJsonError as e:
        return error("not JSON", f"line {number} is not JSON: {e.msg} (column {e.colno})")
    except jsonlimits.JsonLimitError as e:
        return error(e.kind, f"line {number} is refused: {e}")
    if not isinstance(value, dict):
        return error("not JSON", f"line {number} is JSON {type(value).__name__}, expected an object with id, text, image")
    if "id" not in value:
        return error("missing field", "missing field 'id'")
    post_id = value["id"]
    if isinstance(post_id, bool) or not isinstance(post_id, (str, int)):
        return error("bad field", f"id must be a string or an integer, got {_shown(json.dumps(post_id))}")
    key = json.dumps(post_id)
    first = first_line_of.setdefault(key, number)
    if first != number:
        return error("duplicate id", f"duplicate id: the same id is on line {first}", post_id)
    if "text" not in value:
        return error("missing field", "missing field 'text'", post_id)
    if not isinstance(value["text"], str):
        return error("bad field", f"text must be a string, got {type(value['text']).__name__}", post_id)
    if len(value["text"]) > limits.max_text_chars:
        return error("text too long", _text_too_long(value["text"], limits.max_text_chars), post_id)
    path, inline = value.get("image"), value.get("image_base64")
    if path is not None and inline is not None:
        return error("bad field", "give at most one of image (a path under --images) and image_base64", post_id)
    if path is not None and not isinstance(path, str):
        return error("bad field", f"image must be a path under --images, got {type(path).__name__} (inline "
                                  "pictures go in image_base64)", post_id)  # fmt: skip
    if inline is not None and not isinstance(inline, str):
        return error("bad field", f"image_base64 must be a string, got {type(inline).__name__}", post_id)
    entry = _Entry(number, post_id, post=Post(value["text"]), text=value["text"])
    if inline is not None:
        data, problem = inline_image(inline)
        if problem is not None:
            return error("image", f"image: image_base64: {problem}", post_id)
        entry.post = Post(value["text"], data)
    elif path is not None:
        data, problem = read_image_under(limits.images_dir, limits.root, path)
        if problem is not None and data is None:
            return error("image", f"image: {problem}", post_id)
        if problem is not None:  # a file that is no picture: the pipeline's --on-bad-image policy
            if limits.on_bad_image == "error":
                return error("image", f"image: {problem}", post_id)
            entry.extra["image_error"] = problem
        else:
            entry.post = Post(value["text"], data)
    return entry


def _text_too_long(text: str, max_text_chars: int) -> str:
    return f"text has {len(text)} characters, over the limit of {max_text_chars} (--max-text-chars)"


def _shown(value: str, quote: bool = False) -> str:
    """``value`` for an error message, quoted or not: cut to a few dozen characters (an echo of a
    16 MiB field helps no one)."""
    if len(value) <= _SHOWN_CHARS:
        return repr(value) if quote else value
    cut = f"{value[: _SHOWN_CHARS - 20]}...{value[-8:]}"
    return f"{cut!r} ({len(value)} characters)" if quote else f"{cut} ({len(value)} characters)"


def inline_image(value: str) -> tuple[bytes | None, str | None]:
    """(bytes, None) or (None, why not) for an inline picture: plain or URL-safe base64, or a data: URL."""
    if value.startswith("data:"):
        header, comma, payload = value.partition(",")
        if not comma or not header.endswith(";base64"):
            return None, f"a data URL must look like data:image/jpeg;base64,<payload>, got {value[:40]!r}..."
        return decode_base64(payload)
    if not value:
        return None, "empty (omit the field, or use null, for a post without a picture)"
    return decode_base64(value)


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


def read_image_under(images_dir: Path, root: Path, name: str) -> tuple[bytes | None, str | None]:
    """Read picture file ``name`` under ``images_dir`` (``root`` is it resolved): (bytes, None);
    (None, why not); or (bytes, why it is no picture) for a file whose header is of no picture format.

    ``name`` resolves (``..`` and symlinks followed) to a regular file under ``root`` or is refused
    by that rule before any existence check, so the answer says nothing about files elsewhere. A
    name without an extension that names no file is tried with ".jpg" (a TWITTER image id such as
    ``16_05_01_360`` names ``16_05_01_360.jpg``). No message quotes the file's bytes.
    """
    if not name:
        return None, "empty image path (omit the field, or use null, for a post without a picture)"
    shown = _shown(name, quote=True)
    hint = "; inline pictures go in image_base64, image is a path" if _looks_inline(name) else ""
    tried = [name] if Path(name).suffix else [name, name + ".jpg"]
    for candidate in tried:
        try:
            real = Path(os.path.realpath(images_dir / candidate))
        except (OSError, ValueError):  # a NUL, or a lone surrogate no file name can hold
            continue
        if not real.is_relative_to(root):
            return None, (f"{shown} leads outside --images {images_dir}: pictures are read only from files under "
                          f"--images{hint}")  # fmt: skip
        data, problem = _read_regular_file(real, root, shown)
        if data is None and problem is None:  # no such file: try the next name
            continue
        return data, problem
    nor = " (nor with .jpg)" if len(tried) > 1 else ""
    return None, f"no such image file: {images_dir}{os.sep}{_shown(name)}{nor}{hint}"


def _looks_inline(name: str) -> bool:
    """A picture put in "image" inline, as older mner-tag input had it: said in the error, never decoded."""
    return name.startswith("data:") or (len(name) >= 64 and _BASE64.fullmatch(_WHITESPACE.sub("", name)) is not None)


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def _read_regular_file(real: Path, root: Path, shown: str) -> tuple[bytes | None, str | None]:
    """(None, None) where there is no such file; see read_image_under for the rest."""
    try:
        # O_NOFOLLOW: the path was resolved, so a symlink here appeared since; O_NONBLOCK: a FIFO must not hang us
        fd = os.open(real, _OPEN_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return None, None
    except OSError as error:
        if error.errno == errno.ENAMETOOLONG:
            return None, None
        return None, f"{shown}: cannot open the file ({_os_error(error)})"
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        if stat.S_ISDIR(info.st_mode):
            return None, f"{shown} is a directory, not a picture file"
        return None, f"{shown} is not a regular file (a device, FIFO or socket): pictures are read from files"
    with os.fdopen(fd, "rb") as f:
        try:  # what was opened, in case a folder on the way was swapped for a link after resolving
            opened = Path(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            opened = real
        if not opened.is_relative_to(root):
            return None, f"{shown} leads outside --images: pictures are read only from files under --images"
        if info.st_size > MAX_IMAGE_BYTES:
            return None, f"{shown} is {info.st_size} bytes, over the {MAX_IMAGE_BYTES >> 20} MiB limit"
        try:
            data = f.read(MAX_IMAGE_BYTES + 1)
        except OSError as error:
            return None, f"{shown}: cannot read the file ({_os_error(error)})"
    if len(data) > MAX_IMAGE_BYTES:
        return None, f"{shown} is over the {MAX_IMAGE_BYTES >> 20} MiB limit"
    try:
        read_header(data)
    except ImageError as error:
        if not data or str(error).startswith("not an image"):  # its message quotes the first bytes: not here
            return data, f"{shown} is not a picture (supported: PNG, JPEG, GIF, BMP, WEBP)"
        return data, f"{shown}: {error}"
    return data, None


# --------------------------------------------------------------------------- resuming


def _scan(output: Path, max_line_bytes: int) -> tuple[_Done, tuple[int, int] | None]:
    """What ``output`` already holds, and where its torn last record starts (offset, length), if it has one;
    the file is only read. A line that is no mner-tag record refuses the file."""
    done = _Done()
    if not output.exists():
        return done, None
    if not output.is_file():
        raise OutputError(f"--output {output} is not a file")
    offset = 0
    try:
        with open(output, "rb") as f:
            for number, (raw, length) in enumerate(_bounded_lines(f, _record_limit(max_line_bytes)), start=1):
                if raw and not raw.endswith(b"\n"):  # the last record, torn by a kill: it is written again
                    return done, (offset, len(raw))
                record = _parse_record(raw, length, output, number, max_line_bytes)
                done.records += 1
                done.errors += "error" in record
                done.lines.add(record["line"])
                if record.get("id") is not None:
                    done.ids.add(json.dumps(record["id"]))
                offset += len(raw)
    except OSError as error:
        raise OutputError(f"cannot resume --output {output}: {_os_error(error)}") from None
    return done, None


def _record_limit(max_line_bytes: int) -> int:
    return _RECORD_LINE_SLACK * max_line_bytes + (1 << 20)


def _records(output: Path, max_line_bytes: int) -> Iterator[dict[str, Any]]:
    with open(output, "rb") as f:
        for number, (raw, length) in enumerate(_bounded_lines(f, _record_limit(max_line_bytes)), start=1):
            yield _parse_record(raw, length, output, number, max_line_bytes)


def _parse_record(raw: bytes, length: int, output: Path, number: int, max_line_bytes: int) -> dict[str, Any]:
    record = None
    if length <= _record_limit(max_line_bytes):
        try:
            record = jsonlimits.loads(raw)
        except jsonlimits.JsonLimitError:
            pass
    if not isinstance(record, dict) or isinstance(record.get("line"), bool) or not isinstance(record.get("line"), int):
        raise OutputError(f"--output {output} line {number} is not an mner-tag record, so the file cannot be resumed; "
                          "pass another --output (or delete this one)")  # fmt: skip
    return record
