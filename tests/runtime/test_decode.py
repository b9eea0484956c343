"""mner.runtime.decode: word tags from emissions, constrained to well-formed BIO, and the reference decoding.

The constrained decoder is checked against a brute-force enumeration of every word tag
sequence of tiny posts (each scored over all its word-piece positions, continuation
pieces and [CLS]/[SEP] included), keeping the well-formed ones.
"""

import itertools

import numpy as np
import pytest

from mner.runtime import viterbi as viterbi_module
from mner.runtime.decode import (
    DECODINGS,
    FORBIDDEN_SCORE,
    BioLattice,
    CRFParameters,
    constrained_marginals,
    decode_words,
)
from mner.runtime.tags import CLS, CONTINUATION, SEP, Role, TagScheme, bio_violations
from mner.runtime.viterbi import native_available, viterbi_decode

BACKENDS = ["numpy", pytest.param("native", marks=pytest.mark.skipif(not native_available(), reason="extension not built"))]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Runs the test on the numpy fallback and (where built) on the native extension."""
    if request.param == "numpy":
        monkeypatch.setattr(viterbi_module, "_native", None)
    return request.param


def random_roles(rng, pieces_per_word, with_specials=True):
    """Roles of one post: [CLS], each word's first piece and its continuations, [SEP]."""
    roles = [Role.CLS] if with_specials else []
    for count in pieces_per_word:
        roles += [Role.WORD] + [Role.CONTINUATION] * (count - 1)
    if with_specials:
        roles.append(Role.SEP)
    return roles


def random_batch(rng, scheme, batch_size, max_words, max_pieces=3, scale=2.0, with_specials=True):
    """Random posts padded into (B, L) roles, (B, L, T) emissions, lengths, and a random CRF."""
    posts = [
        random_roles(rng, rng.integers(1, max_pieces + 1, size=rng.integers(1, max_words + 1)), with_specials)
        for _ in range(batch_size)
    ]
    length = max(len(p) for p in posts)
    roles = np.zeros((batch_size, length), dtype=np.int8)
    for b, post in enumerate(posts):
        roles[b, : len(post)] = post
    lengths = np.array([len(p) for p in posts])
    num_tags = scheme.num_tags
    emissions = (scale * rng.standard_normal((batch_size, length, num_tags))).astype(np.float32)
    crf = CRFParameters(*((scale * rng.standard_normal(shape)).astype(np.float32)
                          for shape in ((num_tags,), (num_tags,), (num_tags, num_tags))))  # fmt: skip
    return emissions, lengths, roles, crf


def word_sequences(scheme, n_words):
    """Every assignment of O/B-x/I-x to n_words words, as tag ids."""
    index = scheme.index
    word_tags = [i for tag, i in index.items() if tag == "O" or tag[:2] in ("B-", "I-")]
    return [list(sequence) for sequence in itertools.product(word_tags, repeat=n_words)]


def brute_force(scheme, crf, emissions, length, roles):
    """(word tag sequences, their float64 path scores, well-formed flags) for one post."""
    index = scheme.index
    structural = {Role.CONTINUATION: index[CONTINUATION], Role.CLS: index[CLS], Role.SEP: index[SEP]}
    roles = roles[:length]
    word_positions = np.flatnonzero(roles == Role.WORD)
    emissions = emissions[:length].astype(np.float64)
    transitions = crf.transitions.astype(np.float64)
    sequences, scores, well_formed = [], [], []
    for words in word_sequences(scheme, len(word_positions)):
        path = np.array([structural.get(int(role), 0) for role in roles])
        path[word_positions] = words
        score = crf.start[path[0]] + crf.end[path[-1]] + emissions[np.arange(length), path].sum()
        score += transitions[path[:-1], path[1:]].sum()
        sequences.append(words)
        scores.append(score)
        well_formed.append(not bio_violations([scheme.tags[t] for t in words]))
    return sequences, np.array(scores), np.array(well_formed)


