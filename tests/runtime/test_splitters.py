import random
from pathlib import Path

import pytest

from mner.runtime.conll import read_conll
from mner.runtime.splitters import DEFAULT_SPLITTER, SPLITTERS, get_splitter, split_tweet
from mner.runtime.text import Word

TWITTER2017 = Path(__file__).resolve().parents[3] / "shared" / "data" / "twitter2017"


def words_of(text):
    words = split_tweet(text)
    for word in words:
        assert text[word.start : word.end] == word.text
    return [w.text for w in words]


# One case per rule of the module docstring: (raw tweet, the words the data set has for it).
RULES = [
    # hashtags and mentions: the sign is its own word
    ("#NewYorkMets win!", ["#", "NewYorkMets", "win", "!"]),
    ("RT @jehnnybgoode: Kawhi Leonard", ["RT", "@", "jehnnybgoode", ":", "Kawhi", "Leonard"]),
    ("@user_name1 hi", ["@", "user_name1", "hi"]),
    # URLs and e-mail addresses: one word, closing punctuation split off
    ("see https://t.co/AbC12x.", ["see", "https://t.co/AbC12x", "."]),
    ("(via http://nyti.ms/2qP?x=1&y=2)", ["(", "via", "http://nyti.ms/2qP?x=1&y=2", ")"]),
    ("www.mets.com, now", ["www.mets.com", ",", "now"]),
    ("HTTPS://T.co/X1 WWW.Mets.com", ["HTTPS://T.co/X1", "WWW.Mets.com"]),
    ("https://en.wikipedia.org/wiki/Foo_(bar).", ["https://en.wikipedia.org/wiki/Foo_(bar)", "."]),
    ("mail info@mets.com!", ["mail", "info@mets.com", "!"]),
    ("first.last+tag@mail.co.uk", ["first.last+tag@mail.co.uk"]),
    # emoticons
    ("great game :) :-( <3 ;)", ["great", "game", ":)", ":-(", "<3", ";)"]),
    ("lawn:) :D", ["lawn", ":)", ":D"]),
    ("Score:Dallas", ["Score", ":", "Dallas"]),
    ("so sad :')", ["so", "sad", ":", "'", ")"]),
    # numbers
    ("13.5% and $4.99", ["13.5", "%", "and", "$", "4.99"]),
    ("10,000 fans", ["10,000", "fans"]),
    ("May 21, 2016.", ["May", "21,", "2016", "."]),
    ("07.05.16 at 7:30pm", ["07.05", ".", "16", "at", "7", ":", "30", "pm"]),
    ("3-3, after 60.", ["3", "-", "3,", "after", "60", "."]),
    # clitics, apostrophes and quotes
    ("It's Paris' day, don’t", ["It", "'", "s", "Paris", "'", "day", ",", "don", "’", "t"]),
    ('"Hermione" painting', ['"', "Hermione", '"', "painting"]),
    ("“quoted”", ["“", "quoted", "”"]),
    # ordinals and digits followed by letters
    ("2nd 19th 76ers", ["2", "nd", "19", "th", "76", "ers"]),
    ("PS2 NBA2K17 Lil_Eazy_Ana_42", ["PS2", "NBA2K17", "Lil_Eazy_Ana_42"]),
    # punctuation and ellipses
    ("NYC. Wow... really?!", ["NYC", ".", "Wow", ".", ".", ".", "really", "?", "!"]),
    ("Spider-Man (2017)…", ["Spider", "-", "Man", "(", "2017", ")", "…"]),
    # emoji: every code point is a word
    ("❤️ Paris", ["❤", "\ufe0f", "Paris"]),
    ("👍🏼👍🏿", ["👍", "🏼", "👍", "🏿"]),
    ("🇺🇸 USA", ["🇺", "🇸", "USA"]),
    ("👨\u200d👩\u200d👧 family", ["👨", "\u200d", "👩", "\u200d", "👧", "family"]),
    ("🏳️\u200d🌈", ["🏳", "\ufe0f", "\u200d", "🌈"]),
    ("Lennon\u200b and", ["Lennon", "\u200b", "and"]),
    # other scripts keep their combining marks inside the word
    ("Pokémon Pokémon नमस्ते", ["Pokémon", "Pokémon", "नमस्ते"]),
    ("東京 in Tokyo", ["東京", "in", "Tokyo"]),
]


@pytest.mark.parametrize("text, expected", RULES)
def test_tweet_split_follows_the_data_sets_rules(text, expected):
    assert words_of(text) == expected


def test_offsets_are_code_points_into_the_text_as_sent():
    text = "RT @fan: 😂 Taylor Swift in #Toronto!"
    words = split_tweet(text)
    assert words[:4] == [Word("RT", 0, 2), Word("@", 3, 4), Word("fan", 4, 7), Word(":", 7, 8)]
    assert Word("😂", 9, 10) in words  # an astral character is one code point
    assert Word("Toronto", 28, 35) in words


def test_whitespace_is_never_a_word_nor_inside_one():
    spaces = "".join(chr(c) for c in range(0x110000) if chr(c).isspace())
    text = spaces.join(["a", "b.", "#c", ":)", "1,5"]) + spaces
    assert words_of(text) == ["a", "b", ".", "#", "c", ":)", "1,5"]


def test_random_unicode_offsets_always_slice_back_to_the_word():
    rng = random.Random(1234)
    pools = [
        [chr(c) for c in range(0x20, 0x7F)],
        [chr(c) for c in range(0xD800, 0xE000, 37)],  # lone surrogates
        [chr(c) for c in range(0x1F300, 0x1F700, 7)],  # astral emoji
        ["\u200d", "\ufe0f", "\u0301", "\u200b", "\u00a0", "\u2028", "\x00", "\x1c", "\u202e", "\ufffe", "\U0010ffff"],
        [" ", "\t", "\n"],
    ]
    for _ in range(500):
        text = "".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(0, 60)))
        words = split_tweet(text)
        assert all(text[w.start : w.end] == w.text for w in words)
        assert all(w.text and not any(c.isspace() for c in w.text) for w in words)
        assert all(a.end <= b.start for a, b in zip(words, words[1:]))
        # nothing but whitespace is left out
        covered = set().union(*(range(w.start, w.end) for w in words)) if words else set()
        assert all(text[i].isspace() for i in range(len(text)) if i not in covered)


def test_long_texts_of_repeated_separators_split_whole():
    # Each would backtrack over the rest of the text at every word if the e-mail rule could
    # start inside a run of word characters and dots (quadratic); it cannot.
    for text in ("a." * 50_000, "1," * 50_000, "a" * 100_000, "x@" * 50_000, ":-" * 50_000, "a.b@" * 25_000):
        assert "".join(w.text for w in split_tweet(text)) == text


def test_get_splitter_names_the_known_splitters():
    assert get_splitter("tweet") is split_tweet
    assert DEFAULT_SPLITTER in SPLITTERS
    with pytest.raises(ValueError, match=r"unknown word splitter 'spaces'.*\['tweet', 'whitespace'\]"):
        get_splitter("spaces")


@pytest.mark.skipif(not TWITTER2017.is_dir(), reason="../shared/data/twitter2017 is not present")
def test_twitter2017_words_joined_by_spaces_split_back_exactly():
    """The data set's words, written with a space between each, split back into themselves."""
    posts = [post for name in ("train.txt", "valid.txt", "test.txt") for post in read_conll(TWITTER2017 / name)]
    differ = [post.words for post in posts if words_of(" ".join(post.words)) != post.words]
    assert len(posts) > 4000
    assert len(differ) <= len(posts) // 1000, differ[:5]
