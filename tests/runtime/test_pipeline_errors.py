"""Pipeline._tag_batch's guarantee: a batch whose tagging raises is tagged again post by post, so only the
post that fails alone gets an error, every other post exactly what tagging it alone gives, and the log
one warning with the culprit's traceback. Fake runners (test_pipeline.py) that raise for one input."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
from test_pipeline import VOCAB, FakeRunner, fake_pipeline, tagger_stage

from mner.runtime.pipeline import TAGGING_FAILED, Post
from runtime_samples import jpeg

POISON = "Q"  # a word whose piece makes the tagger below raise
TEXTS = ["Obama in Paris", "Kawhi Leonard visits Toronto", POISON, "New York today", "Merkel x Berlin", "last one"]


def poisoned_tagger(error: BaseException = RuntimeError("the tagger cannot take piece Q")) -> FakeRunner:
    """The fake tagger's emissions, but raising whenever the poison word's piece is in the batch."""
    inner = fake_pipeline().tagger.function

    def tag(feed):
        if (feed["input_ids"] == VOCAB[POISON]).any():
            raise error
        return inner(feed)

    return FakeRunner(tagger_stage(), tag)


def same(a, b) -> bool:
    return (a.error, a.tags, a.scores, a.entities, a.objects, a.windows, a.image_error) == \
           (b.error, b.tags, b.scores, b.entities, b.objects, b.windows, b.image_error)  # fmt: skip


def pipeline_warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "mner.runtime.pipeline" and r.levelno == logging.WARNING]


def test_only_the_post_that_raises_gets_an_error_and_the_others_equal_tagging_them_alone(caplog):
    pipeline = fake_pipeline(tagger=poisoned_tagger(), batch_size=4)
    with caplog.at_level(logging.INFO, logger="mner.runtime.pipeline"):
        results = pipeline.tag(TEXTS)
    assert results[2].error == f"{TAGGING_FAILED}: RuntimeError: the tagger cannot take piece Q"
    assert results[2].to_dict() == {"error": results[2].error}
    clean = fake_pipeline(batch_size=4)
    for i, text in enumerate(TEXTS):
        if i != 2:
            assert results[i].ok and results[i].tags, results[i].error
            assert same(results[i], pipeline.tag([text])[0]), i
            assert same(results[i], clean.tag([text])[0]), i  # and what a pipeline without the fault gives
    [warning] = pipeline_warnings(caplog)  # one, for the culprit, with its traceback
    assert "tagging a post failed" in warning.getMessage() and warning.exc_info[0] is RuntimeError
    assert any("tagging a batch of 4 posts failed" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


def test_a_batch_that_fails_only_together_is_tagged_post_by_post_with_a_warning(caplog):
    inner = fake_pipeline().tagger.function

    def tag(feed):
        if len(feed["input_ids"]) > 1:
            raise MemoryError("pretend the batch did not fit")
        return inner(feed)

    pipeline = fake_pipeline(tagger=FakeRunner(tagger_stage(), tag), batch_size=8)
    with caplog.at_level(logging.WARNING, logger="mner.runtime.pipeline"):
        results = pipeline.tag(TEXTS)
    clean = fake_pipeline()
    assert all(same(r, clean.tag([text])[0]) for r, text in zip(results, TEXTS))
    [warning] = pipeline_warnings(caplog)
    assert "each of its posts tagged alone" in warning.getMessage() and warning.exc_info[0] is MemoryError


def test_a_failing_single_post_batch_is_not_tried_twice():
    pipeline = fake_pipeline(tagger=poisoned_tagger(), batch_size=1)
    results = pipeline.tag(["Paris", POISON, "Berlin"])
    assert [r.ok for r in results] == [True, False, True]
    assert pipeline.tagger.calls == 3  # Paris, Q once, Berlin


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt(), SystemExit(3)])
def test_keyboard_interrupt_and_system_exit_are_not_caught(interrupt):
    pipeline = fake_pipeline(tagger=poisoned_tagger(interrupt))
    with pytest.raises(type(interrupt)):
        pipeline.tag(["Paris", POISON])


def test_posts_with_pictures_keep_their_pictures_when_the_batch_is_tagged_again():
    red = cv2.imencode(".png", np.full((30, 50, 3), (0, 0, 255), np.uint8))[1].tobytes()  # BGR red: "person"
    blue = cv2.imencode(".png", np.full((30, 50, 3), (255, 0, 0), np.uint8))[1].tobytes()  # "car"
    posts = [Post("a b", red), Post(POISON, blue), Post("c", b"not a picture"), Post("d e", blue), Post("f")]
    for policy in ("error", "text-only"):
        results = fake_pipeline(tagger=poisoned_tagger(), on_bad_image=policy).tag(posts)
        clean = fake_pipeline(on_bad_image=policy)
        assert results[1].error.startswith(TAGGING_FAILED)
        for i in (0, 2, 3, 4):
            assert same(results[i], clean.tag([posts[i]])[0]), (policy, i)
        assert [r.objects for r in results] == [["person"], [], [], ["car"], []]


def test_a_failure_while_the_image_stages_run_waits_for_them_before_tagging_again(monkeypatch):
    """The tokenizer fails for one post while detector and vision are still busy with the batch's pictures."""
    calls = {"vision": 0}
    pipeline = fake_pipeline(image_hook=lambda name: calls.__setitem__(name, calls.get(name, 0) + 1))
    encode_many = pipeline.encoder.encode_many

    def fragile(posts):
        if any(POISON in words for words in posts):
            raise ValueError("the encoder cannot take Q")
        return encode_many(posts)

    monkeypatch.setattr(pipeline.encoder, "encode_many", fragile)
    posts = [Post("a b", jpeg(30, 40, 1)), Post(POISON, jpeg(30, 40, 2)), Post("c", jpeg(30, 40, 3))]
    results = pipeline.tag(posts)
    assert results[1].error == f"{TAGGING_FAILED}: ValueError: the encoder cannot take Q"
    assert results[0].ok and results[2].ok and results[0].objects and results[2].objects
    assert calls["vision"] == 4  # the batch once, then each post alone
