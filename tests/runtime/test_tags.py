import json
import random

import numpy as np
import pytest

from mner.runtime.tags import AUX_TAGS, Role, TagScheme, bio_violations, entities_from_bio, parse_bio, repair_bio

TYPES = ("PER", "LOC", "ORG", "MISC")


def test_layout_matches_the_reference_with_pad_first():
    scheme = TagScheme(TYPES)
    assert scheme.entity_types == ("LOC", "MISC", "ORG", "PER")  # sorted
    assert scheme.tags == [
        "<pad>", "O",
        "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER",
        "X", "[CLS]", "[SEP]",
    ]  # fmt: skip
    assert scheme.num_tags == len(scheme.tags) == 13
    assert scheme.index["B-PER"] == 8 and scheme.index["[SEP]"] == 12
    assert scheme.aux_tags == ["<pad>", "O", "B", "I", "X", "[CLS]", "[SEP]"] == list(AUX_TAGS)
    assert scheme.aux_index["X"] == 4


def test_from_bio_tags_derives_sorted_types():
    scheme = TagScheme.from_bio_tags(["O", "B-OTHER", "I-PER", "O", "B-LOC", "I-OTHER"])
    assert scheme.entity_types == ("LOC", "OTHER", "PER")


@pytest.mark.parametrize("tag", ["X", "B", "B-", "b-PER", "[CLS]", "<pad>", "E-PER", "", "I_PER"])
def test_from_bio_tags_rejects_non_bio(tag):
    with pytest.raises(ValueError, match="BIO tag"):
        TagScheme.from_bio_tags(["O", tag])


def test_from_bio_tags_needs_an_entity():
    with pytest.raises(ValueError, match="at least one entity type"):
        TagScheme.from_bio_tags(["O", "O"])


@pytest.mark.parametrize("types, message", [
    ((), "at least one"),
    (("PER", "PER"), "distinct"),
    (("PER", "NEW YORK"), "without whitespace"),
    (("PER", ""), "non-empty"),
])  # fmt: skip
def test_scheme_validation(types, message):
    with pytest.raises(ValueError, match=message):
        TagScheme(types)


