"""The README's first command: the whole chain on the built-in sample, end to end.

    python -m mner.benchmarks.demo [-o out/demo] [--epochs N]

1. writes the sample corpus (tweet-like posts in TWITTER format, synthetic pictures);
2. trains the ``tiny`` preset on it (CPU), pictures included;
3. exports it to an ONNX bundle (parity-checked against PyTorch);
4. tags the sample's test posts with the torch-free ORT runtime and prints a few;
5. measures the ORT runtime against the PyTorch reference (``mner-bench``'s code, at a
   small size) and prints a summary and where every output went.

A second run reuses what exists (corpus, best.pt, bundle). To fit in minutes on two
cores the demo's frozen encoders are a ResNet-50 grid and a 256-pixel detector, with
random weights (no weights can be downloaded here); the paper's are ResNet-152 and 512.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import click

from mner.runtime import clikit

logger = logging.getLogger("mner.demo")

DEMO_VISION = {"grid_arch": "resnet50", "detector_size": 256}


def _stage(timings: dict[str, float], name: str, started: float) -> None:
    timings[name] = time.perf_counter() - started


def run_demo(
    out_dir: Path,
    epochs: int = 15,
    seed: int = 0,
    show: int = 5,
    sizes: dict[str, int] | None = None,
    model_overrides: dict[str, Any] | None = None,
    vision: dict[str, Any] = DEMO_VISION,
    echo=click.echo,
) -> dict[str, Any]:
    from mner.benchmarks.bench import run_bench
    from mner.benchmarks.cli import summary_lines
    from mner.benchmarks.raw_text import rejoin
    from mner.benchmarks.report import write_report
    from mner.export.pipeline import export_bundle
    from mner.runtime import Pipeline, Post
    from mner.runtime.conll import evaluate_entities, read_conll
    from mner.train.sample import write_sample_corpus
    from mner.train.trainer import TrainArgs, train

    timings: dict[str, float] = {}
    corpus, run_dir, bundle = out_dir / "sample", out_dir / "tiny", out_dir / "bundle"
    images = corpus / "images"

    started = time.perf_counter()
    if not (corpus / "test.txt").is_file():
        write_sample_corpus(corpus, seed=seed, sizes=sizes)
    _stage(timings, "sample", started)

    best = run_dir / "best.pt"
    started = time.perf_counter()
    if _finished(best):
        echo(f"[1/4 train]  reusing {best}")
    else:
        # A best.pt without test scores is from a training stopped early (Ctrl-C, a kill): its last.pt resumes it
        resume = best.is_file() and (run_dir / "last.pt").is_file()
        echo(f"[1/4 train]  tiny preset, {epochs} epochs on {corpus} (CPU, pictures through ResNet-50 + RetinaNet)"
             + (f"; resuming the training that stopped early in {run_dir}" if resume else ""))  # fmt: skip
        summary = train(TrainArgs(data_dir=corpus, out_dir=run_dir, preset="tiny", epochs=epochs, seed=seed,
                                  device="cpu", images_dir=images, model_overrides=dict(model_overrides or {}),
                                  resume=resume, **vision))  # fmt: skip
        echo(f"             best epoch {summary['best_epoch']}: dev F1 {summary['dev']['micro']['f1']:.3f}, "
             f"test F1 {summary['test']['micro']['f1']:.3f}")  # fmt: skip
    _stage(timings, "train", started)

    started = time.perf_counter()
    if (bundle / "manifest.json").is_file():
        echo(f"[2/4 export] reusing {bundle}")
    else:
        echo("[2/4 export] ONNX graphs for detector, vision and tagger, checked against PyTorch ...")
        result = export_bundle(ckpt=best, out=bundle, parity_data=corpus / "test.txt")
        checks = result.manifest["parity"]["checks"]
        echo(f"             {result.bytes / 2**20:.1f} MiB, {len(checks)} parity checks passed")
    _stage(timings, "export", started)

    posts = read_conll(corpus / "test.txt")
    # Tagged as raw tweets ("... at World Cup #Toronto"), as users send them: the runtime splits
    # them back into the corpus's words with the bundle's tweet splitter.
    texts = [rejoin(post.words)[0] for post in posts]
    pictures = [(images / f"{post.image_id}.jpg") for post in posts]
    requests = [Post(text, image=path.read_bytes() if path.is_file() else None) for text, path in zip(texts, pictures)]

    echo("[3/4 tag]    the sample's test posts with the ORT runtime (no PyTorch in this step)")
    started = time.perf_counter()
    with Pipeline.from_bundle(bundle, backend="ort", batch_size=8) as pipeline:
        load_seconds = time.perf_counter() - started
        started = time.perf_counter()
        results = pipeline.tag(requests)
        tag_seconds = time.perf_counter() - started
    _stage(timings, "tag", started)
    records = []
    for text, request, result in zip(texts, requests, results):
        record = {"text": text, "image": request.image is not None, **result.to_dict()}
        records.append(record)
    (out_dir / "tagged.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    for record in records[:show]:
        entities = ", ".join(f"{e['text']} [{e['type']} {e['score']:.2f}]" for e in record.get("entities", []))
        picture = f"picture, objects: {record.get('objects') or 'none found'}" if record["image"] else "no picture"
        echo(f"  {record['text']}\n    -> {entities or record.get('error') or '(no entities)'}   ({picture})")

    gold = [post.tags for post in posts]
    # Scored against the corpus's words: a post whose raw text split into other words (none in
    # the sample) counts as all O, a miss for each of its entities.
    predicted = [r.tags if r.ok and len(r.tags) == len(p.words) else ["O"] * len(p.words) for p, r in zip(posts, results)]
    metrics = evaluate_entities(gold, predicted)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))

    # The benchmark: mner-bench's measurements at a small size, ORT against the PyTorch reference.
    started = time.perf_counter()
    report = run_bench(bundle, ["torch", "ort"], [1, 8], data=corpus / "test.txt", images_dir=images, checkpoint=best,
                       warmup=1, min_batches=3, command="python -m mner.benchmarks.demo", echo=lambda line: None)  # fmt: skip
    report_paths = write_report(report, out_dir / "bench")
    _stage(timings, "bench", started)

    echo("[4/4 bench]  summary")
    micro = metrics["micro"]
    echo(f"  entity F1 on the sample test split (ORT runtime): {micro['f1']:.3f} "
         f"(P {micro['precision']:.3f}, R {micro['recall']:.3f}, {micro['support']} entities)")  # fmt: skip
    with_pictures = sum(r.image is not None for r in requests)
    echo(f"  runtime: {len(requests)} posts ({with_pictures} with pictures) in {tag_seconds:.2f} s = "
         f"{len(requests) / tag_seconds:.1f} posts/s on CPU, batch 8; bundle load {load_seconds:.2f} s")  # fmt: skip
    echo(f"  mner-bench, the ORT runtime against the PyTorch reference on these posts ({out_dir / 'bench'}/):")
    for line in summary_lines(report, targets=False):  # the targets are for text-only TWITTER-2017 posts
        echo("  " + line)
    decode = report["decode"]["ms"]["8"]
    if "pytorch-crf" in decode:
        echo(f"    CRF decoding, B=8 L=64: mner {decode['mner']:.3f} ms, pytorch-crf {decode['pytorch-crf']:.3f} ms "
             f"({decode['pytorch-crf'] / decode['mner']:.0f}x)")  # fmt: skip
    echo("  time: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items()))
    echo("Outputs:")
    echo(f"  sample corpus  {corpus}/{{train,valid,test}}.txt and {images}/")
    echo(f"  checkpoint     {best}")
    echo(f"  bundle         {bundle}/ (manifest.json, *.onnx, tokenizer/, crf.npz)")
    echo(f"  tagged posts   {out_dir / 'tagged.jsonl'}")
    echo(f"  metrics        {out_dir / 'metrics.json'}")
    echo(f"  bench report   {report_paths['markdown']} (+ report.json, {report_paths['latency'].name}, "
         f"{report_paths['throughput'].name})")  # fmt: skip
    return {"metrics": metrics, "timings": timings, "results": records, "bench": report}


def _finished(best: Path) -> bool:
    """Whether ``best`` is the checkpoint of a finished training: mner-train adds the test scores to it after
    the last epoch, so one stopped early (Ctrl-C during make demo) has dev scores only."""
    if not best.is_file():
        return False
    from mner.train.checkpoint import load_checkpoint  # noqa: PLC0415

    return "test" in load_checkpoint(best).payload.get("metrics", {})


@clikit.command()
@clikit.option("-o", "--output", "out_dir", hidden_aliases=("--out",), default="out/demo", type=click.Path(file_okay=False),
               help="Where the corpus, checkpoint, bundle, tagged posts and bench report go (reused when present).")
@clikit.option("--epochs", default=15, type=int, help="Training epochs of the tiny model.")
@clikit.option("--seed", default=0, type=int, help="Seed of the sample corpus and of training.")
@clikit.option("--show", default=5, type=int, help="How many tagged posts to print.")
def main(out_dir: str, epochs: int, seed: int, show: int) -> None:
    """Run the demo chain on the built-in sample."""
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(message)s")
    run_demo(Path(out_dir), epochs=epochs, seed=seed, show=show)


if __name__ == "__main__":
    main()
