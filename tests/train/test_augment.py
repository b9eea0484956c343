import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from gensim.models import FastText, KeyedVectors, Word2Vec
from gensim.models.fasttext import save_facebook_model

from mner.train import augment
from mner.train.augment import build_augmentation_table, load_word_vectors, train_word2vec

REPO = Path(__file__).resolve().parents[2]
WORDS = ["paris", "london", "berlin", "rome", "trump", "obama", "Merkel", "nba", "spurs", "lakers", "the", "a"]


@pytest.fixture
def tiny_vectors():
    rng = np.random.default_rng(0)
    vectors = KeyedVectors(vector_size=6)
    vectors.add_vectors(WORDS, rng.normal(size=(len(WORDS), 6)).astype(np.float32))
    return vectors


def brute_force(vectors, key, k):
    """The reference's computation with a full sort instead of gensim."""
    raw = vectors.vectors.astype(np.float64)
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    i = vectors.key_to_index[key]
    similarity = unit @ unit[i]
    order = [j for j in np.argsort(-similarity) if j != i][:k]
    weights = np.exp(similarity[order] - similarity[order].max())
    weights /= weights.sum()
    return (weights[:, None] * raw[order]).sum(axis=0)


def with_gensim(vectors, key, k):
    """token_augmentation.py's compute_atten_embedding, through gensim's most_similar."""
    neighbours = vectors.most_similar(key, topn=k)
    scores = np.array([s for _, s in neighbours], dtype=np.float32)
    weights = np.exp(scores - scores.max())
    weights /= weights.sum()
    return (weights[:, None] * np.array([vectors[w] for w, _ in neighbours])).sum(axis=0)


@pytest.mark.parametrize("k", [1, 4, 11])
def test_rows_equal_brute_force_and_gensim(tiny_vectors, k):
    table, vocab = build_augmentation_table(tiny_vectors, WORDS, neighbours=k)
    assert table.dtype == np.float32 and table.shape == (len(WORDS) + 2, 6)
    assert sorted(vocab.values()) == list(range(2, len(WORDS) + 2))
    for word, row in vocab.items():
        np.testing.assert_allclose(table[row], brute_force(tiny_vectors, word, k), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(table[row], with_gensim(tiny_vectors, word, k), rtol=1e-5, atol=1e-6)


def test_blocks_give_the_same_rows(tiny_vectors, monkeypatch):
    whole, _ = build_augmentation_table(tiny_vectors, WORDS)
    monkeypatch.setattr(augment, "_BLOCK_ELEMENTS", 25)  # two queries per block of 12 vectors
    blocked, _ = build_augmentation_table(tiny_vectors, WORDS)
    np.testing.assert_array_equal(whole, blocked)


def test_reserved_rows_and_vocabulary(tiny_vectors):
    words = ["Paris", "paris", "PARIS", "unknownword", "Merkel", "merkel", "the", "Paris"]
    table, vocab = build_augmentation_table(tiny_vectors, words)
    # first-seen order; "Paris"/"PARIS" found as "paris"; "merkel" found as nothing (vectors hold "Merkel")
    assert vocab == {"paris": 2, "Merkel": 3, "the": 4}
    assert table.shape == (5, 6)
    np.testing.assert_array_equal(table[0], 0.0)
    np.testing.assert_allclose(table[1], tiny_vectors.vectors.mean(axis=0), rtol=1e-6)


def test_no_known_words_gives_only_the_reserved_rows(tiny_vectors):
    table, vocab = build_augmentation_table(tiny_vectors, ["nothing", "known"])
    assert vocab == {} and table.shape == (2, 6)


def test_table_validation(tiny_vectors):
    with pytest.raises(ValueError, match="neighbours must be >= 1"):
        build_augmentation_table(tiny_vectors, WORDS, neighbours=0)
    with pytest.raises(ValueError, match="need more than 12 vectors"):
        build_augmentation_table(tiny_vectors, WORDS, neighbours=12)


SENTENCES = [["the", "spurs", "beat", "the", "lakers"], ["obama", "visits", "paris"], ["the", "nba", "finals"]] * 20


def test_train_word2vec_is_reproducible():
    first = train_word2vec(SENTENCES, dim=8, epochs=2)
    second = train_word2vec(SENTENCES, dim=8, epochs=2)
    assert first.index_to_key == second.index_to_key and first.vector_size == 8
    np.testing.assert_array_equal(first.vectors, second.vectors)
    assert not np.array_equal(first.vectors, train_word2vec(SENTENCES, dim=8, epochs=2, seed=99).vectors)


def test_train_word2vec_ignores_python_hash_seed(tmp_path):
    code = (
        "import sys; from tests_helper_data import SENTENCES; "
        "from mner.train.augment import train_word2vec; "
        "train_word2vec(SENTENCES, dim=8, epochs=2).save_word2vec_format(sys.argv[1])"
    )
    (tmp_path / "tests_helper_data.py").write_text(f"SENTENCES = {SENTENCES!r}\n")
    outputs = []
    for hash_seed in ("1", "2"):
        out = tmp_path / f"vectors{hash_seed}.txt"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": f"{REPO / '.dev'}{os.pathsep}{tmp_path}"}
        subprocess.run([sys.executable, "-c", code, str(out)], env=env, check=True)
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1]


