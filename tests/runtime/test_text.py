import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mner.runtime.tags import Role, TagScheme
from mner.runtime.text import (
    AUG_UNKNOWN_ROW,
    EncodedText,
    SpecialTokens,
    TextEncoder,
    Word,
    bert_cleaning_empties,
    bert_tokenizer,
    label_ids,
    split_words,
)

REPO = Path(__file__).resolve().parents[2]

VOCAB_TOKENS = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "Kaw", "##hi", "Leon", "##ard", "wins", "the", "vote", "#", "N", "##BA", "!", "@", "user",
    "Paris", "paris", "café", "😂",
]  # fmt: skip
VOCAB = {token: i for i, token in enumerate(VOCAB_TOKENS)}
SCHEME = TagScheme(("PER", "LOC", "ORG", "MISC"))


def make_encoder(max_length=64, aug_vocab=None):
    return TextEncoder(bert_tokenizer(VOCAB), aug_vocab or {"wins": 2, "kawhi": 3, "Kawhi": 4}, max_length=max_length)


def pieces(encoder, encoded, word_index):
    """Tokens of one word's pieces, read back from the sequence."""
    start = encoded.word_positions[word_index]
    end = encoded.word_positions[word_index + 1] if word_index + 1 < encoded.n_words else len(encoded) - 1
    return [encoder.tokenizer.id_to_token(int(i)) for i in encoded.input_ids[start:end]]


# --- split_words ---------------------------------------------------------------------------------


ADVERSARIAL = [
    "",
    "   ",
    "Kawhi Leonard wins",
    "  leading and trailing  ",
    "tab\tseparated\twords\n and newlines\r\n",
    "RT @user: see https://t.co/abc?x=1&y=2 #NBA",
    "the the the the",  # repeated words: offsets must advance
    "family 👨\u200d👩\u200d👧 emoji 😂😂",  # ZWJ sequence stays one word
    "flag 🇫🇷 skin 👍🏽 keycap 1\ufe0f\u20e3",
    "cafe\u0301 combining",  # e + combining acute
    "no\u00a0break\u2003em\u3000ideographic",  # Unicode spaces split
    "zero\u200bwidth space is not whitespace",
    "\x1c\x1dfile separators\x1e\x1f",
]


@pytest.mark.parametrize("text", ADVERSARIAL)
def test_split_words_offsets_point_into_the_original(text):
    words = split_words(text)
    assert [w.text for w in words] == text.split()
    for word in words:
        assert text[word.start : word.end] == word.text
    assert all(a.end < b.start for a, b in zip(words, words[1:]))


def test_split_words_keeps_zwj_sequences_whole():
    words = split_words("hi 👨\u200d👩\u200d👧!")
    assert words == [Word("hi", 0, 2), Word("👨\u200d👩\u200d👧!", 3, 9)]


def test_split_words_splits_on_every_unicode_whitespace():
    spaces = [chr(c) for c in range(0x110000) if chr(c).isspace()]
    text = "a" + "".join(space + "a" for space in spaces)
    assert [w.text for w in split_words(text)] == ["a"] * (len(spaces) + 1)


# --- TextEncoder construction ---------------------------------------------------------------------


def test_bert_tokenizer_needs_special_tokens():
    with pytest.raises(ValueError, match="missing"):
        bert_tokenizer({"[PAD]": 0, "[UNK]": 1, "hello": 2})


def test_encoder_validation():
    with pytest.raises(ValueError, match=">= 3"):
        make_encoder(max_length=2)
    with pytest.raises(ValueError, match="reserved"):
        make_encoder(aug_vocab={"word": 1})
    with pytest.raises(ValueError, match="reserved"):
        make_encoder(aug_vocab={"word": "2"})
    tokenizer = bert_tokenizer(VOCAB)
    tokenizer.model = type(tokenizer.model)({"a": 0, "[UNK]": 1}, unk_token="[UNK]")
    with pytest.raises(ValueError, match="special tokens"):
        TextEncoder(tokenizer, {})


# --- encode ---------------------------------------------------------------------------------------


