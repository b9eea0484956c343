"""Writing a file whole, with the mode any file of the user's gets (torch-free: the runtime uses it too).

best.pt, last.pt, history.jsonl and history.png are replaced while a run goes on, mner-tag's
output sidecar when a run starts, the bundle verification cache on a start that hashed; a
reader (or a crash) must never see half a file, so each is written to a temporary file beside
it and renamed over it. ``tempfile.mkstemp`` creates that file 0600, and a rename keeps the
mode: best.pt used to end up 0600 while last.pt, written in place by ``torch.save``, got
0644. Here the temporary file is given 0666 minus the umask, what ``open()`` would give.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def default_file_mode() -> int:
    """0666 minus the process's umask: the mode ``open(path, "w")`` gives a new file."""
    umask = os.umask(0)  # the only portable way to read it is to set it; put it straight back
    os.umask(umask)
    return 0o666 & ~umask


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], None], fsync: bool = False) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``.

    ``fsync``: flush the data to the disk before the rename, so a power cut leaves the old file or the
    new one, never an empty one (for small files that must survive: mner-tag's sidecar)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), default_file_mode())
            write(file)
            if fsync:
                file.flush()
                os.fsync(file.fileno())
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
