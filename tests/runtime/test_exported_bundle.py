"""A real bundle, exported once per test session, through the runtime: reader, parity, torch-free, mner-tag.

The bundle is written by the export library from a tiny random checkpoint. Its vision
and detector stages are small stand-ins with the interfaces of GridEncoder and
ObjectDetector (a ResNet + RetinaNet export takes minutes on two cores); everything
the runtime does with them is what it does with the real ones.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from mner.runtime.bundle import Bundle, BundleError, sha256_file
from mner.runtime.cli import tag_command
from mner.runtime.conll import evaluate_entities, read_conll
from mner.runtime.pipeline import Pipeline, Post
from runtime_samples import jpeg, png_header_claiming

torch = pytest.importorskip("torch", reason="the bundle is exported with torch")

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "twitter2017"
SMALL = {"vocab_size": 2000, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
         "intermediate_size": 64, "augmentation_dim": 16}  # fmt: skip






class TinyGrid(torch.nn.Module):
    """GridEncoder's interface, (B, 3, 224, 224) -> (B, 49, 2048), in a few thousand weights."""

    def __init__(self, arch: str = "resnet152", seed: int = 0) -> None:
        super().__init__()
        self.arch, self.seed = arch, seed
        self.proj = torch.nn.Parameter(torch.randn(3, 2048, generator=torch.Generator().manual_seed(seed)))

    @classmethod
    def from_weights(cls, path, *, arch: str = "resnet152", seed: int = 0) -> TinyGrid:
        assert path is None
        return cls(arch, seed).eval()

    @property
    def weights_identity(self) -> str:
        return f"tiny-grid-{self.arch}:random-{self.seed}"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        cells = torch.nn.functional.adaptive_avg_pool2d(images, 7).flatten(2).transpose(1, 2)  # (B, 49, 3)
        return torch.tanh(cells @ self.proj)  # (B, 49, 2048)


class TinyDetector(torch.nn.Module):
    """ObjectDetector's interface: (B, 3, S, S) -> top-K scores, torchvision labels, boxes."""

    def __init__(self, size: int = 512, top_k: int = 100, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed + 1)
        self.size, self.top_k, self.seed = size, top_k, seed
        self.head = torch.nn.Parameter(torch.randn(48, 8 * 91, generator=generator) * 0.5)
        corners = torch.rand(8, 2, generator=generator) * size * 0.6
        sides = torch.rand(8, 2, generator=generator) * size * 0.4 + 8
        self.register_buffer("anchors", torch.cat([corners, corners + sides], dim=1), persistent=False)  # (8, 4)

    @classmethod
    def from_weights(cls, path, *, arch: str | None = None, size: int = 512, top_k: int = 100,
                     seed: int = 0) -> TinyDetector:  # fmt: skip
        assert path is None
        return cls(size, top_k, seed).eval()

    @property
    def weights_identity(self) -> str:
        return f"tiny-detector:random-{self.seed}"

    def forward(self, images: torch.Tensor):
        pooled = torch.nn.functional.adaptive_avg_pool2d(images, 4).flatten(1)  # (B, 48)
        top, index = (pooled @ self.head).topk(self.top_k, dim=1)  # (B, K)
        anchor = torch.div(index, 91, rounding_mode="floor")
        return top.sigmoid(), index % 91, self.anchors[anchor]  # (B, K), (B, K), (B, K, 4)


def sharpen(path: Path) -> None:
    """Scale a random checkpoint so its tags are decided and pictures matter.

    BERT's initialisation (std 0.02) gives emissions of std ~0.08: every tag nearly
    equally likely, and pictures moving scores by ~1e-4. Scaling the grid and object
    projections and the classifier by 50 gives emissions of std ~4 that pictures move
    by ~0.5, so parity is checked away from ties and on the picture path too.
    """
    from mner.train.checkpoint import load_checkpoint, save_checkpoint  # noqa: PLC0415

    checkpoint = load_checkpoint(path)
    model = checkpoint.model
    with torch.no_grad():
        for module in (model.grid_to_text, model.grid_to_text_v2, model.object_embeddings, model.classifier):
            module.weight.mul_(50)
    save_checkpoint(path, model, checkpoint.scheme, checkpoint.text_encoder, **checkpoint.payload)


