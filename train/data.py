"""Read CoNLL-format MNER data (TWITTER-2015/2017 as released with UMT).

One post per block: an `IMGID:<id>` line (the image is `<id>.jpg`), one
`token<TAB>tag` line per word, a blank line. Posts without an IMGID line are
accepted with image_id None ("no image"). The reader is the runtime's
(``mner.runtime.conll``), so training and ``mner-tag --conll`` read files alike.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from mner.runtime.conll import IMAGE_PREFIX, ConllPost as Post, read_conll

__all__ = ["IMAGE_PREFIX", "Post", "read_conll", "sha256_file"]


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (data-file hashes in checkpoints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
