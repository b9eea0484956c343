"""Console entry points of training: mner-train, mner-eval, mner-convert."""

import click


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def train_command() -> None:
    """Train MGCMT (not implemented yet)."""
    raise click.ClickException("mner-train is not implemented yet: it arrives with issue #3 (the MGCMT model).")


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def eval_command() -> None:
    """Evaluate a checkpoint (not implemented yet)."""
    raise click.ClickException("mner-eval is not implemented yet: it arrives with issue #3 (the MGCMT model).")


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def convert_command() -> None:
    """Convert an IIE4MNER checkpoint (not implemented yet)."""
    raise click.ClickException("mner-convert is not implemented yet: it arrives with issue #3 (the MGCMT model).")
