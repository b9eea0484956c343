import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mner.runtime.tags import TagScheme
from mner.runtime.text import TextEncoder
from mner.train.data import Post, read_conll, sha256_file
from mner.train.tokenizer import train_wordpiece

REPO = Path(__file__).resolve().parents[2]
TWITTER2017 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "twitter2017"
needs_twitter2017 = pytest.mark.skipif(
    not (TWITTER2017 / "train.txt").is_file(), reason=f"TWITTER-2017 data not found at {TWITTER2017}"
)


def write(tmp_path, text, name="data.txt", newline="\n"):
    path = tmp_path / name
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return path


# --- read_conll on the real data ------------------------------------------------------------------


@needs_twitter2017
@pytest.mark.parametrize("split, count", [("train", 3373), ("valid", 723), ("test", 723)])
def test_twitter2017_splits(split, count):
    posts = read_conll(TWITTER2017 / f"{split}.txt")
    assert len(posts) == count
    assert all(p.image_id and p.words and len(p.words) == len(p.tags) for p in posts)
    scheme = TagScheme.from_bio_tags(tag for post in posts for tag in post.tags)
    assert scheme.entity_types == ("LOC", "MISC", "ORG", "PER")
    lines = (TWITTER2017 / f"{split}.txt").read_text(encoding="utf-8").splitlines()
    assert sum(len(p.words) for p in posts) == sum(1 for line in lines if "\t" in line)


# --- read_conll on edge cases ---------------------------------------------------------------------

GOOD = "IMGID:1\nKawhi\tB-PER\nwins\tO\n\nIMGID:2\nNew\tB-LOC\nYork\tI-LOC\n\n"
EXPECTED = [Post("1", ["Kawhi", "wins"], ["B-PER", "O"]), Post("2", ["New", "York"], ["B-LOC", "I-LOC"])]


@pytest.mark.parametrize("text, newline", [
    (GOOD, "\n"),
    (GOOD, "\r\n"),  # Windows line endings
    (GOOD.rstrip("\n"), "\n"),  # no final blank line nor final newline
    (GOOD + "\n\n  \n", "\n"),  # trailing blank lines, one with spaces
    ("\n\n" + GOOD, "\n"),  # leading blank lines
    ("\ufeff" + GOOD, "\n"),  # byte-order mark
    (GOOD.replace("\n\nIMGID:2", "\nIMGID:2"), "\n"),  # no blank line before the next IMGID
])  # fmt: skip
def test_read_conll_is_robust_to_layout(tmp_path, text, newline):
    assert read_conll(write(tmp_path, text, newline=newline)) == EXPECTED


def test_posts_without_imgid_have_no_image(tmp_path):
    posts = read_conll(write(tmp_path, "Kawhi\tB-PER\n\nIMGID:7\nwins\tO\n"))
    assert posts == [Post(None, ["Kawhi"], ["B-PER"]), Post("7", ["wins"], ["O"])]


def test_tag_set_from_other_datasets(tmp_path):
    posts = read_conll(write(tmp_path, "IMGID:1\nx\tB-OTHER\ny\tI-OTHER\n"))
    assert TagScheme.from_bio_tags(posts[0].tags).entity_types == ("OTHER",)


@pytest.mark.parametrize("text, line, message", [
    ("IMGID:1\nKawhi B-PER\n", 2, "token<TAB>tag"),  # space, not tab
    ("IMGID:1\nKawhi\tB-PER\tx\n", 2, "token<TAB>tag"),
    ("IMGID:1\n\tO\n", 2, "token<TAB>tag"),
    ("IMGID:1\nKawhi\t\n", 2, "token<TAB>tag"),
    ("IMGID:1\nok\tO\n\xa0\n", 3, "token<TAB>tag"),  # a lone U+00A0 is not a blank line
    ("IMGID:1\nKawhi\tPER\n", 2, "BIO tag"),
    ("IMGID:1\nKawhi\tX\n", 2, "BIO tag"),
    ("IMGID:1\n\nIMGID:2\nok\tO\n", 1, "no token lines"),
    ("IMGID:1\nIMGID:2\nok\tO\n", 1, "no token lines"),
    ("IMGID:\nok\tO\n", 1, "without an image id"),
])  # fmt: skip
def test_read_conll_names_file_and_line(tmp_path, text, line, message):
    path = write(tmp_path, text, name="bad.txt")
    with pytest.raises(ValueError, match=message) as error:
        read_conll(path)
    assert f"bad.txt:{line}:" in str(error.value)


