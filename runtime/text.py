"""Text -> model inputs: words with character offsets, word-pieces, augmentation rows.

Training and serving both call this module, so they cannot disagree about what an
input looks like. Torch-free: numpy and tokenizers only.

A post's words are its whitespace-separated tokens (str.split semantics). Each word
is cut into word-pieces on its own, as the reference does (`tokenizer.tokenize(word)`
per word), and the word's tag lives at its first piece:

    [CLS]  Kawhi  Leon  ##ard  wins  [SEP]        input_ids
      3      1     1      2     1     4           roles (tags.Role)
      0     r1    r2      0    r3     0           aug_ids (augmentation-table rows)

A word that BERT's text cleaning empties has no word-pieces of its own: a lone U+00A0
(whitespace to Python, but a word with its own tag line in a TWITTER-2015 file), a soft
hyphen U+00AD, a zero-width space U+200B, U+FFFD (``bert_cleaning_empties`` says which).
Such a word keeps its slot and its tag: the model sees the [UNK] piece for it and its
augmentation row is the unknown row. The reference drops it instead (its tokenize()
returns [] and the word and its label vanish), which would leave the word without a tag
slot in training, evaluation and the runtime's spans. In TWITTER-2017 every such word
is tagged O, so the model learns [UNK] -> O. (U+FE0F is a combining mark that cleaning
keeps, so it is not one of them.)
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

from mner.runtime.tags import CLS, CONTINUATION, SEP, Role, TagScheme

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
AUG_ZERO_ROW = 0  # [CLS], [SEP], continuation pieces and padding: a zero vector
AUG_UNKNOWN_ROW = 1  # a word the augmentation vectors do not know
DEFAULT_MAX_LENGTH = 64  # word-pieces including [CLS] and [SEP]; the reference's max_seq_length
ENCODER_FORMAT_VERSION = 1

# re's \S is str.isspace's complement for str patterns, so this is exactly str.split.
_NON_SPACE = re.compile(r"\S+")


@dataclass(frozen=True)
class Word:
    text: str
    start: int  # character offsets into the original string: text == original[start:end]
    end: int


def split_words(text: str) -> list[Word]:
    """The whitespace-separated words of `text` (as str.split) with their character offsets.

    Zero-width joiners, variation selectors and combining marks are not whitespace,
    so they stay inside their word.
    """
    return [Word(m.group(), m.start(), m.end()) for m in _NON_SPACE.finditer(text)]


def bert_tokenizer(vocab: Mapping[str, int]) -> Tokenizer:
    """A cased BERT WordPiece tokenizer (no lowercasing, no accent stripping) over `vocab`.

    The special tokens are plain vocabulary entries, not "added tokens": a post that
    contains the text "[SEP]" gets word-pieces for it, never a separator.
    """
    missing = [token for token in SPECIAL_TOKENS[:4] if token not in vocab]
    if missing:
        raise ValueError(f"a BERT vocabulary needs the special tokens {SPECIAL_TOKENS[:4]}, missing {missing}")
    tokenizer = Tokenizer(models.WordPiece(dict(vocab), unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


@dataclass(frozen=True)
class EncodedText:
    """One post's model inputs; every array has one entry per sequence position (n,) unless said."""

    input_ids: np.ndarray  # (n,) int64: [CLS] pieces... [SEP]
    roles: np.ndarray  # (n,) int8: tags.Role of each position
    word_positions: np.ndarray  # (n_words,) int64: position of each kept word's first piece
    aug_ids: np.ndarray  # (n,) int64: augmentation-table row, at first pieces only
    n_words: int  # words kept (the first n_words of the input)
    truncated: bool  # some word-pieces did not fit into max_length

    def __len__(self) -> int:
        return len(self.input_ids)


