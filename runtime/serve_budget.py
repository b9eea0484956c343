"""What one mner-serve request may ask of the worker, checked before it is queued.

A post's cost is dominated by its tagger windows (a long post is cut into overlapping
windows, ``runtime.windows``) and by its picture (decoding, then the detector and vision
stages). Both are known cheaply before any tagging: word-pieces and windows from the
pipeline's own splitter and tokenizer (``Pipeline.text_cost``), pixels from the picture's
header (``runtime.image.read_header``). A request over a limit is refused whole with 422
"over budget", naming the limit; nothing of it is tagged.

Counting stops at the first limit broken, so a refused request costs at most about the
budget to count. mner-serve counts in a thread, off the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from mner.runtime.image import ImageError, read_header
from mner.runtime.pipeline import Pipeline, Post


@dataclass(frozen=True)
class PostCost:
    """What tagging one post asks: word-pieces and tagger windows of its text, decoded pixels of its picture."""

    pieces: int = 0
    windows: int = 1
    pixels: int = 0


class OverBudget(ValueError):
    """A request asks for more work than a limit allows: ``limit`` names the ServeConfig field, ``value`` its setting."""

    def __init__(self, message: str, *, limit: str, value: int) -> None:
        super().__init__(message)
        self.limit, self.value = limit, value


def picture_pixels(image: bytes | None) -> int:
    """Width × height from the header; 0 for no picture, or one whose header is unreadable (the pipeline
    gives that post its error, at no decoding cost)."""
    if not image:
        return 0
    try:
        _, width, height = read_header(image)
    except ImageError:
        return 0
    return width * height


def post_costs(pipeline: Pipeline, posts: Sequence[Post], names: Sequence[str], *, max_post_pieces: int,
               max_request_pieces: int, max_request_pixels: int) -> list[PostCost]:  # fmt: skip
    """Each post's cost, or ``OverBudget`` for the first limit broken: a post over ``max_post_pieces``,
    or the request's running totals over ``max_request_pieces`` or ``max_request_pixels``.
    ``names`` say where each post is in the request ("the post", "posts[3]"), for the messages."""
    if len(names) != len(posts):
        raise ValueError(f"got {len(posts)} posts but {len(names)} names")
    costs: list[PostCost] = []
    total_pieces = total_pixels = 0
    for post, name in zip(posts, names):
        text = pipeline.text_cost(post.text)
        pixels = picture_pixels(post.image)
        if text.pieces > max_post_pieces:
            raise OverBudget(f"{name} has {text.pieces} word-pieces ({text.windows} tagger windows), over the limit "
                             f"of {max_post_pieces} per post", limit="max_post_pieces", value=max_post_pieces)  # fmt: skip
        total_pieces += text.pieces
        total_pixels += pixels
        upto = f"{name} has" if len(posts) == 1 else f"{names[0]}..{name} have"
        if total_pieces > max_request_pieces:
            raise OverBudget(f"{upto} {total_pieces} word-pieces, over the limit of {max_request_pieces} per request",
                             limit="max_request_pieces", value=max_request_pieces)  # fmt: skip
        if total_pixels > max_request_pixels:
            what = "a picture" if len(posts) == 1 else "pictures"
            raise OverBudget(f"{upto} {what} of {total_pixels} pixels, over the limit of {max_request_pixels} per request",
                             limit="max_request_pixels", value=max_request_pixels)  # fmt: skip
        costs.append(PostCost(text.pieces, max(text.windows, 1), pixels))
    return costs
