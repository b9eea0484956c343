"""Linear-chain CRF decoding for the runtime: Viterbi paths and tag marginals.

Conventions are pytorch-crf's (``torchcrf.CRF`` with ``batch_first=True``), so a
CRF layer trained with it decodes here without torch::

    score(y) = start[y0] + emissions[0, y0]
             + sum_{t=1}^{length-1} (transitions[y(t-1), y(t)] + emissions[t, y(t)])
             + end[y(length-1)]

``transitions[i, j]`` is the score of moving from tag ``i`` to tag ``j``.

Two backends compute the same thing:

* ``"native"``: the C++ extension ``mner.runtime._viterbi`` (loops in C++, the GIL
  released while computing, so threads can decode concurrently);
* ``"numpy"``: a pure numpy fallback, vectorised over the batch.

``viterbi_decode`` gives bit-for-bit identical tags and scores on both: each does
the float32 operations ``(score[i] + transitions[i, j]) + emissions[t, j]`` in that
order and breaks ties towards the lowest ``i``, as ``np.argmax`` and
``torch.max`` do. ``crf_marginals`` runs forward-backward in float64 on both and
agrees to float32 rounding.

Inputs may be numpy arrays, CPU tensors or nested lists of any real numeric
dtype: scores are converted to C-contiguous float32 and lengths to int64 (float
lengths must be whole numbers). A value that is not finite after that conversion
is rejected, padding positions included.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import Any, Literal, NamedTuple

import numpy as np

logger = logging.getLogger(__name__)

Backend = Literal["auto", "native", "numpy"]
BACKENDS: tuple[str, ...] = ("auto", "native", "numpy")


def _import_native() -> ModuleType | None:
    """The compiled extension, or None (with one debug line) when it is not built."""
    try:
        return importlib.import_module("mner.runtime._viterbi")
    except ImportError as error:
        logger.debug("mner.runtime._viterbi is not available (%s); CRF decoding uses the numpy fallback", error)
        return None


_native = _import_native()


def native_available() -> bool:
    """Whether the C++ extension imported, i.e. whether ``backend="auto"`` runs natively."""
    return _native is not None


class _CRFInputs(NamedTuple):
    emissions: np.ndarray  # (B, L, T) float32
    lengths: np.ndarray  # (B,) int64, each in [1, L]
    start: np.ndarray  # (T,) float32
    end: np.ndarray  # (T,) float32
    transitions: np.ndarray  # (T, T) float32, [from, to]


def viterbi_decode(
    emissions: Any,
    lengths: Any,
    start: Any,
    end: Any,
    transitions: Any,
    allowed: Any | None = None,
    *,
    backend: Backend = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Best tag sequence of each sequence in a batch under a linear-chain CRF.

    Args:
        emissions: (B, L, T) per-position tag scores.
        lengths: (B,) real length of each sequence, each in [1, L]; positions at
            or after a sequence's length are padding and are ignored.
        start: (T,) score of starting with each tag.
        end: (T,) score of ending with each tag, added after position length-1.
        transitions: (T, T) score of moving from tag i (row) to tag j (column).
        allowed: optional (B, L, T) booleans (or integers, nonzero = allowed) for
            constrained decoding: a tag that is not allowed at a position is never
            chosen there. Every real
            position must allow at least one tag; padding rows are ignored.
        backend: "native" (C++ extension), "numpy" (fallback) or "auto" (native
            when the extension is built, else numpy).

    Returns:
        tags: (B, L) int32, the best path, -1 at padding positions.
        scores: (B,) float32, the best path's score under the constraints.

    Raises:
        ValueError: an input has the wrong shape, a length is out of range, a
            score is not finite, or a real position allows no tag.
        RuntimeError: backend="native" but the extension is not built.
    """
    inputs = _validate(emissions, lengths, start, end, transitions)
    allowed_mask = _validate_allowed(allowed, inputs)
    module = _select_backend(backend)
    if module is not None:
        return module.viterbi_decode(*inputs, allowed_mask)
    return _viterbi_decode_numpy(*inputs, allowed_mask)