def stand_in_encoders(patch: pytest.MonkeyPatch) -> None:
    """Put TinyGrid and TinyDetector where export and the torch backend build the real encoders."""
    from mner.export import detector as export_detector  # noqa: PLC0415
    from mner.export import vision as export_vision  # noqa: PLC0415
    from mner.train import vision as train_vision  # noqa: PLC0415

    for module in (export_vision, train_vision):
        patch.setattr(module, "GridEncoder", TinyGrid)
    for module in (export_detector, train_vision):
        patch.setattr(module, "ObjectDetector", TinyDetector)


def export_tiny_bundle(root: Path) -> SimpleNamespace:
    """The tiny bundle (all three stages) under ``root``: exported once per test session (conftest.py)."""
    from mner.export.pipeline import export_bundle  # noqa: PLC0415
    from mner.export.random_checkpoint import make_random_checkpoint  # noqa: PLC0415

    train = DATA / "train.txt"
    words = [w for post in read_conll(train) for w in post.words] if train.is_file() else None
    with pytest.MonkeyPatch.context() as patch:
        stand_in_encoders(patch)
        checkpoint = make_random_checkpoint(root / "best.pt", preset="tiny", seed=0, words=words, **SMALL)
        sharpen(checkpoint)
        result = export_bundle(ckpt=checkpoint, out=root / "bundle", vision_arch="resnet50", detector_size=128, seed=0)
    return SimpleNamespace(bundle=result.path, checkpoint=checkpoint, root=root)


@pytest.fixture(scope="module")
def exported(exported_once):
    """The session's tiny bundle; the stand-in encoders stay patched in while the module runs
    (the torch backend rebuilds them). Tests copy the bundle before changing it."""
    with pytest.MonkeyPatch.context() as patch:
        stand_in_encoders(patch)
        yield exported_once


@pytest.fixture(scope="module")
def ort_pipeline(exported):
    with Pipeline.from_bundle(exported.bundle, batch_size=32) as pipeline:
        yield pipeline


