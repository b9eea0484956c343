"""A BERT directory's own tokenizer settings, as ``TextEncoder.from_bert_dir`` reads them.

Small directories written here: vocab.txt, tokenizer_config.json, tokenizer.json and
special_tokens_map.json in the combinations Hugging Face and Google checkpoints come in.
The real MiniLM directory is tests/train/test_real_weights.py's.
"""

import json

import numpy as np
import pytest

from mner.runtime.text import (
    BertDirSettings,
    SpecialTokens,
    TextEncoder,
    bert_dir_settings,
    bert_dir_vocab,
    bert_tokenizer,
)

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CASED = [*BERT_SPECIALS, "[unused0]", "Paris", "paris", "Café", "Cafe", "café", "cafe", "中", "国", "中国", "wins"]
UNCASED = [*BERT_SPECIALS, "[unused0]", "[unused1]", "paris", "café", "cafe", "wins", "##s"]


def write_dir(path, vocab=None, config=None, tokenizer_json=None, special_map=None):
    """A BERT directory with the files given (None: left out)."""
    path.mkdir(parents=True, exist_ok=True)
    if vocab is not None:
        (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    for name, value in (("tokenizer_config.json", config), ("tokenizer.json", tokenizer_json),
                        ("special_tokens_map.json", special_map)):  # fmt: skip
        if value is not None:
            (path / name).write_text(value if isinstance(value, str) else json.dumps(value), encoding="utf-8")
    return path


def tokenizer_json(vocab, **settings) -> str:
    """A tokenizer.json as Hugging Face writes one for BERT (WordPiece model, BertNormalizer)."""
    return bert_tokenizer({token: i for i, token in enumerate(vocab)}, **settings).to_str()


def settings_of(path) -> BertDirSettings:
    return bert_dir_settings(path, bert_dir_vocab(path))


def word_pieces(encoder, word):
    ids = encoder.encode([word]).input_ids[1:-1]
    return [encoder.tokenizer.id_to_token(int(i)) for i in ids]


# --- lower-casing: tokenizer_config.json, else tokenizer.json, else the vocabulary -----------------


def test_do_lower_case_false_is_cased(tmp_path):
    write_dir(tmp_path, CASED, config={"do_lower_case": False})
    settings = settings_of(tmp_path)
    assert settings.lowercase is False and settings.source == "tokenizer_config.json do_lower_case"
    encoder = TextEncoder.from_bert_dir(tmp_path)
    assert [word_pieces(encoder, w) for w in ("Paris", "paris", "PARIS")] == [["Paris"], ["paris"], ["[UNK]"]]


def test_do_lower_case_true_is_uncased(tmp_path):
    # the vocabulary holds "Paris", but the directory says lowercase: the config decides
    write_dir(tmp_path, CASED, config={"do_lower_case": True})
    settings = settings_of(tmp_path)
    assert settings.lowercase is True and settings.source == "tokenizer_config.json do_lower_case"
    encoder = TextEncoder.from_bert_dir(tmp_path)
    assert [word_pieces(encoder, w) for w in ("Paris", "paris", "PARIS")] == [["paris"]] * 3


def test_the_config_decides_over_tokenizer_json(tmp_path):
    # transformers' BertTokenizerFast applies do_lower_case over the tokenizer.json normalizer
    write_dir(tmp_path, CASED, config={"do_lower_case": False}, tokenizer_json=tokenizer_json(CASED, lowercase=True))
    assert settings_of(tmp_path).lowercase is False
    assert word_pieces(TextEncoder.from_bert_dir(tmp_path), "Paris") == ["Paris"]


@pytest.mark.parametrize("lowercase", [True, False])
def test_tokenizer_json_normalizer_without_a_config(tmp_path, lowercase):
    # the vocabulary alone would say the opposite: UNCASED has no upper-case piece, CASED has
    vocab = CASED if lowercase else UNCASED
    write_dir(tmp_path, vocab, tokenizer_json=tokenizer_json(vocab, lowercase=lowercase, strip_accents=None))
    settings = settings_of(tmp_path)
    assert settings.lowercase is lowercase and settings.source == "tokenizer.json normalizer"
    assert settings.strip_accents is None


def test_a_config_without_do_lower_case_falls_through_to_tokenizer_json(tmp_path):
    write_dir(tmp_path, UNCASED, config={"tokenizer_class": "BertTokenizer"},
              tokenizer_json=tokenizer_json(UNCASED, lowercase=False))  # fmt: skip
    settings = settings_of(tmp_path)
    assert settings.lowercase is False and settings.source == "tokenizer.json normalizer"


def test_vocab_with_upper_case_pieces_is_cased(tmp_path):
    write_dir(tmp_path, CASED)  # Google's original layout: vocab.txt alone
    settings = settings_of(tmp_path)
    assert settings == BertDirSettings(lowercase=False, strip_accents=None, chinese_chars=True,
                                       special_tokens=SpecialTokens(),
                                       source="vocab (no tokenizer settings; upper-case pieces)")  # fmt: skip
    assert word_pieces(TextEncoder.from_bert_dir(tmp_path), "Paris") == ["Paris"]


def test_vocab_of_lower_case_pieces_is_uncased_whatever_its_bracketed_names(tmp_path):
    # "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]" and an upper-case "[Unused_X]" are names, not text
    write_dir(tmp_path, [*UNCASED, "[Unused_X]"])
    settings = settings_of(tmp_path)
    assert settings.lowercase is True and settings.source == "vocab (no tokenizer settings; no upper-case pieces)"
    encoder = TextEncoder.from_bert_dir(tmp_path)
    assert word_pieces(encoder, "PARIS") == ["paris"]
    assert word_pieces(encoder, "CAFÉ") == ["cafe"]  # strip_accents None: stripped when lowercasing


def test_a_normalizer_that_is_not_berts_is_not_read(tmp_path):
    # transformers rebuilds BERT's normaliser from the config's settings; the vocabulary decides here
    tokenizer = json.loads(tokenizer_json(CASED))
    tokenizer["normalizer"] = {"type": "Lowercase"}
    write_dir(tmp_path, CASED, tokenizer_json=json.dumps(tokenizer))
    settings = settings_of(tmp_path)
    assert settings.lowercase is False and settings.source.startswith("vocab")


# --- accents and Chinese characters ---------------------------------------------------------------


@pytest.mark.parametrize("lowercase, strip_accents, pieces", [
    (False, None, ["Café"]),  # None: strip only when lowercasing
    (False, True, ["Cafe"]),
    (False, False, ["Café"]),
    (True, None, ["cafe"]),
    (True, True, ["cafe"]),
    (True, False, ["café"]),
])  # fmt: skip
def test_strip_accents_reaches_the_normalizer(tmp_path, lowercase, strip_accents, pieces):
    write_dir(tmp_path, CASED, config={"do_lower_case": lowercase, "strip_accents": strip_accents})
    settings = settings_of(tmp_path)
    assert settings.strip_accents is strip_accents
    encoder = TextEncoder.from_bert_dir(tmp_path)
    assert word_pieces(encoder, "Café") == pieces
    # the same after the encoder is saved and loaded (the checkpoint's and the bundle's copy)
    encoder.save(tmp_path / "saved")
    assert word_pieces(TextEncoder.load(tmp_path / "saved"), "Café") == pieces


def test_strip_accents_from_tokenizer_json(tmp_path):
    write_dir(tmp_path, CASED, tokenizer_json=tokenizer_json(CASED, lowercase=False, strip_accents=True))
    assert settings_of(tmp_path).strip_accents is True
    assert word_pieces(TextEncoder.from_bert_dir(tmp_path), "Café") == ["Cafe"]


@pytest.mark.parametrize("chinese_chars, pieces", [(True, ["中", "国"]), (False, ["中国"])])
def test_tokenize_chinese_chars(tmp_path, chinese_chars, pieces):
    write_dir(tmp_path / "config", CASED, config={"do_lower_case": False, "tokenize_chinese_chars": chinese_chars})
    write_dir(tmp_path / "json", CASED, tokenizer_json=tokenizer_json(CASED, chinese_chars=chinese_chars))
    for directory in ("config", "json"):
        assert settings_of(tmp_path / directory).chinese_chars is chinese_chars
        assert word_pieces(TextEncoder.from_bert_dir(tmp_path / directory), "中国") == pieces


# --- special tokens -------------------------------------------------------------------------------

ANGLED = ["<pad>", "<unk>", "<s>", "</s>", "<mask>", "paris", "wins"]
ANGLED_NAMES = {"pad_token": "<pad>", "unk_token": "<unk>", "cls_token": "<s>", "sep_token": "</s>"}


def check_angled_encoder(encoder):
    vocab = {token: i for i, token in enumerate(ANGLED)}
    assert encoder.special_tokens == SpecialTokens(pad="<pad>", unk="<unk>", cls="<s>", sep="</s>")
    assert (encoder.pad_id, encoder.unk_id, encoder.cls_id, encoder.sep_id) == (0, 1, 2, 3)
    encoded = encoder.encode(["paris", "zzz", "\u200b"])  # an unknown word, a word cleaning empties
    assert encoded.input_ids.tolist() == [vocab["<s>"], vocab["paris"], vocab["<unk>"], vocab["<unk>"], vocab["</s>"]]
    batch = encoder.batch([encoded, encoder.encode(["wins"])])
    assert batch["input_ids"][1].tolist() == [vocab["<s>"], vocab["wins"], vocab["</s>"], vocab["<pad>"], vocab["<pad>"]]


def test_special_token_names_from_the_config(tmp_path):
    write_dir(tmp_path, ANGLED, config={"do_lower_case": True, **ANGLED_NAMES})
    encoder = TextEncoder.from_bert_dir(tmp_path)
    check_angled_encoder(encoder)
    encoder.save(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "text_encoder.json").read_text())
    assert saved["special_tokens"] == {"pad": "<pad>", "unk": "<unk>", "cls": "<s>", "sep": "</s>"}
    check_angled_encoder(TextEncoder.load(tmp_path / "saved"))


