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

import dataclasses
import functools
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

from mner.runtime.tags import CLS, CONTINUATION, SEP, Role, TagScheme

logger = logging.getLogger(__name__)

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


def bert_tokenizer(
    vocab: Mapping[str, int],
    *,
    lowercase: bool = False,
    strip_accents: bool | None = False,
    chinese_chars: bool = True,
    special_tokens: SpecialTokens | None = None,
) -> Tokenizer:
    """A BERT WordPiece tokenizer over `vocab`; cased (no lowercasing, no accent stripping) unless asked.

    `lowercase`, `strip_accents` (None: strip when lowercasing, BERT's rule) and
    `chinese_chars` are a BERT directory's do_lower_case, strip_accents and
    tokenize_chinese_chars. The special tokens are plain vocabulary entries, not "added
    tokens": a post that contains the text "[SEP]" gets word-pieces for it, never a separator.
    """
    special_tokens = special_tokens or SpecialTokens()
    missing = [token for token in special_tokens.names() if token not in vocab]
    if missing:
        raise ValueError(f"a BERT vocabulary needs its special tokens {special_tokens.names()}, missing {missing}")
    tokenizer = Tokenizer(models.WordPiece(dict(vocab), unk_token=special_tokens.unk, max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=chinese_chars, strip_accents=strip_accents, lowercase=lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


@dataclass(frozen=True)
class SpecialTokens:
    """The texts of a vocabulary's padding, unknown, sequence-start and separator pieces."""

    pad: str = "[PAD]"
    unk: str = "[UNK]"
    cls: str = "[CLS]"
    sep: str = "[SEP]"

    def names(self) -> tuple[str, str, str, str]:
        return (self.pad, self.unk, self.cls, self.sep)


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

    def __init__(
        self,
        tokenizer: Tokenizer,
        aug_vocab: Mapping[str, int],
        max_length: int = DEFAULT_MAX_LENGTH,
        special_tokens: SpecialTokens | None = None,
    ):
        if max_length < 3:
            raise ValueError(f"max_length counts [CLS] and [SEP] and must leave room for a word (>= 3), got {max_length}")
        self.special_tokens = special_tokens or SpecialTokens()
        special_ids = {token: tokenizer.token_to_id(token) for token in self.special_tokens.names()}
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
        self.pad_id, self.unk_id, self.cls_id, self.sep_id = (special_ids[t] for t in self.special_tokens.names())

    def aug_row(self, word: str) -> int:
        """The word's augmentation-table row: the word itself, else its lowercase, else the unknown row."""
        row = self.aug_vocab.get(word)
        if row is None:
            row = self.aug_vocab.get(word.lower(), AUG_UNKNOWN_ROW)
        return row

    def cleaning_empties(self, word: str) -> bool:
        """True when this tokenizer's normalizer and pre-tokenizer leave nothing of `word`.

        An uncased tokenizer also strips accents, so a word of combining marks alone is
        emptied too; such a word is encoded as [UNK] (see the module docstring).
        """
        return _empties(self.tokenizer, word)

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
        settings = {
            "format_version": ENCODER_FORMAT_VERSION,
            "max_length": self.max_length,
            "special_tokens": dataclasses.asdict(self.special_tokens),
        }
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
        # Files written before special_tokens was recorded used BERT's usual names.
        special = settings.get("special_tokens") or {}
        unknown = sorted(set(special) - {f.name for f in dataclasses.fields(SpecialTokens)})
        if unknown:
            raise ValueError(f"{files[2]}: unknown special_tokens fields {unknown}")
        return cls(tokenizer, aug_vocab, max_length=settings["max_length"], special_tokens=SpecialTokens(**special))

    @classmethod
    def from_bert_dir(
        cls, path: str | Path, aug_vocab: Mapping[str, int] | None = None, max_length: int = DEFAULT_MAX_LENGTH
    ) -> TextEncoder:
        """An encoder over a local BERT directory's vocabulary, tokenising as that directory says.

        Lower-casing, accent stripping, Chinese-character splitting and the special tokens'
        names come from the directory (``bert_dir_settings``); nothing is fetched.
        """
        path = Path(path)
        vocab = bert_dir_vocab(path)
        settings = bert_dir_settings(path, vocab)
        logger.info("tokenising as %s says: lowercase %s (from %s), strip_accents %s, Chinese characters split %s, "
                    "special tokens %s", path, settings.lowercase, settings.source, settings.strip_accents,
                    settings.chinese_chars, settings.special_tokens.names())  # fmt: skip
        tokenizer = bert_tokenizer(
            vocab,
            lowercase=settings.lowercase,
            strip_accents=settings.strip_accents,
            chinese_chars=settings.chinese_chars,
            special_tokens=settings.special_tokens,
        )
        return cls(tokenizer, aug_vocab or {}, max_length=max_length, special_tokens=settings.special_tokens)


@dataclass(frozen=True)
class BertDirSettings:
    """How a BERT directory's tokenizer normalises text, and its special tokens' names."""

    lowercase: bool
    strip_accents: bool | None  # None: strip when lowercasing (BERT's rule)
    chinese_chars: bool
    special_tokens: SpecialTokens
    source: str  # where `lowercase` came from, for the log and error messages


def bert_dir_vocab(path: Path) -> dict[str, int]:
    """{piece: id} of a BERT directory: its vocab.txt, else the WordPiece vocabulary in its tokenizer.json."""
    vocab_file, tokenizer_file = path / "vocab.txt", path / "tokenizer.json"
    if vocab_file.is_file():
        # A token's id is its line number, as BERT reads vocab.txt (a repeated line: the last
        # wins). Not splitlines(): vocabularies hold tokens such as "\x85" that it splits on.
        lines = vocab_file.read_text(encoding="utf-8").split("\n")
        if lines[-1] == "":
            lines.pop()
        return {line.rstrip("\r"): line_number for line_number, line in enumerate(lines)}
    if tokenizer_file.is_file():
        model = _read_json(tokenizer_file).get("model") or {}
        if model.get("type") != "WordPiece":
            raise ValueError(f"{tokenizer_file}: a {model.get('type')!r} tokenizer; a BERT directory has a WordPiece one")
        return dict(model["vocab"])
    raise ValueError(f"{path} is not a BERT directory: it has neither vocab.txt nor tokenizer.json")


def bert_dir_settings(path: Path, vocab: Mapping[str, int]) -> BertDirSettings:
    """The directory's tokenizer settings, read as transformers reads them.

    tokenizer_config.json decides (transformers' BertTokenizerFast applies its do_lower_case,
    strip_accents and tokenize_chinese_chars over tokenizer.json's normalizer); without it,
    tokenizer.json's BertNormalizer; without either (Google's original checkpoints: vocab.txt
    and bert_config.json), the vocabulary itself: one that holds upper-case pieces is cased.
    (transformers would lower-case such a directory whatever its vocabulary, which breaks a
    cased model, so here the vocabulary is asked instead.)
    """
    config_file, tokenizer_file, map_file = (path / n for n in ("tokenizer_config.json", "tokenizer.json",
                                                                   "special_tokens_map.json"))  # fmt: skip
    config = _read_json(config_file) if config_file.is_file() else {}
    tokenizer_class = config.get("tokenizer_class")
    if tokenizer_class and not tokenizer_class.startswith(("BertTokenizer", "DistilBertTokenizer", "ElectraTokenizer")):
        raise ValueError(f"{config_file}: tokenizer_class {tokenizer_class!r}; --bert needs a WordPiece BERT directory")
    normalizer = (_read_json(tokenizer_file).get("normalizer") or {}) if tokenizer_file.is_file() else {}
    if normalizer and normalizer.get("type") != "BertNormalizer":
        normalizer = {}  # not BERT's normaliser: transformers rebuilds it from the config's settings

    if "do_lower_case" in config:
        lowercase, source = bool(config["do_lower_case"]), f"{config_file.name} do_lower_case"
    elif "lowercase" in normalizer:
        lowercase, source = bool(normalizer["lowercase"]), f"{tokenizer_file.name} normalizer"
    else:
        # "[CLS]", "[unused0]" and the like are bracketed names, not text
        lowercase = not any(piece != piece.lower() for piece in vocab if not (piece[:1] == "[" and piece[-1:] == "]"))
        source = "vocab (no tokenizer settings; " + ("no upper-case pieces)" if lowercase else "upper-case pieces)")
    strip_accents = config.get("strip_accents", normalizer.get("strip_accents"))
    chinese_chars = config.get("tokenize_chinese_chars", normalizer.get("handle_chinese_chars", True))

    names = _read_json(map_file) if map_file.is_file() else {}
    special = {}
    for field in ("pad", "unk", "cls", "sep"):
        value = config.get(f"{field}_token", names.get(f"{field}_token"))
        if isinstance(value, dict):  # transformers' AddedToken form; without "content" it is refused below
            value = value.get("content", value)
        if value is not None:
            if not isinstance(value, str) or not value:
                raise ValueError(f"{path}: {field}_token must be a non-empty string, got {value!r}")
            special[field] = value
    return BertDirSettings(
        lowercase=lowercase,
        strip_accents=None if strip_accents is None else bool(strip_accents),
        chinese_chars=bool(chinese_chars),
        special_tokens=SpecialTokens(**special),
        source=source,
    )


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {path}: {error}") from error
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


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
    return _empties(_bert_cleaning(), word)


def _empties(tokenizer: Tokenizer, word: str) -> bool:
    """Whether `tokenizer`'s normalizer and pre-tokenizer leave nothing of `word`."""
    return not tokenizer.pre_tokenizer.pre_tokenize_str(tokenizer.normalizer.normalize_str(word))


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