class TextEncoder:
    """Words -> word-piece ids, roles and augmentation rows, for the tagger."""

    def __init__(self, tokenizer: Tokenizer, aug_vocab: Mapping[str, int], max_length: int = DEFAULT_MAX_LENGTH):
        if max_length < 3:
            raise ValueError(f"max_length counts [CLS] and [SEP] and must leave room for a word (>= 3), got {max_length}")
        special_ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS[:4]}
        missing = [token for token, i in special_ids.items() if i is None]
        if missing:
            raise ValueError(f"the tokenizer lacks the special tokens {missing}")
        bad_rows = {word: row for word, row in aug_vocab.items() if not isinstance(row, int) or row <= AUG_UNKNOWN_ROW}
        if bad_rows:
            sample = dict(list(bad_rows.items())[:5])
            raise ValueError(f"augmentation rows 0 and 1 are reserved, word rows must be ints >= 2; got {sample}")
        # A private copy with truncation and padding off: this class decides both.
        self.tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.aug_vocab = dict(aug_vocab)
        self.max_length = max_length
        self.pad_id, self.unk_id, self.cls_id, self.sep_id = (special_ids[t] for t in SPECIAL_TOKENS[:4])

    def aug_row(self, word: str) -> int:
        """The word's augmentation-table row: the word itself, else its lowercase, else the unknown row."""
        row = self.aug_vocab.get(word)
        if row is None:
            row = self.aug_vocab.get(word.lower(), AUG_UNKNOWN_ROW)
        return row

    def encode(self, words: Sequence[str]) -> EncodedText:
        """Encode one post's words (truncated to max_length pieces like the reference)."""
        words = _check_words(words)
        encoding = self.tokenizer.encode(words, is_pretokenized=True, add_special_tokens=False) if words else None
        return self._assemble(words, encoding)

    def encode_many(self, posts: Sequence[Sequence[str]]) -> list[EncodedText]:
        """`encode` for many posts at once (the tokenizer works through them in parallel)."""
        posts = [_check_words(words) for words in posts]
        non_empty = [words for words in posts if words]
        encodings = iter(self.tokenizer.encode_batch(non_empty, is_pretokenized=True, add_special_tokens=False))
        return [self._assemble(words, next(encodings) if words else None) for words in posts]

    def _assemble(self, words: list[str], encoding) -> EncodedText:
        pieces: list[list[int]] = [[] for _ in words]
        if encoding is not None:
            for piece_id, word_index in zip(encoding.ids, encoding.word_ids):
                pieces[word_index].append(piece_id)
        # A word that cleaning empties (see the module docstring) keeps its slot as [UNK]
        # with the unknown augmentation row, whatever row the vocabulary gives its text.
        rows = [self.aug_row(word) if word_pieces else AUG_UNKNOWN_ROW for word, word_pieces in zip(words, pieces)]
        pieces = [word_pieces or [self.unk_id] for word_pieces in pieces]
        budget = self.max_length - 2  # room left by [CLS] and [SEP]
        input_ids, roles, aug_ids, word_positions = [self.cls_id], [Role.CLS], [AUG_ZERO_ROW], []
        for word_pieces, row in zip(pieces, rows):
            room = budget - (len(input_ids) - 1)
            if room <= 0:
                break
            # Like the reference, cut at piece level: a word whose first piece fits is kept.
            word_pieces = word_pieces[:room]
            word_positions.append(len(input_ids))
            input_ids.extend(word_pieces)
            roles.extend([Role.WORD] + [Role.CONTINUATION] * (len(word_pieces) - 1))
            aug_ids.extend([row] + [AUG_ZERO_ROW] * (len(word_pieces) - 1))
        n_kept = len(input_ids) - 1
        input_ids.append(self.sep_id)
        roles.append(Role.SEP)
        aug_ids.append(AUG_ZERO_ROW)
        return EncodedText(
            input_ids=np.array(input_ids, dtype=np.int64),
            roles=np.array(roles, dtype=np.int8),
            word_positions=np.array(word_positions, dtype=np.int64),
            aug_ids=np.array(aug_ids, dtype=np.int64),
            n_words=len(word_positions),
            truncated=n_kept < sum(len(p) for p in pieces),
        )

    def batch(self, encoded: Sequence[EncodedText]) -> dict[str, np.ndarray]:
        """Pad a list of encoded posts to the longest one: arrays shaped (B, L), lengths (B,)."""
        if not encoded:
            raise ValueError("batch() needs at least one EncodedText, got an empty list")
        lengths = np.array([len(e) for e in encoded], dtype=np.int64)
        shape = (len(encoded), int(lengths.max()))
        arrays = {
            "input_ids": np.full(shape, self.pad_id, dtype=np.int64),
            "attention_mask": np.zeros(shape, dtype=np.int64),
            "aug_ids": np.full(shape, AUG_ZERO_ROW, dtype=np.int64),
            "roles": np.full(shape, Role.PAD, dtype=np.int8),
        }
        for row, e in enumerate(encoded):
            n = len(e)
            arrays["input_ids"][row, :n] = e.input_ids
            arrays["attention_mask"][row, :n] = 1
            arrays["aug_ids"][row, :n] = e.aug_ids
            arrays["roles"][row, :n] = e.roles
        arrays["lengths"] = lengths
        return arrays

    def save(self, directory: str | Path) -> None:
        """Write tokenizer.json, aug_vocab.json and text_encoder.json (max_length) into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(directory / "tokenizer.json"))
        (directory / "aug_vocab.json").write_text(json.dumps(self.aug_vocab, ensure_ascii=False), encoding="utf-8")
        settings = {"format_version": ENCODER_FORMAT_VERSION, "max_length": self.max_length}
        (directory / "text_encoder.json").write_text(json.dumps(settings), encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path) -> TextEncoder:
        """Read what `save` wrote; raises ValueError naming a missing or unreadable file."""
        directory = Path(directory)
        files = [directory / name for name in ("tokenizer.json", "aug_vocab.json", "text_encoder.json")]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ValueError(f"a saved TextEncoder needs {[f.name for f in files]}; missing {missing}")
        settings = json.loads(files[2].read_text(encoding="utf-8"))
        if settings.get("format_version") != ENCODER_FORMAT_VERSION:
            raise ValueError(
                f"{files[2]}: format_version {settings.get('format_version')!r}, expected {ENCODER_FORMAT_VERSION}"
            )
        tokenizer = Tokenizer.from_file(str(files[0]))
        aug_vocab = json.loads(files[1].read_text(encoding="utf-8"))
        return cls(tokenizer, aug_vocab, max_length=settings["max_length"])

    @classmethod
    def from_bert_dir(
        cls, path: str | Path, aug_vocab: Mapping[str, int] | None = None, max_length: int = DEFAULT_MAX_LENGTH
    ) -> TextEncoder:
        """A cased encoder over a local BERT directory's vocab.txt (nothing is fetched)."""
        path = Path(path)
        vocab_file = path / "vocab.txt"
        if not vocab_file.is_file():
            raise ValueError(f"{path} is not a BERT directory: {vocab_file} does not exist")
        config_file = path / "tokenizer_config.json"
        if config_file.is_file() and json.loads(config_file.read_text(encoding="utf-8")).get("do_lower_case"):
            raise ValueError(f"{config_file} says do_lower_case: this encoder is cased and needs a cased BERT")
        # A token's id is its line number, as BERT reads vocab.txt (a repeated line: the last
        # wins). Not splitlines(): vocabularies hold tokens such as "\x85" that it splits on.
        lines = vocab_file.read_text(encoding="utf-8").split("\n")
        if lines[-1] == "":
            lines.pop()
        vocab = {line.rstrip("\r"): line_number for line_number, line in enumerate(lines)}
        return cls(bert_tokenizer(vocab), aug_vocab or {}, max_length=max_length)


