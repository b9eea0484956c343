"""mner.runtime.viterbi: CRF Viterbi decoding and marginals, native and numpy backends.

The reference implementations are a brute-force enumeration of every tag sequence
(small T and L) and pytorch-crf's ``CRF.decode``, whose conventions we follow.
"""

import itertools
import logging
import sys
import threading
import time

import numpy as np
import pytest

from mner.runtime import crf_marginals, native_available, viterbi_decode
from mner.runtime import viterbi as viterbi_module

requires_native = pytest.mark.skipif(
    not native_available(), reason="the C++ extension mner.runtime._viterbi is not built"
)
BACKENDS = ["numpy", pytest.param("native", marks=requires_native)]


def random_crf(rng, batch_size, seq_length, num_tags, *, min_length=1, scale=1.0):
    """Random CRF inputs with mixed lengths (one sequence of full length when B > 0)."""
    lengths = rng.integers(min_length, seq_length + 1, size=batch_size)
    if batch_size:
        lengths[rng.integers(batch_size)] = seq_length
    return {
        "emissions": (scale * rng.standard_normal((batch_size, seq_length, num_tags))).astype(np.float32),
        "lengths": lengths,
        "start": (scale * rng.standard_normal(num_tags)).astype(np.float32),
        "end": (scale * rng.standard_normal(num_tags)).astype(np.float32),
        "transitions": (scale * rng.standard_normal((num_tags, num_tags))).astype(np.float32),
    }


def random_allowed(rng, shape, probability=0.6):
    """(B, L, T) random constraints with at least one allowed tag at every position."""
    allowed = rng.random(shape) < probability
    forced = rng.integers(shape[2], size=shape[:2])  # (B, L)
    np.put_along_axis(allowed, forced[..., None], True, axis=2)
    return allowed