@pytest.mark.parametrize("types", [("PER",), ("LOC", "PER")])
@pytest.mark.parametrize("with_specials", [True, False])
def test_constrained_decode_is_the_best_well_formed_path(backend, types, with_specials):
    rng = np.random.default_rng(len(types) + 2 * with_specials)
    scheme = TagScheme(types)
    max_words = 4 if len(types) == 1 else 3
    unconstrained_best_ill_formed = 0
    for _ in range(8):
        emissions, lengths, roles, crf = random_batch(rng, scheme, 6, max_words, with_specials=with_specials)
        decoded = decode_words(emissions, lengths, roles, scheme, crf)
        for b in range(len(lengths)):
            sequences, scores, well_formed = brute_force(scheme, crf, emissions[b], lengths[b], roles[b])
            best = np.flatnonzero(well_formed)[np.argmax(scores[well_formed])]
            unconstrained_best_ill_formed += not well_formed[np.argmax(scores)]
            got = [scheme.index[tag] for tag in decoded.word_tags[b]]
            assert not bio_violations(decoded.word_tags[b])
            # The same path, or one whose float64 score ties the best within float32 rounding.
            assert got == sequences[best] or scores[sequences.index(got)] == pytest.approx(scores[best], abs=1e-4)
    assert unconstrained_best_ill_formed > 0  # the constraint had work to do


@pytest.mark.parametrize("types", [("PER",), ("LOC", "PER")])
def test_constrained_marginals_match_brute_force(backend, types):
    rng = np.random.default_rng(11 + len(types))
    scheme = TagScheme(types)
    for _ in range(6):
        emissions, lengths, roles, crf = random_batch(rng, scheme, 5, 3)
        marginals = constrained_marginals(emissions, lengths, roles, scheme, crf)  # (B, L, T)
        decoded = decode_words(emissions, lengths, roles, scheme, crf, with_scores=True)
        for b in range(len(lengths)):
            sequences, scores, well_formed = brute_force(scheme, crf, emissions[b], lengths[b], roles[b])
            sequences, scores = np.array(sequences)[well_formed], scores[well_formed]
            probabilities = np.exp(scores - scores.max())
            probabilities /= probabilities.sum()
            word_positions = np.flatnonzero(roles[b] == Role.WORD)
            expected = np.zeros((len(word_positions), scheme.num_tags))
            for w in range(len(word_positions)):
                np.add.at(expected[w], sequences[:, w], probabilities)
            np.testing.assert_allclose(marginals[b, word_positions], expected, atol=1e-5)
            # Structural positions are certain; padding is 0.
            others = np.flatnonzero((roles[b] != Role.WORD) & (np.arange(roles.shape[1]) < lengths[b]))
            np.testing.assert_allclose(marginals[b, others].max(axis=1), 1.0, atol=1e-6)
            assert not marginals[b, lengths[b] :].any()
            chosen = [scheme.index[tag] for tag in decoded.word_tags[b]]
            np.testing.assert_allclose(decoded.word_scores[b], expected[np.arange(len(chosen)), chosen], atol=1e-5)


def bio_hostile_crf(scheme, rng):
    """A CRF whose learnt transitions favour ill-formed moves: start in I-x, O -> I-x, X -> I-x, I-x -> I-y."""
    index, num_tags = scheme.index, scheme.num_tags
    transitions = rng.standard_normal((num_tags, num_tags)).astype(np.float32)
    start = rng.standard_normal(num_tags).astype(np.float32)
    for entity_type in scheme.entity_types:
        inside = index[f"I-{entity_type}"]
        transitions[[index["O"], index[CONTINUATION], index[CLS]], inside] += 4.0
        start[inside] += 4.0
        for other in scheme.entity_types:
            if other != entity_type:
                transitions[index[f"I-{other}"], inside] += 4.0
    return CRFParameters(start, rng.standard_normal(num_tags).astype(np.float32), transitions)


@pytest.mark.parametrize("with_specials", [True, False])
def test_output_is_always_well_formed_even_where_the_crf_prefers_otherwise(backend, with_specials):
    rng = np.random.default_rng(3)
    scheme = TagScheme(("LOC", "MISC", "ORG", "PER"))
    crf = bio_hostile_crf(scheme, rng)
    ill_formed_before = 0
    for _ in range(10):
        emissions, lengths, roles, _ = random_batch(rng, scheme, 32, 20, scale=3.0, with_specials=with_specials)
        decoded = decode_words(emissions, lengths, roles, scheme, crf, with_scores=True)
        assert all(not bio_violations(tags) for tags in decoded.word_tags)
        assert all(np.all((scores > 0) & (scores <= 1 + 1e-6)) for scores in decoded.word_scores)
        # What the decoder did before: the position-level mask alone lets ill-formed words through.
        tags, _ = viterbi_decode(emissions, lengths, crf.start, crf.end, crf.transitions, allowed=scheme.allowed_mask(roles))
        ill_formed_before += sum(bool(bio_violations([scheme.tags[t] for t in row[r == Role.WORD]]))
                                 for row, r in zip(tags, roles))  # fmt: skip
    assert ill_formed_before > 0  # the test would prove nothing otherwise


