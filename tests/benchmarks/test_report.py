"""mner-bench's plots: nothing drawn outside the figure, throughput from 0, the p10-p90 spread; --replot."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from click.testing import CliRunner

matplotlib.use("Agg")
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from mner.benchmarks import bench, report  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "benchmarks" / "results" / "bench-tiny-cpu"


def raw_run(batch_size: int, posts: int, seconds_per_post: float, seed: int) -> dict:
    """A worker's raw measurements of one batch size: noisy batch times, the tagger most of each."""
    rng = np.random.default_rng(seed)
    sizes = [min(batch_size, posts - i) for i in range(0, posts, batch_size)] * 2
    e2e = [size * seconds_per_post * rng.uniform(0.7, 1.6) for size in sizes]
    steps = {step: [0.0] * len(e2e) for step in bench.STEPS}
    steps["encode"] = [0.02 * t for t in e2e]
    steps["tagger"] = [0.9 * t for t in e2e]
    steps["decode"] = [0.03 * t for t in e2e]
    return {"batch_size": batch_size, "e2e_s": e2e, "steps_s": steps, "posts": sizes, "errors": 0}


def synthetic_report(backends=("torch", "ort"), sizes=(1, 8, 32)) -> dict:
    result = {}
    for index, name in enumerate(backends):
        runs = {str(size): {**bench.summarise_run(raw_run(size, 40, 0.01 / (index + 1), seed=size + index)),
                            "parity": {"f1": 0.5}} for size in sizes}  # fmt: skip
        result[name] = {"description": name, "load_s": 1.0, "peak_rss_mib": 100.0, "gpu_memory": None, "batches": runs}
    return {"backends": result}


@pytest.fixture
def figures(monkeypatch):
    """Every figure write_plots saves, drawn, with the file name it was saved under."""
    saved: dict[str, Figure] = {}
    real = Figure.savefig

    def keep(self, fname, *args, **kwargs):
        real(self, fname, *args, **kwargs)
        saved[Path(fname).name] = self

    monkeypatch.setattr(Figure, "savefig", keep)
    return saved


def overhang(figure: Figure) -> dict[str, float]:
    """How far, in inches, what the figure draws (titles, labels, tick labels, legend) reaches past each edge."""
    renderer = FigureCanvasAgg(figure).get_renderer()  # plt.close took its canvas away
    figure.draw(renderer)
    drawn = figure.get_tightbbox(renderer)  # inches; only what is drawn (not tick labels outside the view)
    width, height = figure.get_size_inches()
    over = {"left": -drawn.x0, "bottom": -drawn.y0, "right": drawn.x1 - width, "top": drawn.y1 - height}
    return {edge: round(inches, 3) for edge, inches in over.items() if inches > 0.01}


@pytest.mark.parametrize("backends, sizes", [(("ort",), (8,)), (("torch", "ort"), (1, 8)),
                                             (("torch", "torch-longest", "ort"), (1, 8, 32))])  # fmt: skip
def test_nothing_is_drawn_outside_the_figure(tmp_path, figures, backends, sizes):
    # One or two bars made the narrowest figure, whose one-line title was cut at both edges.
    report.write_plots(synthetic_report(backends, sizes), tmp_path)
    assert set(figures) == set(report.PLOTS.values())
    for name, figure in figures.items():
        assert overhang(figure) == {}, name


def test_throughput_starts_at_zero_and_shows_each_batch_s_spread(tmp_path, figures):
    data = synthetic_report()
    report.write_plots(data, tmp_path)
    axis = figures["throughput.png"].axes[0]
    assert axis.get_ylim()[0] == 0
    bars = [c for c in axis.collections if isinstance(c, matplotlib.collections.LineCollection)]
    drawn = sorted(tuple(np.round(segment[:, 1], 6)) for c in bars for segment in c.get_segments())
    spread = data["backends"]["ort"]["batches"]["8"]["throughput_batches_posts_s"]
    assert (round(spread["p10"], 6), round(spread["p90"], 6)) in drawn  # ort at B=8, p10 to p90
    assert len(drawn) == 6  # a bar per backend and batch size
    assert "p10\N{EN DASH}p90" in axis.get_title()