def copy_bundle(exported, tmp_path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(exported.bundle, target)
    return target


def rewrite_manifest(bundle: Path, change) -> None:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_bundle_reader_opens_what_export_wrote(exported):
    bundle = Bundle.open(exported.bundle)
    assert set(bundle.stages) == {"detector", "vision", "tagger"} and bundle.has_images
    assert bundle.scheme.entity_types == ("LOC", "MISC", "ORG", "PER")
    assert bundle.crf().transitions.shape == (13, 13)
    assert bundle.stages["tagger"].axes["sequence"] == (1, 128)
    assert bundle.object_settings == {"score_threshold": 0.5, "iou_threshold": 0.5, "max_objects": 5}


def test_bundle_reader_names_every_changed_missing_or_unlisted_file(exported, tmp_path):
    bundle = copy_bundle(exported, tmp_path)
    with open(bundle / "tagger.onnx", "r+b") as f:  # same size, one byte different
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    (bundle / "crf.npz").unlink()
    (bundle / "notes.txt").write_text("left behind")
    with pytest.raises(BundleError) as caught:
        Bundle.open(bundle)
    message = str(caught.value)
    assert "tagger.onnx: sha256" in message and "crf.npz: missing" in message
    assert "notes.txt: not listed in the manifest" in message and "re-export" in message
    Bundle.open(exported.bundle, verify=False)


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda m: m.update(format_version=2), "format_version 2, this runtime reads 1; upgrade mner"),
        (lambda m: m.update(format="something"), "not an mner bundle manifest"),
        (lambda m: m["preprocessing"]["image"].update(mean=[0.5, 0.5, 0.5]), "other image preprocessing"),
        (lambda m: m["crf"]["arrays"].update(start=[7]), "crf.arrays"),
        (lambda m: m["preprocessing"].update(text={"splitter": "nltk"}), "preprocessing.text must name a word splitter"),
        (lambda m: m["stages"].pop("vision"), "detector and vision come together"),
        (lambda m: m["stages"]["tagger"]["outputs"][0].update(shape=["batch", "sequence", 9]), "emissions"),
        (lambda m: m["stages"]["tagger"]["dynamic_axes"].pop("sequence"), "does not bound"),
        (lambda m: m["files"]["crf.npz"].update(bytes=3), "crf.npz: 1536 bytes, the manifest says 3"),
    ],
)
def test_bundle_reader_refuses_an_inconsistent_manifest(exported, tmp_path, change, expected):
    bundle = copy_bundle(exported, tmp_path)
    rewrite_manifest(bundle, change)
    with pytest.raises(BundleError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        Bundle.open(bundle)


def test_bundle_names_its_splitter_and_older_bundles_read_as_tweet(exported, tmp_path):
    assert Bundle.open(exported.bundle).splitter == "tweet"
    bundle = copy_bundle(exported, tmp_path)
    rewrite_manifest(bundle, lambda m: m["preprocessing"].pop("text"))  # as written before the splitter was recorded
    assert Bundle.open(bundle).splitter == "tweet"
    rewrite_manifest(bundle, lambda m: m["preprocessing"].update(text={"splitter": "whitespace"}))
    assert Bundle.open(bundle).splitter == "whitespace"


def test_bundle_reader_refuses_what_is_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        Bundle.open(tmp_path / "nothing")
    with pytest.raises(BundleError, match="manifest.json is missing"):
        Bundle.open(tmp_path)
    (tmp_path / "manifest.json").write_text("{oops")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.open(tmp_path)


def test_engines_are_matched_to_the_gpu_and_tensorrt_version(exported, tmp_path):
    bundle = copy_bundle(exported, tmp_path)
    with pytest.raises(BundleError, match="holds no TensorRT engines"):
        Bundle.open(bundle).engine_for("NVIDIA H100 80GB HBM3", "9.0", "10.13.0")
    engine_dir = bundle / "engines" / "nvidia-h100-80gb-hbm3-trt10.13.0"
    engine_dir.mkdir(parents=True)
    identity = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "tensorrt": "10.13.0"}
    (engine_dir / "tagger.plan").write_bytes(b"not really an engine")
    (engine_dir / "tagger.meta.json").write_text(json.dumps({"stage": "tagger", **identity}))
    (engine_dir / "timing.cache").write_bytes(b"")
    profile = {"input_ids": {"min": [1, 8], "opt": [16, 64], "max": [64, 128]}}

    def add_engine(manifest):
        rel = "engines/nvidia-h100-80gb-hbm3-trt10.13.0"
        manifest["engines"] = {"nvidia-h100-80gb-hbm3-trt10.13.0": {
            "dir": rel, **identity, "cuda": "12.8", "timing_cache": f"{rel}/timing.cache",
            "stages": {"tagger": {"file": f"{rel}/tagger.plan", "meta": f"{rel}/tagger.meta.json",
                                  "source_graph": "tagger.fp16.onnx", "profiles": [profile]}}}}  # fmt: skip
        for path in engine_dir.iterdir():
            manifest["files"][f"{rel}/{path.name}"] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}

    rewrite_manifest(bundle, add_engine)
    opened = Bundle.open(bundle)
    assert opened.engine_for("NVIDIA H100 80GB HBM3", "9.0", "10.13.0").plans["tagger"] == engine_dir / "tagger.plan"
    with pytest.raises(BundleError) as caught:
        opened.engine_for("NVIDIA A100-SXM4-80GB", "8.0", "10.14.1")
    message = str(caught.value)
    assert "built for NVIDIA H100 80GB HBM3 (compute capability 9.0) and built with TensorRT 10.13.0" in message
    assert "this machine (NVIDIA A100-SXM4-80GB, compute capability 8.0, TensorRT 10.14.1)" in message
    assert "mner-export --trt" in message
    (engine_dir / "tagger.meta.json").write_text(json.dumps({"stage": "tagger", **identity, "tensorrt": "10.12.0"}))
    rewrite_manifest(bundle, lambda m: m["files"][f"engines/{engine_dir.name}/tagger.meta.json"].update(
        sha256=sha256_file(engine_dir / "tagger.meta.json"), bytes=(engine_dir / "tagger.meta.json").stat().st_size))  # fmt: skip
    with pytest.raises(BundleError, match="tagger.meta.json says .* TensorRT 10.12.0"):
        Bundle.open(bundle)


