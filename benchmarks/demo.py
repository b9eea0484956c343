"""The README's first command: the whole chain on the built-in sample, end to end.

    python -m mner.benchmarks.demo [--out out/demo] [--epochs N]

Writes the sample corpus (posts + synthetic images), trains the ``tiny`` preset on
it, evaluates it, and prints a few tagged posts and where every output went. A
second run reuses what exists (the corpus, best.pt).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import click

logger = logging.getLogger("mner.demo")


def _entities(words: list[str], tags: list[str]) -> list[str]:
    from mner.runtime.tags import entities_from_bio

    return [f"{' '.join(words[start:end])} [{kind}]" for kind, start, end in entities_from_bio(tags)]


def run_demo(out_dir: Path, epochs: int, seed: int, show: int) -> dict:
    from mner.train.data import read_conll
    from mner.train.sample import write_sample_corpus
    from mner.train.trainer import TrainArgs, evaluate_checkpoint, train

    timings: dict[str, float] = {}
    corpus = out_dir / "sample"
    started = time.perf_counter()
    if not (corpus / "test.txt").is_file():
        write_sample_corpus(corpus, seed=seed)
    timings["sample corpus"] = time.perf_counter() - started

    run_dir = out_dir / "tiny"
    best = run_dir / "best.pt"
    started = time.perf_counter()
    if best.is_file():
        click.echo(f"[train] reusing {best}")
    else:
        click.echo(f"[train] tiny preset on {corpus} for {epochs} epochs (CPU) ...")
        train(TrainArgs(data_dir=corpus, out_dir=run_dir, preset="tiny", epochs=epochs, seed=seed, device="cpu"))
    timings["train"] = time.perf_counter() - started

    started = time.perf_counter()
    metrics = evaluate_checkpoint(checkpoint_path=best, data_path=corpus / "test.txt", device="cpu")
    timings["evaluate"] = time.perf_counter() - started
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))

    from mner.train.checkpoint import load_checkpoint
    from mner.train.trainer import Example, Features, predict

    checkpoint = load_checkpoint(best)
    posts = read_conll(corpus / "test.txt")[:show]
    encoder = checkpoint.text_encoder
    examples = []
    for index, (post, encoded) in enumerate(zip(posts, encoder.encode_many([p.words for p in posts]))):
        placeholder = encoded.input_ids * 0
        examples.append(Example(encoded.input_ids, encoded.aug_ids, encoded.roles, placeholder, placeholder, post.tags, index))
    features = Features.none(len(posts), checkpoint.config.num_objects)
    import torch

    predictions = predict(checkpoint.model, examples, features, checkpoint.scheme, encoder.pad_id, torch.device("cpu"))
    click.echo("\nTagged sample posts (test split):")
    for post, tags in zip(posts, predictions):
        click.echo(f"  {' '.join(post.words)}")
        click.echo(f"    -> {', '.join(_entities(post.words, tags)) or '(no entities)'}")

    micro = metrics["micro"]
    click.echo(f"\nTest entity F1 {micro['f1']:.3f} (P {micro['precision']:.3f}, R {micro['recall']:.3f})")
    click.echo("Time: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items()))
    click.echo("Outputs:")
    click.echo(f"  sample corpus   {corpus}/{{train,valid,test}}.txt, {corpus}/images/")
    click.echo(f"  checkpoint      {best}")
    click.echo(f"  metrics         {out_dir / 'metrics.json'}")
    click.echo("Not yet in the demo: export to ONNX, the runtime tagger and the benchmark summary (issues #4, #5, #7).")
    return {"metrics": metrics, "timings": timings}


@click.command()
@click.option("--out", "out_dir", default="out/demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--epochs", default=15, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--show", default=5, show_default=True, type=int, help="How many tagged posts to print.")
def main(out_dir: str, epochs: int, seed: int, show: int) -> None:
    """Run the demo chain on the built-in sample."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    run_demo(Path(out_dir), epochs=epochs, seed=seed, show=show)


if __name__ == "__main__":
    main()