def test_well_formed_unconstrained_paths_are_kept_exactly(backend):
    """Where the old position-level decode already gave well-formed words, the new one gives the same path."""
    rng = np.random.default_rng(5)
    scheme = TagScheme(("LOC", "MISC", "ORG", "PER"))
    compared = 0
    for _ in range(10):
        emissions, lengths, roles, crf = random_batch(rng, scheme, 32, 15, scale=3.0)
        tags, _ = viterbi_decode(emissions, lengths, crf.start, crf.end, crf.transitions, allowed=scheme.allowed_mask(roles))
        decoded = decode_words(emissions, lengths, roles, scheme, crf)
        for b in range(len(lengths)):
            old = [scheme.tags[t] for t in tags[b][roles[b] == Role.WORD]]
            if not bio_violations(old):
                compared += 1
                assert decoded.word_tags[b] == old
    assert compared > 30


def test_reference_decoding_is_unconstrained_viterbi_read_at_words(backend):
    rng = np.random.default_rng(8)
    scheme = TagScheme(("LOC", "MISC", "ORG", "PER"))
    emissions, lengths, roles, crf = random_batch(rng, scheme, 16, 10, scale=3.0)
    # Make X the best tag of one word's first piece: reference mode must report it, as the authors' did.
    emissions[0, 1, scheme.index[CONTINUATION]] = 100.0
    decoded = decode_words(emissions, lengths, roles, scheme, crf, decoding="reference", with_scores=True)
    tags, _ = viterbi_decode(emissions, lengths, crf.start, crf.end, crf.transitions)
    for b in range(len(lengths)):
        assert decoded.word_tags[b] == [scheme.tags[t] for t in tags[b][roles[b] == Role.WORD]]
    assert decoded.word_tags[0][0] == CONTINUATION
    constrained = decode_words(emissions, lengths, roles, scheme, crf)
    assert constrained.word_tags[0][0] != CONTINUATION


def test_reference_decoding_matches_pytorch_crf_decode():
    torch = pytest.importorskip("torch")
    torchcrf = pytest.importorskip("torchcrf")
    rng = np.random.default_rng(9)
    scheme = TagScheme(("LOC", "MISC", "ORG", "PER"))
    emissions, lengths, roles, crf = random_batch(rng, scheme, 16, 10, scale=3.0)
    layer = torchcrf.CRF(scheme.num_tags, batch_first=True)
    with torch.no_grad():
        layer.start_transitions.copy_(torch.from_numpy(crf.start))
        layer.end_transitions.copy_(torch.from_numpy(crf.end))
        layer.transitions.copy_(torch.from_numpy(crf.transitions))
        mask = torch.from_numpy(np.arange(roles.shape[1])[None, :] < lengths[:, None])
        paths = layer.decode(torch.from_numpy(emissions), mask)
    decoded = decode_words(emissions, lengths, roles, scheme, crf, decoding="reference")
    for b, path in enumerate(paths):
        assert decoded.word_tags[b] == [scheme.tags[path[p]] for p in np.flatnonzero(roles[b] == Role.WORD)]


def test_lattice_is_built_once_per_scheme_and_forbids_exactly_the_ill_formed_moves():
    scheme = TagScheme(("LOC", "PER"))
    rng = np.random.default_rng(0)
    _, _, _, crf = random_batch(rng, scheme, 1, 2)
    lattice = crf.bio_lattice(scheme)
    assert crf.bio_lattice(scheme) is lattice
    assert crf.bio_lattice(TagScheme(("ORG", "PER"))) is not lattice
    index = scheme.index
    names = scheme.tags + [f"X after {scheme.tags[t]}" for t in range(index["O"] + 1, index[CONTINUATION])]
    assert len(names) == len(lattice.state_tag) == scheme.num_tags + 4
    forbidden = {(names[i], names[j]) for i, j in zip(*np.nonzero(lattice.transitions == np.float32(FORBIDDEN_SCORE)))}
    assert ("O", "I-PER") in forbidden and ("B-LOC", "I-PER") in forbidden and ("I-LOC", "I-PER") in forbidden
    assert ("X", "I-PER") in forbidden and ("X after B-LOC", "I-PER") in forbidden and ("[CLS]", "I-LOC") in forbidden
    assert ("X after B-PER", "I-PER") not in forbidden and ("X after I-PER", "I-PER") not in forbidden
    assert ("B-PER", "X") in forbidden and ("B-PER", "X after B-PER") not in forbidden  # X remembers its word
    assert ("X after B-PER", "X after I-PER") in forbidden and ("X after B-PER", "X after B-PER") not in forbidden
    assert ("O", "X") not in forbidden and ("[CLS]", "X") not in forbidden and ("B-PER", "[SEP]") not in forbidden
    starts = {names[i] for i in np.flatnonzero(lattice.start == np.float32(FORBIDDEN_SCORE))}
    assert starts == {"I-LOC", "I-PER", "X after B-LOC", "X after I-LOC", "X after B-PER", "X after I-PER"}
    # Every allowed move scores as the CRF's own move between the tags the states stand for.
    allowed = lattice.transitions != np.float32(FORBIDDEN_SCORE)
    tags = lattice.state_tag
    np.testing.assert_array_equal(lattice.transitions[allowed], crf.transitions[tags[:, None], tags[None, :]][allowed])