def reference_tags(exported, posts: list[list[str]], image_paths=None) -> list[list[str]]:
    """The PyTorch path training evaluates with: trainer.predict over encoded posts and cached features."""
    from mner.train.checkpoint import load_checkpoint  # noqa: PLC0415
    from mner.train.trainer import Example, Features, predict  # noqa: PLC0415
    from mner.train.vision import FeatureCache  # noqa: PLC0415

    checkpoint = load_checkpoint(exported.checkpoint)
    encoder, config = checkpoint.text_encoder, checkpoint.config
    examples = []
    for index, encoded in enumerate(encoder.encode_many(posts)):
        assert not encoded.truncated
        unused = np.zeros(len(encoded), dtype=np.int64)
        examples.append(Example(encoded.input_ids, encoded.aug_ids, encoded.roles, unused, unused, [], index))
    if image_paths is None:
        features = Features.none(len(posts), config.num_objects)
    else:
        cache = FeatureCache(exported.root / "feature-cache", TinyGrid.from_weights(None, arch="resnet50"),
                             TinyDetector.from_weights(None, size=128), max_objects=config.num_objects)  # fmt: skip
        batch = cache.get_or_compute(image_paths)
        features = Features(batch.grid, batch.grid_mask.astype(np.int64), batch.object_ids)
    return predict(checkpoint.model, examples, features, checkpoint.scheme, encoder.pad_id, torch.device("cpu"))


@pytest.mark.skipif(not (DATA / "test.txt").is_file(), reason=f"TWITTER-2017 test split not found at {DATA / 'test.txt'}")
def test_ort_pipeline_tags_equal_pytorch_on_every_twitter2017_test_sentence(exported, ort_pipeline):
    posts = [post.words for post in read_conll(DATA / "test.txt")]
    results = ort_pipeline.tag([" ".join(words) for words in posts])
    expected = reference_tags(exported, posts)
    differing = [i for i, (r, e) in enumerate(zip(results, expected)) if r.tags != e]
    assert len(results) == len(posts) > 700 and not differing, f"{len(differing)} posts differ, first {differing[:5]}"
    assert sum(len(r.entities) for r in results) > 0


def test_raw_tweets_are_split_as_the_training_data_was(ort_pipeline):
    tweets = ["RT @fan: Taylor Swift meets Drake in #Toronto! 😂", "It's the 2nd time... May 21, 2016 :)"]
    data_words = [
        ["RT", "@", "fan", ":", "Taylor", "Swift", "meets", "Drake", "in", "#", "Toronto", "!", "😂"],
        ["It", "'", "s", "the", "2", "nd", "time", ".", ".", ".", "May", "21,", "2016", ":)"],
    ]
    raw, pre_split = ort_pipeline.tag(tweets), ort_pipeline.tag_words(data_words)
    for tweet, words, r, p in zip(tweets, data_words, raw, pre_split):
        assert [w.text for w in r.words] == words
        assert all(tweet[w.start : w.end] == w.text for w in r.words)
        assert r.tags == p.tags  # the same words give the same tags, whichever way they came
        assert [e.type for e in r.entities] == [e.type for e in p.entities]
        assert all(e.text == tweet[e.start : e.end] for e in r.entities)


