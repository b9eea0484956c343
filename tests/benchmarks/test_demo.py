"""The demo's steps at a reduced size: sample -> train -> export -> ORT tagging -> summary; a rerun reuses."""

import json

import torch

from mner.benchmarks import bench as bench_module
from mner.benchmarks.demo import run_demo

SMALL = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
         "augmentation_dim": 16}  # fmt: skip
FAST_VISION = {"grid_arch": "resnet50", "detector_size": 128}


def test_demo_chain_runs_and_a_second_run_reuses_its_outputs(tmp_path, monkeypatch, reuse_exported_graphs):
    # The demo trains with seed 0, so its random ResNet-50 and 128-pixel RetinaNet are the very modules of the session's
    # full_bundle (tests/conftest.py): their graphs are reused when that bundle was exported first; the trained
    # tagger's graph is traced here.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two cores shared with other tests: one thread is faster here
    try:
        lines: list[str] = []
        sizes = {"train": 16, "valid": 6, "test": 6}
        first = run_demo(tmp_path, epochs=2, sizes=sizes, model_overrides=SMALL, vision=FAST_VISION, echo=lines.append)
        # The second run measures nothing the first did not (same bundle, same posts, two fresh worker processes,
        # ~30 s): its benchmark call is recorded and answered with the first run's report.
        benched = []

        def first_report(bundle, backends, batch_sizes, **options):
            benched.append((bundle, backends, batch_sizes, options))
            return first["bench"]

        monkeypatch.setattr(bench_module, "run_bench", first_report)
        again: list[str] = []
        second = run_demo(tmp_path, epochs=2, sizes=sizes, model_overrides=SMALL, vision=FAST_VISION, echo=again.append)
    finally:
        torch.set_num_threads(threads)
    ((bundle, backends, batch_sizes, options),) = benched  # the reused bundle and checkpoint, measured as the first time
    assert bundle == tmp_path / "bundle" and options["checkpoint"] == tmp_path / "tiny" / "best.pt"
    assert backends == ["torch", "ort"] and batch_sizes == [1, 8] and options["data"] == tmp_path / "sample" / "test.txt"
    assert (tmp_path / "tiny" / "best.pt").is_file() and (tmp_path / "bundle" / "manifest.json").is_file()
    tagged = [json.loads(line) for line in (tmp_path / "tagged.jsonl").read_text().splitlines()]
    assert len(tagged) == sizes["test"] and all("entities" in record for record in tagged)
    for record in tagged:  # raw tweets ("#Toronto", "again,"); offsets point into the text that was sent
        assert " # " not in record["text"] and " , " not in record["text"]
        assert all(record["text"][e["start"]:e["end"]] == e["text"] for e in record["entities"])
    assert 0.0 <= first["metrics"]["micro"]["f1"] <= 1.0
    assert any("reusing" in line for line in again) and not any("reusing" in line for line in lines)
    assert second["metrics"] == first["metrics"]  # same bundle, same deterministic tags
    assert any("posts/s" in line for line in lines)
    bench = json.loads((tmp_path / "bench" / "report.json").read_text())  # mner-bench's report, ORT vs the reference
    assert set(bench["backends"]) == {"torch", "ort"} and bench["workload"]["posts"] == sizes["test"]
    assert any("torch" in line and "load" in line for line in lines)
