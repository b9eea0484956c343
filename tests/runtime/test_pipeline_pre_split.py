"""Pipeline.tag_words keeps pre-split words as given: a CoNLL file's U+00A0 or U+200B word
keeps its slot, gets a tag, and its offsets index " ".join(words). A fake-runner pipeline
(test_pipeline.fake_pipeline)."""

from __future__ import annotations

from test_pipeline import fake_pipeline

ODD = ["\xa0", "\xad", "\u200b", "\ufffd", "a\u00a0b"]


def test_odd_pre_split_words_keep_their_slots_tags_and_offsets():
    words = ["Obama", *ODD, "Paris"]
    [result] = fake_pipeline(favour="B-PER").tag_words([words])
    assert result.ok, result.error
    assert len(result.tags) == len(words) and result.tags == ["B-PER"] * len(words)
    text = " ".join(words)
    assert [w.text for w in result.words] == words
    assert all(text[w.start : w.end] == w.text for w in result.words)
    assert [(e.text, e.start) for e in result.entities] == [(w.text, w.start) for w in result.words]


def test_a_long_post_of_emptied_words_is_windowed_word_by_word():
    # Each emptied word is one [UNK] piece; windows must count it so (not as 0 pieces).
    words = ["Obama"] + ["\u200b", "\xa0"] * 20 + ["Paris"]
    [result] = fake_pipeline(favour="O", max_length=8).tag_words([words])
    assert result.ok, result.error
    assert result.tags == ["O"] * len(words)


def test_words_that_are_not_words_are_that_post_s_error():
    results = fake_pipeline().tag_words([["ok"], ["ok", ""], []])
    assert results[0].ok
    assert not results[1].ok and not results[2].ok