def test_a_bundles_splitter_can_be_overridden_and_a_wrong_name_is_refused(exported):
    with Pipeline.from_bundle(exported.bundle, splitter="whitespace") as pipeline:
        assert pipeline.splitter == "whitespace"
        assert [w.text for w in pipeline.tag(["in #Toronto!"])[0].words] == ["in", "#Toronto!"]
    with pytest.raises(ValueError, match="unknown word splitter 'nltk'"):
        Pipeline.from_bundle(exported.bundle, splitter="nltk")


def test_tag_words_keeps_pre_split_words_as_given(ort_pipeline):
    words = ["Kawhi", "\xa0", "Leonard", "\u200b", "New York", "!"]  # a U+00A0 word, an emptied word, a spaced word
    result = ort_pipeline.tag_words([words])[0]
    assert result.ok and [w.text for w in result.words] == words and len(result.tags) == len(words)
    text = " ".join(words)
    assert all(text[w.start : w.end] == w.text for w in result.words)
    assert "no words" in ort_pipeline.tag_words([[]])[0].error
    assert "not non-empty strings: ['']" in ort_pipeline.tag_words([["a", ""]])[0].error


def synthetic_posts(count: int, tmp_path: Path) -> tuple[list[str], list[Path]]:
    rng = np.random.default_rng(5)
    words = "Kawhi Leonard visits Toronto with the Raptors fans in Paris and New York today".split()
    texts, paths = [], []
    for i in range(count):
        texts.append(" ".join(rng.choice(words, size=int(rng.integers(3, 15)))))
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(jpeg(int(rng.integers(40, 300)), int(rng.integers(40, 300)), seed=i))
        paths.append(path)
    return texts, paths


def test_ort_pipeline_tags_equal_pytorch_on_posts_with_synthetic_pictures(exported, ort_pipeline, tmp_path):
    texts, paths = synthetic_posts(24, tmp_path)
    results = ort_pipeline.tag([Post(text, path.read_bytes()) for text, path in zip(texts, paths)])
    assert all(r.ok for r in results) and sum(bool(r.objects) for r in results) > 12  # the pictures were used
    expected = reference_tags(exported, [text.split() for text in texts], paths)
    assert [r.tags for r in results] == expected
    # The tiny model's tags barely depend on pictures; its scores show that they reached the tagger.
    no_pictures = ort_pipeline.tag(texts)
    moved = max(np.abs(np.subtract(a.scores, b.scores)).max() for a, b in zip(results, no_pictures))
    assert moved > 1e-3


def test_torch_backend_gives_the_ort_backend_s_tags_with_pictures_and_windows(exported, tmp_path):
    texts, paths = synthetic_posts(10, tmp_path)
    long_text = " ".join(["Leonard visits Toronto with the Raptors fans"] * 12)
    posts = [Post(text, path.read_bytes()) for text, path in zip(texts, paths)] + [Post(long_text, paths[0].read_bytes())]
    options = {"max_length": 16, "batch_size": 8}
    with Pipeline.from_bundle(exported.bundle, "ort", **options) as ort_pipe, \
         Pipeline.from_bundle(exported.bundle, "torch", checkpoint=exported.checkpoint, **options) as torch_pipe:  # fmt: skip
        ours, reference = ort_pipe.tag(posts), torch_pipe.tag(posts)
    assert ours[-1].windows > 3
    assert [r.tags for r in ours] == [r.tags for r in reference]
    assert [r.objects for r in ours] == [r.objects for r in reference]
    for a, b in zip(ours, reference):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)


def test_torch_backend_needs_the_checkpoint_the_bundle_came_from(exported, tmp_path):
    with pytest.raises(ValueError, match="pass checkpoint=PATH"):
        Pipeline.from_bundle(exported.bundle, "torch")
    other = tmp_path / "other.pt"
    other.write_bytes(exported.checkpoint.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="the bundle was exported from best.pt with sha256"):
        Pipeline.from_bundle(exported.bundle, "torch", checkpoint=other)
    with pytest.raises(ValueError, match="precision applies to the ort backend only"):
        Pipeline.from_bundle(exported.bundle, "torch", precision="fp16", checkpoint=exported.checkpoint)
    with pytest.raises(BundleError, match=r"has \['fp32'\] graphs, not 'fp16'; export with --fp16"):
        Pipeline.from_bundle(exported.bundle, precision="fp16")