def crf_marginals(
    emissions: Any,
    lengths: Any,
    start: Any,
    end: Any,
    transitions: Any,
    *,
    backend: Backend = "auto",
) -> np.ndarray:
    """Posterior probability of each tag at each position (forward-backward).

    Arguments are those of :func:`viterbi_decode` (without ``allowed``).

    Returns:
        (B, L, T) float32; each real position sums to 1 over T, padding
        positions are 0.
    """
    inputs = _validate(emissions, lengths, start, end, transitions)
    module = _select_backend(backend)
    if module is not None:
        return module.crf_marginals(*inputs)
    return _crf_marginals_numpy(*inputs)


def crf_marginals_scaled(emissions: Any, lengths: Any, start: Any, end: Any, transitions: Any) -> np.ndarray:
    """:func:`crf_marginals` by forward-backward in scaled probability space (numpy, float64).

    Scores are exponentiated once (emissions shifted by each position's maximum,
    transitions, start and end by their own), and the forward and backward vectors are
    renormalised at every step, as in CRFsuite; so a step is a (B, T) x (T, T) matrix
    product instead of B * T * T exponentials, which makes it several times faster than
    the log-space backends at the runtime's tag counts (T = 13 to 21, L = 64). The result
    agrees with them to float32 rounding for any realistic scores. Where a step's vector
    underflows to nothing (scores hundreds of nats apart), it returns the log-space
    :func:`crf_marginals` instead. A score of -1e30 or below has probability exactly 0 in
    both, which is how callers rule out a tag or a move.

    Arguments and result are those of :func:`crf_marginals`.
    """
    inputs = _validate(emissions, lengths, start, end, transitions)
    marginals = _crf_marginals_scaled(*inputs)
    if marginals is None:
        logger.debug("scaled forward-backward underflowed; using the log-space marginals")
        module = _select_backend("auto")
        return module.crf_marginals(*inputs) if module is not None else _crf_marginals_numpy(*inputs)
    return marginals


