"""The raw-text benchmark: rejoining words into tweets, the split measurements, and F1 with a real bundle."""

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from mner.benchmarks import raw_text
from mner.benchmarks.raw_text import SplitStats, main, measure_split, rejoin
from mner.export.pipeline import export_bundle
from mner.export.random_checkpoint import make_random_checkpoint
from mner.runtime.conll import read_conll
from mner.train.sample import write_sample_corpus

TWITTER2017 = Path(__file__).resolve().parents[3] / "shared" / "data" / "twitter2017"
SMALL = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
         "augmentation_dim": 16, "vocab_size": 1500}  # fmt: skip


@pytest.mark.parametrize(
    "words, tweet",
    [
        (["New", "Post", ":", "NYC", "."], "New Post: NYC."),
        (["#", "NBA", ":", "Kawhi", "wins", "!", "#", "NBAAwards"], "#NBA: Kawhi wins! #NBAAwards"),
        (["RT", "@", "fan", ":", "It", "'", "s", "the", "2", "nd", "time"], "RT @fan: It's the 2nd time"),
        (["at", "7", ":", "30", "(", "May", "21,", "2016", ")"], "at 7:30 (May 21, 2016)"),
        (["Score", ":", "Dallas", "3", "-", "3,", "after"], "Score: Dallas 3-3, after"),
        (['"', "Hermione", '"', "painting", "$", "4.99"], '"Hermione" painting $4.99'),
        (["❤", "\ufe0f", "👍", "🏼", "🇺", "🇸", "Spider", "-", "Man"], "❤️ 👍🏼 🇺🇸 Spider-Man"),
    ],
)
def test_rejoin_writes_words_as_a_tweet_and_gives_their_spans(words, tweet):
    text, spans = rejoin(words)
    assert text == tweet
    assert [text[s:e] for s, e in spans] == words


def test_measure_split_counts_posts_and_entity_words(tmp_path):
    conll = tmp_path / "posts.txt"
    conll.write_text(
        "IMGID:1\n#\tO\nNBA\tB-ORG\n:\tO\nKawhi\tB-PER\nLeonard\tI-PER\n\n"
        "IMGID:2\nChagall\tB-PER\n1944\tO\n,\tO\nParis\tB-LOC\n\n",  # "1944 ," is glued by rejoin: a miss
        encoding="utf-8",
    )
    stats, misses, examples = SplitStats(), Counter(), {}
    measure_split(read_conll(conll), stats, misses, examples)
    assert (stats.posts, stats.posts_exact) == (2, 1)
    assert (stats.entity_words, stats.entity_words_exact) == (5, 5)  # the miss is not an entity word
    assert misses == {"number glued to ','": 1} and "1944 ," in examples["number glued to ','"]


@pytest.mark.skipif(not TWITTER2017.is_dir(), reason="../shared/data/twitter2017 is not present")
def test_twitter2017_raw_tweets_split_back_within_the_targets():
    report = raw_text.run(TWITTER2017, engine=None)
    total = {k: sum(s[k] for s in report["splits"].values()) for k in ("posts", "posts_exact", "entity_words", "entity_words_exact")}
    assert total["posts"] == 4819
    assert total["posts_exact"] / total["posts"] >= raw_text.TARGET_POSTS
    assert total["entity_words_exact"] / total["entity_words"] >= raw_text.TARGET_ENTITY_WORDS


def test_report_with_a_real_bundle_scores_raw_tweets_as_the_words(tmp_path):
    corpus = write_sample_corpus(tmp_path / "sample", seed=0, sizes={"train": 20, "valid": 4, "test": 12})
    words = [w for post in read_conll(corpus / "train.txt") for w in post.words]
    checkpoint = make_random_checkpoint(tmp_path / "best.pt", preset="tiny", seed=0, words=words, **SMALL)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        export_bundle(ckpt=checkpoint, out=tmp_path / "bundle", stages="tagger", seed=0)
    finally:
        torch.set_num_threads(threads)
    out, figures = tmp_path / "raw-text.md", tmp_path / "raw-text.json"
    assert main(["--data", str(corpus), "--engine", str(tmp_path / "bundle"), "--out", str(out), "--json", str(figures)]) == 0
    markdown = out.read_text(encoding="utf-8")
    assert "| posts whose words come back exactly (all splits) | ≥ 97.0 % | 100.00 % | met |" in markdown
    f1 = json.loads(figures.read_text(encoding="utf-8"))["f1"]
    # the sample's tweets split back into its words exactly, so both inputs give the same entities
    assert f1["raw"] == f1["words"] and f1["words"]["gold"] > 0
    assert "raw tweet, whitespace splitter" in markdown


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    assert main(["--data", str(tmp_path)]) == 2
    assert "train.txt does not exist: --data must be a TWITTER-format folder" in capsys.readouterr().err
