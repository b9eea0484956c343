"""Console entry points of the runtime: mner-tag and mner-serve."""

import click


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def tag_command() -> None:
    """Tag posts with an exported bundle (not implemented yet)."""
    raise click.ClickException("mner-tag is not implemented yet: it arrives with issue #5 (the runtime pipeline).")


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def serve_command() -> None:
    """Serve an exported bundle over HTTP (not implemented yet)."""
    raise click.ClickException("mner-serve is not implemented yet: it arrives with issue #6 (the HTTP service).")