def test_encode_layout():
    encoder = make_encoder()
    words = ["Kawhi", "Leonard", "wins", "the", "vote", "!"]
    encoded = encoder.encode(words)
    tokens = [encoder.tokenizer.id_to_token(int(i)) for i in encoded.input_ids]
    assert tokens == ["[CLS]", "Kaw", "##hi", "Leon", "##ard", "wins", "the", "vote", "!", "[SEP]"]
    assert encoded.input_ids.dtype == np.int64 and encoded.roles.dtype == np.int8
    np.testing.assert_array_equal(encoded.roles, [3, 1, 2, 1, 2, 1, 1, 1, 1, 4])
    np.testing.assert_array_equal(encoded.word_positions, [1, 3, 5, 6, 7, 8])
    # Kawhi: exact row 4 (not the lowercase row 3); wins: 2; others unknown (1); 0 elsewhere
    np.testing.assert_array_equal(encoded.aug_ids, [0, 4, 0, 1, 0, 2, 1, 1, 1, 0])
    assert encoded.n_words == 6 and not encoded.truncated and len(encoded) == 10


def test_aug_row_falls_back_to_lowercase_then_unknown():
    encoder = make_encoder(aug_vocab={"kawhi": 3})
    assert encoder.aug_row("KAWHI") == 3
    assert encoder.aug_row("kawhi") == 3
    assert encoder.aug_row("Leonard") == 1


def test_each_word_keeps_its_own_pieces():
    encoder = make_encoder()
    words = ["#NBA!", "@user", "Paris", "paris", "café", "😂"]
    encoded = encoder.encode(words)
    assert encoded.n_words == len(words)
    # the pre-tokenizer splits punctuation, but every piece stays with its word
    assert pieces(encoder, encoded, 0) == ["#", "N", "##BA", "!"]
    assert pieces(encoder, encoded, 1) == ["@", "user"]
    # cased, accents kept
    assert [pieces(encoder, encoded, i) for i in range(2, 6)] == [["Paris"], ["paris"], ["café"], ["😂"]]
    np.testing.assert_array_equal(encoded.roles[1:5], [Role.WORD] + [Role.CONTINUATION] * 3)


def test_a_word_with_no_piece_becomes_unk():
    encoder = make_encoder()
    encoded = encoder.encode(["wins", "\u200d", "the"])  # a lone ZWJ normalises away
    assert pieces(encoder, encoded, 1) == ["[UNK]"]
    assert encoded.n_words == 3


def test_special_token_text_in_a_post_is_not_special():
    encoder = make_encoder()
    encoded = encoder.encode(["[SEP]", "[CLS]"])
    assert (encoded.input_ids == encoder.sep_id).sum() == 1 and (encoded.input_ids == encoder.cls_id).sum() == 1
    assert pieces(encoder, encoded, 0)[0] == "[UNK]" and encoded.n_words == 2


@pytest.mark.parametrize("words", [["ok", ""], ["ok", None], [b"bytes"]])
def test_encode_rejects_words_that_are_not_words(words):
    with pytest.raises(ValueError, match="words must be non-empty strings"):
        make_encoder().encode(words)
    with pytest.raises(ValueError, match="words must be non-empty strings"):
        make_encoder().encode_many([["fine"], words])


EMPTIED = ["\xa0", "\xad", "\u200b", "\ufffd", "\u200d", "\x92", "\u2009", "\u3000", "\x00"]


@pytest.mark.parametrize("word", EMPTIED)
def test_a_word_cleaning_empties_keeps_its_slot_as_unk_with_the_unknown_row(word):
    # Even where the augmentation vocabulary has a row for the word's text: the model
    # sees [UNK] for it, and [UNK]'s row is the unknown row.
    encoder = make_encoder(aug_vocab={"wins": 2, word: 3})
    encoded = encoder.encode(["wins", word, "the"])
    assert encoded.n_words == 3 and not encoded.truncated
    assert pieces(encoder, encoded, 1) == ["[UNK]"]
    assert encoded.aug_ids[encoded.word_positions].tolist() == [2, AUG_UNKNOWN_ROW, AUG_UNKNOWN_ROW]
    labels, _ = label_ids(encoded, ["O", "O", "B-PER"], SCHEME)
    assert labels[encoded.word_positions].tolist() == [SCHEME.index[t] for t in ("O", "O", "B-PER")]
    assert encoder.encode_many([["wins", word, "the"]])[0].input_ids.tolist() == encoded.input_ids.tolist()


def test_pre_split_words_are_kept_as_given_even_with_whitespace_inside():
    encoder = make_encoder()
    encoded = encoder.encode(["Kawhi\u00a0Leonard", "two words", "wins"])
    assert encoded.n_words == 3
    assert pieces(encoder, encoded, 0) == ["Kaw", "##hi", "Leon", "##ard"]
    assert pieces(encoder, encoded, 1) == ["[UNK]", "[UNK]"]  # "two" and "words" are not in VOCAB


