"""The demo chain's first run, once per session, for the two modules that read it.

``run_demo``'s bench step is ``run_bench(bundle, ["torch", "ort"], [1, 8], warmup=1, min_batches=3)`` on real
worker processes with pictures: the very call test_bench.py's report test made on the session's full bundle, and
the slowest part of both tests (~30 s: two fresh interpreters load torch, the encoders and the bundle). So the demo
runs once here; test_demo.py checks the chain and its rerun, test_bench.py checks the report its bench step made.
"""

import logging
from types import SimpleNamespace

import pytest

# The demo at a reduced size: tests/conftest.py's SMALL model without the vocabulary size (the demo learns its own),
# ResNet-50 and a 128-pixel detector, 28 sample posts, 2 epochs.
DEMO_OPTIONS = {
    "epochs": 2,
    "sizes": {"train": 16, "valid": 6, "test": 6},
    "model_overrides": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                        "augmentation_dim": 16},
    "vision": {"grid_arch": "resnet50", "detector_size": 128},
}  # fmt: skip


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="session")
def demo_run(graph_cache, tmp_path_factory) -> SimpleNamespace:
    """``run_demo(.out, **.options)`` (DEMO_OPTIONS): ``.result`` (what it returns), ``.lines`` (what it printed),
    ``.bench_lines`` (what its run_bench printed, which the demo itself discards) and ``.progress`` (the
    mner.progress log lines). Read-only: a test that runs the demo again in ``.out`` must leave it as it was (the
    demo reuses what is there).

    The demo trains with seed 0, so its random ResNet-50 and 128-pixel RetinaNet are the very modules of the
    session's full_bundle (tests/conftest.py): their graphs are reused when that bundle was exported first; the
    trained tagger's graph is traced here."""
    torch = pytest.importorskip("torch", reason="the demo trains and exports with torch")
    from mner.benchmarks import bench as bench_module  # noqa: PLC0415
    from mner.benchmarks.demo import run_demo  # noqa: PLC0415

    out = tmp_path_factory.mktemp("demo")
    lines: list[str] = []
    bench_lines: list[str] = []
    real_run_bench = bench_module.run_bench

    def run_bench_heard(*args, echo, **options):
        # the real run_bench with its arguments as the demo passes them; only its lines are kept as well
        return real_run_bench(*args, echo=lambda line: (bench_lines.append(line), echo(line)), **options)

    progress = _Messages()
    progress_logger = logging.getLogger("mner.progress")
    level = progress_logger.level
    progress_logger.addHandler(progress)
    progress_logger.setLevel(logging.INFO)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two cores shared with other tests: one thread is faster here
    try:
        with graph_cache.reused(), pytest.MonkeyPatch.context() as patch:
            patch.setattr(bench_module, "run_bench", run_bench_heard)  # the demo looks run_bench up when it runs
            result = run_demo(out, **DEMO_OPTIONS, echo=lines.append)
    finally:
        torch.set_num_threads(threads)
        progress_logger.removeHandler(progress)
        progress_logger.setLevel(level)
    return SimpleNamespace(out=out, options=DEMO_OPTIONS, result=result, lines=lines, bench_lines=bench_lines,
                           progress=progress.messages)  # fmt: skip