def test_padding_and_length_one_posts():
    scheme = TagScheme(("PER",))  # <pad> O B-PER I-PER X [CLS] [SEP]
    rng = np.random.default_rng(1)
    emissions = rng.standard_normal((2, 4, scheme.num_tags)).astype(np.float32)
    roles = np.array([[Role.WORD, Role.PAD, Role.PAD, Role.PAD], [Role.CLS, Role.WORD, Role.CONTINUATION, Role.SEP]])
    emissions[0, 0, scheme.index["I-PER"]] = 50.0  # a lone word may not be I-PER, however much the model wants it
    crf = CRFParameters(*(np.zeros(shape, dtype=np.float32) for shape in ((7,), (7,), (7, 7))))
    decoded = decode_words(emissions, np.array([1, 4]), roles, scheme, crf, with_scores=True)
    assert decoded.word_tags[0] in (["O"], ["B-PER"]) and len(decoded.word_tags[1]) == 1
    # With a zero CRF the lone word's marginal is a softmax over the tags it may take: O and B-PER.
    allowed = emissions[0, 0, [scheme.index["O"], scheme.index["B-PER"]]].astype(np.float64)
    chosen = emissions[0, 0, scheme.index[decoded.word_tags[0][0]]]
    assert decoded.word_scores[0][0] == pytest.approx(np.exp(chosen) / np.exp(allowed).sum(), rel=1e-5)


def test_empty_batch():
    scheme = TagScheme(("PER",))
    crf = CRFParameters(*(np.zeros(shape, dtype=np.float32) for shape in ((7,), (7,), (7, 7))))
    for decoding in DECODINGS:
        decoded = decode_words(np.zeros((0, 3, 7), np.float32), np.zeros(0, np.int64), np.zeros((0, 3), np.int8), scheme,
                               crf, with_scores=True, decoding=decoding)  # fmt: skip
        assert decoded.word_tags == [] and decoded.word_scores == []


@pytest.mark.parametrize(
    "case, message",
    [
        ({"decoding": "viterbi"}, "decoding must be one of"),
        ({"roles": np.full((2, 5), 9, dtype=np.int8)}, "roles must be integers in"),
        ({"roles": np.full((2, 5), -1, dtype=np.int8)}, "roles must be integers in"),
        ({"roles": np.ones((2, 5), dtype=np.float32)}, "roles must be integers in"),
        ({"roles": np.ones((2, 4), dtype=np.int8)}, "roles must be"),
        ({"emissions": np.zeros((2, 5, 6), dtype=np.float32)}, r"emissions must be \(B, L, 7\)"),
        ({"crf": CRFParameters(*(np.zeros(s, np.float32) for s in ((6,), (7,), (7, 7))))}, r"CRF start must be \(7,\)"),
    ],
)
def test_invalid_inputs_raise(case, message):
    scheme = TagScheme(("PER",))
    arguments = {
        "emissions": np.zeros((2, 5, 7), dtype=np.float32),
        "lengths": np.array([5, 3]),
        "roles": np.array([[3, 1, 2, 1, 4], [3, 1, 4, 0, 0]], dtype=np.int8),
        "scheme": scheme,
        "crf": CRFParameters(*(np.zeros(s, np.float32) for s in ((7,), (7,), (7, 7)))),
        **case,
    }
    with pytest.raises(ValueError, match=message):
        decode_words(**arguments)
    if "decoding" not in case:
        with pytest.raises(ValueError, match=message):
            constrained_marginals(**arguments)


def test_bio_lattice_build_checks_the_crf_against_the_scheme():
    with pytest.raises(ValueError, match=r"CRF transitions must be \(7, 7\)"):
        BioLattice.build(TagScheme(("PER",)), CRFParameters(*(np.zeros(s, np.float32) for s in ((7,), (7,), (6, 7)))))
