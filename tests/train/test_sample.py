"""The built-in sample corpus: readable by the CoNLL reader, with real images and some posts without one."""

from mner.runtime.image import load_image
from mner.runtime.tags import TagScheme
from mner.train.data import read_conll
from mner.train.sample import write_sample_corpus


def test_sample_corpus_is_twitter_format_with_images(tmp_path):
    root = write_sample_corpus(tmp_path / "sample", seed=3, sizes={"train": 30, "valid": 5, "test": 5})
    posts = read_conll(root / "train.txt")
    assert len(posts) == 30
    scheme = TagScheme.from_bio_tags(tag for post in posts for tag in post.tags)
    assert set(scheme.entity_types) <= {"LOC", "MISC", "ORG", "PER"} and len(scheme.entity_types) >= 3
    with_image = [p for p in posts if (root / "images" / f"{p.image_id}.jpg").exists()]
    assert 0 < len(with_image) < len(posts)  # some posts have no image, as real ones
    rgb = load_image(root / "images" / f"{with_image[0].image_id}.jpg")
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.std() > 0


def test_sample_corpus_is_deterministic(tmp_path):
    a = write_sample_corpus(tmp_path / "a", seed=1, sizes={"train": 10})
    b = write_sample_corpus(tmp_path / "b", seed=1, sizes={"train": 10})
    assert (a / "train.txt").read_text() == (b / "train.txt").read_text()
    assert sorted(p.name for p in (a / "images").iterdir()) == sorted(p.name for p in (b / "images").iterdir())
