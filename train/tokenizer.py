"""Train a cased BERT-style WordPiece vocabulary on the training text.

Used when the tagger's text encoder is trained from scratch rather than loaded from
a pretrained BERT: the vocabulary then comes from the training posts alone.

The vocabulary is learnt the way tokenizers' WordPieceTrainer learns it (BPE merges
over the pre-tokenized words, a word's later characters prefixed "##"), but here,
not by that trainer: it breaks ties between equally frequent pairs in hash-map
order, so two runs over the same words gave different vocabularies. Here a tie goes
to the lexicographically smaller pair, and the result depends on the words alone.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from typing import Iterable

from tokenizers import Tokenizer

from mner.runtime.text import SPECIAL_TOKENS, bert_tokenizer

PREFIX = "##"  # marks a piece that continues a word


def train_wordpiece(words: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2) -> Tokenizer:
    """A cased WordPiece over `words`, with [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4.

    Every character seen is kept (as a word start and as a "##" continuation), even
    past vocab_size, so no training word becomes [UNK]; merges of pairs seen at least
    min_frequency times fill the rest, most frequent first.
    """
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
    # The normalizer and pre-tokenizer the encoder will run; only the vocabulary is learnt.
    template = bert_tokenizer({token: i for i, token in enumerate(SPECIAL_TOKENS)})
    counts: Counter[str] = Counter()
    for word in words:
        normalized = template.normalizer.normalize_str(word)
        counts.update(piece for piece, _ in template.pre_tokenizer.pre_tokenize_str(normalized))
    pieces = _learn_pieces(counts, vocab_size - len(SPECIAL_TOKENS), min_frequency)
    return bert_tokenizer({token: i for i, token in enumerate([*SPECIAL_TOKENS, *pieces])})


def _learn_pieces(counts: Counter[str], budget: int, min_frequency: int) -> list[str]:
    """The alphabet, then merged pieces in merge order, until `budget` pieces or no pair is frequent enough."""
    texts = sorted(counts)
    frequencies = [counts[text] for text in texts]
    symbols = [[text[0], *(PREFIX + c for c in text[1:])] for text in texts]  # per distinct word

    # Every character both bare and "##"-prefixed where seen so: a character seen only
    # inside words can still start one at inference.
    alphabet: Counter[str] = Counter()
    for text, word, frequency in zip(texts, symbols, frequencies):
        for symbol in (*text, *word[1:]):
            alphabet[symbol] += frequency
    pieces = sorted(alphabet, key=lambda symbol: (-alphabet[symbol], symbol))
    known = set(pieces)

    pair_counts: Counter[tuple[str, str]] = Counter()
    words_with: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
    for index, word in enumerate(symbols):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += frequencies[index]
            words_with[pair].add(index)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    while len(pieces) < budget and heap:
        negative_count, pair = heapq.heappop(heap)
        if -negative_count != pair_counts[pair]:
            continue  # stale entry: the pair's count changed and was pushed again
        if -negative_count < min_frequency:
            break
        merged = pair[0] + pair[1][len(PREFIX) :]
        if merged not in known:
            known.add(merged)
            pieces.append(merged)
        changed = set()
        for index in sorted(words_with.pop(pair)):
            old = symbols[index]
            new = _merge(old, pair, merged)
            for p in zip(old, old[1:]):
                pair_counts[p] -= frequencies[index]
                words_with[p].discard(index)
                changed.add(p)
            for p in zip(new, new[1:]):
                pair_counts[p] += frequencies[index]
                words_with[p].add(index)
                changed.add(p)
            symbols[index] = new
        for p in changed:
            if pair_counts[p] > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
    return pieces


def _merge(word: list[str], pair: tuple[str, str], merged: str) -> list[str]:
    """`word` with every non-overlapping occurrence of `pair`, left to right, replaced by `merged`."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(merged)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out
