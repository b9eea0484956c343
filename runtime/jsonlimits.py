"""JSON with limits: the stdlib parser, refusing input whose shape could stall or crash its reader.

``json.loads`` alone fails three ways on hostile input, none of them a clean "bad input":
nesting deeper than ~1,000 levels raises RecursionError (the C scanner recurses per level);
an integer of more than 4,300 digits raises a bare ValueError (Python's int-from-str limit);
``NaN``/``Infinity`` and a float such as ``1e999`` parse to values no JSON writer can write
back. ``loads`` refuses each with one exception class, :class:`JsonLimitError`, whose
``kind`` names the rule broken, and reports invalid JSON as :class:`MalformedJsonError`
(a subclass, so ``except JsonLimitError`` catches every refusal), with its position.

The parser stays the stdlib's, so what it accepts is unchanged otherwise: a lone
surrogate escape such as ``"\\ud800"`` still parses (the text checks downstream make it
that post's error), duplicate keys keep the last value.

Cost is linear in the input and the check never recurses:

* depth -- when the input holds more ``[``/``{`` than ``max_depth`` (one ``bytes.count``),
  one numpy pass over its UTF-8 bytes, a chunk at a time, finds the quotes that open or
  close strings (those after an even run of backslashes), drops the brackets inside
  strings and takes a running sum of the rest. Only then is the C scanner run, so it
  never goes deeper than ``max_depth``. A prefix the scanner accepts is valid JSON, on
  which this count is exact, so valid input is never refused and invalid input never
  reaches a deeper recursion than the limit.
* integer digits and float range -- ``parse_int``/``parse_float`` hooks, installed only
  when the input holds a digit run long enough to break a limit or a three-digit exponent
  (found by substring search after ``bytes.translate``: a Python hook per number costs
  ~3x the C parse of a number-heavy body, and a regex scan ~40 ns a byte).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

__all__ = ["JsonLimitError", "MalformedJsonError", "loads", "DEPTH", "INTEGER", "FLOAT_RANGE", "CONSTANT", "MALFORMED"]

# error kinds: the rule an input broke
DEPTH = "JSON too deep"
INTEGER = "integer too long"
FLOAT_RANGE = "number out of range"
CONSTANT = "not a JSON number"
MALFORMED = "malformed JSON"

# The C scanner's recursion counts against Python's recursion limit (1,000 by default)
# together with the caller's own frames: stay well under it.
MAX_DEPTH_ALLOWED = 500
_CHUNK = 1 << 20  # bytes per numpy pass of the depth scan: bounds its scratch memory to ~10x this
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_NUMBER_SHAPE = bytes(ord("0") if 48 <= byte <= 57 else ord("e") if byte in b"eE" else ord("+") if byte in b"+-"
                      else ord(" ") for byte in range(256))  # fmt: skip
_STEP = np.zeros(256, dtype=np.int8)  # what each byte does to the nesting level, outside strings
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1


class JsonLimitError(ValueError):
    """Input refused by ``loads``: ``kind`` names the rule, ``limit``/``value`` the setting and its value."""

    def __init__(self, kind: str, message: str, *, limit: str | None = None, value: int | None = None,
                 pos: int | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.limit = limit
        self.value = value
        self.pos = pos  # character offset into the text, where known


class MalformedJsonError(JsonLimitError):
    """Not JSON at all (or not UTF-8/16/32): ``pos``, ``lineno`` and ``colno`` say where, as json's own error."""

    def __init__(self, msg: str, *, pos: int, lineno: int, colno: int) -> None:
        super().__init__(MALFORMED, f"{msg} (line {lineno}, column {colno})", pos=pos)
        self.msg = msg  # without the position, as json.JSONDecodeError.msg
        self.lineno = lineno
        self.colno = colno


