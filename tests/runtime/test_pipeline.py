"""mner.runtime.pipeline on fake runners: offsets, windows, per-post errors, pictures, concurrency.

The fake tagger scores each word-piece on its own (a table lookup), so what these tests
check is the pipeline's bookkeeping; test_exported_bundle.py runs it on real graphs.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest

from mner.runtime.bundle import StageInfo, TensorInfo
from mner.runtime.decode import CRFParameters
from mner.runtime.pipeline import Pipeline, Post
from mner.runtime.runners import Runner
from mner.runtime.splitters import get_splitter
from mner.runtime.tags import TagScheme, bio_violations
from mner.runtime.text import SPECIAL_TOKENS, SpecialTokens, TextEncoder, bert_tokenizer
from runtime_samples import jpeg, png_header_claiming




# --------------------------------------------------------------------------- fake runners

SCHEME = TagScheme(("LOC", "PER"))
LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@:/.#"
VOCAB = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *LETTERS, *(f"##{c}" for c in LETTERS)])}
GRID = (49, 8)


class FakeRunner(Runner):
    backend = "fake"

    def __init__(self, stage: StageInfo, function) -> None:
        super().__init__(stage)
        self.function = function
        self.calls = 0

    def _activate(self) -> None:
        pass

    def _infer(self, feed):
        self.calls += 1
        return self.function(feed)

    def _deactivate(self) -> None:
        pass


def tagger_stage() -> StageInfo:
    batch_sequence = ("batch", "sequence")
    inputs = (TensorInfo("input_ids", "int64", batch_sequence), TensorInfo("attention_mask", "int64", batch_sequence),
              TensorInfo("aug_ids", "int64", batch_sequence), TensorInfo("grid", "float32", ("batch", *GRID)),
              TensorInfo("image_mask", "int64", ("batch",)), TensorInfo("object_ids", "int64", ("batch", 5)))  # fmt: skip
    outputs = (TensorInfo("emissions", "float32", ("batch", "sequence", SCHEME.num_tags)),)
    return StageInfo("tagger", inputs, outputs, {"batch": (1, 64), "sequence": (1, 128)})


def fake_pipeline(favour: str | None = None, seed: int = 0, image_hook=None, **options) -> Pipeline:
    """A pipeline whose tagger scores each word-piece on its own (no context): emissions[piece] from a table.

    ``favour`` adds a large score to one tag at every word. With zero CRF transitions each
    position is then decoded on its own, so windows cannot change any tag.
    """
    table = np.random.default_rng(seed).normal(size=(len(VOCAB), SCHEME.num_tags)).astype(np.float32)
    if favour is not None:
        table[:, SCHEME.index[favour]] += 50.0

    def tag(feed):
        return {"emissions": table[feed["input_ids"]]}  # (B, L, T)

    def vision(feed):
        if image_hook:
            image_hook("vision")
        return {"grid": np.zeros((len(feed["images"]), *GRID), np.float32)}

    def detect(feed):
        if image_hook:
            image_hook("detector")
        images = feed["images"]  # (B, 3, S, S): label by the dominant colour, 1 = person (red), 3 = car (blue)
        red = images[:, 0].mean(axis=(1, 2)) > images[:, 2].mean(axis=(1, 2))
        labels = np.where(red, 1, 3)[:, None].repeat(4, axis=1).astype(np.int64)
        scores = np.tile(np.array([0.9, 0.2, 0.1, 0.05], np.float32), (len(images), 1))
        boxes = np.tile(np.array([0, 0, 10, 10], np.float32), (len(images), 4, 1))
        return {"scores": scores, "labels": labels, "boxes": boxes}

    image_stage = StageInfo("vision", (TensorInfo("images", "float32", ("batch", 3, 224, 224)),),
                            (TensorInfo("grid", "float32", ("batch", *GRID)),), {"batch": (1, 64)})  # fmt: skip
    detector_stage = StageInfo("detector", (TensorInfo("images", "float32", ("batch", 3, 64, 64)),),
                               (TensorInfo("scores", "float32", ("batch", 4)), TensorInfo("labels", "int64", ("batch", 4)),
                                TensorInfo("boxes", "float32", ("batch", 4, 4))), {"batch": (1, 64)})  # fmt: skip
    zeros = np.zeros(SCHEME.num_tags, np.float32)
    options.setdefault("detector", FakeRunner(detector_stage, detect))
    options.setdefault("vision", FakeRunner(image_stage, vision))
    options.setdefault("tagger", FakeRunner(tagger_stage(), tag))
    return Pipeline(
        encoder=TextEncoder(bert_tokenizer(VOCAB), {}, max_length=64),
        scheme=SCHEME,
        crf=CRFParameters(zeros, zeros, np.zeros((SCHEME.num_tags,) * 2, np.float32)),
        object_settings={"score_threshold": 0.5, "iou_threshold": 0.5, "max_objects": 5},
        detector_size=64,
        **options,
    )


ADVERSARIAL = [
    "  leading and trailing spaces  ",
    "tabs\tbetween\twords\tand\ttrailing\t",
    "emoji 👩‍👩‍👧‍👦 family and 🇫🇷 flag and 👍🏽 thumbs",
    "zero\u200dwidth\u200djoiners and a\u200b zero-width space",
    "combining e\u0301 cafe\u0301 and Z\u0335\u0322a\u0336lgo",
    "repeated word word word word Paris Paris Paris",
    "url https://t.co/AbC123?x=1&y=2 and @mention and #hashtag",
    "line\nbreaks\r\nand\u00a0no-break\u2003em-space\u3000ideographic",
    "RT @user : Kawhi Leonard visits Toronto ! ! !",
    "x",
    "lone \u200d joiner, \ufeff BOM, nul\x00 char and info\x1cseparator",
]


@pytest.mark.parametrize("splitter", ["tweet", "whitespace"])
@pytest.mark.parametrize("favour", ["B-PER", "I-LOC", None])
def test_entity_offsets_index_the_original_text(favour, splitter):
    pipeline = fake_pipeline(favour, splitter=splitter)
    results = pipeline.tag(ADVERSARIAL)
    split = get_splitter(splitter)
    for text, result in zip(ADVERSARIAL, results):
        assert result.ok, result.error
        assert result.words == split(text)
        for entity in result.entities:
            assert text[entity.start : entity.end] == entity.text
            assert entity.text == entity.text.strip() and 0.0 <= entity.score <= 1.0
    if favour == "B-PER":  # every word its own entity
        for text, result in zip(ADVERSARIAL, results):
            assert [e.text for e in result.entities] == [w.text for w in split(text)]
    if favour == "I-LOC":  # one entity from the first word to the last, inner whitespace as it was
        for text, result in zip(ADVERSARIAL, results):
            assert [e.text for e in result.entities] == [text.strip()]
            # An I-x cannot start a post: a one-word post's tag is B-LOC, not favoured, so less sure.
            assert result.entities[0].score > (0.99 if len(result.words) > 1 else 0.5)


def test_long_text_is_windowed_not_truncated_and_tags_do_not_depend_on_the_window():
    text = " ".join(f"w{i}rd" if i % 7 else "Zzz" for i in range(300)) + "  \tend"
    whole = fake_pipeline(max_length=64).tag([text])[0]
    small = fake_pipeline(max_length=12).tag([text])[0]
    assert len(whole.tags) == len(small.tags) == len(text.split())
    assert whole.windows > 1 and small.windows > whole.windows
    assert small.tags == whole.tags and not bio_violations(whole.tags)  # seams between windows too
    # Under the BIO constraints a word's marginal depends on which neighbours its window
    # holds (an I-x needs one before it), so scores near window edges move a little.
    np.testing.assert_allclose(small.scores, whole.scores, atol=0.05)
    spans = lambda result: [(e.type, e.start, e.end, e.text) for e in result.entities]  # noqa: E731
    assert spans(small) == spans(whole)
    assert small.entities[-1].end <= len(text)


def test_each_bad_post_gets_its_own_error_and_the_rest_are_tagged(tmp_path):
    good = jpeg(40, 60, 0)
    posts = [
        "fine text",
        "",
        "  \t \n ",
        Post("corrupt picture", good[: len(good) // 2]),
        Post("text file named .jpg", b"just some words, not a picture\n"),
        Post("decompression bomb", png_header_claiming(100_000, 100_000)),
        Post("not bytes", image="a/path.jpg"),
        {"text": "a mapping", "image": good},
        {"txt": "wrong key"},
        42,
        Post(None),
        Post("last good one", good),
    ]
    results = fake_pipeline().tag(posts)
    assert len(results) == len(posts)
    errors = [r.error for r in results]
    assert errors[0] is None and errors[7] is None and errors[11] is None
    assert "empty" in errors[1] and "whitespace only" in errors[2]
    assert errors[3].startswith("image: corrupt JPEG")
    assert errors[4].startswith("image: not an image")
    assert "over the limit" in errors[5]
    assert "image must be bytes" in errors[6]
    assert "needs 'text'" in errors[8] and "Post, a str or a mapping" in errors[9] and "must be a string" in errors[10]
    assert results[11].objects == results[7].objects != []
    assert all(r.to_dict() == {"error": r.error} for r in results if not r.ok)


def test_text_only_policy_tags_the_text_and_says_why_the_picture_was_dropped():
    result = fake_pipeline(on_bad_image="text-only").tag([Post("some words", b"\x00garbage")])[0]
    assert result.ok and result.tags and result.objects == []
    assert result.image_error.startswith("not an image")
    assert result.to_dict()["image_error"] == result.image_error


def test_a_text_only_pipeline_refuses_pictures_per_post():
    pipeline = fake_pipeline(detector=None, vision=None)
    results = pipeline.tag([Post("with picture", jpeg(20, 20, 1)), "without"])
    assert "no detector and vision stages" in results[0].error and results[1].ok


def test_pictures_follow_their_posts_across_batches():
    red = cv2.imencode(".png", np.full((30, 50, 3), (0, 0, 255), np.uint8))[1].tobytes()  # BGR red
    blue = cv2.imencode(".png", np.full((30, 50, 3), (255, 0, 0), np.uint8))[1].tobytes()
    posts = [Post("a", red), Post("b"), Post("c", blue), Post("d", blue), Post("e"), Post("f", red), Post("g", b"bad")]
    pipeline = fake_pipeline(batch_size=2, on_bad_image="text-only")
    objects = [r.objects for r in pipeline.tag(posts)]
    assert objects == [["person"], [], ["car"], ["car"], [], ["person"], []]
    assert pipeline.tagger.calls == 4  # 7 posts in batches of 2


def test_detector_and_vision_run_concurrently():
    barrier = threading.Barrier(2, timeout=10)  # breaks unless both stages are inside infer at once
    results = fake_pipeline(image_hook=lambda name: barrier.wait()).tag([Post("x", jpeg(20, 30, 2))])
    assert results[0].ok and results[0].objects in (["person"], ["car"])


def test_pipeline_validates_its_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        fake_pipeline(batch_size=0)
    with pytest.raises(ValueError, match="on_bad_image"):
        fake_pipeline(on_bad_image="ignore")
    with pytest.raises(ValueError, match="come together"):
        fake_pipeline(detector=None)
    with pytest.raises(ValueError, match="max_length"):
        fake_pipeline(max_length=65)
    with pytest.raises(ValueError, match="sequence of posts"):
        fake_pipeline().tag("one text")
    with pytest.raises(ValueError, match="images"):
        fake_pipeline().tag_words([["a"]], [None, None])
    with pytest.raises(ValueError, match="backend"):
        Pipeline.from_bundle("nowhere", backend="tensorflow")


def test_tag_words_keeps_words_as_given():
    results = fake_pipeline("B-LOC").tag_words([["New", "York"], ["a word", "#x!"], [], ["a", ""]])
    assert [e.text for e in results[0].entities] == ["New", "York"] and results[0].entities[1].start == 4
    assert [w.text for w in results[1].words] == ["a word", "#x!"]  # pre-split words are never split again
    assert "no words" in results[2].error and "not non-empty strings" in results[3].error


@pytest.mark.parametrize("dynamic_cells", [True, False])
def test_a_batch_without_pictures_sends_the_tagger_one_grid_cell_when_the_graph_takes_it(dynamic_cells):
    seen = []
    stage = tagger_stage()
    if dynamic_cells:  # a bundle exported with the dynamic cell axis; an older one has 49 fixed
        inputs = tuple(TensorInfo("grid", "float32", ("batch", "grid_cells", GRID[1])) if t.name == "grid" else t
                       for t in stage.inputs)  # fmt: skip
        stage = StageInfo("tagger", inputs, stage.outputs, {**stage.axes, "grid_cells": (1, GRID[0])})
    table = np.random.default_rng(0).normal(size=(len(VOCAB), SCHEME.num_tags)).astype(np.float32)

    def tag(feed):
        seen.append((feed["grid"].shape[1], feed["image_mask"].tolist()))
        return {"emissions": table[feed["input_ids"]]}

    with fake_pipeline(tagger=FakeRunner(stage, tag), batch_size=2) as pipeline:
        results = pipeline.tag([Post("abc def"), Post("de fa"), Post("cab", image=jpeg(40, 50, 1)), Post("ab")])
    assert all(r.ok for r in results)
    fewest = 1 if dynamic_cells else GRID[0]
    assert seen == [(fewest, [0, 0]), (GRID[0], [0, 1])]  # per batch of two, sorted by length inside it


def test_a_post_whose_splitting_raises_gets_the_error_and_the_others_are_tagged(caplog):
    pipeline = fake_pipeline("B-LOC")
    split = pipeline.split

    def fragile(text):
        if "boom" in text:
            raise RuntimeError("the splitter broke")
        return split(text)

    pipeline.split = fragile
    results = pipeline.tag(["Paris !", "boom here", "Rome"])
    assert results[1].error == "tagging failed: RuntimeError: the splitter broke"
    assert [e.text for e in results[0].entities] == ["Paris", "!"] and results[2].ok
    assert "the splitter broke" in caplog.text


def test_a_shorter_window_keeps_the_vocabularys_own_special_tokens():
    # A BERT directory may name its special pieces otherwise (<pad>, <unk>, <s>, </s>); the
    # pipeline's max_length override rebuilds the encoder and must keep those names.
    names = SpecialTokens(pad="<pad>", unk="<unk>", cls="<s>", sep="</s>")
    vocab = {token: i for i, token in enumerate([*names.names(), *LETTERS, *(f"##{c}" for c in LETTERS)])}
    encoder = TextEncoder(bert_tokenizer(vocab, special_tokens=names), {}, max_length=64, special_tokens=names)
    pipeline = fake_pipeline(favour="B-PER", max_length=8)
    pipeline = Pipeline(encoder=encoder, scheme=pipeline.scheme, crf=pipeline.crf, object_settings={"score_threshold": 0.5,
                        "iou_threshold": 0.5, "max_objects": 5}, detector_size=64, tagger=pipeline.tagger,
                        max_length=8)  # fmt: skip
    assert pipeline.encoder.max_length == 8
    assert pipeline.encoder.special_tokens == names
    assert (pipeline.encoder.cls_id, pipeline.encoder.sep_id) == (vocab["<s>"], vocab["</s>"])
    assert [e.type for e in pipeline.tag(["a b c d e f g h i j"])[0].entities] == ["PER"] * 10
