"""The paper's semantic augmentation: each word's neighbours in a word-vector space.

For a word w with top-k neighbours n_1..n_k (cosine similarity s_i, k = 4 in the
paper), its augmentation vector is

    a(w) = sum_i softmax(s)_i * v(n_i)

(the reference's token_augmentation.py). The vectors are computed once, stored in a
table, and the tagger looks rows up by word (`TextEncoder.aug_row`):

    row 0   zeros: [CLS], [SEP], continuation pieces, padding
    row 1   the unknown-word vector: the mean of all word vectors. The reference gives
            each unknown word a fresh random vector; a fixed row keeps training and
            serving deterministic and equal to each other.
    row 2+  one per known word
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import numpy as np
from gensim.models import KeyedVectors, Word2Vec
from gensim.models.fasttext import load_facebook_vectors
from gensim.utils import SaveLoad
from gensim.utils import open as open_maybe_compressed

from mner.runtime.text import AUG_UNKNOWN_ROW, AUG_ZERO_ROW

logger = logging.getLogger(__name__)

_FASTTEXT_MAGIC = (793712314).to_bytes(4, "little")  # first int32 of a fastText .bin
_PICKLE_START = b"\x80"  # pickle protocol >= 2: gensim's own save()
_BLOCK_ELEMENTS = 1 << 24  # similarities computed at a time (64 MB of float32)


def train_word2vec(
    sentences: list[list[str]],
    dim: int = 200,
    seed: int = 13,
    epochs: int = 10,
    window: int = 5,
    min_count: int = 2,
) -> KeyedVectors:
    """CBOW word2vec vectors over `sentences`, reproducible for the same input and seed.

    dim=200 is the reference's augmentation size. Ten epochs rather than gensim's five
    because a tweet corpus is small; min_count=2 because a word seen once has a vector
    that is mostly its random start, and its neighbours would be noise.
    """
    if not sentences:
        raise ValueError("train_word2vec needs at least one sentence, got none")
    # One worker: with several, the order of updates (and so the vectors) varies.
    model = Word2Vec(
        sentences=sentences,
        vector_size=dim,
        window=window,
        min_count=min_count,
        workers=1,
        seed=seed,
        epochs=epochs,
    )
    return model.wv


def load_word_vectors(path: str | Path, word_list: str | Path | None = None) -> KeyedVectors:
    """Load word vectors from any file gensim reads, telling the format from the content.

    gensim Word2Vec/FastText/KeyedVectors saves (pickles: load only files you trust),
    word2vec text or binary (header "count dim"), GloVe text (no header) and fastText
    .bin; or a NumPy ``.npy`` matrix (N, dim) whose N words are in `word_list`
    (``load_matrix_vectors``). Raises ValueError naming the file when none of these reads it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"word-vector file {path} does not exist")
    if path.suffix == ".npy" or word_list is not None:
        if path.suffix != ".npy" or word_list is None:
            raise ValueError(
                f"word vectors {path}: a .npy matrix needs its word list (--word-list), and a word list goes with "
                f"a .npy matrix; got {path.name} with word list {word_list}"
            )
        return load_matrix_vectors(path, Path(word_list))
    with open_maybe_compressed(str(path), "rb") as f:
        head = f.read(4096)
    first_line = head.split(b"\n", 1)[0].split()
    has_word2vec_header = len(first_line) == 2 and all(field.isdigit() for field in first_line)

    if head.startswith(_PICKLE_START):
        attempts = [("gensim save", _load_gensim_save)]
    elif head.startswith(_FASTTEXT_MAGIC):
        attempts = [("fastText .bin", lambda p: load_facebook_vectors(str(p)))]
    elif has_word2vec_header:
        text = ("word2vec text", lambda p: KeyedVectors.load_word2vec_format(str(p), binary=False))
        binary = ("word2vec binary", lambda p: KeyedVectors.load_word2vec_format(str(p), binary=True))
        attempts = [binary, text] if path.suffix == ".bin" else [text, binary]
    else:
        attempts = [("GloVe text", lambda p: KeyedVectors.load_word2vec_format(str(p), binary=False, no_header=True))]

    errors = []
    for name, load in attempts:
        try:
            vectors = load(path)
        except Exception as error:  # gensim raises many types on a wrong format; all are reported below
            errors.append(f"as {name}: {type(error).__name__}: {error}")
            continue
        if len(vectors) == 0:
            errors.append(f"as {name}: no vectors")
            continue
        logger.info("loaded %d word vectors of size %d from %s (%s)", len(vectors), vectors.vector_size, path, name)
        return vectors
    raise ValueError(f"cannot read word vectors from {path}: " + "; ".join(errors))


