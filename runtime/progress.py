"""Progress that suits where it goes: a tqdm bar on a terminal, a log line every few seconds elsewhere.

A bar redraws itself with ``\\r``; in a log file or a CI console every redraw becomes a line,
and a long run's log becomes mostly bar. So a bar is drawn only when stderr is a terminal;
otherwise ``progress`` logs "desc: n/total unit (rate, ETA)" at most every ``interval_s``
and once at the end. ``enabled=False`` (``--no-progress``) shows nothing.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

logger = logging.getLogger("mner.progress")

T = TypeVar("T")

LOG_INTERVAL_S = 10.0  # a periodic line this often keeps a log readable and still shows a run is alive


def _is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return False


class LogProgress:
    """tqdm's small interface (update, set_postfix, close, context manager) as periodic log lines."""

    def __init__(self, total: int | None, desc: str, unit: str, interval_s: float = LOG_INTERVAL_S):
        self.total, self.desc, self.unit, self.interval_s = total, desc, unit, interval_s
        self.n = 0
        self.postfix = ""
        self.started = self.last_logged = time.monotonic()
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last_logged >= self.interval_s:
            self.last_logged = now
            self._log(now)

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def _log(self, now: float, done: bool = False) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = self.n / elapsed
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        parts = [f"{self.desc}: {count} {self.unit}s", f"{rate:.1f} {self.unit}s/s"]
        if done:
            parts.append(f"done in {elapsed:.0f} s")
        elif self.total is not None and rate > 0:
            parts.append(f"ETA {max(self.total - self.n, 0) / rate:.0f} s")
        if self.postfix:
            parts.append(self.postfix)
        logger.info(", ".join(parts))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.n:
                self._log(time.monotonic(), done=True)

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class _Silent:
    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **values) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_Silent":
        return self

    def __exit__(self, *exc_info) -> None:
        pass


def progress(total: int | None = None, desc: str = "", unit: str = "it", enabled: bool | None = True,
             leave: bool = True):  # fmt: skip
    """A progress object with ``update(n)``, ``set_postfix(**kw)`` and ``close()`` (also a context manager).

    ``enabled``: True or None (the ``--progress`` default) shows progress, False nothing.
    """
    if enabled is False:
        return _Silent()
    if _is_terminal():
        return tqdm(total=total, desc=desc, unit=unit, leave=leave)
    return LogProgress(total, desc, unit)


def track(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it",
          enabled: bool | None = True, leave: bool = True) -> Iterator[T]:  # fmt: skip
    """Iterate ``iterable`` while showing progress (``tqdm(iterable)`` made TTY-aware)."""
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with progress(total, desc, unit, enabled, leave) as bar:
        for item in iterable:
            yield item
            bar.update(1)
