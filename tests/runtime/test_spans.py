"""mner.runtime.spans: word tags -> entities with offsets into the original text."""

import numpy as np
import pytest

from mner.runtime.spans import Entity, entities_from_words
from mner.runtime.text import split_words

PIECES = [
    "Kawhi", "Leonard", "👩‍👩‍👧‍👦", "🇫🇷", "👍🏽", "e\u0301", "Z\u0335\u0322", "https://t.co/x?a=1&b=2", "@user",
    "#tag", "\u200d", "a\u200bb", "\ufeff", "word", "word", "北京", "ﬁ", "İstanbul", "x\x00y",
]  # fmt: skip
SEPARATORS = [" ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u2003", "\u3000", " \t ", "\x1c", "\u2028"]


def test_offsets_and_scores():
    text = "  RT @user :\tKawhi  Leonard in Toronto 🇨🇦 "
    words = split_words(text)
    tags = ["O", "O", "O", "B-PER", "I-PER", "O", "B-LOC", "I-LOC"]
    scores = [0.9, 0.9, 0.9, 0.8, 0.6, 0.9, 0.95, 0.7]
    entities = entities_from_words(text, words, tags, scores)
    assert entities == [Entity("PER", "Kawhi  Leonard", 13, 27, 0.6), Entity("LOC", "Toronto 🇨🇦", 31, 41, 0.7)]
    assert all(text[e.start : e.end] == e.text for e in entities)
    assert entities[0].to_dict() == {"type": "PER", "text": "Kawhi  Leonard", "start": 13, "end": 27, "score": 0.6}


def test_bio_rules_follow_conlleval():
    text = "a b c d e f"
    words = split_words(text)
    entities = entities_from_words(text, words, ["I-PER", "B-PER", "B-PER", "I-LOC", "I-LOC", "O"], [1.0] * 6)
    assert [(e.type, e.text) for e in entities] == [("PER", "a"), ("PER", "b"), ("PER", "c"), ("LOC", "d e")]


@pytest.mark.parametrize("seed", range(30))
def test_random_adversarial_texts_keep_offsets_exact(seed):
    rng = np.random.default_rng(seed)
    parts = [SEPARATORS[int(rng.integers(len(SEPARATORS)))] if rng.random() < 0.3 else ""]
    for _ in range(int(rng.integers(1, 25))):
        parts += [PIECES[int(rng.integers(len(PIECES)))], SEPARATORS[int(rng.integers(len(SEPARATORS)))]]
    text = "".join(parts[:-1] if rng.random() < 0.5 else parts)
    words = split_words(text)
    assert [w.text for w in words] == text.split()
    tags = [str(rng.choice(["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])) for _ in words]
    scores = rng.random(len(words)).tolist()
    for entity in entities_from_words(text, words, tags, scores):
        assert text[entity.start : entity.end] == entity.text
        assert entity.text == entity.text.strip() and entity.text
        first = next(w for w in words if w.start == entity.start)
        assert scores[words.index(first)] >= entity.score - 1e-4


def test_mismatched_inputs_are_refused():
    words = split_words("New York")
    with pytest.raises(ValueError, match="one tag and one score per word"):
        entities_from_words("New York", words, ["B-LOC"], [1.0, 1.0])
    with pytest.raises(ValueError, match="do not belong to this text"):
        entities_from_words("Old Yard", words, ["B-LOC", "I-LOC"], [1.0, 1.0])
