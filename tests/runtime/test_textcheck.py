"""mner.runtime.textcheck, and every class of odd text through Pipeline.tag (fake runners, the real tokenizer).

What each class gives is written down in runtime/pipeline.py's docstring;
test_odd_text.py checks the same classes on a real exported bundle.
"""

from __future__ import annotations

import json

import pytest
from test_pipeline import fake_pipeline

from mner.runtime.textcheck import text_problem

# (class, text): each is tagged, offsets exact into the text as sent.
TAGGED = [
    ("NUL", "Obama\x00 visits Paris \x00"),
    ("C0 controls and DEL", "Obama\x01\x1b[31m visits\x7f Paris \x07"),
    ("C1 controls", "Obama\x9b visits\x85Paris \x80"),
    ("non-characters", "Obama \ufffe visits\ufdd0 Paris \U0010ffff \uffff"),
    ("BIDI embeddings, overrides, isolates, marks", "\u202eObama\u202c visits \u2067Paris\u2069 \u200f \u202a\u202d"),
    ("zero-width characters", "Ob\u200bama \u200d visits\u2060 \ufeffParis \u200c"),
    ("private use and unassigned", "Obama \ue000 visits \U000e0080 Paris \U000f0000"),
    ("tag characters", "Obama \U000e0067\U000e0062 visits Paris"),
    ("line and paragraph separators", "Obama\u2028visits\u2029Paris"),
    ("replacement character", "Obama \ufffd Paris"),
    ("nothing but odd characters", "\x00\u200b\u202e\ufffe"),
]

# (class, text, expected error)
REFUSED = [
    ("lone high surrogate at the end", "Obama in Paris \ud83d",
     "text has a lone surrogate U+D83D at character 15; "),
    ("lone low surrogate inside a word", "Ob\udc00ama",
     "text has a lone surrogate U+DC00 at character 2; "),
    ("several", "\ud800 and \udfff and \udbff",
     "text has a lone surrogate U+D800 at character 0 (and 2 more); "),
    ("reversed pair", "a \ude00\ud83d b",
     "text has a lone surrogate U+DE00 at character 2 (and 1 more); "),
    ("pair as two code points", "smile \ud83d\ude00 please",
     "text has a UTF-16 surrogate pair U+D83D U+DE00 at character 6, two code points"),
]  # fmt: skip


def test_text_problem_lets_every_tagged_class_through():
    for what, text in TAGGED:
        assert text_problem(text) is None, what
    assert text_problem("") is None and text_problem("plain Paris 🇫🇷 👩‍👩‍👧") is None


@pytest.mark.parametrize("what, text, expected", REFUSED, ids=[r[0] for r in REFUSED])
def test_text_problem_names_the_surrogate_and_its_offset(what, text, expected):
    problem = text_problem(text)
    assert problem.startswith(expected), problem
    assert "UTF-8" in problem
    assert problem.encode("utf-8")  # the message itself never carries the surrogate


def test_text_problem_names_the_field_and_refuses_what_is_not_text():
    assert text_problem("x\ud800", name="posts[1].text").startswith("posts[1].text has a lone surrogate U+D800 at character 1")
    with pytest.raises(ValueError, match="checks a str, got bytes"):
        text_problem(b"bytes")


def test_a_json_escape_gives_the_surrogate_the_check_refuses():
    """What truncated tweets look like in JSON: json.loads gives a str with half a pair."""
    text = json.loads('"truncated \\ud83d"')
    assert len(text) == 11 and "lone surrogate U+D83D at character 10" in text_problem(text)
    assert text_problem(json.loads('"whole \\ud83d\\ude00"')) is None  # a real pair in JSON is one character


@pytest.mark.parametrize("what, text", TAGGED, ids=[t[0] for t in TAGGED])
def test_every_odd_class_is_tagged_with_exact_offsets(what, text):
    pipeline = fake_pipeline("B-PER")  # every word its own entity
    (result,) = pipeline.tag([text])
    assert result.ok, result.error
    assert "".join(w.text for w in result.words) == "".join(text.split())  # no character lost, none invented
    assert all(text[w.start : w.end] == w.text for w in result.words)
    assert len(result.tags) == len(result.words) == len(result.entities)
    assert all(text[e.start : e.end] == e.text for e in result.entities)


def test_a_surrogate_post_gets_its_error_and_its_batch_is_tagged():
    texts = ["Obama in Paris", "Obama in Paris \ud83d", "Merkel in Berlin", *(text for _, text in TAGGED)]
    pipeline = fake_pipeline(batch_size=4)
    results = pipeline.tag(texts)
    assert results[1].error.startswith("text has a lone surrogate U+D83D at character 15")
    assert results[1].to_dict() == {"error": results[1].error}
    alone = [pipeline.tag([text])[0] for text in texts]
    for i, (together, single) in enumerate(zip(results, alone)):
        if i != 1:
            assert together.ok, (i, together.error)
            assert (together.tags, together.scores, together.entities) == (single.tags, single.scores, single.entities)


def test_pre_split_words_with_a_surrogate_get_the_error_too():
    results = fake_pipeline().tag_words([["Obama", "\ud800"], ["Paris"]])
    assert "lone surrogate U+D800 at character 6" in results[0].error and results[1].ok