def label_ids(encoded: EncodedText, word_tags: Sequence[str], scheme: TagScheme) -> tuple[np.ndarray, np.ndarray]:
    """Training labels per position: (labels (n,) int64, aux_labels (n,) int64).

    A word's first piece gets the word's tag, a continuation piece X, [CLS]/[SEP]
    their own tags, as in the reference's convert_mm_examples_to_features.
    `word_tags` has one tag per input word; tags of words cut by truncation are unused.
    """
    if len(word_tags) < encoded.n_words or (not encoded.truncated and len(word_tags) != encoded.n_words):
        raise ValueError(f"{encoded.n_words} encoded words (truncated={encoded.truncated}) but {len(word_tags)} tags")
    index = scheme.index
    unknown = sorted({tag for tag in word_tags[: encoded.n_words] if tag not in index or not _is_word_tag(tag)})
    if unknown:
        raise ValueError(f"tags {unknown} are not word tags of the scheme {scheme.tags}")
    by_role = np.zeros(len(Role), dtype=np.int64)
    by_role[[Role.CONTINUATION, Role.CLS, Role.SEP]] = [index[CONTINUATION], index[CLS], index[SEP]]
    labels = by_role[encoded.roles]
    labels[encoded.word_positions] = [index[tag] for tag in word_tags[: encoded.n_words]]
    return labels, scheme.to_aux(labels)


def _is_word_tag(tag: str) -> bool:
    return tag == "O" or tag[:2] in ("B-", "I-")


def bert_cleaning_empties(word: str) -> bool:
    """True when BERT's text cleaning leaves nothing of `word` (e.g. "\\xa0", "\\xad", "\\u200b", "\\ufffd").

    Asked of the normalizer and pre-tokenizer ``bert_tokenizer`` builds, so the answer is
    the encoder's own: such a word gets no word-piece and is encoded as [UNK].
    """
    cleaning = _bert_cleaning()
    return not cleaning.pre_tokenizer.pre_tokenize_str(cleaning.normalizer.normalize_str(word))


@functools.cache
def _bert_cleaning() -> Tokenizer:
    return bert_tokenizer({token: i for i, token in enumerate(SPECIAL_TOKENS)})


def _check_words(words: Sequence[str]) -> list[str]:
    # Pre-split words are kept as given: a word is any non-empty string, even one that is
    # whitespace to Python (a CoNLL file's lone U+00A0) or that BERT's cleaning empties.
    words = list(words)
    bad = [w for w in words if not isinstance(w, str) or not w]
    if bad:
        raise ValueError(f"words must be non-empty strings, got {bad[:5]!r}")
    return words
