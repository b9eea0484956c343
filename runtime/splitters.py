"""Raw text -> words with exact character offsets: the tweet splitter and the whitespace splitter.

A model only ever saw words split the way its training data was split, so raw text must
be split the same way before it is tagged. Every splitter returns ``Word``s whose offsets
slice the text as sent: ``text[word.start:word.end] == word.text`` (code points, as
Python indexes ``str``); whitespace is never inside a word and never a word.

``tweet`` (the default) reproduces the word split of the TWITTER-2015/2017 data sets.
Its rules were read off TWITTER-2017's train and dev files (85,000 words), checked in
order at each position of the text:

1. URLs are one word: ``https://t.co/AbC12.`` -> ``https://t.co/AbC12`` ``.`` (closing
   punctuation after a URL is not part of it; the data sets replaced URLs, so the model
   tags them like any unseen word).
2. E-mail addresses are one word: ``write to info@mets.com!`` -> ... ``info@mets.com`` ``!``.
3. Emoticons are one word when no letter or digit follows: ``:)`` ``:(`` ``:-)`` ``:-(``
   ``:D`` ``:O`` ``:/`` (all seen in the data), ``;)`` ``:P`` ``<3`` ``</3``; not ``:')``, which the data splits.
   ``lawn :)`` -> ``lawn`` ``:)``; ``Score:Dallas`` -> ``Score`` ``:`` ``Dallas``.
4. Numbers keep one inner ``.`` or ``,`` between digits and a comma that ends them before
   a space: ``13.5%`` -> ``13.5`` ``%``; ``10,000`` -> ``10,000``; ``May 21, 2016`` ->
   ``May`` ``21,`` ``2016`` (the data glues that comma 66 times and splits it once);
   ``2016.`` -> ``2016`` ``.``; ``07.05.16`` -> ``07.05`` ``.`` ``16``; ``7:30`` -> ``7``
   ``:`` ``30``.
5. A word is a run of letters (any script, combining marks included), underscores and
   digits, which ends where a digit is followed by a letter: ``It's`` -> ``It`` ``'``
   ``s``; ``2nd`` -> ``2`` ``nd``; ``76ers`` -> ``76`` ``ers``; ``7pm`` -> ``7`` ``pm``;
   ``PS2`` and ``Lil_Eazy_Ana_42`` stay whole (no word of the data has a digit followed
   by a letter).
6. Anything else is one code point per word: ``NYC.`` -> ``NYC`` ``.``; ``#NewYorkMets``
   -> ``#`` ``NewYorkMets``; ``@jehnnybgoode`` -> ``@`` ``jehnnybgoode``; ``...`` ->
   ``.`` ``.`` ``.``; ``$4.99`` -> ``$`` ``4.99``; ``Spider-Man`` -> ``Spider`` ``-``
   ``Man``; and every emoji code point: ``❤️`` -> ``❤`` ``\\ufe0f`` (the variation selector
   is a word: 142 times in the data), ``👍🏼`` -> ``👍`` ``🏼``, ``🇺🇸`` -> ``🇺`` ``🇸``, a
   zero-width joiner or space between emoji is its own word.

What it cannot recover: a space the data set had where tweets usually have none
(``1944 ,`` is split in the data once, glued 66 times elsewhere); ``benchmarks/raw_text.py``
measures the rest (``benchmarks/results/raw-text.md``).

``whitespace`` splits on whitespace only (``str.split``), for models trained on text
that was split that way.

Why a hand-written splitter: no maintained tokenizer reproduces this data set's split
(NLTK's TweetTokenizer keeps ``It's``, ``#NewYorkMets`` and ``2nd`` whole; BERT's
pre-tokenizer splits ``10,000`` and e-mails). It is the ``regex`` package's Unicode
classes (``\\p{L}``, marks) in one pattern, so it is one linear scan.
"""

from __future__ import annotations

from typing import Callable

import regex

from mner.runtime.text import Word, split_words

# Python's str.isspace() also counts U+001C..U+001F; `regex`'s \s does not. Words must
# never contain what str.split() splits on, so the pattern uses this class.
_SPACE = r"\s\x1c-\x1f"

# Characters a URL cannot end with (they close the sentence or a bracket around it).
_URL_TRAILING = ".,;:!?'\"…)]}>»”’"

_TWEET = regex.compile(
    rf"""
    (?P<url>(?i:https?://|www\.)[^{_SPACE}]+)
  | (?P<email>(?<![\w.+-])[\w.+-]+@\w[\w-]*(?:\.\w[\w-]*)+)
  | (?P<emoticon>(?:</?3|[:;]-?[()DPpO/])(?![\w/]))
  | (?P<number>\d+(?:[.,]\d+)?(?:,(?=[{_SPACE}]|$))?)
  | (?P<word>[^\W\d\p{{M}}\p{{Join_Control}}]\w*)
  | (?P<symbol>[^{_SPACE}])
    """,
    regex.VERBOSE | regex.V0,
)


def split_tweet(text: str) -> list[Word]:
    """The words of a raw tweet as the TWITTER data sets split them, with character offsets."""
    words = []
    for match in _TWEET.finditer(text):
        start, end = match.span()
        if match.lastgroup == "url":
            url = match.group()
            trimmed = url.rstrip(_URL_TRAILING)
            # A closing bracket the URL itself opened stays (Wikipedia's "Foo_(bar)").
            while len(trimmed) < len(url) and url[len(trimmed)] == ")" and trimmed.count("(") > trimmed.count(")"):
                trimmed += ")"
            words.append(Word(trimmed, start, start + len(trimmed)))
            # The trimmed tail is punctuation: one code point per word, as rule 6.
            words.extend(Word(text[i], i, i + 1) for i in range(start + len(trimmed), end))
        else:
            words.append(Word(match.group(), start, end))
    return words


SPLITTERS: dict[str, Callable[[str], list[Word]]] = {"tweet": split_tweet, "whitespace": split_words}
DEFAULT_SPLITTER = "tweet"


def get_splitter(name: str) -> Callable[[str], list[Word]]:
    """The splitter function called `name` ("tweet" or "whitespace")."""
    if name not in SPLITTERS:
        raise ValueError(f"unknown word splitter {name!r}; expected one of {sorted(SPLITTERS)}")
    return SPLITTERS[name]