def test_to_aux_maps_entity_tags_to_their_prefix():
    scheme = TagScheme(TYPES)
    aux = scheme.aux_index
    for tag, tag_id in scheme.index.items():
        expected = tag[0] if tag[:2] in ("B-", "I-") else tag
        assert scheme.to_aux(tag_id) == aux[expected], tag
    ids = np.array([[1, 8, 9], [10, 11, 12]])
    np.testing.assert_array_equal(scheme.to_aux(ids), [[1, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize("bad", [13, -1, np.array([0, 13]), 1.5])
def test_to_aux_rejects_unknown_ids(bad):
    with pytest.raises(ValueError, match="tag ids"):
        TagScheme(TYPES).to_aux(bad)


def test_allowed_mask_per_role():
    scheme = TagScheme(TYPES)
    index = scheme.index
    roles = np.array([Role.CLS, Role.WORD, Role.CONTINUATION, Role.SEP, Role.PAD], dtype=np.int8)
    mask = scheme.allowed_mask(roles)
    assert mask.shape == (5, 13) and mask.dtype == bool
    allowed = [{scheme.tags[i] for i in np.flatnonzero(row)} for row in mask]
    assert allowed[0] == {"[CLS]"}
    assert allowed[1] == {"O"} | {t for t in scheme.tags if t[:2] in ("B-", "I-")}
    assert allowed[2] == {"X"}
    assert allowed[3] == {"[SEP]"}
    assert allowed[4] == set(scheme.tags)  # padding: all True, documented
    assert not mask[:4, index["<pad>"]].any()


def test_allowed_mask_keeps_batch_shape():
    roles = np.array([[3, 1, 2, 4], [3, 1, 4, 0]], dtype=np.int8)
    mask = TagScheme(TYPES).allowed_mask(roles)
    assert mask.shape == (2, 4, 13)
    np.testing.assert_array_equal(mask[1, 2], mask[0, 3])


@pytest.mark.parametrize("roles", [np.array([5]), np.array([-1]), np.array([1.0])])
def test_allowed_mask_rejects_unknown_roles(roles):
    with pytest.raises(ValueError, match="roles"):
        TagScheme(TYPES).allowed_mask(roles)


def test_json_round_trip():
    scheme = TagScheme(TYPES)
    text = json.dumps(scheme.to_json())
    assert TagScheme.from_json(json.loads(text)) == scheme
    assert TagScheme.from_json(text) == scheme


def test_from_json_rejects_a_different_layout_or_version():
    data = TagScheme(TYPES).to_json()
    with pytest.raises(ValueError, match="do not match"):
        TagScheme.from_json({**data, "tags": data["tags"][::-1]})
    with pytest.raises(ValueError, match="format_version"):
        TagScheme.from_json({**data, "format_version": 99})
    with pytest.raises(ValueError, match="format_version"):
        TagScheme.from_json(["PER"])


@pytest.mark.parametrize("tags, expected", [
    ([], []),
    (["O", "O"], []),
    (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 2), ("LOC", 3, 4)]),
    (["O", "I-PER", "I-PER"], [("PER", 1, 3)]),  # I after O starts an entity
    (["B-PER", "I-LOC", "I-LOC"], [("PER", 0, 1), ("LOC", 1, 3)]),  # type switch
    (["B-PER", "B-PER", "I-PER"], [("PER", 0, 1), ("PER", 1, 3)]),
    (["I-ORG"], [("ORG", 0, 1)]),
])  # fmt: skip
def test_entities_from_bio(tags, expected):
    assert entities_from_bio(tags) == expected


def test_entities_from_bio_rejects_non_bio():
    with pytest.raises(ValueError, match="BIO tag"):
        entities_from_bio(["B-PER", "X"])


def test_parse_bio():
    assert parse_bio("O") == ("O", None)
    assert parse_bio("I-A-B") == ("I", "A-B")


def test_entities_agree_with_seqeval_on_random_sequences():
    get_entities = pytest.importorskip("seqeval.metrics.sequence_labeling").get_entities
    rng = random.Random(0)
    vocabulary = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG"]
    for _ in range(2000):
        tags = [rng.choice(vocabulary) for _ in range(rng.randint(0, 12))]
        expected = [(t, start, end + 1) for t, start, end in get_entities(tags)]
        assert entities_from_bio(tags) == expected, tags


def test_bio_follow_mask():
    scheme = TagScheme(("LOC", "PER"))
    follow = scheme.bio_follow_mask()
    names = scheme.tags
    allowed = {(names[i], names[j]) for i, j in zip(*np.nonzero(follow))}
    for previous in names:
        for tag in ("O", "B-LOC", "B-PER", "X", "[SEP]"):
            assert (previous, tag) in allowed
    assert {previous for previous in names if (previous, "I-PER") in allowed} == {"B-PER", "I-PER"}
    assert {previous for previous in names if (previous, "I-LOC") in allowed} == {"B-LOC", "I-LOC"}


@pytest.mark.parametrize(
    "tags, expected",
    [
        ([], []),
        (["O", "B-PER", "I-PER", "O"], []),
        (["I-PER", "I-PER"], [0]),
        (["O", "I-PER"], [1]),
        (["B-LOC", "I-PER", "I-PER"], [1]),
        (["I-LOC", "I-PER", "B-PER", "I-PER", "O", "I-LOC"], [0, 1, 5]),
    ],
)
def test_bio_violations(tags, expected):
    assert bio_violations(tags) == expected


def test_bio_violations_rejects_non_bio():
    with pytest.raises(ValueError, match="expected a BIO tag"):
        bio_violations(["O", "X"])


def test_repair_bio_keeps_the_entities_and_makes_the_tags_well_formed():
    rng = random.Random(4)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    for _ in range(200):
        sequence = [rng.choice(tags) for _ in range(rng.randint(0, 10))]
        repaired = repair_bio(sequence)
        assert not bio_violations(repaired)
        assert entities_from_bio(repaired) == entities_from_bio(sequence)
        assert [t for t, s in zip(repaired, sequence) if t != s] == ["B-" + sequence[i][2:] for i in bio_violations(sequence)]
    assert repair_bio(["O", "I-PER", "I-LOC"]) == ["O", "B-PER", "B-LOC"]