def test_special_token_names_from_the_map_in_added_token_form(tmp_path):
    # special_tokens_map.json as transformers writes it: {"content": ..., "lstrip": ..., ...}
    added = {key: {"content": value, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
             for key, value in ANGLED_NAMES.items()}  # fmt: skip
    write_dir(tmp_path, ANGLED, special_map=added)
    check_angled_encoder(TextEncoder.from_bert_dir(tmp_path))


def test_the_config_names_special_tokens_over_the_map(tmp_path):
    write_dir(tmp_path, [*ANGLED, *BERT_SPECIALS], config={"do_lower_case": True, **ANGLED_NAMES},
              special_map={"unk_token": "[UNK]", "cls_token": "[CLS]"})  # fmt: skip
    assert settings_of(tmp_path).special_tokens == SpecialTokens(pad="<pad>", unk="<unk>", cls="<s>", sep="</s>")


def test_unnamed_special_tokens_keep_berts_names(tmp_path):
    write_dir(tmp_path, [*BERT_SPECIALS, "<s>", "paris"], special_map={"cls_token": "<s>"})
    assert settings_of(tmp_path).special_tokens == SpecialTokens(cls="<s>")


@pytest.mark.parametrize("value", ["", 5, {"content": ""}, {"lstrip": False}, ["<unk>"]])
def test_a_special_token_that_is_not_a_name_is_refused(tmp_path, value):
    write_dir(tmp_path, ANGLED, config={"unk_token": value})
    with pytest.raises(ValueError, match="unk_token must be a non-empty string, got"):
        settings_of(tmp_path)


def test_special_tokens_the_vocabulary_lacks_are_refused(tmp_path):
    write_dir(tmp_path, ANGLED)  # no names given: BERT's [PAD] [UNK] [CLS] [SEP], which ANGLED lacks
    with pytest.raises(ValueError, match=r"missing \['\[PAD\]', '\[UNK\]', '\[CLS\]', '\[SEP\]'\]"):
        TextEncoder.from_bert_dir(tmp_path)


# --- what is a BERT directory ---------------------------------------------------------------------


@pytest.mark.parametrize("tokenizer_class", ["BertTokenizer", "BertTokenizerFast", "DistilBertTokenizer",
                                             "ElectraTokenizerFast"])  # fmt: skip
def test_bert_family_tokenizer_classes_are_accepted(tmp_path, tokenizer_class):
    write_dir(tmp_path, CASED, config={"tokenizer_class": tokenizer_class, "do_lower_case": False})
    assert settings_of(tmp_path).lowercase is False


@pytest.mark.parametrize("tokenizer_class", ["RobertaTokenizer", "XLMRobertaTokenizerFast", "AlbertTokenizer"])
def test_other_tokenizer_classes_are_refused(tmp_path, tokenizer_class):
    write_dir(tmp_path, CASED, config={"tokenizer_class": tokenizer_class})
    with pytest.raises(ValueError, match=f"tokenizer_class '{tokenizer_class}'; --bert needs a WordPiece BERT"):
        TextEncoder.from_bert_dir(tmp_path)


def test_vocab_from_tokenizer_json_without_vocab_txt(tmp_path):
    write_dir(tmp_path, tokenizer_json=tokenizer_json(CASED, lowercase=False))
    assert bert_dir_vocab(tmp_path) == {token: i for i, token in enumerate(CASED)}
    encoder = TextEncoder.from_bert_dir(tmp_path)
    assert encoder.encode(["Paris", "中国"]).input_ids.tolist() == [2, 6, 12, 13, 3]


def test_vocab_txt_is_read_before_tokenizer_json(tmp_path):
    write_dir(tmp_path, UNCASED, tokenizer_json=tokenizer_json(CASED))
    assert bert_dir_vocab(tmp_path) == {token: i for i, token in enumerate(UNCASED)}


def test_a_tokenizer_json_that_is_not_wordpiece_is_refused(tmp_path):
    bpe = {"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "normalizer": None}
    write_dir(tmp_path, tokenizer_json=bpe)
    with pytest.raises(ValueError, match="a 'BPE' tokenizer; a BERT directory has a WordPiece one"):
        TextEncoder.from_bert_dir(tmp_path)
    write_dir(tmp_path, tokenizer_json={"version": "1.0"})
    with pytest.raises(ValueError, match="a None tokenizer; a BERT directory has a WordPiece one"):
        TextEncoder.from_bert_dir(tmp_path)


def test_a_directory_with_neither_file_is_refused(tmp_path):
    write_dir(tmp_path, config={"do_lower_case": False})
    with pytest.raises(ValueError, match="is not a BERT directory: it has neither vocab.txt nor tokenizer.json"):
        TextEncoder.from_bert_dir(tmp_path)


@pytest.mark.parametrize("name", ["tokenizer_config.json", "tokenizer.json", "special_tokens_map.json"])
def test_unreadable_settings_files_are_named(tmp_path, name):
    write_dir(tmp_path, CASED)
    (tmp_path / name).write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=f"cannot read .*{name}"):
        TextEncoder.from_bert_dir(tmp_path)
    (tmp_path / name).write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{name} must hold a JSON object, got list"):
        TextEncoder.from_bert_dir(tmp_path)


def test_from_bert_dir_keeps_the_augmentation_rows_and_length(tmp_path):
    write_dir(tmp_path, UNCASED, config={"do_lower_case": True})
    encoder = TextEncoder.from_bert_dir(tmp_path, aug_vocab={"paris": 2}, max_length=5)
    encoded = encoder.encode(["PARIS", "wins", "wins", "wins"])
    assert encoder.max_length == 5 and encoded.truncated and encoded.n_words == 3
    np.testing.assert_array_equal(encoded.aug_ids, [0, 2, 1, 1, 0])