BLOCK_TORCH = """
import sys
class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "transformers"):
            raise ImportError(f"{name} is blocked: the runtime must not need it")
sys.meta_path.insert(0, BlockTorch())
"""


def test_import_and_a_full_tag_run_without_torch(exported, tmp_path):
    picture = tmp_path / "p.jpg"
    picture.write_bytes(jpeg(120, 90, 3))
    script = BLOCK_TORCH + f"""
import mner.runtime
from mner.runtime.pipeline import Pipeline, Post
pipeline = Pipeline.from_bundle({str(exported.bundle)!r})
results = pipeline.tag([Post("Kawhi Leonard visits Toronto", open({str(picture)!r}, "rb").read()), "Paris", "  "])
assert [r.ok for r in results] == [True, True, False], results
assert results[0].objects, results[0]
assert not any(m.split(".")[0] in ("torch", "torchvision", "transformers") for m in sys.modules)
print("tagged", len(results[0].tags), "words")
"""
    env = {**os.environ, "PYTHONPATH": str(REPO / ".dev")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "tagged 4 words"


# --------------------------------------------------------------------------- mner-tag on the bundle


def bad_inputs_file(tmp_path: Path) -> tuple[Path, Path]:
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    (pictures / "good.jpg").write_bytes(jpeg(80, 120, 4))
    (pictures / "text.jpg").write_text("I am a text file with a .jpg name\n")
    (pictures / "corrupt.jpg").write_bytes(jpeg(80, 120, 5)[:300])
    (pictures / "bomb.png").write_bytes(png_header_claiming(50_000, 50_000))
    good_b64 = base64.b64encode((pictures / "good.jpg").read_bytes()).decode()
    lines = [
        json.dumps({"id": "ok-path", "text": "Kawhi Leonard visits Toronto", "image": "good.jpg"}),
        json.dumps({"id": "ok-base64", "text": "Raptors fans in Paris", "image_base64": good_b64}),
        json.dumps({"id": "corrupt", "text": "corrupt picture", "image": "corrupt.jpg"}),
        json.dumps({"id": "text-as-jpg", "text": "a text file", "image": "text.jpg"}),
        json.dumps({"id": "bomb", "text": "over the pixel limit", "image": "bomb.png"}),
        json.dumps({"id": "bad-base64", "text": "invalid base64", "image_base64": "%%%not-base64%%%"}),
        json.dumps({"id": "empty", "text": ""}),
        json.dumps({"id": "blank", "text": " \t "}),
        "this line is not JSON",
        json.dumps({"id": "no-text"}),
        json.dumps({"text": "no id"}),
        json.dumps({"id": "ok-no-image", "text": "New York today"}),
    ]
    data = "\n".join(lines).encode() + b'\n{"id": "latin1", "text": "caf\xe9"}\n' + json.dumps({"id": 99, "text": "last"}).encode()
    path = tmp_path / "posts.jsonl"
    path.write_bytes(data)
    return path, pictures


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_mner_tag_gives_every_bad_line_its_error_and_tags_the_rest(exported, tmp_path):
    posts, pictures = bad_inputs_file(tmp_path)
    output = tmp_path / "tagged.jsonl"
    arguments = ["--engine", str(exported.bundle), "--input", str(posts), "--output", str(output),
                 "--images", str(pictures), "--batch-size", "4", "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(tag_command, arguments)
    assert result.exit_code == 3, result.output  # finished, with error records
    records = read_records(output)
    assert [r["line"] for r in records] == list(range(1, 15))
    by_id = {r["id"]: r for r in records if r["id"] is not None}
    for tagged in ("ok-path", "ok-base64", "ok-no-image", 99):
        assert "entities" in by_id[tagged] and "error" not in by_id[tagged]
    assert by_id["ok-path"]["objects"] == by_id["ok-base64"]["objects"] != []
    expected = {
        "corrupt": "image: 'corrupt.jpg': corrupt JPEG",
        "text-as-jpg": "image: 'text.jpg' is not a picture (supported: PNG, JPEG, GIF, BMP, WEBP)",  # no bytes quoted
        "bomb": "over the limit of 40000000", "bad-base64": "image: image_base64: invalid base64",
        "empty": "text is empty", "blank": "whitespace only",
        "no-text": "missing field 'text'",
    }  # fmt: skip
    for post_id, fragment in expected.items():
        assert fragment in by_id[post_id]["error"], by_id[post_id]
    assert "not JSON" in records[8]["error"] and records[10]["error"] == "missing field 'id'"
    assert "not UTF-8" in records[12]["error"] and records[12]["id"] is None
    assert "14 lines" in result.output and "4 tagged" in result.output and "10 errors" in result.output

    before = output.read_bytes()
    again = CliRunner().invoke(tag_command, arguments)
    assert again.exit_code == 3 and "14 already done (10 of them errors)" in again.output
    assert output.read_bytes() == before


def test_kill_9_mid_run_then_rerun_gives_exactly_one_record_per_line(exported, tmp_path):
    count = 1500
    posts = tmp_path / "many.jsonl"
    posts.write_text("".join(json.dumps({"id": f"p{i}", "text": f"Kawhi Leonard {i} visits Toronto with fans"}) + "\n"
                             for i in range(count)))  # fmt: skip
    output = tmp_path / "tagged.jsonl"
    command = [sys.executable, "-m", "mner.runtime.cli", "--engine", str(exported.bundle), "--input", str(posts),
               "--output", str(output), "--no-progress"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / ".dev")}
    process = subprocess.Popen([*command, "--batch-size", "1"], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if output.exists() and output.stat().st_size > 4000:
            break
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    written = output.read_bytes().count(b"\n")
    assert 0 < written < count, f"the kill came too late to test anything ({written} of {count} written)"

    subprocess.run([*command, "--batch-size", "64"], env=env, check=True, capture_output=True, timeout=120)
    records = read_records(output)
    assert [r["id"] for r in records] == [f"p{i}" for i in range(count)]
    assert [r["line"] for r in records] == list(range(1, count + 1))
    assert all("entities" in r for r in records)


@pytest.mark.skipif(not (DATA / "test.txt").is_file(), reason=f"TWITTER-2017 test split not found at {DATA / 'test.txt'}")
def test_mner_tag_conll_mode_reports_scores_of_the_written_tags(exported, tmp_path):
    posts = read_conll(DATA / "test.txt")[:40]
    sample = tmp_path / "sample.txt"
    sample.write_text("".join(f"IMGID:{p.image_id}\n" + "".join(f"{w}\t{t}\n" for w, t in zip(p.words, p.tags)) + "\n"
                              for p in posts))  # fmt: skip
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for i, post in enumerate(posts[:10]):
        (pictures / f"{post.image_id}.jpg").write_bytes(jpeg(64, 64, i))
    output, metrics = tmp_path / "tagged.jsonl", tmp_path / "metrics.json"
    result = CliRunner().invoke(tag_command, ["--engine", str(exported.bundle), "--conll", str(sample), "--images",
                                              str(pictures), "--output", str(output), "--metrics", str(metrics)])  # fmt: skip
    assert result.exit_code == 0, result.output
    records = read_records(output)
    assert len(records) == 40 and all("tags" in r for r in records)
    assert sum("image_error" in r for r in records) == 30  # pictures 10..39 are missing: tagged from text
    scores = json.loads(metrics.read_text())
    assert scores == evaluate_entities([p.tags for p in posts], [r["tags"] for r in records])
    assert "micro" in result.output and "precision" in result.output
