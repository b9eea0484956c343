"""Console entry point: mner-export (thin: parse, then call export_bundle by keyword)."""

from __future__ import annotations

import logging

import click

from mner.export.stages import STAGES


@click.command()
@click.option("--ckpt", required=True, type=click.Path(dir_okay=False), help="A best.pt written by mner-train (or mner-convert).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The bundle directory to create.")
@click.option("--fp16", is_flag=True, help="Also write mixed-precision graphs (*.fp16.onnx) for GPUs.")
@click.option("--trt", is_flag=True, help="Also build TensorRT engines from the FP16 graphs (needs tensorrt and a CUDA GPU).")
@click.option("--resnet-weights", type=click.Path(dir_okay=False), help="torchvision ResNet-152 ImageNet state_dict file; default: seeded random weights.")
@click.option("--detector-weights", type=click.Path(dir_okay=False), help="torchvision RetinaNet-ResNet50-FPN-v2 COCO state_dict file; default: seeded random weights.")
@click.option("--stages", default=",".join(STAGES), show_default=True, help=f"Comma-separated subset of {', '.join(STAGES)}.")
@click.option("--parity-data", type=click.Path(dir_okay=False), help="CoNLL file whose every post the tag parity check decodes; default: synthetic posts.")
@click.option("--seed", type=int, help="Seed of random vision/detector weights and of the parity inputs; default: the checkpoint's training seed, so random encoders match what training saw.")
@click.option("--vision-arch", type=click.Choice(["resnet152", "resnet101", "resnet50"]), help="Grid encoder; default: the one the checkpoint was trained with (the paper: resnet152).")
@click.option("--detector-size", type=int, help="Detector input side (a multiple of 128); default: the one the checkpoint was trained with (512).")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle at --out (only once the new one is complete).")
@click.option("-v", "--verbose", is_flag=True)
def export_command(verbose: bool, **options) -> None:
    """Export a checkpoint to a bundle: ONNX graphs per stage, parity-checked, with manifest."""
    # mner's own progress at INFO; the exporter's optimiser logs hundreds of INFO lines per graph.
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("mner").setLevel(logging.DEBUG if verbose else logging.INFO)
    from mner.export.pipeline import export_bundle  # torch and onnx load after argument parsing
    from mner.export.trt import EngineBuildError, TensorRTUnavailable

    try:
        result = export_bundle(**options)
    except (ValueError, TensorRTUnavailable, EngineBuildError) as error:
        raise click.ClickException(str(error)) from error
    manifest = result.manifest
    checks = manifest["parity"]["checks"]
    click.echo(f"bundle: {result.path} ({result.bytes / 2**20:.1f} MiB, {len(manifest['files']) + 1} files)")
    stages = [f"{name} ({'+'.join(entry['graphs'])})" for name, entry in manifest["stages"].items()]
    click.echo(f"stages: {', '.join(stages)}")
    click.echo(f"parity: {len(checks)} checks passed")
    for check in checks:
        if check["metric"] in ("word_agreement", "differing_posts"):
            click.echo(f"  {check['stage']} [{check['precision']}] {check['case']}: {check['note']}")
    if manifest["engines"]:
        click.echo(f"engines: {', '.join(manifest['engines'])}")
    click.echo(f"time: {result.seconds:.0f} s")


if __name__ == "__main__":  # python -m mner.export.cli, where the console script is not installed
    export_command()