CHARACTERS = [chr(c) for c in [*range(0x00, 0x250), *range(0x2000, 0x2070), 0x3000, 0xFEFF, 0xFE0F, 0xFFFD,
                               0x1F602, 0xE000]]  # fmt: skip


def test_bert_cleaning_empties_agrees_with_the_encoder():
    encoder = make_encoder()
    emptied = {c for c in CHARACTERS if bert_cleaning_empties(c)}
    unk_alone = {c for c in CHARACTERS if not encoder.tokenizer.encode([c], is_pretokenized=True).ids}
    assert emptied == unk_alone
    assert {"\xa0", "\xad", "\u200b", "\ufffd", "\x92", " ", "\t"} <= emptied
    assert "\ufe0f" not in emptied and "a" not in emptied and "\U0001f602" not in emptied
    assert not bert_cleaning_empties("a\u200b") and bert_cleaning_empties("\u200b\xa0\xad")


def test_encode_empty_post():
    encoded = make_encoder().encode([])
    np.testing.assert_array_equal(encoded.roles, [Role.CLS, Role.SEP])
    assert encoded.n_words == 0 and len(encoded.word_positions) == 0 and not encoded.truncated


@pytest.mark.parametrize("max_length, n_words, truncated", [
    (10, 6, False),  # exact fit: 8 pieces + [CLS] + [SEP]
    (9, 5, True),  # the last piece ("!") goes, and with it the last word
    (5, 2, True),  # Kaw ##hi | Leon: Leonard's first piece fits, its ##ard does not
    (4, 1, True),
    (3, 1, True),
])  # fmt: skip
def test_truncation_like_the_reference(max_length, n_words, truncated):
    encoded = make_encoder(max_length=max_length).encode(["Kawhi", "Leonard", "wins", "the", "vote", "!"])
    assert len(encoded) == min(max_length, 10)
    assert encoded.n_words == n_words and encoded.truncated == truncated
    assert encoded.roles[-1] == Role.SEP and (encoded.roles == Role.WORD).sum() == n_words


def test_encode_many_equals_encode():
    encoder = make_encoder(max_length=5)
    posts = [["Kawhi", "wins"], [], ["#NBA!", "the"], ["Paris", "\u200d", "Leonard", "vote"]]
    for single, many in zip(map(encoder.encode, posts), encoder.encode_many(posts)):
        for field in ("input_ids", "roles", "word_positions", "aug_ids"):
            np.testing.assert_array_equal(getattr(single, field), getattr(many, field))
        assert (single.n_words, single.truncated) == (many.n_words, many.truncated)


# --- batch ----------------------------------------------------------------------------------------


