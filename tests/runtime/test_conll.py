"""runtime.conll: every word of a TWITTER-format file is read as the file has it; label sets are checked."""

import logging

import pytest

from mner.runtime.conll import ConllPost, check_entity_types, entity_types, read_conll

ODD = ["\xa0", "\xad", "\u200b", "\ufffd", "\u2009"]  # whitespace to Python, or emptied by BERT's cleaning


def write(tmp_path, text, name="data.txt"):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def odd_warnings(caplog):
    return [r for r in caplog.records if r.name == "mner.runtime.conll" and r.levelno == logging.WARNING]


def test_a_lone_no_break_space_token_is_a_word_with_its_tag(tmp_path, caplog):
    # The published TWITTER-2015 dev file has this line; str.strip() would call it blank.
    path = write(tmp_path, "IMGID:1\nRT\tO\n\xa0\tO\nParis\tB-LOC\n\nIMGID:2\nok\tO\n")
    with caplog.at_level(logging.WARNING):
        posts = read_conll(path)
    assert posts == [ConllPost("1", ["RT", "\xa0", "Paris"], ["O", "O", "B-LOC"]), ConllPost("2", ["ok"], ["O"])]
    [warning] = odd_warnings(caplog)
    assert "1 word is whitespace to Python" in warning.getMessage() and "'\\xa0'" in warning.getMessage() and str(path) in warning.getMessage()


def test_words_cleaning_empties_keep_their_slots_and_one_warning_counts_them(tmp_path, caplog):
    lines = [f"{word}\tO" for word in ODD] + ["\ufe0f\tO", "a\u00a0b\tB-PER", "\u200b\tO"]  # U+FE0F: cleaning keeps it
    path = write(tmp_path, "IMGID:1\n" + "\n".join(lines) + "\n\n")
    with caplog.at_level(logging.WARNING):
        [post] = read_conll(path)
    assert post.words == [*ODD, "\ufe0f", "a\u00a0b", "\u200b"]
    assert post.tags == ["O"] * 6 + ["B-PER", "O"]
    [warning] = odd_warnings(caplog)
    message = warning.getMessage()
    assert "7 words are whitespace to Python or emptied by BERT's text cleaning" in message
    assert "'\\u200b'" in message and "'\\ufe0f'" not in message


def test_a_clean_file_reads_without_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        read_conll(write(tmp_path, "IMGID:1\nKawhi\tB-PER\ncaf\u00e9\tO\n\U0001f602\tO\n"))
    assert odd_warnings(caplog) == []


@pytest.mark.parametrize("separator", ["", " ", "\t", " \t  ", "\f"])
def test_only_a_line_of_ascii_whitespace_separates_posts(tmp_path, separator):
    posts = read_conll(write(tmp_path, f"IMGID:1\na\tO\n{separator}\nIMGID:2\nb\tO\n"))
    assert [p.words for p in posts] == [["a"], ["b"]]


@pytest.mark.parametrize("text, line", [
    ("IMGID:1\nok\tO\n\xa0\n", 3),  # a lone U+00A0 with no TAB: malformed, not a separator
    ("IMGID:1\n\tO\n", 2),  # empty token field
    ("IMGID:1\n\xa0\t\n", 2),  # empty tag field
    ("IMGID:1\n\xa0\tO\tO\n", 2),  # two TABs
])  # fmt: skip
def test_malformed_lines_are_still_refused(tmp_path, text, line):
    with pytest.raises(ValueError, match="expected 'token<TAB>tag' with a non-empty token") as error:
        read_conll(write(tmp_path, text, name="bad.txt"))
    assert f"bad.txt:{line}:" in str(error.value)


def test_entity_types_and_the_label_set_check():
    posts = [ConllPost("1", ["a", "b", "c"], ["B-OTHER", "I-OTHER", "O"]), ConllPost("2", ["d"], ["B-PER"])]
    assert entity_types(posts) == {"OTHER", "PER"}
    check_entity_types(posts, ["LOC", "OTHER", "ORG", "PER"], "data.txt", "the bundle")  # a subset is fine
    with pytest.raises(ValueError) as error:
        check_entity_types(posts, ["LOC", "MISC", "ORG", "PER"], "data.txt", "bundle b/")
    message = str(error.value)
    assert "data.txt has entity types ['OTHER', 'PER']" in message
    assert "bundle b/ knows ['LOC', 'MISC', 'ORG', 'PER']" in message and "['OTHER'] could never be predicted" in message


def test_data_file_is_the_file_or_the_split_of_a_folder(tmp_path):
    from mner.runtime.conll import data_file  # noqa: PLC0415

    for name in ("train.txt", "valid.txt", "test.txt"):
        (tmp_path / name).write_text("a\tO\n", encoding="utf-8")
    assert data_file(tmp_path) == tmp_path / "test.txt"
    assert data_file(tmp_path, "valid") == tmp_path / "valid.txt"
    assert data_file(tmp_path / "train.txt", "valid") == tmp_path / "train.txt"
    with pytest.raises(ValueError, match="split must be one of"):
        data_file(tmp_path, "dev")
    with pytest.raises(ValueError, match="no such file or folder"):
        data_file(tmp_path / "missing.txt")
    (tmp_path / "test.txt").unlink()
    with pytest.raises(ValueError, match="without test.txt"):
        data_file(tmp_path)