def test_train_word2vec_needs_sentences():
    with pytest.raises(ValueError, match="at least one sentence"):
        train_word2vec([])


def test_load_word_vectors_reads_every_format(tmp_path, tiny_vectors):
    model = Word2Vec(SENTENCES, vector_size=6, min_count=1, workers=1, seed=1, epochs=1)
    model.save(str(tmp_path / "w2v.model"))
    tiny_vectors.save(str(tmp_path / "vectors.kv"))
    tiny_vectors.save_word2vec_format(str(tmp_path / "vectors.txt"), binary=False)
    tiny_vectors.save_word2vec_format(str(tmp_path / "vectors.bin"), binary=True)
    tiny_vectors.save_word2vec_format(str(tmp_path / "binary_without_suffix"), binary=True)
    tiny_vectors.save_word2vec_format(str(tmp_path / "vectors.txt.gz"), binary=False)
    lines = (tmp_path / "vectors.txt").read_text(encoding="utf-8").splitlines()[1:]
    (tmp_path / "glove.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")

    for name in ("vectors.kv", "vectors.txt", "vectors.bin", "binary_without_suffix", "vectors.txt.gz", "glove.txt"):
        loaded = load_word_vectors(tmp_path / name)
        assert loaded.index_to_key == WORDS, name
        np.testing.assert_allclose(loaded.vectors, tiny_vectors.vectors, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(load_word_vectors(tmp_path / "w2v.model").vectors, model.wv.vectors)


def test_load_word_vectors_reads_fasttext_bin(tmp_path):
    model = FastText(SENTENCES, vector_size=6, min_count=1, workers=1, seed=1, epochs=1, bucket=1000)
    save_facebook_model(model, str(tmp_path / "model.bin"))
    loaded = load_word_vectors(tmp_path / "model.bin")
    assert loaded.index_to_key == model.wv.index_to_key
    np.testing.assert_allclose(loaded.vectors, model.wv.vectors, rtol=1e-5, atol=1e-6)
    table, vocab = build_augmentation_table(loaded, ["paris", "no-such-word"])
    assert list(vocab) == ["paris"]  # fastText's n-grams do not make every string known


def test_load_word_vectors_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_word_vectors(tmp_path / "missing.bin")
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("this is\nnot vectors\n")
    with pytest.raises(ValueError, match="garbage.txt"):
        load_word_vectors(garbage)
    bad_header = tmp_path / "bad_header.txt"
    bad_header.write_text("2 3\nword 1 2\n")
    with pytest.raises(ValueError, match="bad_header.txt.*word2vec text.*word2vec binary"):
        load_word_vectors(bad_header)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.txt"):
        load_word_vectors(empty)
    from gensim.corpora import Dictionary

    Dictionary([["a", "b"]]).save(str(tmp_path / "dictionary.model"))
    with pytest.raises(ValueError, match="not a model with word vectors"):
        load_word_vectors(tmp_path / "dictionary.model")


# --- a NumPy matrix with its word list (GloVe 6B as the PyPI packages ship it) ---------------------


def write_parquet(path, columns: dict):
    pq.write_table(pa.table(columns), path)
    return path


@pytest.fixture
def matrix(tmp_path, tiny_vectors):
    """tiny_vectors as a .npy matrix (N, 6) float32; its words are WORDS in row order."""
    path = tmp_path / "emb.npy"
    np.save(path, tiny_vectors.vectors)
    return path


def test_npy_with_a_parquet_word_list(tmp_path, matrix, tiny_vectors):
    words = write_parquet(tmp_path / "index.parquet", {"index": WORDS})
    loaded = load_word_vectors(matrix, word_list=words)
    assert loaded.index_to_key == WORDS and loaded.vector_size == 6 and loaded.vectors.dtype == np.float32
    np.testing.assert_array_equal(loaded.vectors, tiny_vectors.vectors)
    np.testing.assert_array_equal(loaded["paris"], np.load(matrix)[0])
    # what --word-vectors feeds next: a table whose cased words reach lowercase rows
    table, vocab = build_augmentation_table(loaded, ["Paris", "NBA"])
    assert vocab == {"paris": 2, "nba": 3} and table.shape == (4, 6)


def test_the_parquet_word_list_may_have_other_columns_and_large_strings(tmp_path, matrix):
    words = write_parquet(tmp_path / "index.parquet", {
        "row": pa.array(range(len(WORDS)), type=pa.int64()),
        "word": pa.array(WORDS, type=pa.large_string()),
        "count": pa.array([1.0] * len(WORDS)),
    })  # fmt: skip
    assert load_word_vectors(matrix, word_list=words).index_to_key == WORDS


def test_npy_with_a_text_word_list(tmp_path, matrix, tiny_vectors):
    # one word per line, CRLF tolerated; "\x85" and "\u2028" are words, not line breaks
    words = [*WORDS[:-2], "a\x85b", "\u2028"]
    (tmp_path / "words.txt").write_bytes("\r\n".join(words).encode("utf-8") + b"\r\n")
    loaded = load_word_vectors(matrix, word_list=tmp_path / "words.txt")
    assert loaded.index_to_key == words
    np.testing.assert_array_equal(loaded["\u2028"], tiny_vectors.vectors[-1])


def test_a_word_listed_twice_keeps_its_first_row(tmp_path, matrix, tiny_vectors):
    words = [*WORDS[:5], "paris", *WORDS[6:]]  # row 5 ("obama") renamed "paris", which row 0 already is
    loaded = load_word_vectors(matrix, word_list=write_parquet(tmp_path / "index.parquet", {"w": words}))
    assert len(loaded) == len(WORDS) - 1 and "obama" not in loaded.key_to_index
    np.testing.assert_array_equal(loaded["paris"], tiny_vectors.vectors[0])
    np.testing.assert_array_equal(loaded["a"], tiny_vectors.vectors[-1])


def test_matrix_and_word_list_must_agree_on_rows(tmp_path, matrix):
    short = write_parquet(tmp_path / "short.parquet", {"index": WORDS[:-1]})
    with pytest.raises(ValueError, match=r"short.parquet lists 11 words but .*emb.npy has 12 rows"):
        load_word_vectors(matrix, word_list=short)
    (tmp_path / "long.txt").write_text("\n".join([*WORDS, "extra"]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"long.txt lists 13 words but .*emb.npy has 12 rows"):
        load_word_vectors(matrix, word_list=tmp_path / "long.txt")


def test_the_parquet_word_list_needs_one_string_column_without_nulls(tmp_path, matrix):
    numbers = write_parquet(tmp_path / "numbers.parquet", {"id": list(range(len(WORDS)))})
    with pytest.raises(ValueError, match=r"numbers.parquet: expected one string column, found none among \['id'\]"):
        load_word_vectors(matrix, word_list=numbers)
    two = write_parquet(tmp_path / "two.parquet", {"word": WORDS, "lower": [w.lower() for w in WORDS]})
    with pytest.raises(ValueError, match=r"two.parquet: expected one string column, found \['word', 'lower'\]"):
        load_word_vectors(matrix, word_list=two)
    nulls = write_parquet(tmp_path / "nulls.parquet", {"index": [*WORDS[:-1], None]})
    with pytest.raises(ValueError, match="nulls.parquet: column 'index' has empty \\(null\\) entries"):
        load_word_vectors(matrix, word_list=nulls)


def test_unreadable_word_lists_are_named(tmp_path, matrix):
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match="cannot read the word list .*broken.parquet"):
        load_word_vectors(matrix, word_list=tmp_path / "broken.parquet")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"cannot read the word list .*latin1.txt \(UTF-8 text, one word per line\)"):
        load_word_vectors(matrix, word_list=tmp_path / "latin1.txt")
    with pytest.raises(FileNotFoundError, match="word list .*missing.parquet does not exist"):
        load_word_vectors(matrix, word_list=tmp_path / "missing.parquet")