def test_batch_pads_to_the_longest():
    encoder = make_encoder()
    encoded = encoder.encode_many([["Kawhi", "wins"], ["the"], []])
    batch = encoder.batch(encoded)
    assert set(batch) == {"input_ids", "attention_mask", "aug_ids", "roles", "lengths"}
    np.testing.assert_array_equal(batch["lengths"], [5, 3, 2])
    dtypes = {"input_ids": np.int64, "attention_mask": np.int64, "aug_ids": np.int64, "roles": np.int8}
    for name, dtype in dtypes.items():
        assert batch[name].shape == (3, 5) and batch[name].dtype == dtype, name
    np.testing.assert_array_equal(batch["attention_mask"], [[1] * 5, [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(batch["input_ids"][1], [VOCAB["[CLS]"], VOCAB["the"], VOCAB["[SEP]"], 0, 0])
    assert (batch["roles"][2, 2:] == Role.PAD).all() and (batch["aug_ids"][1, 3:] == 0).all()


def test_batch_rejects_empty():
    with pytest.raises(ValueError, match="at least one"):
        make_encoder().batch([])


# --- labels ---------------------------------------------------------------------------------------


def test_label_ids_put_tags_on_first_pieces_and_x_on_continuations():
    encoder = make_encoder()
    encoded = encoder.encode(["Kawhi", "Leonard", "wins", "#NBA!"])
    labels, aux = label_ids(encoded, ["B-PER", "I-PER", "O", "B-ORG"], SCHEME)
    tags = [SCHEME.tags[i] for i in labels]
    assert tags == ["[CLS]", "B-PER", "X", "I-PER", "X", "O", "B-ORG", "X", "X", "X", "[SEP]"]
    assert [SCHEME.aux_tags[i] for i in aux] == ["[CLS]", "B", "X", "I", "X", "O", "B", "X", "X", "X", "[SEP]"]
    assert labels.dtype == aux.dtype == np.int64
    assert SCHEME.allowed_mask(encoded.roles)[np.arange(len(labels)), labels].all()


def test_label_ids_after_truncation_use_the_kept_words():
    encoded = make_encoder(max_length=4).encode(["Kawhi", "Leonard", "wins"])
    labels, _ = label_ids(encoded, ["B-PER", "I-PER", "O"], SCHEME)
    assert [SCHEME.tags[i] for i in labels] == ["[CLS]", "B-PER", "X", "[SEP]"]


def test_label_ids_validation():
    encoded = make_encoder().encode(["Kawhi", "wins"])
    with pytest.raises(ValueError, match="2 encoded words"):
        label_ids(encoded, ["B-PER"], SCHEME)
    with pytest.raises(ValueError, match="2 encoded words"):
        label_ids(encoded, ["B-PER", "O", "O"], SCHEME)
    with pytest.raises(ValueError, match="not word tags"):
        label_ids(encoded, ["B-PER", "B-DATE"], SCHEME)
    with pytest.raises(ValueError, match="not word tags"):
        label_ids(encoded, ["X", "O"], SCHEME)


# --- save / load / BERT directories ---------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    encoder = make_encoder(max_length=7)
    encoder.save(tmp_path / "enc")
    loaded = TextEncoder.load(tmp_path / "enc")
    assert loaded.max_length == 7 and loaded.aug_vocab == encoder.aug_vocab
    words = ["Kawhi", "Leonard", "#NBA!", "café"]
    np.testing.assert_array_equal(loaded.encode(words).input_ids, encoder.encode(words).input_ids)
    np.testing.assert_array_equal(loaded.encode(words).aug_ids, encoder.encode(words).aug_ids)


def test_load_names_what_is_missing_or_wrong(tmp_path):
    make_encoder().save(tmp_path)
    (tmp_path / "text_encoder.json").write_text(json.dumps({"format_version": 0, "max_length": 64}))
    with pytest.raises(ValueError, match="format_version"):
        TextEncoder.load(tmp_path)
    (tmp_path / "aug_vocab.json").unlink()
    with pytest.raises(ValueError, match="aug_vocab.json"):
        TextEncoder.load(tmp_path)


def test_from_bert_dir(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB_TOKENS) + "\n", encoding="utf-8")
    encoder = TextEncoder.from_bert_dir(tmp_path, aug_vocab={"Paris": 2}, max_length=16)
    encoded = encoder.encode(["Paris", "paris", "Kawhi"])
    assert [pieces(encoder, encoded, i) for i in range(3)] == [["Paris"], ["paris"], ["Kaw", "##hi"]]
    # lookup lowercases the word, never the vocabulary: "paris" does not reach "Paris"
    np.testing.assert_array_equal(encoded.aug_ids, [0, 2, 1, 1, 0, 0])


def test_from_bert_dir_ids_are_line_numbers(tmp_path):
    # "\x85" is a line boundary to str.splitlines but an ordinary token in a vocab.txt
    tokens = [*VOCAB_TOKENS[:5], "a\x85b", "wins", "Paris"]
    (tmp_path / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    encoder = TextEncoder.from_bert_dir(tmp_path)
    assert encoder.tokenizer.get_vocab() == {token: i for i, token in enumerate(tokens)}
    np.testing.assert_array_equal(encoder.encode(["wins", "Paris"]).input_ids, [2, 6, 7, 3])


def test_from_bert_dir_validation(tmp_path):
    with pytest.raises(ValueError, match="neither vocab.txt nor tokenizer.json"):
        TextEncoder.from_bert_dir(tmp_path)
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB_TOKENS), encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))
    with pytest.raises(ValueError, match="tokenizer_class 'GPT2Tokenizer'"):
        TextEncoder.from_bert_dir(tmp_path)


def test_from_bert_dir_follows_an_uncased_directory(tmp_path):
    # once refused: an uncased directory now tokenises as it says (tests/runtime/test_bert_dir.py has the rest)
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB_TOKENS), encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    encoder = TextEncoder.from_bert_dir(tmp_path)
    encoded = encoder.encode(["PARIS", "Paris", "CAFÉ"])
    assert [pieces(encoder, encoded, i) for i in range(3)] == [["paris"], ["paris"], ["[UNK]"]]  # "cafe" not in VOCAB