def test_sha256_file(tmp_path):
    path = write(tmp_path, GOOD * 1000)
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


# --- train_wordpiece ------------------------------------------------------------------------------

WORDS = ("Kawhi Leonard wins the fan vote for Block of the Year ! #NBAAwards @Spurs "
         "Leonard Kawhi wins wins the the NBA Spurs café Café").split() * 3  # fmt: skip


def test_train_wordpiece_special_ids_and_case():
    tokenizer = train_wordpiece(WORDS, vocab_size=120, min_frequency=1)
    assert [tokenizer.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]
    assert 5 < tokenizer.get_vocab_size() <= 120
    encoder = TextEncoder(tokenizer, {})
    upper, lower = encoder.encode(["Café"]), encoder.encode(["café"])
    assert not np.array_equal(upper.input_ids, lower.input_ids)  # cased: no lowercasing, no accent stripping
    assert tokenizer.decode(encoder.encode(["Leonard"]).input_ids[1:-1].tolist()) == "Leonard"


def vocabulary_in_id_order(tokenizer):
    vocab = tokenizer.get_vocab()
    return sorted(vocab, key=vocab.get)


@pytest.mark.parametrize("vocab_size, min_frequency, learnt", [
    (100, 3, ["##ab", "aab"]),  # "ab" is seen only twice
    (100, 2, ["##ab", "aab", "ab"]),
    (10, 1, ["##ab"]),
    (6, 1, []),  # the alphabet is kept whole even past vocab_size
])  # fmt: skip
def test_train_wordpiece_merges_by_count_then_pair(vocab_size, min_frequency, learnt):
    # pairs: (a, ##a) 3, (##a, ##b) 3, (a, ##b) 2; the tie goes to the smaller pair ("##a" < "a")
    tokenizer = train_wordpiece(["aab"] * 3 + ["ab"] * 2, vocab_size=vocab_size, min_frequency=min_frequency)
    alphabet = ["a", "##b", "b", "##a"]  # by count (8, 5, 5, 3), then by string
    assert vocabulary_in_id_order(tokenizer)[5:] == alphabet + learnt


def test_train_wordpiece_is_deterministic():
    first = train_wordpiece(WORDS, vocab_size=80, min_frequency=1).to_str()
    assert train_wordpiece(WORDS, vocab_size=80, min_frequency=1).to_str() == first
    assert train_wordpiece(list(reversed(WORDS)), vocab_size=80, min_frequency=1).to_str() == first


def test_train_wordpiece_ignores_python_hash_seed():
    code = (
        "import sys; from mner.train.tokenizer import train_wordpiece; "
        f"sys.stdout.write(train_wordpiece({WORDS!r}, vocab_size=80, min_frequency=1).to_str())"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO / ".dev")},
            capture_output=True, text=True, check=True,
        ).stdout
        for seed in ("1", "2")
    }  # fmt: skip
    assert len(outputs) == 1


@pytest.mark.parametrize("kwargs, message", [
    ({"vocab_size": 5}, "vocab_size"),
    ({"min_frequency": 0}, "min_frequency"),
])  # fmt: skip
def test_train_wordpiece_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        train_wordpiece(WORDS, **kwargs)


@needs_twitter2017
def test_train_wordpiece_on_twitter2017_covers_its_words():
    posts = read_conll(TWITTER2017 / "train.txt")
    tokenizer = train_wordpiece(word for post in posts for word in post.words)
    assert tokenizer.get_vocab_size() == 8000
    encoder = TextEncoder(tokenizer, {})
    encoded = encoder.encode_many([post.words for post in posts[:200]])
    unk_share = np.mean([(e.input_ids == encoder.unk_id).mean() for e in encoded])
    assert unk_share < 0.01
