"""Console entry point: mner-export."""

import click


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def export_command() -> None:
    """Export a checkpoint to an ONNX/TensorRT bundle (not implemented yet)."""
    raise click.ClickException("mner-export is not implemented yet: it arrives with issue #4 (staged export and the bundle).")