def loads(data: bytes | bytearray | str, *, max_depth: int = 64, max_int_digits: int = 100) -> Any:
    """``json.loads(data)``, refusing nesting deeper than ``max_depth`` arrays/objects, integers
    of more than ``max_int_digits`` digits, floats outside the float range (``1e999``),
    ``NaN``/``Infinity``, and invalid JSON -- each as a :class:`JsonLimitError`.

    ``data`` is ``str``, or ``bytes`` in UTF-8, UTF-16 or UTF-32 as ``json.loads`` reads them.
    Depth counts arrays and objects: ``[]`` is 1 level, ``[[1]]`` 2, a bare scalar 0.
    """
    if isinstance(max_depth, bool) or not isinstance(max_depth, int) or not 1 <= max_depth <= MAX_DEPTH_ALLOWED:
        raise ValueError(f"max_depth must be an int in [1, {MAX_DEPTH_ALLOWED}], got {max_depth!r}")
    if isinstance(max_int_digits, bool) or not isinstance(max_int_digits, int) or not 1 <= max_int_digits <= 4300:
        # 4,300: Python's own int-from-str limit (sys.get_int_max_str_digits), past which int() raises
        raise ValueError(f"max_int_digits must be an int in [1, 4300], got {max_int_digits!r}")
    if isinstance(data, str):
        text = data
        raw = data.encode("utf-8", "surrogatepass")  # brackets, quotes and digits are ASCII: same bytes in UTF-8
    elif isinstance(data, (bytes, bytearray)):
        encoding = json.detect_encoding(data)
        try:
            text = data.decode(encoding, "surrogatepass")  # what json.loads does with bytes
        except UnicodeDecodeError as error:
            lineno = data.count(b"\n", 0, error.start) + 1
            colno = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
            raise MalformedJsonError(f"not {encoding.upper()}: byte 0x{data[error.start]:02x} at byte {error.start}",
                                     pos=error.start, lineno=lineno, colno=colno) from None  # fmt: skip
        raw = bytes(data) if encoding in ("utf-8", "utf-8-sig") else text.encode("utf-8", "surrogatepass")
    else:
        raise TypeError(f"JSON input must be str or bytes, got {type(data).__name__}")

    if raw.count(b"[") + raw.count(b"{") > max_depth:
        where = _too_deep_at(raw, max_depth)
        if where is not None:
            pos = len(raw[:where].decode("utf-8", "replace"))
            raise JsonLimitError(DEPTH, f"JSON nested deeper than {max_depth} levels (at character {pos})",
                                 limit="max_depth", value=max_depth, pos=pos)  # fmt: skip

    decoder = _PLAIN
    shape = raw.translate(_NUMBER_SHAPE)  # digits -> 0, e/E -> e, signs -> +: substring searches run at memchr speed
    if b"0" * min(max_int_digits + 1, 309) in shape or b"e000" in shape or b"e+000" in shape:
        # 309 integer digits or a 3-digit exponent: the least a float needs to overflow to inf
        decoder = json.JSONDecoder(parse_int=_IntLimit(max_int_digits), parse_float=_finite_float,
                                   parse_constant=_no_constant)  # fmt: skip
    try:
        return decoder.decode(text)
    except json.JSONDecodeError as error:
        raise MalformedJsonError(error.msg, pos=error.pos, lineno=error.lineno, colno=error.colno) from None
    except RecursionError:  # the depth scan makes this unreachable; kept so a bug there is still a clean refusal
        raise JsonLimitError(DEPTH, f"JSON nested deeper than the parser can follow (limit {max_depth} levels)",
                             limit="max_depth", value=max_depth) from None  # fmt: skip


class _IntLimit:
    def __init__(self, max_digits: int) -> None:
        self.max_digits = max_digits

    def __call__(self, literal: str) -> int:
        digits = len(literal) - literal.startswith("-")
        if digits > self.max_digits:
            raise JsonLimitError(INTEGER, f"a JSON integer with {digits} digits, over the limit of {self.max_digits}",
                                 limit="max_int_digits", value=self.max_digits)  # fmt: skip
        return int(literal)


def _finite_float(literal: str) -> float:
    value = float(literal)  # linear in the literal's length; never raises on a JSON number
    if not math.isfinite(value):
        shown = literal if len(literal) <= 40 else literal[:20] + "..." + literal[-12:]
        raise JsonLimitError(FLOAT_RANGE, f"a JSON number out of the float range: {shown} (over 1.8e308 in magnitude)")
    return value


def _no_constant(name: str) -> Any:
    raise JsonLimitError(CONSTANT, f"{name} is not a JSON value (JSON numbers are finite)")


_PLAIN = json.JSONDecoder(parse_constant=_no_constant)  # made once: json.loads with hooks makes one per call (~10 µs)


def _too_deep_at(raw: bytes, max_depth: int) -> int | None:
    """Byte offset of the first bracket outside strings that opens level ``max_depth + 1``, or None.
    A few whole-chunk numpy passes per chunk: no per-bracket or per-string Python work."""
    data = np.frombuffer(raw, dtype=np.uint8)
    depth = 0  # levels open at the start of the chunk
    in_string = False  # is the chunk's first byte inside a string?
    carried = 0  # backslashes that end the previous chunk
    for start in range(0, len(data), _CHUNK):
        chunk = data[start : start + _CHUNK]
        is_backslash = chunk == _BACKSLASH
        toggles = chunk == _QUOTE  # (chunk,) the quotes that open or close a string, once escaped ones are dropped
        after_backslash = np.flatnonzero(toggles[1:] & is_backslash[:-1]) + 1
        if after_backslash.size:  # an odd run of backslashes right before a quote escapes it
            # the last byte at or before each position that is not a backslash (-1: none in this chunk)
            last_other = np.maximum.accumulate(np.where(is_backslash, -1, np.arange(len(chunk), dtype=np.int32)))
            before = last_other[after_backslash - 1]
            runs = after_backslash - 1 - before + np.where(before < 0, carried, 0)
            toggles[after_backslash[runs % 2 == 1]] = False
        if carried % 2 and toggles[0]:
            toggles[0] = False
        # a byte is inside a string when an odd number of toggles precede it (uint8 sums wrap: parity is kept)
        inside = (np.cumsum(toggles, dtype=np.uint8) & 1).astype(bool)
        if in_string:
            inside = ~inside
        steps = _STEP[chunk]  # (chunk,) +1 for [ {, -1 for ] }, else 0
        steps[inside] = 0
        levels = np.cumsum(steps, dtype=np.int64)
        over = np.flatnonzero(levels > max_depth - depth)
        if over.size:
            return start + int(over[0])
        depth += int(levels[-1])
        in_string = bool(inside[-1])  # the parity after the chunk's last byte, a quote or not
        if is_backslash[-1]:  # the backslashes ending this chunk, added to those carried if it is all backslashes
            others = np.flatnonzero(~is_backslash)
            carried = len(chunk) - 1 - int(others[-1]) if others.size else carried + len(chunk)
        else:
            carried = 0
    return None
