"""Pipeline.tag_steps (tagging in steps, interleaved by mner-serve's batcher) and Pipeline.text_cost (what a
text asks of the tagger, known before tagging it), on the fake runners of test_pipeline.py."""

from __future__ import annotations

import numpy as np
import pytest
from test_pipeline import fake_pipeline

from mner.runtime.pipeline import Post, TextCost
from runtime_samples import jpeg

LONG = " ".join(f"w{i}rd" if i % 7 else "Zzz" for i in range(300))  # ~1,200 pieces: many 64-piece windows
SHORT = ["Obama in Paris", "Kawhi Leonard visits Toronto", "New York today"]


def take_steps(steps) -> tuple[int, list]:
    """(steps taken, the generator's results)."""
    taken = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return taken + 1, done.value
        taken += 1


def same(a, b) -> bool:
    fields = ("error", "tags", "scores", "entities", "objects", "windows")
    return [getattr(a, name) for name in fields] == [getattr(b, name) for name in fields]


def test_a_long_post_takes_a_step_per_chunk_of_windows_and_gives_what_tag_gives():
    pipeline = fake_pipeline(batch_size=4)
    (expected,) = pipeline.tag([LONG])
    steps, (result,) = take_steps(pipeline.tag_steps([LONG]))
    assert expected.windows > 8
    assert steps == -(-expected.windows // 4)  # one step per tagger chunk of batch_size windows
    assert same(result, expected)


def test_many_posts_take_a_step_per_batch_and_one_short_batch_takes_one_step():
    pipeline = fake_pipeline(batch_size=2)
    posts = SHORT * 2  # 6 one-window posts: 3 batches of 2
    steps, results = take_steps(pipeline.tag_steps(posts))
    assert steps == 3 and all(same(r, e) for r, e in zip(results, pipeline.tag(posts)))
    assert take_steps(fake_pipeline(batch_size=8).tag_steps(SHORT))[0] == 1


def test_interleaved_generators_give_what_each_gives_alone():
    """The batcher's use: steps of several generators taken in turn on one thread, pictures included."""
    pipeline = fake_pipeline(batch_size=3)
    requests = [[LONG, Post("Obama in Paris", jpeg(40, 60, 0))], [Post(text, jpeg(30, 30, 1)) for text in SHORT], [LONG]]
    alone = [pipeline.tag(posts) for posts in requests]
    running = [pipeline.tag_steps(posts) for posts in requests]
    results: dict[int, list] = {}
    while len(results) < len(running):
        for k, steps in enumerate(running):
            if k in results:
                continue
            try:
                next(steps)
            except StopIteration as done:
                results[k] = done.value
    for k, posts in enumerate(requests):
        assert len(results[k]) == len(posts) and all(same(r, e) for r, e in zip(results[k], alone[k])), k
    assert results[0][1].objects and results[1][0].objects


def test_tag_steps_refuses_a_single_post_at_once():
    with pytest.raises(ValueError, match="wrap it in a list"):
        fake_pipeline().tag_steps("Obama in Paris")


def test_text_cost_counts_pieces_and_windows_as_tagging_does():
    pipeline = fake_pipeline(batch_size=4)
    for text in [*SHORT, LONG, "x", "emoji 👍 \u200b and a\u200b", " ".join(["abcdefghij" * 20] * 3)]:
        cost = pipeline.text_cost(text)
        (result,) = pipeline.tag([text])
        assert cost.windows == result.windows, text
        words = [w.text for w in result.words]
        pieces = pipeline.encoder.tokenizer.encode(words, is_pretokenized=True, add_special_tokens=False)
        counts = np.bincount([i for i in pieces.word_ids if i is not None], minlength=len(words))
        assert cost.pieces == int(np.maximum(counts, 1).sum()) >= len(words), text
    assert pipeline.text_cost("   \t") == TextCost(0, 0)
    assert pipeline.text_cost("a B") == TextCost(2, 1)  # the fake vocabulary has a piece per character


def test_chunk_pieces_bounds_each_tagger_call_and_so_each_step_without_changing_results():
    (expected,) = fake_pipeline(batch_size=32).tag([LONG])
    bounded = fake_pipeline(batch_size=32, chunk_pieces=130)  # two windows of 64 pieces a call
    steps, (result,) = take_steps(bounded.tag_steps([LONG]))
    assert steps == -(-expected.windows // 2) and same(result, expected)
    assert bounded.tagger.calls == steps
    short = fake_pipeline(batch_size=32, chunk_pieces=1)  # one window a call, never none
    assert take_steps(short.tag_steps(SHORT))[0] == len(SHORT)
    for bad in (0, -5, 2.5):
        with pytest.raises(ValueError, match="chunk_pieces must be a positive int or None"):
            fake_pipeline(chunk_pieces=bad)


def test_a_prepared_picture_tags_as_its_bytes_do_and_a_bad_one_is_that_posts_error():
    pipeline = fake_pipeline(batch_size=4, picture_cache_bytes=0)  # decoded each time (the cache: test_picture_cache)
    good, bad = jpeg(40, 60, 0), jpeg(40, 60, 1)[:100]
    posts = [Post("Obama in Paris", good), Post("Kawhi Leonard visits Toronto", bad), Post("New York today")]
    expected = pipeline.tag(posts)
    prepared = [Post(post.text, pipeline.prepare_image(post.image) if post.image else None) for post in posts]
    assert prepared[0].image.error is None and prepared[0].image.vision.shape == (3, 224, 224)
    assert prepared[1].image.error and prepared[1].image.vision is None
    results = pipeline.tag(prepared)
    assert all(same(r, e) for r, e in zip(results, expected)) and results[0].objects
    assert results[1].error == expected[1].error and results[1].error.startswith("image: ")
    mixed = pipeline.tag([prepared[0], posts[0]])  # prepared and bytes in one batch
    assert same(mixed[0], expected[0]) and same(mixed[1], expected[0])
    text_only = fake_pipeline(detector=None, vision=None)
    assert "no detector and vision stages" in text_only.prepare_image(good).error
