"""The demo's steps at a reduced size: sample -> train -> export -> ORT tagging -> summary; a rerun reuses.

The first run is the session's ``demo_run`` (tests/benchmarks/conftest.py), whose bench report test_bench.py also
checks; the rerun is here."""

import json

import torch

from mner.benchmarks import bench as bench_module
from mner.benchmarks.demo import run_demo


def test_demo_chain_runs_and_a_second_run_reuses_its_outputs(demo_run, monkeypatch):
    out, first, lines = demo_run.out, demo_run.result, demo_run.lines
    sizes = demo_run.options["sizes"]
    # The second run measures nothing the first did not (same bundle, same posts, two fresh worker processes,
    # ~30 s): its benchmark call is recorded and answered with the first run's report.
    benched = []

    def first_report(bundle, backends, batch_sizes, **options):
        benched.append((bundle, backends, batch_sizes, options))
        return first["bench"]

    monkeypatch.setattr(bench_module, "run_bench", first_report)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two cores shared with other tests: one thread is faster here
    try:
        again: list[str] = []
        second = run_demo(out, **demo_run.options, echo=again.append)
    finally:
        torch.set_num_threads(threads)
    ((bundle, backends, batch_sizes, options),) = benched  # the reused bundle and checkpoint, measured as the first time
    assert bundle == out / "bundle" and options["checkpoint"] == out / "tiny" / "best.pt"
    assert backends == ["torch", "ort"] and batch_sizes == [1, 8] and options["data"] == out / "sample" / "test.txt"
    assert (out / "tiny" / "best.pt").is_file() and (out / "bundle" / "manifest.json").is_file()
    tagged = [json.loads(line) for line in (out / "tagged.jsonl").read_text().splitlines()]
    assert len(tagged) == sizes["test"] and all("entities" in record for record in tagged)
    for record in tagged:  # raw tweets ("#Toronto", "again,"); offsets point into the text that was sent
        assert " # " not in record["text"] and " , " not in record["text"]
        assert all(record["text"][e["start"]:e["end"]] == e["text"] for e in record["entities"])
    assert 0.0 <= first["metrics"]["micro"]["f1"] <= 1.0
    assert any("reusing" in line for line in again) and not any("reusing" in line for line in lines)
    assert second["metrics"] == first["metrics"]  # same bundle, same deterministic tags
    assert any("posts/s" in line for line in lines)
    bench = json.loads((out / "bench" / "report.json").read_text())  # mner-bench's report, ORT vs the reference
    assert set(bench["backends"]) == {"torch", "ort"} and bench["workload"]["posts"] == sizes["test"]
    assert any("torch" in line and "load" in line for line in lines)


def test_a_checkpoint_of_a_training_stopped_early_is_not_reused(demo_run, tmp_path):
    """mner-train writes the test scores into best.pt after its last epoch; a best.pt without them (make demo
    stopped during training) is resumed by the next demo, not exported as if finished."""
    from mner.benchmarks.demo import _finished  # noqa: PLC0415

    finished = demo_run.out / "tiny" / "best.pt"
    assert _finished(finished)
    state = torch.load(finished, map_location="cpu", weights_only=True)
    state["metrics"] = {name: value for name, value in state["metrics"].items() if name != "test"}
    torch.save(state, tmp_path / "best.pt")
    assert not _finished(tmp_path / "best.pt") and not _finished(tmp_path / "missing.pt")
