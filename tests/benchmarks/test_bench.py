"""mner-bench: real runs of a small exported bundle, the report's structure (on the report of the demo's bench step,
tests/benchmarks/conftest.py), and parity from real tags."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mner.benchmarks import bench
from mner.benchmarks import cli as bench_cli
from mner.benchmarks.cli import bench_command, summary_lines
from mner.benchmarks.report import PLOTS, write_report
from mner.export.random_checkpoint import make_random_checkpoint
from mner.runtime import bundle as bundle_module
from mner.runtime.conll import SPLIT_FILES, read_conll
from mner.runtime.runners import Runner
from mner.train.sample import write_sample_corpus

SMALL = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
         "augmentation_dim": 16, "vocab_size": 1500}  # fmt: skip


@pytest.fixture(scope="module")
def exported(full_bundle, small_ckpt, tmp_path_factory):
    """The session's full bundle (tests/conftest.py: ResNet-50, a 128-pixel RetinaNet, the tiny tagger; FP32 and FP16)
    and its checkpoint, measured on a sample corpus of 14 test posts, some with pictures."""
    root = tmp_path_factory.mktemp("bench")
    corpus = write_sample_corpus(root / "sample", seed=0, sizes={"train": 20, "valid": 4, "test": 14})
    return {"bundle": full_bundle, "checkpoint": small_ckpt, "corpus": corpus, "root": root}


@pytest.fixture(autouse=True)
def own_verification_cache(tmp_path, monkeypatch):
    """Bundles verified here are remembered in the test's folder, not the user's cache (workers inherit it)."""
    monkeypatch.setenv("MNER_CACHE_DIR", str(tmp_path / "verification-cache"))


def workload(exported, limit=None):
    posts, _ = bench.load_workload(exported["corpus"] / "test.txt", exported["corpus"] / "images", limit, exported["root"])
    return posts


class NoisyTagger(Runner):
    """The tagger with noise added to its emissions: a deliberately wrong backend."""

    def __init__(self, inner: Runner, scale: float) -> None:
        super().__init__(inner.stage)
        self.inner, self.scale, self.rng = inner, scale, np.random.default_rng(0)

    def _activate(self):
        self.inner.activate()

    def _deactivate(self):
        self.inner.deactivate()

    def _infer(self, feed):
        emissions = self.inner.infer(feed)["emissions"]
        return {"emissions": (emissions + self.scale * self.rng.standard_normal(emissions.shape)).astype(np.float32)}


def measured_in_this_process(exported, noise: float = 0.0, reference: dict | None = None):
    """A `measure` for run_bench that runs the worker here, with the ort tagger perturbed by `noise`. With a
    `reference` dict, the torch backend is measured once for every run given the same dict (the job is the same,
    and so are its tags) and each run gets a copy."""

    def measure(job, scratch, on_batch=None):
        if job["backend"] == "torch" and reference is not None:
            if "torch" not in reference:
                reference["torch"] = bench.run_worker(job, on_batch)
            return copy.deepcopy(reference["torch"])
        if job["backend"] != "ort" or noise == 0.0:
            return bench.run_worker(job, on_batch)
        spec = bench.BACKENDS["ort"]
        posts = [bench.BenchPost(**post) for post in job["posts"]]
        pictures = {p.image: Path(p.image).read_bytes() for p in posts if p.image}
        with bench.open_pipeline(Path(job["bundle"]), spec, checkpoint=None, device="cpu", threads=1) as pipeline:
            pipeline.tagger = NoisyTagger(pipeline.tagger, noise).activate()
            runs = [bench.measure_pipeline(pipeline, posts, size, warmup=job["warmup"], min_batches=job["min_batches"],
                                           pictures=pictures) for size in job["batch_sizes"]]  # fmt: skip
        return {"backend": "ort", "load_s": 0.0, "peak_rss_mib": 0.0, "gpu_memory": None, "runs": runs}

    return measure


def test_measure_pipeline_times_every_batch_and_step_and_keeps_the_first_pass_tags(exported):
    posts = workload(exported, limit=6)  # 4 with pictures; the tests below run all 14 posts
    with bench.open_pipeline(exported["bundle"], bench.BACKENDS["ort"], checkpoint=None, device="cpu", threads=1) as pipeline:
        pictures = {p.image: Path(p.image).read_bytes() for p in posts if p.image}
        run = bench.measure_pipeline(pipeline, posts, 4, warmup=1, min_batches=6, pictures=pictures)
        expected = [r.tags for r in pipeline.tag_words([p.words for p in posts], [pictures.get(p.image) for p in posts])]
    passes = 3  # 6 posts in batches of 4 = 2 batches a pass; 6 timed batches need three passes
    assert len(run["e2e_s"]) == 2 * passes and run["posts"] == [4, 2] * passes
    assert run["tags"] == expected  # one pass's tags, in post order
    assert all(len(values) == len(run["e2e_s"]) for values in run["steps_s"].values())
    assert sum(run["steps_s"]["tagger"]) > 0 and sum(run["steps_s"]["decode"]) > 0
    assert any(p.image for p in posts) and sum(run["steps_s"]["vision"]) > 0 and sum(run["steps_s"]["detector"]) > 0
    for total, steps in zip(run["e2e_s"], zip(*(run["steps_s"][s] for s in ("images", "encode", "tagger", "decode")))):
        assert sum(steps) <= total  # these steps run one after another inside the batch's wall time
    assert pipeline.clock is None  # the clock is taken off again


def test_window_padding_gives_the_reference_tags(exported):
    posts = workload(exported)
    runs = {}
    for name in ("torch", "torch-longest"):
        with bench.open_pipeline(exported["bundle"], bench.BACKENDS[name], checkpoint=exported["checkpoint"],
                                 device="cpu", threads=1) as pipeline:  # fmt: skip
            runs[name] = bench.measure_pipeline(pipeline, posts, 8, warmup=0, min_batches=1)
            if name == "torch":
                assert isinstance(pipeline.tagger, bench.WindowPaddedTagger)
    # Padding to the window is masked out: the same tags as padding to the longest post.
    result = bench.agreement(runs["torch"]["tags"], runs["torch-longest"]["tags"])
    assert result["word_agreement"] == 1.0 and result["posts_compared"] == len(posts)


def test_report_from_real_workers_has_every_part(demo_run, tmp_path):
    # The demo's bench step (tests/benchmarks/conftest.py's demo_run): run_bench on torch and ort in fresh worker
    # processes, B=1 and 8, one warm-up batch, 3 timed batches at least, on the sample's 6 test posts, some with
    # pictures, through the demo's bundle (ResNet-50, a 128-pixel RetinaNet, its trained tiny tagger).
    report = demo_run.result["bench"]
    # One progress line at the end (stderr is no terminal here), counting every post of every batch the workers ran:
    # per backend, B=1: 1 warm-up post + 6 timed (one pass); B=8: 6 warm-up (one batch) + 3 batches of all 6.
    (done,) = [message for message in demo_run.progress if message.startswith("mner-bench:") and "done in" in message]
    assert done.startswith(f"mner-bench: {2 * (7 + 24)}/{2 * (7 + 24)} posts")
    paths = write_report(report, tmp_path / "out")
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"report.json", "report.md", *PLOTS.values()}
    for name in PLOTS.values():
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(paths["json"].read_text())
    assert saved["command"] == "python -m mner.benchmarks.demo" and saved["reference"] == "torch"
    assert saved["started"] <= saved["created"]
    assert saved["workload"]["posts"] == 6 and saved["workload"]["with_pictures"] > 0
    assert saved["machine"]["cpu"] and saved["machine"]["packages"]["numpy"] != "not installed"
    assert saved["bundle"]["verify_s"] > 0 and saved["settings"]["verify"] is True
    for name in ("torch", "ort"):
        backend = saved["backends"][name]
        assert backend["load_s"] > 0 and backend["peak_rss_mib"] > 50
        for size in ("1", "8"):
            run = backend["batches"][size]
            latency = run["latency_ms"]
            assert 0 < latency["min"] <= latency["p10"] <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
            per_batch = run["throughput_batches_posts_s"]
            assert 0 < per_batch["min"] <= per_batch["p10"] <= per_batch["p90"] <= per_batch["max"]
            assert run["posts"] >= 6 and run["throughput_posts_s"] > 0 and run["tagger_posts_s"] > 0
            assert set(run["steps_ms"]) >= {"tagger", "decode", "encode", "vision", "detector", "images"}
            tagger = run["steps_percentiles_ms"]["tagger"]
            assert set(run["steps_percentiles_ms"]) == set(run["steps_ms"]) and 0 < tagger["p50"] <= tagger["p99"]
            assert 0.0 <= run["parity"]["f1"] <= 1.0
    # torch against itself is exact; ORT against torch agrees on (nearly) every word.
    assert saved["backends"]["torch"]["batches"]["8"]["parity"]["word_agreement"] == 1.0
    assert saved["backends"]["ort"]["batches"]["8"]["parity"]["word_agreement"] >= 0.98
    assert [row["batch_size"] for row in saved["targets"]] == [8, 8]
    assert all(row["measured"] > 0 for row in saved["targets"])
    assert set(saved["decode"]["ms"]) == {"1", "8"} and saved["decode"]["ms"]["8"]["mner"] > 0
    text = paths["markdown"].read_text()
    for heading in ("## Machine", "## Targets", "## Latency and throughput", "## Parity", "## Load time and memory",
                    "## CRF decoding", "## Time per batch by step, p50 / p90 / p99 ms"):  # fmt: skip
        assert heading in text
    assert "hashing every file" in text and "p10 ms" in text
    assert any("measuring torch" in line for line in demo_run.bench_lines)
    assert summary_lines(saved) and all("posts/s" in line for line in summary_lines(saved)[:2])


def test_a_perturbed_backend_shows_in_the_parity_numbers(exported, tmp_path):
    common = dict(checkpoint=exported["checkpoint"], data=exported["corpus"] / "test.txt", threads=1, warmup=0,
                  min_batches=1)  # fmt: skip
    reference = {}  # the torch backend's run, measured for the honest report and reused by the noisy one
    honest = bench.run_bench(exported["bundle"], ["torch", "ort"], [8], echo=lambda line: None,
                             measure=measured_in_this_process(exported, reference=reference), **common)  # fmt: skip
    noisy = bench.run_bench(exported["bundle"], ["torch", "ort"], [8], echo=lambda line: None,
                            measure=measured_in_this_process(exported, noise=5.0, reference=reference), **common)  # fmt: skip
    honest_parity = honest["backends"]["ort"]["batches"]["8"]["parity"]
    noisy_parity = noisy["backends"]["ort"]["batches"]["8"]["parity"]
    assert honest_parity["word_agreement"] >= 0.98
    assert noisy_parity["word_agreement"] < 0.9 and noisy_parity["posts_differing"] > 0
    assert noisy_parity["words"] == honest_parity["words"] == sum(len(p.words) for p in workload(exported))
    assert "word agreement" in write_report(noisy, tmp_path)["markdown"].read_text()


def test_agreement_counts_words_and_skips_refused_posts():
    reference = [["B-PER", "O"], ["O"], None]
    assert bench.agreement(reference, [["B-PER", "O"], ["B-LOC"], ["O"]]) == {
        "word_agreement": 2 / 3, "words": 3, "posts_compared": 2, "posts_differing": 1}
    with pytest.raises(ValueError, match="tagged 3 and 2 posts"):
        bench.agreement(reference, [["O"], ["O"]])


def test_targets_say_met_or_missed_from_the_two_backends():
    run = lambda tagger, e2e: {"batches": {"8": {"tagger_posts_s": tagger, "throughput_posts_s": e2e}}}  # noqa: E731
    rows = bench.targets({"backends": {"torch": run(10.0, 10.0), "ort": run(25.0, 12.0)}})
    assert [(row["measured"], row["met"]) for row in rows] == [(2.5, True), (1.2, False)]
    assert [row["what"].split(",")[1] for row in rows] == [" runtime FP32 (ort) over the reference (torch)"] * 2
    with_int8 = bench.targets({"backends": {"torch": run(10.0, 10.0), "ort": run(25.0, 16.0), "ort-int8": run(49.0, 30.0)}})
    assert [(row["what"].split()[3], row["measured"], row["met"]) for row in with_int8] == [
        ("FP32", 2.5, True), ("INT8", 4.9, False), ("FP32", 1.6, True)]
    assert bench.targets({"backends": {"torch": run(10.0, 10.0), "ort": {"batches": {"1": {}}}}}) == []  # no B=8
    assert bench.targets({"backends": {"ort": {"batches": {"8": {}}}}}) == []  # no reference, no targets


def test_bad_requests_are_named_before_anything_runs(exported, tmp_path):
    problems = bench.check_request(tmp_path, ["torch", "onnx", "trt"], [0, 8], "cpu", None)
    text = "; ".join(problems)
    assert "not an mner bundle" in text and "unknown backends ['onnx']" in text and "batch sizes must be >= 1" in text
    assert "pass --checkpoint" in text
    assert "--device cuda" in "; ".join(bench.check_request(exported["bundle"], ["torch-fp16"], [8], "cpu", exported["checkpoint"]))
    assert bench.check_request(exported["bundle"], ["ort", "torch"], [1], "cpu", exported["checkpoint"]) == []


def test_cli_errors_are_one_clear_line(exported, tmp_path):
    runner = CliRunner()
    result = runner.invoke(bench_command, ["--engine", str(exported["bundle"]), "--backends", "torch"])
    assert result.exit_code != 0 and "pass --checkpoint" in result.output
    result = runner.invoke(bench_command, ["--engine", str(exported["bundle"]), "--batch-sizes", "1,x"])
    assert result.exit_code != 0 and "comma-separated ints" in result.output
    wrong = make_random_checkpoint(tmp_path / "other.pt", preset="tiny", seed=1, **SMALL)
    result = runner.invoke(bench_command, ["--engine", str(exported["bundle"]), "--backends", "torch", "--checkpoint",
                                           str(wrong), "--max-posts", "2", "--out", str(tmp_path / "r")])  # fmt: skip
    assert result.exit_code != 0 and "the bundle was exported from" in result.output  # the worker's error, passed on
    assert not (tmp_path / "r").exists()


def test_a_backend_the_bundle_cannot_serve_fails_with_the_reason(tagger_bundle):
    # tests/conftest.py's tagger-only bundle was exported without --fp16 (the full one has FP16 graphs)
    with pytest.raises(RuntimeError, match="ort-fp16.*fp16"):
        bench.run_bench(tagger_bundle.bundle, ["ort-fp16"], [1], max_posts=2, warmup=0, min_batches=1,
                        echo=lambda line: None)  # fmt: skip


def test_batch_plan_is_what_measure_pipeline_runs():
    assert bench.batch_plan(14, 4, warmup=1, min_batches=6) == ([4], [4, 4, 4, 2] * 2)
    assert bench.batch_plan(14, 8, warmup=3, min_batches=1) == ([8, 6, 8], [8, 6])
    assert bench.batch_plan(14, 32, warmup=0, min_batches=3) == ([], [14] * 3)


def test_the_bundle_is_hashed_once_before_measuring_and_not_in_the_workers(exported, tmp_path, monkeypatch):
    monkeypatch.setenv("MNER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(bundle_module, "RACY_SECONDS", 0.0)  # the module's bundle is seconds old
    hashed = []
    real = bundle_module.sha256_file
    monkeypatch.setattr(bundle_module, "sha256_file", lambda path: hashed.append(path.name) or real(path))
    listed = json.loads((exported["bundle"] / "manifest.json").read_text())["files"]
    common = dict(data=exported["corpus"] / "test.txt", max_posts=2, warmup=0, min_batches=1, echo=lambda line: None,
                  measure=measured_in_this_process(exported))  # fmt: skip
    report = bench.run_bench(exported["bundle"], ["ort"], [2], **common)
    assert sorted(hashed) == sorted(Path(name).name for name in listed)  # once each, by verify_bundle; none at load
    assert report["bundle"]["verify_s"] > 0 and report["settings"]["verify"] is True
    hashed.clear()
    trusted = bench.run_bench(exported["bundle"], ["ort"], [2], verify=False, **common)
    assert hashed == [] and trusted["bundle"]["verify_s"] is None and trusted["settings"]["verify"] is False
    assert "(--no-verify)" in write_report(trusted, tmp_path / "r")["markdown"].read_text()


def test_data_is_a_folder_and_its_split_or_one_file(exported, tmp_path):
    corpus = exported["corpus"]
    valid, _ = bench.load_workload(corpus, None, None, tmp_path, split="valid")
    assert len(valid) == 4 == len(read_conll(corpus / "valid.txt"))
    test, source = bench.load_workload(corpus / "test.txt", None, None, tmp_path, split="valid")  # a file: as is
    assert len(test) == 14 and source == str(corpus / "test.txt")
    sample, source = bench.load_workload(None, None, 3, tmp_path, split="valid")
    assert len(sample) == 3 and "built-in sample's valid split" in source
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "train.txt").write_text("")
    problems = bench.check_request(exported["bundle"], ["ort"], [1], "cpu", None, data=tmp_path / "partial")
    assert problems and "without test.txt" in problems[0]
    with pytest.raises(ValueError, match="split must be one of"):
        bench.load_workload(corpus, None, None, tmp_path, split="dev")


def test_cli_spellings_reach_run_bench(exported, tmp_path, monkeypatch):
    calls = []

    def fake_run_bench(**options):
        calls.append(options)
        raise ValueError("stop here")

    monkeypatch.setattr(bench, "run_bench", fake_run_bench)
    runner = CliRunner()
    engine = ["--engine", str(exported["bundle"])]
    result = runner.invoke(bench_command, [*engine, "--batch-size", "1,4", "--data", str(exported["corpus"]), "--split",
                                           "valid", "--checkpoint", str(exported["checkpoint"]), "--threads", "2",
                                           "--max-posts", "5", "--no-verify", "--no-progress", "-o", str(tmp_path / "o")])  # fmt: skip
    assert result.exit_code == 1 and "stop here" in result.output
    options = calls[-1]
    assert options["batch_sizes"] == [1, 4] and options["data"] == exported["corpus"] and options["split"] == "valid"
    assert options["checkpoint"] == exported["checkpoint"] and options["threads"] == 2 and options["max_posts"] == 5
    assert options["verify"] is False and options["progress"] is False
    # The old spellings still work, hidden from --help.
    result = runner.invoke(bench_command, [*engine, "--batch-sizes", "8", "--ckpt", str(exported["checkpoint"]),
                                           "--out", str(tmp_path / "o")])  # fmt: skip
    assert result.exit_code == 1 and "stop here" in result.output
    options = calls[-1]
    assert options["batch_sizes"] == [8] and options["checkpoint"] == exported["checkpoint"]
    assert options["verify"] is True and options["progress"] is None and options["split"] == "test"
    help_text = runner.invoke(bench_command, ["-h"], terminal_width=200).output
    for shown in ("--batch-size ", "-o, --output", "--checkpoint", "--data", "--split", "--no-verify", "--progress / --no-progress",
                  "--threads", "--max-posts", "--engine", "--version"):  # fmt: skip
        assert shown in help_text
    for hidden in ("--batch-sizes", "--ckpt", "--out "):
        assert hidden not in help_text
    result = runner.invoke(bench_command, [*engine, "--split", "dev"])
    assert result.exit_code == 2 and "'dev' is not one of" in result.output
    result = runner.invoke(bench_command, [*engine, "--threads", "0"])
    assert result.exit_code == 2 and "--threads" in result.output


def test_the_split_choices_are_the_runtime_s():
    assert bench_cli.SPLITS == tuple(SPLIT_FILES)


def test_help_imports_nothing_heavy():
    code = ("import sys, mner.benchmarks.cli; "
            "print(sorted(m for m in ('numpy', 'torch', 'matplotlib', 'onnxruntime', 'cv2') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