def test_latency_bars_carry_the_end_to_end_spread(tmp_path, figures):
    data = synthetic_report(("ort",), (1, 8))
    report.write_plots(data, tmp_path)
    axis = figures["latency_steps.png"].axes[0]
    (whiskers,) = axis.containers[-1:]  # the errorbar container, after the stacked bars
    p50 = whiskers.lines[0].get_ydata()
    latency = [data["backends"]["ort"]["batches"][size]["latency_ms"] for size in ("1", "8")]
    assert np.allclose(p50, [run["p50"] for run in latency])
    (segments,) = [c.get_segments() for c in whiskers.lines[2]]
    assert np.allclose([(s[0, 1], s[1, 1]) for s in segments], [(run["p10"], run["p90"]) for run in latency])
    assert axis.get_ylim()[0] == 0 and "p10\N{EN DASH}p90" in axis.get_legend_handles_labels()[1][-1]


def test_a_report_without_the_spread_is_drawn_and_says_so(tmp_path, figures):
    data = synthetic_report(("ort",), (1, 8))
    for run in data["backends"]["ort"]["batches"].values():  # as written before p10 was recorded
        del run["throughput_batches_posts_s"], run["latency_ms"]["p10"]
    report.write_plots(data, tmp_path)
    for figure in figures.values():
        assert report.NO_SPREAD in figure.axes[0].get_title()
    assert figures["throughput.png"].axes[0].get_ylim()[0] == 0


def test_summarise_run_records_the_spread_of_batches():
    run = {"batch_size": 2, "e2e_s": [0.1, 0.2, 0.4, 0.1], "posts": [2, 2, 1, 2],
           "steps_s": {step: [0.0] * 4 for step in bench.STEPS}, "errors": 0}  # fmt: skip
    summary = bench.summarise_run(run)
    # The 1-post batch (a pass's remainder) is left out of latency and of the per-batch spread, not of throughput.
    assert summary["batches"] == 4 and summary["latency_batches"] == 3
    assert summary["latency_ms"]["min"] == pytest.approx(100) and summary["latency_ms"]["max"] == pytest.approx(200)
    assert summary["latency_ms"]["p10"] <= summary["latency_ms"]["p50"] <= summary["latency_ms"]["p90"]
    per_batch = summary["throughput_batches_posts_s"]
    assert per_batch["min"] == pytest.approx(10) and per_batch["max"] == pytest.approx(20)  # 2 posts in 0.2 s; in 0.1 s
    assert summary["throughput_posts_s"] == pytest.approx(7 / 0.8)
    alone = bench.summarise_run({**run, "batch_size": 8})  # no full batch at all: every batch counts
    assert alone["latency_batches"] == 4 and alone["latency_ms"]["max"] == pytest.approx(400)


def test_replot_redraws_a_committed_report(tmp_path):
    if not (COMMITTED / "report.json").is_file():
        pytest.skip("the committed tiny report is not in this checkout")
    folder = tmp_path / "report"
    shutil.copytree(COMMITTED, folder)
    for name in report.PLOTS.values():
        (folder / name).unlink()
    markdown = (folder / "report.md").read_text()
    result = CliRunner().invoke(report_command(), ["--replot", str(folder)])
    assert result.exit_code == 0, result.output
    for name in report.PLOTS.values():
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (folder / "report.md").read_text() == markdown  # only the plots are drawn again


def test_replot_names_what_is_wrong_with_a_folder(tmp_path):
    command = report_command()
    result = CliRunner().invoke(command, ["--replot", str(tmp_path)])
    assert result.exit_code == 1 and "report.json" in result.output and "mner-bench wrote" in result.output
    (tmp_path / "report.json").write_text("{oops")
    result = CliRunner().invoke(command, ["--replot", str(tmp_path)])
    assert result.exit_code == 1 and "is not JSON" in result.output
    (tmp_path / "report.json").write_text(json.dumps({"command": "x"}))
    result = CliRunner().invoke(command, ["--replot", str(tmp_path)])
    assert result.exit_code == 1 and "not an mner-bench report" in result.output
    with pytest.raises(ValueError, match="not an mner-bench report"):
        report.replot(tmp_path)


def report_command():
    """The click command behind `python -m mner.benchmarks.report`."""
    return report.replot_command
