"""Read CoNLL-format MNER data (TWITTER-2015/2017 as released with UMT).

One post per block: an `IMGID:<id>` line (the image is `<id>.jpg`), one
`token<TAB>tag` line per word, a blank line. Posts without an IMGID line are
accepted with image_id None ("no image").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from mner.runtime.tags import parse_bio

IMAGE_PREFIX = "IMGID:"


@dataclass(frozen=True)
class Post:
    image_id: str | None
    words: list[str]
    tags: list[str]


def read_conll(path: str | Path) -> list[Post]:
    """All posts of a CoNLL file; raises ValueError naming the file and line of a malformed line."""
    path = Path(path)
    posts: list[Post] = []
    image_id: str | None = None
    words: list[str] = []
    tags: list[str] = []
    header_line = 0  # line of the open block's IMGID, for an IMGID with no words

    def close_block() -> None:
        nonlocal image_id, words, tags
        if words:
            posts.append(Post(image_id, words, tags))
        elif image_id is not None:
            raise ValueError(f"{path}:{header_line}: {IMAGE_PREFIX}{image_id} is followed by no token lines")
        image_id, words, tags = None, [], []

    # utf-8-sig drops a byte-order mark; newline=None turns \r\n into \n.
    with open(path, encoding="utf-8-sig", newline=None) as lines:
        for line_number, line in enumerate(lines, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                close_block()
            elif line.startswith(IMAGE_PREFIX):
                close_block()
                image_id, header_line = line[len(IMAGE_PREFIX) :].strip(), line_number
                if not image_id:
                    raise ValueError(f"{path}:{line_number}: {IMAGE_PREFIX} line without an image id")
            else:
                word, tag = _parse_token_line(line, f"{path}:{line_number}")
                words.append(word)
                tags.append(tag)
    close_block()
    return posts


def _parse_token_line(line: str, where: str) -> tuple[str, str]:
    fields = line.rstrip().split("\t")
    if len(fields) != 2 or not fields[0] or not fields[1]:
        raise ValueError(f"{where}: expected 'token<TAB>tag', got {line!r}")
    word, tag = fields
    if any(c.isspace() for c in word):
        raise ValueError(f"{where}: a token must not contain whitespace, got {word!r}")
    try:
        parse_bio(tag)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    return word, tag


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (recorded in checkpoints to pin the data)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