def test_npy_and_word_list_come_together(tmp_path, matrix, tiny_vectors):
    with pytest.raises(ValueError, match="a .npy matrix needs its word list \\(--word-list\\).*with word list None"):
        load_word_vectors(matrix)
    tiny_vectors.save_word2vec_format(str(tmp_path / "vectors.txt"), binary=False)
    words = write_parquet(tmp_path / "index.parquet", {"index": WORDS})
    with pytest.raises(ValueError, match="a word list goes with a .npy matrix; got vectors.txt with word list"):
        load_word_vectors(tmp_path / "vectors.txt", word_list=words)


@pytest.mark.parametrize("array", [
    np.zeros(12, dtype=np.float32),  # 1-D
    np.zeros((12, 6), dtype=np.int64),  # not floats
    np.zeros((0, 6), dtype=np.float32),  # no rows
    np.zeros((12, 6, 1), dtype=np.float32),
], ids=["1-D", "int", "empty", "3-D"])  # fmt: skip
def test_the_matrix_must_be_a_2d_float_matrix(tmp_path, array):
    np.save(tmp_path / "emb.npy", array)
    words = write_parquet(tmp_path / "index.parquet", {"index": WORDS})
    with pytest.raises(ValueError, match="emb.npy: expected a non-empty 2-D float matrix \\(words, dims\\), got"):
        load_word_vectors(tmp_path / "emb.npy", word_list=words)


def test_an_unreadable_matrix_is_named(tmp_path):
    (tmp_path / "emb.npy").write_bytes(b"not a numpy file")
    words = write_parquet(tmp_path / "index.parquet", {"index": WORDS})
    with pytest.raises(ValueError, match="cannot read word vectors from .*emb.npy"):
        load_word_vectors(tmp_path / "emb.npy", word_list=words)
    # an object array would need pickle, which is never loaded
    np.save(tmp_path / "objects.npy", np.array([["a"]], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="cannot read word vectors from .*objects.npy"):
        load_word_vectors(tmp_path / "objects.npy", word_list=words)
