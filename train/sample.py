"""A small built-in corpus the project writes itself: tweet-like posts in TWITTER format, with images.

Their words are split as TWITTER-2015/2017's are (`# Toronto`, `@ user`, `in Paris !`), so
the tweet splitter recovers them from the raw tweets (`#Toronto`, `@user`, `in Paris!`).

Used by the demo and the tests (the real TWITTER data is not ours to ship). Posts are
made from templates over a few names per type, so a tiny model learns them in
seconds; images are synthetic pictures (coloured shapes on a gradient), and some
posts deliberately have no image, as real posts do.
"""

from __future__ import annotations

import random
from pathlib import Path

import cv2
import numpy as np

NAMES = {
    "PER": ["Obama", "Angela Merkel", "Kawhi Leonard", "Taylor Swift", "Emmanuel Macron", "Serena Williams", "Drake"],
    "LOC": ["Paris", "Berlin", "New York", "Toronto", "Rome", "Lake Tahoe", "Texas"],
    "ORG": ["NBA", "Google", "UN", "Apple", "Real Madrid", "BBC", "NASA"],
    "MISC": ["Olympics", "Champions League", "Christmas", "Brexit", "Coachella", "World Cup"],
}
TEMPLATES = [
    "{PER} visits {LOC} today",
    "RT @ fan : {PER} meets {PER} in {LOC} !",
    "{ORG} announces new plans for {MISC}",
    "Great show by {PER} at {MISC} # {LOC}",
    "Watching {ORG} vs {ORG} tonight with the fans",
    "{PER} joins {ORG} after {MISC}",
    "Snow in {LOC} again , {MISC} is coming",
    "so proud of {PER} ! # {ORG}",
    "@ user what a game in {LOC} last night",
    "no names here , just a nice day",
]
SPLIT_SIZES = {"train": 64, "valid": 20, "test": 20}
IMAGE_SHARE = 0.8  # the rest of the posts have no image


def _post(rng: random.Random) -> list[tuple[str, str]]:
    words: list[tuple[str, str]] = []
    for token in rng.choice(TEMPLATES).split():
        if token.startswith("{") and token.endswith("}"):
            kind = token[1:-1]
            for i, piece in enumerate(rng.choice(NAMES[kind]).split()):
                words.append((piece, ("B-" if i == 0 else "I-") + kind))
        else:
            words.append((token, "O"))
    return words


def synthetic_image(rng: random.Random, size: tuple[int, int] = (160, 200)) -> np.ndarray:
    """An RGB uint8 picture: a colour gradient with a few filled shapes."""
    height, width = size
    ramp = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    start, stop = np.array([rng.randrange(256) for _ in range(3)]), np.array([rng.randrange(256) for _ in range(3)])
    image = np.ascontiguousarray(np.repeat(start + (stop - start) * ramp, height, axis=0).astype(np.uint8))
    for _ in range(rng.randint(1, 4)):
        colour = tuple(rng.randrange(256) for _ in range(3))
        centre = (rng.randrange(width), rng.randrange(height))
        if rng.random() < 0.5:
            cv2.circle(image, centre, rng.randint(10, 50), colour, thickness=-1)
        else:
            cv2.rectangle(image, centre, (centre[0] + rng.randint(10, 60), centre[1] + rng.randint(10, 60)), colour, -1)
    return image


def write_sample_corpus(directory: str | Path, seed: int = 0, sizes: dict[str, int] | None = None) -> Path:
    """Write train/valid/test.txt (CoNLL + IMGID) and images/<id>.jpg under `directory`; returns it."""
    directory = Path(directory)
    rng = random.Random(seed)
    images = directory / "images"
    images.mkdir(parents=True, exist_ok=True)
    for split, size in (sizes or SPLIT_SIZES).items():
        blocks = []
        for index in range(size):
            image_id = f"sample_{split}_{index}"
            if rng.random() < IMAGE_SHARE:
                rgb = synthetic_image(rng)
                cv2.imwrite(str(images / f"{image_id}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            lines = [f"IMGID:{image_id}"] + [f"{word}\t{tag}" for word, tag in _post(rng)]
            blocks.append("\n".join(lines))
        (directory / f"{split}.txt").write_text("\n\n".join(blocks) + "\n\n", encoding="utf-8")
    return directory
