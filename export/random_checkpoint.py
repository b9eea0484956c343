"""A best.pt with seeded random weights: what export is measured on without a trained model.

    python -m mner.export.random_checkpoint --preset paper --out /tmp/paper/best.pt \\
        [--words-from ../shared/data/twitter2017/train.txt] [--seed 0]

The model, the augmentation table and the CRF are random; the tokenizer is a
WordPiece learnt from the words of ``--words-from`` (a CoNLL file) or of a small
built-in sentence list, so real text tokenises into real pieces. The tag scheme is
TWITTER's four types. Nothing here is fit to be served: it exists so that export,
parity and timing run on a model of the real size.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Iterable

import click
import torch

from mner.runtime.tags import TagScheme
from mner.runtime.text import AUG_ZERO_ROW, TextEncoder
from mner.train.checkpoint import save_checkpoint
from mner.train.data import read_conll
from mner.train.model import MGCMT, PRESETS, ModelConfig
from mner.train.tokenizer import train_wordpiece

ENTITY_TYPES = ("LOC", "MISC", "ORG", "PER")  # TWITTER-2015/2017's
BUILT_IN_TEXT = (
    "RT @user : Kawhi Leonard visits Toronto today with the Raptors fans !",
    "Great show by Taylor Swift at the Olympics in Paris # music",
    "Google and Apple announce new plans for the World Cup in New York",
    "Snow in Berlin again , Christmas is coming , says Angela Merkel",
    "no names here , just a nice day at the lake with friends and a dog",
)


def make_random_checkpoint(
    path: str | Path,
    *,
    preset: str = "paper",
    seed: int = 0,
    words: Iterable[str] | None = None,
    **overrides,
) -> Path:
    """Write a self-contained checkpoint of the ``preset`` model with random weights; returns its path."""
    words = list(words) if words is not None else [w for line in BUILT_IN_TEXT for w in line.split()]
    if not words:
        raise ValueError("make_random_checkpoint needs at least one word for its tokenizer")
    scheme = TagScheme(ENTITY_TYPES)
    base = ModelConfig.preset(preset, **overrides)
    distinct = sorted(set(words))
    config = dataclasses.replace(base, num_tags=scheme.num_tags, augmentation_rows=len(distinct) + 2)
    encoder = TextEncoder(
        train_wordpiece(words, vocab_size=config.vocab_size),
        {word: row for row, word in enumerate(distinct, start=2)},
        max_length=config.max_length,
    )
    generator = torch.Generator().manual_seed(seed)
    table = torch.randn(config.augmentation_rows, config.augmentation_dim, generator=generator) * 0.1
    table[AUG_ZERO_ROW] = 0.0
    torch.manual_seed(seed)
    model = MGCMT(config).eval()
    if config.augmentation != "none":
        model.set_augmentation_table(table)
    path = Path(path)
    save_checkpoint(path, model, scheme, encoder, random_weights={"preset": preset, "seed": seed})
    return path


@click.command()
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Where to write the checkpoint.")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="paper", show_default=True)
@click.option("--words-from", type=click.Path(exists=True, dir_okay=False), help="CoNLL file whose words the tokenizer is learnt from.")
@click.option("--seed", type=int, default=0, show_default=True)
def main(out: str, preset: str, words_from: str | None, seed: int) -> None:
    """Write a random-weights best.pt of a preset's size."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    words = [w for post in read_conll(words_from) for w in post.words] if words_from else None
    try:
        path = make_random_checkpoint(out, preset=preset, seed=seed, words=words)
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"{path} ({path.stat().st_size / 2**20:.0f} MiB, preset {preset}, seed {seed})")


if __name__ == "__main__":
    main()
