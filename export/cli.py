"""Console entry point: mner-export (thin: parse, then call export_bundle by keyword).

Only click and torch-free modules at the top: ``mner-export --help`` must answer in well
under a second, and torch, onnx and the stage modules take seconds to import. They load
inside the command, after the arguments are parsed.
"""

from __future__ import annotations

import logging

import click

from mner.export.stage_choice import STAGE_NAMES
from mner.runtime import clikit, extras
from mner.train.detector_choice import CLI_CHOICES as DETECTOR_CHOICES
from mner.train.detector_choice import cli_help as detector_help

SPLITS = clikit.SPLITS  # the keys of mner.runtime.conll.SPLIT_FILES (a test checks they agree)
# What the export imports from mner[train] (looked up, not imported, before the command runs).
EXPORT_MODULES = ("torch", "torchvision", "transformers", "onnx", "onnxscript")
FROM_CHECKPOINT = "[default: from the checkpoint: {}]"


@clikit.command()
@clikit.option("--checkpoint", "checkpoint", hidden_aliases=("--ckpt",), required=True, type=click.Path(dir_okay=False),
               help="A best.pt written by mner-train (or mner-convert).")
@clikit.option("-o", "--output", "output", hidden_aliases=("--out",), required=True, type=click.Path(file_okay=False),
               help="The bundle folder to create.")
@clikit.option("--stages", help=f"Comma-separated subset of {','.join(STAGE_NAMES)}. "
               + FROM_CHECKPOINT.format("all of them, or tagger alone for a model trained without --images; "
                                        "naming detector or vision for such a model exports them with a warning"))
@clikit.option("--data", "data", hidden_aliases=("--parity-data",), type=click.Path(),
               help="TWITTER-format CoNLL data whose every post the tag parity check decodes: a folder "
                    "(its --split file) or one file. [default: 200 seeded synthetic posts]")
@clikit.option("--split", type=click.Choice(SPLITS), default="test",
               help="Which file of a --data folder the parity check reads.")
@clikit.option("--fp16", is_flag=True, help="Also write mixed-precision graphs (*.fp16.onnx) for GPUs.")
@clikit.option("--int8", is_flag=True,
               help="Also write an INT8 tagger (tagger.int8.onnx, for CPUs), only if on --data (gold tags needed) its "
                    "tag agreement with FP32 is >= 99 % and its entity F1 at most 0.5 points lower; else fail.")
@clikit.option("--trt", is_flag=True,
               help="Also build TensorRT engines from the FP16 graphs (needs tensorrt and a CUDA GPU).")
@clikit.option("--resnet-weights", type=click.Path(dir_okay=False),
               help="torchvision ResNet-152 ImageNet state_dict file. [default: seeded random weights]")
@clikit.option("--int8-vision", is_flag=True,
               help="Also write an INT8 vision graph (static, calibrated on real photographs), kept only if its "
                    "grid's cosine similarity with FP32 is >= 0.99 on every photograph (the manifest records "
                    "them). Needs --resnet-weights: with random weights the guard would mean nothing.")
@clikit.option("--detector", type=click.Choice(DETECTOR_CHOICES), metavar="NAME",
               help=f"Object detector: {detector_help()}. " + FROM_CHECKPOINT.format("the one it was trained with"))
@clikit.option("--detector-weights", type=click.Path(dir_okay=False),
               help="torchvision COCO state_dict file of the --detector's architecture. [default: seeded random weights]")
@clikit.option("--seed", type=int, help="Seed of random vision/detector weights and of the parity inputs, so "
               "random encoders match what training saw. " + FROM_CHECKPOINT.format("its training seed"))
@clikit.option("--grid-arch", "vision_arch", hidden_aliases=("--vision-arch",),
               type=click.Choice(["resnet152", "resnet101", "resnet50"]),
               help="Grid encoder. " + FROM_CHECKPOINT.format("the one it was trained with; the paper's: resnet152"))
@clikit.option("--detector-size", type=int, help="Detector input side: a multiple of 128 for RetinaNet, 32 for "
               "SSDlite, 64 for Faster R-CNN. " + FROM_CHECKPOINT.format("the one it was trained with; a detector "
                                                                         "other than training's: its own size"))
@clikit.option("--overwrite", is_flag=True, help="Replace an existing bundle at --output (only once the new one is complete).")
@clikit.progress_option()
@clikit.verbose_option()
def export_command(checkpoint: str, output: str, data: str | None, verbose: bool, **options) -> None:
    """Export a checkpoint to a bundle: ONNX graphs per stage, parity-checked, with manifest.

    By default the bundle has the stages the checkpoint was trained with: a model trained
    without pictures gets the tagger alone (pictures sent to it are refused per post).
    """
    # Without mner[train] (the slim install): one line naming the pip install, not an import traceback.
    extras.require_extra("train", *EXPORT_MODULES)
    # mner's own progress at INFO (the mner.progress lines off a terminal); the exporter's
    # optimiser logs hundreds of INFO lines per graph, so the rest stays at WARNING.
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("mner").setLevel(logging.DEBUG if verbose else logging.INFO)
    from mner.export.pipeline import export_bundle  # torch and onnx load after argument parsing
    from mner.export.trt import EngineBuildError, TensorRTUnavailable

    try:
        result = export_bundle(ckpt=checkpoint, out=output, parity_data=data, **options)
    except (ValueError, TensorRTUnavailable, EngineBuildError) as error:
        raise click.ClickException(str(error)) from error
    manifest = result.manifest
    checks = manifest["parity"]["checks"]
    click.echo(f"bundle: {result.path} ({result.bytes / 2**20:.1f} MiB, {len(manifest['files']) + 1} files)")
    stages = [f"{name} ({'+'.join(entry['graphs'])})" for name, entry in manifest["stages"].items()]
    click.echo(f"stages: {', '.join(stages)}")
    click.echo(f"  why: {manifest['stage_selection']['reason']}")
    click.echo(f"parity: {len(checks)} checks passed")
    for check in checks:
        if check["metric"] in ("word_agreement", "differing_posts"):
            click.echo(f"  {check['stage']} [{check['precision']}] {check['case']}: {check['note']}")
    int8 = manifest["stages"].get("tagger", {}).get("graphs", {}).get("int8")
    if int8:
        guard = int8["guard"]
        click.echo(f"int8: tagger agreement with fp32 {100 * guard['word_agreement']:.2f} %, entity F1 "
                   f"{100 * guard['entity_f1']['int8']:.2f} (fp32 {100 * guard['entity_f1']['fp32']:.2f}, "
                   f"drop {guard['f1_drop_points']:.2f} points) on {guard['data']['source']}")  # fmt: skip
    vision_int8 = manifest["stages"].get("vision", {}).get("graphs", {}).get("int8")
    if vision_int8 is not None:
        guard = vision_int8["guard"]
        click.echo(f"int8: vision grid cosine with fp32: least {guard['least']:.4f}, mean {guard['mean']:.4f} "
                   f"over {len(guard['photos'])} photographs (limit {guard['limit']})")
    if manifest["engines"]:
        click.echo(f"engines: {', '.join(manifest['engines'])}")
    click.echo(f"time: {result.seconds:.0f} s")


if __name__ == "__main__":  # python -m mner.export.cli, where the console script is not installed
    export_command()
