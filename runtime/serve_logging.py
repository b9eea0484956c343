"""mner-serve's log lines: plain text for a terminal, or one JSON object per line for a log collector.

Standard library only (the CLI configures logging before it imports the web stack). uvicorn's records and the
access log (runtime.serve, logger "mner.access") go through the same handler, so with ``json`` every line of
the process's stderr is one JSON object.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, Iterator

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The attributes every LogRecord has; anything else on a record came from ``extra=`` and is a field of its own.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}
_LEFT_OUT = frozenset({"color_message"})  # uvicorn's copy of its message with terminal colour codes


class JsonFormatter(logging.Formatter):
    """A record as one JSON object: time (ISO 8601, UTC, milliseconds), level, logger, message, the record's
    ``extra`` fields (an access line's method, path, status, duration_ms), and exception with a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            # a leading underscore: a library's private mark on every record, not an extra field (Ray, once
            # imported in the process, adds _ray_timestamp_ns through its log-record factory)
            if key not in _RECORD_ATTRIBUTES and key not in _LEFT_OUT and key not in line and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


@contextlib.contextmanager
def configured(log_format: str = "text", *, level: int = logging.INFO, stream=None) -> Iterator[logging.Handler]:
    """While open, the root logger writes ``log_format`` lines at ``level`` to ``stream`` (stderr) through one
    handler of ours, in place of its own handlers (so a record is written once); on closing, the root logger is
    as it was (a command run in-process, as tests do, leaves no handler behind on a stream since closed)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format must be one of {LOG_FORMATS}, got {log_format!r}")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    for old in saved_handlers:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for old in saved_handlers:
            root.addHandler(old)
        root.setLevel(saved_level)
