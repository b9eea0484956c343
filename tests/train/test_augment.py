import os
import subprocess
import sys
from pathlib import Path

import numpy as np
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