def _select_backend(backend: str) -> ModuleType | None:
    """The extension module to call, or None for the numpy fallback."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "native" and _native is None:
        raise RuntimeError(
            "backend='native' was requested but the extension mner.runtime._viterbi is not built; "
            "install the package (pip install .) or pass backend='auto' to use the numpy fallback"
        )
    return None if backend == "numpy" else _native


def _as_numeric_array(value: Any, name: str, dtype: type) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}")
    if array.dtype == dtype:
        return np.ascontiguousarray(array)
    # A float64 beyond float32's range becomes inf here; the finiteness check reports it.
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(array, dtype=dtype)


def _validate(emissions: Any, lengths: Any, start: Any, end: Any, transitions: Any) -> _CRFInputs:
    """Checks shapes and values and converts to the contiguous dtypes both backends expect."""
    emissions = _as_numeric_array(emissions, "emissions", np.float32)
    if emissions.ndim != 3:
        raise ValueError(f"emissions must be 3-D (B, L, T), got shape {emissions.shape}")
    batch_size, seq_length, num_tags = emissions.shape
    if num_tags < 1:
        raise ValueError(f"emissions must have at least one tag (T >= 1), got shape {emissions.shape}")

    start = _as_numeric_array(start, "start", np.float32)
    end = _as_numeric_array(end, "end", np.float32)
    transitions = _as_numeric_array(transitions, "transitions", np.float32)
    for name, array, expected in (
        ("start", start, (num_tags,)),
        ("end", end, (num_tags,)),
        ("transitions", transitions, (num_tags, num_tags)),
    ):
        if array.shape != expected:
            raise ValueError(f"{name} must have shape {expected} for T = {num_tags} tags, got {array.shape}")

    raw_lengths = np.asarray(lengths)
    if raw_lengths.dtype.kind not in "iuf" or (
        raw_lengths.dtype.kind == "f" and not np.array_equal(raw_lengths, np.round(raw_lengths))
    ):
        raise ValueError(f"lengths must be whole numbers, got dtype {raw_lengths.dtype}: {raw_lengths!r}")
    if raw_lengths.shape != (batch_size,):
        raise ValueError(f"lengths must have shape ({batch_size},) for B = {batch_size}, got {raw_lengths.shape}")
    lengths = np.ascontiguousarray(raw_lengths, dtype=np.int64)
    out_of_range = np.flatnonzero((lengths < 1) | (lengths > seq_length))
    if out_of_range.size:
        first = out_of_range[0]
        raise ValueError(
            f"every length must be in [1, L = {seq_length}], got lengths[{first}] = {lengths[first]} "
            f"({out_of_range.size} out of range)"
        )

    for name, array in (("emissions", emissions), ("start", start), ("end", end), ("transitions", transitions)):
        if not np.isfinite(array).all():
            bad = tuple(int(index) for index in np.argwhere(~np.isfinite(array))[0])
            raise ValueError(
                f"{name} must be finite as float32, got {array[bad]} at index {bad} "
                f"({int((~np.isfinite(array)).sum())} non-finite values)"
            )
    return _CRFInputs(emissions, lengths, start, end, transitions)


def _validate_allowed(allowed: Any | None, inputs: _CRFInputs) -> np.ndarray | None:
    if allowed is None:
        return None
    allowed = np.asarray(allowed)
    if allowed.dtype.kind not in "biu":
        raise ValueError(f"allowed must be booleans (or integers, nonzero = allowed), got dtype {allowed.dtype}")
    if allowed.shape != inputs.emissions.shape:
        raise ValueError(f"allowed must have the shape of emissions {inputs.emissions.shape}, got {allowed.shape}")
    allowed = np.ascontiguousarray(allowed != 0)
    seq_length = inputs.emissions.shape[1]
    real = np.arange(seq_length)[None, :] < inputs.lengths[:, None]  # (B, L)
    empty = np.argwhere(real & ~allowed.any(axis=2))
    if empty.size:
        batch_index, position = (int(index) for index in empty[0])
        raise ValueError(
            f"allowed must allow at least one tag at every real position, got none at "
            f"sequence {batch_index}, position {position} (length {inputs.lengths[batch_index]}); "
            f"{len(empty)} such positions"
        )
    return allowed


def _viterbi_decode_numpy(
    emissions: np.ndarray,
    lengths: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    transitions: np.ndarray,
    allowed: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    batch_size, seq_length, _ = emissions.shape
    if allowed is not None:
        emissions = np.where(allowed, emissions, np.float32(-np.inf))
    tags = np.full((batch_size, seq_length), -1, dtype=np.int32)
    if batch_size == 0:
        return tags, np.zeros(0, dtype=np.float32)

    score = start + emissions[:, 0]  # (B, T)
    backpointers = np.zeros(emissions.shape, dtype=np.int32)  # (B, L, T), [b, t, j] = best previous tag
    for t in range(1, seq_length):
        # (B, T_from, T_to), summed in the native backend's order
        candidates = (score[:, :, None] + transitions) + emissions[:, t, None, :]
        best_previous = candidates.argmax(axis=1)  # (B, T), first maximum on ties
        best = np.take_along_axis(candidates, best_previous[:, None, :], axis=1)[:, 0]  # (B, T)
        active = (t < lengths)[:, None]  # (B, 1): finished sequences keep their score
        score = np.where(active, best, score)
        backpointers[:, t] = best_previous

    final = score + end  # (B, T)
    current = final.argmax(axis=1).astype(np.int32)  # (B,)
    batch_index = np.arange(batch_size)
    scores = final[batch_index, current]
    for t in range(seq_length - 1, 0, -1):
        real = t < lengths  # (B,)
        tags[real, t] = current[real]
        current = np.where(real, backpointers[batch_index, t, current], current)
    tags[:, 0] = current
    return tags, scores


def _log_sum_exp(values: np.ndarray, axis: int) -> np.ndarray:
    maximum = values.max(axis=axis, keepdims=True)
    return (maximum + np.log(np.exp(values - maximum).sum(axis=axis, keepdims=True))).squeeze(axis)


def _crf_marginals_numpy(
    emissions: np.ndarray,
    lengths: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    transitions: np.ndarray,
) -> np.ndarray:
    batch_size, seq_length, num_tags = emissions.shape
    if batch_size == 0:
        return np.zeros(emissions.shape, dtype=np.float32)
    # float64 inside, as in the native backend; float32 only on the way out.
    emissions = emissions.astype(np.float64)
    transitions = transitions.astype(np.float64)
    start = start.astype(np.float64)
    end = end.astype(np.float64)

    alpha = np.empty(emissions.shape)  # (B, L, T) log-score of all prefixes ending in tag j
    alpha[:, 0] = start + emissions[:, 0]
    for t in range(1, seq_length):
        alpha[:, t] = _log_sum_exp(alpha[:, t - 1, :, None] + transitions, axis=1) + emissions[:, t]

    beta = np.empty(emissions.shape)  # (B, L, T) log-score of all suffixes after tag i
    beta[:, seq_length - 1] = end
    last = lengths - 1  # (B,)
    for t in range(seq_length - 2, -1, -1):
        following = emissions[:, t + 1] + beta[:, t + 1]  # (B, T_to)
        recursed = _log_sum_exp(transitions + following[:, None, :], axis=2)  # (B, T_from)
        beta[:, t] = np.where((t >= last)[:, None], end, recursed)

    batch_index = np.arange(batch_size)
    log_partition = _log_sum_exp(alpha[batch_index, last] + end, axis=1)  # (B,)
    with np.errstate(over="ignore"):  # only at padding positions, whose prefixes run past the length; zeroed below
        marginals = np.exp(alpha + beta - log_partition[:, None, None])
    padding = np.arange(seq_length)[None, :] >= lengths[:, None]  # (B, L)
    marginals[padding] = 0.0
    return marginals.astype(np.float32)


def _crf_marginals_scaled(
    emissions: np.ndarray,
    lengths: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    transitions: np.ndarray,
) -> np.ndarray | None:
    """The marginals, or None where a real position's forward or backward vector underflowed."""
    batch_size, seq_length, num_tags = emissions.shape
    if batch_size == 0:
        return np.zeros(emissions.shape, dtype=np.float32)
    # Time-major (L, B, T), so that each step reads and writes contiguous rows.
    factors = np.ascontiguousarray(emissions.transpose(1, 0, 2), dtype=np.float64)
    factors -= factors.max(axis=2, keepdims=True)
    np.exp(factors, out=factors)  # exp(emission - its position's maximum), max 1
    moves = np.exp(transitions.astype(np.float64) - transitions.max())  # (T, T), max 1
    moves_transposed = np.ascontiguousarray(moves.T)
    first = np.exp(start.astype(np.float64) - start.max())  # (T,)
    terminal = np.exp(end.astype(np.float64) - end.max())  # (T,)
    last = lengths - 1  # (B,)

    with np.errstate(divide="ignore", invalid="ignore", under="ignore"):
        # alpha[t] is proportional to the summed score of every prefix ending at t in each tag
        alpha = np.empty(factors.shape)  # (L, B, T)
        np.multiply(first, factors[0], out=alpha[0])
        alpha[0] /= alpha[0].sum(axis=1, keepdims=True)
        for t in range(1, seq_length):
            step = np.matmul(alpha[t - 1], moves, out=alpha[t])
            step *= factors[t]
            step /= step.sum(axis=1, keepdims=True)
        # beta[t] is proportional to the summed score of every suffix after each tag at t
        beta = np.empty(factors.shape)  # (L, B, T)
        beta[seq_length - 1] = terminal
        for t in range(seq_length - 2, -1, -1):
            step = np.matmul(factors[t + 1] * beta[t + 1], moves_transposed, out=beta[t])
            step /= step.sum(axis=1, keepdims=True)
            step[last == t] = terminal  # a sequence's last position starts its own recursion
        marginals = alpha * beta
        marginals /= marginals.sum(axis=2, keepdims=True)
    marginals = marginals.transpose(1, 0, 2)  # (B, L, T)
    marginals[np.arange(seq_length)[None, :] >= lengths[:, None]] = 0.0  # padding
    if not np.isfinite(marginals).all():
        return None
    return marginals.astype(np.float32)