def test_load_of_a_file_without_special_tokens_uses_berts_names(tmp_path):
    # text_encoder.json as written before special_tokens was recorded
    encoder = make_encoder(max_length=9)
    encoder.save(tmp_path)
    (tmp_path / "text_encoder.json").write_text(json.dumps({"format_version": 1, "max_length": 9}))
    loaded = TextEncoder.load(tmp_path)
    assert loaded.special_tokens == SpecialTokens(pad="[PAD]", unk="[UNK]", cls="[CLS]", sep="[SEP]")
    assert (loaded.pad_id, loaded.unk_id, loaded.cls_id, loaded.sep_id) == (0, 1, 2, 3)
    assert loaded.max_length == 9
    np.testing.assert_array_equal(loaded.encode(["Kawhi", "zzz"]).input_ids, encoder.encode(["Kawhi", "zzz"]).input_ids)


def test_load_refuses_unknown_special_token_fields(tmp_path):
    make_encoder().save(tmp_path)
    settings = {"format_version": 1, "max_length": 64, "special_tokens": {"unk": "[UNK]", "mask": "[MASK]"}}
    (tmp_path / "text_encoder.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match=r"text_encoder.json: unknown special_tokens fields \['mask'\]"):
        TextEncoder.load(tmp_path)


def test_save_records_the_special_tokens(tmp_path):
    make_encoder().save(tmp_path)
    saved = json.loads((tmp_path / "text_encoder.json").read_text())
    assert saved == {"format_version": 1, "max_length": 64,
                     "special_tokens": {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]"}}  # fmt: skip


# --- TextEncoder.cleaning_empties -----------------------------------------------------------------


def uncased_encoder():
    # strip_accents None: BERT's rule, accents go when lowercasing (an uncased directory's usual setting)
    return TextEncoder(bert_tokenizer(VOCAB, lowercase=True, strip_accents=None), {})


def test_cleaning_empties_of_a_cased_encoder_is_berts_cleaning():
    encoder = make_encoder()
    assert {c for c in CHARACTERS if encoder.cleaning_empties(c)} == {c for c in CHARACTERS if bert_cleaning_empties(c)}
    assert not encoder.cleaning_empties("\ufe0f") and not encoder.cleaning_empties("\u0301")


def test_cleaning_empties_of_an_uncased_encoder_also_strips_marks():
    encoder = uncased_encoder()
    # a lone variation selector or combining accent is a mark that accent stripping removes
    for word in ("\ufe0f", "\u0301", "\ufe0f\u200b", *EMPTIED):
        assert encoder.cleaning_empties(word), repr(word)
    for word in ("é", "e\u0301", "\u2764\ufe0f", "PARIS", "😂"):
        assert not encoder.cleaning_empties(word), repr(word)


@pytest.mark.parametrize("encoder", [make_encoder(), uncased_encoder()], ids=["cased", "uncased"])
def test_cleaning_empties_says_which_words_are_encoded_as_unk_with_the_unknown_row(encoder):
    words = ["\ufe0f", "\u0301", "\u200b", "paris", "\u2764\ufe0f", "e\u0301"]
    encoder = TextEncoder(encoder.tokenizer, {word: 2 + i for i, word in enumerate(words)})
    encoded = encoder.encode(words)
    assert encoded.n_words == len(words)
    for i, word in enumerate(words):
        emptied = encoder.cleaning_empties(word)
        alone = encoder.tokenizer.encode([word], is_pretokenized=True, add_special_tokens=False).ids
        assert emptied == (not alone), repr(word)
        if emptied:
            assert pieces(encoder, encoded, i) == ["[UNK]"], repr(word)
            assert encoded.aug_ids[encoded.word_positions[i]] == AUG_UNKNOWN_ROW, repr(word)
        else:
            assert encoded.aug_ids[encoded.word_positions[i]] == 2 + i, repr(word)


def test_encoded_text_is_a_plain_record():
    encoded = make_encoder().encode(["wins"])
    assert isinstance(encoded, EncodedText)
    with pytest.raises(AttributeError):
        encoded.n_words = 3


def test_runtime_text_imports_neither_torch_nor_gensim():
    code = (
        "import sys; import mner.runtime.text, mner.runtime.tags; "
        "bad = [m for m in ('torch', 'gensim') if m in sys.modules]; "
        "assert not bad, bad"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env={"PYTHONPATH": str(REPO / ".dev")}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