def load_matrix_vectors(matrix_path: Path, word_list: Path) -> KeyedVectors:
    """Vectors stored as a NumPy matrix (N, dim) plus its N words, one per row, in order.

    The word list is a Parquet file with one string column (pyarrow reads it; how the
    GloVe 6B packages on PyPI ship it), or UTF-8 text with one word per line. A word
    listed twice keeps its first row, as gensim's own readers do.
    """
    if not word_list.is_file():
        raise FileNotFoundError(f"word list {word_list} does not exist")
    try:
        matrix = np.load(matrix_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read word vectors from {matrix_path}: {error}") from error
    if matrix.ndim != 2 or matrix.shape[0] == 0 or not np.issubdtype(matrix.dtype, np.floating):
        raise ValueError(f"{matrix_path}: expected a non-empty 2-D float matrix (words, dims), got {matrix.dtype} "
                         f"{matrix.shape}")  # fmt: skip
    words = _read_word_list(word_list)
    if len(words) != matrix.shape[0]:
        raise ValueError(f"{word_list} lists {len(words)} words but {matrix_path} has {matrix.shape[0]} rows")
    first_rows: dict[str, int] = {}
    for row, word in enumerate(words):
        first_rows.setdefault(word, row)
    vectors = KeyedVectors(vector_size=matrix.shape[1], dtype=np.float32)  # count=0: add_vectors appends
    rows = np.fromiter(first_rows.values(), dtype=np.int64, count=len(first_rows))
    vectors.add_vectors(list(first_rows), np.asarray(matrix[rows], dtype=np.float32))
    logger.info("loaded %d word vectors of size %d from %s with words from %s", len(vectors), vectors.vector_size,
                matrix_path, word_list)  # fmt: skip
    return vectors


def _read_word_list(path: Path) -> list[str]:
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as error:
            raise ValueError(f"cannot read the word list {path}: {error}") from error
        columns = [name for name, column in zip(table.column_names, table.columns)
                   if pa.types.is_string(column.type) or pa.types.is_large_string(column.type)]  # fmt: skip
        if len(columns) != 1:
            raise ValueError(f"word list {path}: expected one string column, found {columns or 'none'} among "
                             f"{table.column_names}")  # fmt: skip
        words = table.column(columns[0]).to_pylist()
        if any(word is None for word in words):
            raise ValueError(f"word list {path}: column {columns[0]!r} has empty (null) entries")
        return words
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read the word list {path} (UTF-8 text, one word per line): {error}") from error
    lines = text.split("\n")  # not splitlines(): a word may be "\x85" or "\u2028"
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def _load_gensim_save(path: Path) -> KeyedVectors:
    obj = SaveLoad.load(str(path))
    vectors = getattr(obj, "wv", obj)
    if not isinstance(vectors, KeyedVectors):
        raise TypeError(f"the saved object is a {type(obj).__name__}, not a model with word vectors")
    return vectors


def build_augmentation_table(
    vectors: KeyedVectors, words: Iterable[str], neighbours: int = 4
) -> tuple[np.ndarray, dict[str, int]]:
    """The augmentation table (V, dim) float32 and its vocabulary {word: row}.

    Each distinct word of `words` that the vectors know, as written or else in
    lowercase, gets a row under the key it was found as (so "Trump" found as "trump"
    is stored as "trump", which `TextEncoder.aug_row` reaches by lowercasing).
    Words the vectors do not know get no row: they read row 1 at lookup.
    """
    if neighbours < 1:
        raise ValueError(f"neighbours must be >= 1, got {neighbours}")
    key_to_index = vectors.key_to_index  # not `in`: a fastText model "knows" every string
    if len(key_to_index) <= neighbours:
        raise ValueError(f"{neighbours} neighbours need more than {neighbours} vectors, got {len(key_to_index)}")

    vocab: dict[str, int] = {}
    for word in words:
        key = word if word in key_to_index else word.lower()
        if key in key_to_index and key not in vocab:
            vocab[key] = len(vocab) + 2

    raw = np.asarray(vectors.vectors, dtype=np.float32)  # (N, dim)
    table = np.zeros((len(vocab) + 2, raw.shape[1]), dtype=np.float32)
    table[AUG_ZERO_ROW] = 0.0
    table[AUG_UNKNOWN_ROW] = raw.mean(axis=0)
    queries = np.array([key_to_index[key] for key in vocab], dtype=np.int64)
    if len(queries):
        table[2:] = _neighbour_average(raw, queries, neighbours)
    return table, vocab


def _neighbour_average(raw: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """(Q, dim): softmax(similarity)-weighted sum of each query's k nearest other vectors.

    Cosine similarity against every vector, the query itself excluded, as gensim's
    most_similar(word, topn=k) computes it; done in blocks of queries as matrix products.
    """
    norms = np.linalg.norm(raw, axis=1, keepdims=True)
    unit = raw / np.maximum(norms, np.finfo(np.float32).tiny)  # (N, dim); a zero vector stays zero
    out = np.empty((len(queries), raw.shape[1]), dtype=np.float32)
    block = max(1, _BLOCK_ELEMENTS // len(raw))
    for begin in range(0, len(queries), block):
        rows = queries[begin : begin + block]  # (b,)
        similarities = unit[rows] @ unit.T  # (b, N)
        similarities[np.arange(len(rows)), rows] = -np.inf
        top = np.argpartition(-similarities, k - 1, axis=1)[:, :k]  # (b, k), unordered
        top_similarities = np.take_along_axis(similarities, top, axis=1)  # (b, k)
        weights = np.exp(top_similarities - top_similarities.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)
        out[begin : begin + len(rows)] = np.einsum("bk,bkd->bd", weights, raw[top])
    return out
