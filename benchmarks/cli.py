"""Console entry point: mner-bench."""

import click


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def bench_command() -> None:
    """Benchmark a bundle against the PyTorch reference (not implemented yet)."""
    raise click.ClickException(
        "mner-bench is not implemented yet: it arrives with issue #7. What exists: "
        "python -m mner.benchmarks.viterbi (CRF decoding), python -m mner.benchmarks.loadtest (mner-serve), "
        "python -m mner.benchmarks.demo (the whole chain with a short summary)"
    )