def brute_force_path_scores(crf, b, allowed=None):
    """Every tag sequence of sequence b and its float64 score; disallowed ones dropped."""
    length = int(crf["lengths"][b])
    num_tags = crf["start"].shape[0]
    emissions = crf["emissions"][b].astype(np.float64)
    paths = np.array(list(itertools.product(range(num_tags), repeat=length)))  # (T**length, length)
    positions = np.arange(length)
    scores = crf["start"][paths[:, 0]].astype(np.float64) + crf["end"][paths[:, -1]]
    scores += emissions[positions, paths].sum(axis=1)
    scores += crf["transitions"][paths[:, :-1], paths[:, 1:]].astype(np.float64).sum(axis=1)
    if allowed is not None:
        keep = allowed[b][positions, paths].all(axis=1)
        paths, scores = paths[keep], scores[keep]
    return paths, scores


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("constrained", [False, True], ids=["free", "allowed"])
def test_viterbi_matches_brute_force(backend, constrained):
    rng = np.random.default_rng(1)
    for num_tags, seq_length in itertools.product(range(1, 5), range(1, 5)):
        for _ in range(3):
            crf = random_crf(rng, 4, seq_length, num_tags)
            allowed = random_allowed(rng, crf["emissions"].shape) if constrained else None

            tags, scores = viterbi_decode(**crf, allowed=allowed, backend=backend)

            assert tags.dtype == np.int32 and tags.shape == (4, seq_length)
            assert scores.dtype == np.float32 and scores.shape == (4,)
            for b, length in enumerate(crf["lengths"]):
                paths, path_scores = brute_force_path_scores(crf, b, allowed)
                best = int(np.argmax(path_scores))
                np.testing.assert_array_equal(tags[b, :length], paths[best])
                assert (tags[b, length:] == -1).all()
                np.testing.assert_allclose(scores[b], path_scores[best], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_marginals_match_brute_force(backend):
    rng = np.random.default_rng(2)
    for num_tags, seq_length in itertools.product(range(1, 5), range(1, 5)):
        crf = random_crf(rng, 4, seq_length, num_tags, scale=2.0)

        marginals = crf_marginals(**crf, backend=backend)

        assert marginals.dtype == np.float32 and marginals.shape == (4, seq_length, num_tags)
        for b, length in enumerate(crf["lengths"]):
            paths, path_scores = brute_force_path_scores(crf, b)
            probabilities = np.exp(path_scores - path_scores.max())
            probabilities /= probabilities.sum()
            expected = np.zeros((length, num_tags))  # (length, T)
            for position in range(length):
                np.add.at(expected[position], paths[:, position], probabilities)
            np.testing.assert_allclose(marginals[b, :length], expected, atol=1e-5)
            assert (marginals[b, length:] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_marginals_sum_to_one_at_real_positions(backend):
    rng = np.random.default_rng(3)
    crf = random_crf(rng, 16, 40, 13, scale=3.0)

    marginals = crf_marginals(**crf, backend=backend)

    real = np.arange(40)[None, :] < crf["lengths"][:, None]  # (B, L)
    np.testing.assert_allclose(marginals.sum(axis=2)[real], 1.0, atol=1e-5)
    assert (marginals[~real] == 0).all()
    assert (marginals >= 0).all()


@pytest.fixture
def single_threaded_torch():
    torch = pytest.importorskip("torch")
    previous = torch.get_num_threads()
    # The CRF's ops are tiny: waking OpenMP workers would cost more than the maths.
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(previous)


@pytest.mark.parametrize("backend", BACKENDS)
def test_viterbi_matches_pytorch_crf_decode(backend, single_threaded_torch):
    torch = single_threaded_torch
    torchcrf = pytest.importorskip("torchcrf")
    rng = np.random.default_rng(4)
    for _ in range(1000):
        batch_size, seq_length, num_tags = rng.integers(1, 5), rng.integers(1, 9), rng.integers(1, 8)
        crf = random_crf(rng, batch_size, seq_length, num_tags)
        reference = torchcrf.CRF(int(num_tags), batch_first=True)
        with torch.no_grad():
            reference.start_transitions.copy_(torch.from_numpy(crf["start"]))
            reference.end_transitions.copy_(torch.from_numpy(crf["end"]))
            reference.transitions.copy_(torch.from_numpy(crf["transitions"]))
            mask = torch.from_numpy(np.arange(seq_length)[None, :] < crf["lengths"][:, None])
            expected = reference.decode(torch.from_numpy(crf["emissions"]), mask)

        tags, _ = viterbi_decode(**crf, backend=backend)

        assert [row[:length].tolist() for row, length in zip(tags, crf["lengths"])] == expected


def assert_backends_agree_bitwise(crf, allowed=None):
    native_tags, native_scores = viterbi_decode(**crf, allowed=allowed, backend="native")
    numpy_tags, numpy_scores = viterbi_decode(**crf, allowed=allowed, backend="numpy")
    np.testing.assert_array_equal(native_tags, numpy_tags)
    # Compared as bit patterns: equal floats with different bits (0.0, -0.0) would fail.
    np.testing.assert_array_equal(native_scores.view(np.int32), numpy_scores.view(np.int32))


@requires_native
def test_native_and_numpy_agree_bit_for_bit():
    rng = np.random.default_rng(5)
    # Widths 1..40 cover every compiled width of the native kernel (8, 16, 24, 32)
    # and its run-time-width path (T > 32).
    for num_tags in (1, 2, 5, 8, 9, 13, 16, 17, 24, 25, 32, 33, 40):
        for _ in range(20):
            crf = random_crf(rng, rng.integers(1, 12), rng.integers(1, 30), num_tags)
            # Mixed magnitudes so that float32 rounding decides some maxima.
            crf["emissions"] *= (10.0 ** rng.integers(-3, 5, size=crf["emissions"].shape)).astype(np.float32)
            assert_backends_agree_bitwise(crf)
            assert_backends_agree_bitwise(crf, random_allowed(rng, crf["emissions"].shape, 0.3))


@requires_native
def test_native_and_numpy_agree_bit_for_bit_on_ties():
    rng = np.random.default_rng(6)
    for num_tags in (3, 13, 40):
        for _ in range(50):
            crf = random_crf(rng, rng.integers(1, 8), rng.integers(1, 20), num_tags)
            # Small integers make many equal candidates: the tie-breaking rule must match.
            for name in ("emissions", "start", "end", "transitions"):
                crf[name] = rng.integers(-2, 3, size=crf[name].shape).astype(np.float32)
            assert_backends_agree_bitwise(crf)
            assert_backends_agree_bitwise(crf, random_allowed(rng, crf["emissions"].shape, 0.5))


@requires_native
def test_native_and_numpy_marginals_agree():
    rng = np.random.default_rng(7)
    for num_tags in (1, 5, 13, 40):
        crf = random_crf(rng, 8, 30, num_tags, scale=3.0)
        np.testing.assert_allclose(
            crf_marginals(**crf, backend="native"), crf_marginals(**crf, backend="numpy"), atol=1e-6
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_go_to_the_lowest_tag(backend):
    crf = random_crf(np.random.default_rng(8), 3, 6, 5)
    for name in ("emissions", "start", "end", "transitions"):
        crf[name] = np.zeros_like(crf[name])

    tags, scores = viterbi_decode(**crf, backend=backend)

    for row, length in zip(tags, crf["lengths"]):
        assert row[:length].tolist() == [0] * length
    assert (scores == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_allowed_forces_a_single_path(backend):
    rng = np.random.default_rng(9)
    crf = random_crf(rng, 5, 7, 6)
    forced = rng.integers(6, size=(5, 7))  # (B, L): the only allowed tag at each position
    allowed = np.zeros((5, 7, 6), dtype=bool)
    np.put_along_axis(allowed, forced[..., None], True, axis=2)

    tags, scores = viterbi_decode(**crf, allowed=allowed, backend=backend)

    for b, length in enumerate(crf["lengths"]):
        assert tags[b, :length].tolist() == forced[b, :length].tolist()
        path = forced[b, :length]
        expected = (
            crf["start"][path[0]]
            + crf["emissions"][b, np.arange(length), path].astype(np.float64).sum()
            + crf["transitions"][path[:-1], path[1:]].astype(np.float64).sum()
            + crf["end"][path[-1]]
        )
        np.testing.assert_allclose(scores[b], expected, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_rows_of_allowed_may_be_empty(backend):
    crf = random_crf(np.random.default_rng(10), 2, 5, 3)
    crf["lengths"] = np.array([2, 5])
    allowed = np.ones((2, 5, 3), dtype=bool)
    allowed[0, 2:] = False  # padding of sequence 0

    tags, _ = viterbi_decode(**crf, allowed=allowed, backend=backend)

    assert (tags[0, 2:] == -1).all() and (tags[0, :2] >= 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_numeric_inputs_are_converted(backend):
    crf = random_crf(np.random.default_rng(11), 3, 6, 4)
    converted = {
        "emissions": crf["emissions"].astype(np.float64).tolist(),
        "lengths": crf["lengths"].astype(np.float32),  # whole numbers are fine as floats
        "start": crf["start"].astype(np.float64),
        "end": np.asfortranarray(crf["end"]),
        "transitions": np.asfortranarray(crf["transitions"].astype(np.float16).astype(np.float32)),
    }
    crf["transitions"] = converted["transitions"]
    allowed = random_allowed(np.random.default_rng(12), (3, 6, 4))

    tags, scores = viterbi_decode(**converted, allowed=allowed.astype(np.uint8), backend=backend)
    expected_tags, expected_scores = viterbi_decode(**crf, allowed=allowed, backend=backend)

    np.testing.assert_array_equal(tags, expected_tags)
    np.testing.assert_array_equal(scores, expected_scores)
    np.testing.assert_array_equal(crf_marginals(**converted, backend=backend), crf_marginals(**crf, backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    crf = random_crf(np.random.default_rng(13), 0, 7, 4)

    tags, scores = viterbi_decode(**crf, allowed=np.zeros((0, 7, 4), dtype=bool), backend=backend)
    marginals = crf_marginals(**crf, backend=backend)

    assert tags.shape == (0, 7) and tags.dtype == np.int32
    assert scores.shape == (0,) and scores.dtype == np.float32
    assert marginals.shape == (0, 7, 4) and marginals.dtype == np.float32


def valid_inputs():
    return random_crf(np.random.default_rng(14), 3, 5, 4)


def with_value(name, index, value):
    def change(crf):
        crf[name] = crf[name].astype(np.float64)
        crf[name][index] = value

    return change


def with_array(name, value):
    def change(crf):
        crf[name] = value

    return change


INVALID_INPUTS = {
    "emissions-2d": (with_array("emissions", np.zeros((3, 5), dtype=np.float32)), "emissions must be 3-D"),
    "emissions-no-tags": (with_array("emissions", np.zeros((3, 5, 0), dtype=np.float32)), "at least one tag"),
    "emissions-strings": (with_array("emissions", np.full((3, 5, 4), "x")), "emissions must hold real numbers"),
    "emissions-complex": (with_array("emissions", np.zeros((3, 5, 4), complex)), "emissions must hold real"),
    "start-shape": (with_array("start", np.zeros(5)), r"start must have shape \(4,\)"),
    "end-shape": (with_array("end", np.zeros((4, 1))), r"end must have shape \(4,\)"),
    "transitions-shape": (with_array("transitions", np.zeros((4, 3))), r"transitions must have shape \(4, 4\)"),
    "lengths-shape": (with_array("lengths", np.array([5, 5])), r"lengths must have shape \(3,\)"),
    "lengths-2d": (with_array("lengths", np.array([[5, 5, 5]])), r"lengths must have shape \(3,\)"),
    "lengths-fractional": (with_array("lengths", np.array([5, 2.5, 1])), "lengths must be whole numbers"),
    "lengths-strings": (with_array("lengths", np.array(["5", "5", "5"])), "lengths must be whole numbers"),
    "length-zero": (with_array("lengths", np.array([5, 0, 2])), r"in \[1, L = 5\], got lengths\[1\] = 0"),
    "length-above-L": (with_array("lengths", np.array([5, 6, 2])), r"in \[1, L = 5\], got lengths\[1\] = 6"),
    "emissions-nan": (with_value("emissions", (1, 2, 3), np.nan), "emissions must be finite"),
    "emissions-inf": (with_value("emissions", (0, 0, 0), -np.inf), "emissions must be finite"),
    "emissions-float32-overflow": (with_value("emissions", (2, 4, 1), 1e39), "emissions must be finite"),
    "start-nan": (with_value("start", 0, np.nan), "start must be finite"),
    "end-inf": (with_value("end", 3, np.inf), "end must be finite"),
    "transitions-nan": (with_value("transitions", (1, 2), np.nan), "transitions must be finite"),
    "backend-unknown": (with_array("backend", "cuda"), "backend must be one of"),
}


@pytest.mark.parametrize("function", [viterbi_decode, crf_marginals], ids=["decode", "marginals"])
@pytest.mark.parametrize("case", INVALID_INPUTS.values(), ids=INVALID_INPUTS.keys())
def test_invalid_inputs_raise_value_error(function, case):
    change, message = case
    crf = valid_inputs()
    change(crf)
    with pytest.raises(ValueError, match=message):
        function(**crf)


INVALID_ALLOWED = {
    "shape": (np.ones((3, 5, 3), dtype=bool), r"allowed must have the shape of emissions \(3, 5, 4\), got \(3, 5, 3\)"),
    "floats": (np.ones((3, 5, 4)), "allowed must be booleans"),
    "empty-real-row": (
        np.ones((3, 5, 4), dtype=bool) & (np.arange(5)[None, :, None] != 0),
        "at least one tag at every real position, got none at sequence 0, position 0",
    ),
}


@pytest.mark.parametrize("case", INVALID_ALLOWED.values(), ids=INVALID_ALLOWED.keys())
def test_invalid_allowed_raises_value_error(case):
    allowed, message = case
    with pytest.raises(ValueError, match=message):
        viterbi_decode(**valid_inputs(), allowed=allowed)


@requires_native
def test_extension_guards_its_own_bounds():
    from mner.runtime import _viterbi

    crf = valid_inputs()
    crf["lengths"] = np.array([5, 6, 1], dtype=np.int64)
    with pytest.raises(ValueError, match=r"lengths\[1\] must be in \[1, 5\], got 6"):
        _viterbi.viterbi_decode(**crf)
    with pytest.raises(ValueError, match=r"lengths\[1\] must be in \[1, 5\], got 6"):
        _viterbi.crf_marginals(**crf)
    crf["lengths"] = np.array([5, 5, 5], dtype=np.int64)
    with pytest.raises(ValueError, match=r"allowed must have the shape of emissions"):
        _viterbi.viterbi_decode(**crf, allowed=np.ones((3, 5, 5), dtype=bool))


def test_native_backend_without_extension_raises(monkeypatch):
    monkeypatch.setattr(viterbi_module, "_native", None)
    crf = valid_inputs()

    assert not native_available()
    with pytest.raises(RuntimeError, match="extension mner.runtime._viterbi is not built"):
        viterbi_decode(**crf, backend="native")
    with pytest.raises(RuntimeError, match="extension mner.runtime._viterbi is not built"):
        crf_marginals(**crf, backend="native")
    np.testing.assert_array_equal(viterbi_decode(**crf)[0], viterbi_decode(**crf, backend="numpy")[0])


def test_missing_extension_logs_one_debug_line(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "mner.runtime._viterbi", None)  # makes the import fail
    with caplog.at_level(logging.DEBUG, logger=viterbi_module.__name__):
        assert viterbi_module._import_native() is None
    assert [record.levelno for record in caplog.records] == [logging.DEBUG]
    assert "numpy fallback" in caplog.records[0].getMessage()


def samples_taken_during(call):
    """Runs call() in a thread; returns how many times this thread ran Python in its middle half.

    Were the GIL held for the whole call, this thread could not run at all between
    the call's start and end (bar one switch interval, 5 ms, at the start), so the
    middle half of a call lasting tens of milliseconds would see no samples.
    """
    window = {}
    done = threading.Event()

    def worker():
        window["start"] = time.perf_counter()
        call()
        window["end"] = time.perf_counter()
        done.set()

    samples = []
    thread = threading.Thread(target=worker)
    thread.start()
    while not done.is_set():
        samples.append(time.perf_counter())
    thread.join()
    duration = window["end"] - window["start"]
    assert duration > 0.04, f"the native call took {duration:.3f} s, too short to observe the GIL"
    low, high = window["start"] + duration / 4, window["end"] - duration / 4
    return sum(low < sample < high for sample in samples)


def long_enough_inputs(call, seq_length, num_tags):
    """Doubles the batch until one call takes at least 0.2 s (capped by memory)."""
    rng = np.random.default_rng(15)
    batch_size = 4
    while True:
        crf = random_crf(rng, batch_size, seq_length, num_tags, min_length=seq_length)
        crf["lengths"] = crf["lengths"].astype(np.int64)
        started = time.perf_counter()
        call(**crf)
        if time.perf_counter() - started > 0.2 or batch_size >= 4096:
            return crf
        batch_size *= 2


@requires_native
@pytest.mark.parametrize("name", ["viterbi_decode", "crf_marginals"])
def test_native_calls_release_the_gil(name):
    from mner.runtime import _viterbi

    call = getattr(_viterbi, name)
    crf = long_enough_inputs(call, seq_length=64, num_tags=256 if name == "viterbi_decode" else 64)

    assert samples_taken_during(lambda: call(**crf)) > 10


# --- crf_marginals_scaled: forward-backward in scaled probability space -----------------------------


def test_scaled_marginals_match_brute_force():
    rng = np.random.default_rng(21)
    for num_tags, seq_length in itertools.product(range(1, 5), range(1, 5)):
        crf = random_crf(rng, 4, seq_length, num_tags, scale=2.0)

        marginals = viterbi_module.crf_marginals_scaled(**crf)

        assert marginals.dtype == np.float32 and marginals.shape == (4, seq_length, num_tags)
        for b, length in enumerate(crf["lengths"]):
            paths, path_scores = brute_force_path_scores(crf, b)
            probabilities = np.exp(path_scores - path_scores.max())
            probabilities /= probabilities.sum()
            expected = np.zeros((length, num_tags))  # (length, T)
            for position in range(length):
                np.add.at(expected[position], paths[:, position], probabilities)
            np.testing.assert_allclose(marginals[b, :length], expected, atol=1e-5)
            assert (marginals[b, length:] == 0).all()


@pytest.mark.parametrize("scale", [1.0, 10.0, 50.0])
def test_scaled_marginals_agree_with_log_space(scale):
    rng = np.random.default_rng(22)
    crf = random_crf(rng, 16, 40, 21, scale=scale)
    np.testing.assert_allclose(viterbi_module.crf_marginals_scaled(**crf), crf_marginals(**crf, backend="numpy"),
                               atol=1e-6)  # fmt: skip


def test_scaled_marginals_treat_minus_1e30_as_impossible():
    rng = np.random.default_rng(23)
    crf = random_crf(rng, 4, 12, 5)
    crf["transitions"][:, 2] = -1.0e30  # tag 2 only at the first position
    crf["emissions"][:, :, 3] = -1.0e30  # tag 3 nowhere
    marginals = viterbi_module.crf_marginals_scaled(**crf)
    assert (marginals[:, 1:, 2] == 0).all() and (marginals[..., 3] == 0).all()
    np.testing.assert_allclose(marginals, crf_marginals(**crf, backend="numpy"), atol=1e-6)


def test_scaled_marginals_fall_back_to_log_space_where_they_underflow(caplog):
    # Tag 0 is certain at the first step and every move out of it costs 1000 nats more than the
    # best move anywhere: the scaled forward vector of step 1 underflows to nothing.
    crf = random_crf(np.random.default_rng(24), 2, 5, 3)
    crf["start"][:] = [0.0, -2000.0, -2000.0]
    crf["transitions"][:] = 0.0
    crf["transitions"][0, :] = -1000.0
    assert viterbi_module._crf_marginals_scaled(*viterbi_module._validate(**crf)) is None
    with caplog.at_level(logging.DEBUG, logger="mner.runtime.viterbi"):
        marginals = viterbi_module.crf_marginals_scaled(**crf)
    assert "underflowed" in caplog.text
    np.testing.assert_allclose(marginals, crf_marginals(**crf, backend="numpy"), atol=1e-6)
    assert np.isfinite(marginals).all()


def test_scaled_marginals_validate_and_handle_an_empty_batch():
    empty = random_crf(np.random.default_rng(25), 0, 3, 4)
    assert viterbi_module.crf_marginals_scaled(**empty).shape == (0, 3, 4)
    crf = random_crf(np.random.default_rng(25), 2, 3, 4)
    crf["emissions"][0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="emissions must be finite"):
        viterbi_module.crf_marginals_scaled(**crf)
