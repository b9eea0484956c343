"""The raw-text benchmark: rejoining words into tweets, the split measurements, and F1 with a real bundle."""

import json
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

from mner.benchmarks import raw_text
from mner.benchmarks.raw_text import SplitStats, main, measure_split, rejoin
from mner.runtime.conll import read_conll
from mner.train.sample import write_sample_corpus

TWITTER2017 = Path(__file__).resolve().parents[3] / "shared" / "data" / "twitter2017"


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


@pytest.fixture(scope="module")
def small_bundle(tagger_bundle, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(sample corpus, random-weights checkpoint, its tagger bundle), side by side in one folder as the --cli test's
    relative paths need: a sample corpus and links to the session's tagger-only bundle (tests/conftest.py)."""
    root = tmp_path_factory.mktemp("raw-text")
    corpus = write_sample_corpus(root / "sample", seed=0, sizes={"train": 20, "valid": 4, "test": 40})
    (root / "best.pt").symlink_to(tagger_bundle.checkpoint)
    (root / "bundle").symlink_to(tagger_bundle.bundle, target_is_directory=True)
    return corpus, root / "best.pt", root / "bundle"


def test_report_with_a_real_bundle_scores_raw_tweets_as_the_words(small_bundle, tmp_path):
    corpus, _, bundle = small_bundle
    out, figures = tmp_path / "raw-text.md", tmp_path / "raw-text.json"
    assert main(["--data", str(corpus), "--engine", str(bundle), "--out", str(out), "--json", str(figures)]) == 0
    markdown = out.read_text(encoding="utf-8")
    assert "| posts whose words come back exactly (all splits) | ≥ 97.0 % | 100.00 % | met |" in markdown
    report = json.loads(figures.read_text(encoding="utf-8"))
    f1 = report["f1"]
    # the sample's tweets split back into its words exactly, so both inputs give the same entities
    assert f1["raw"] == f1["words"] and f1["words"]["gold"] > 0
    assert "raw tweet, whitespace splitter" in markdown
    # without --cli / --checkpoint: no command rows, and every test post is tagged
    assert "cli" not in f1 and "eval" not in report and "mner-tag" not in markdown
    assert report["f1_posts"] == [40, 40] and "- Posts: all 40 test posts" in markdown


def test_cli_rows_are_the_mner_tag_command_and_mner_eval_on_the_checkpoint(small_bundle, tmp_path, monkeypatch):
    corpus, checkpoint, bundle = small_bundle
    monkeypatch.chdir(corpus.parent)  # paths relative to the working directory, as the committed report gives them
    out, figures = tmp_path / "raw-text.md", tmp_path / "raw-text.json"
    argv = ["--data", "sample", "--engine", "bundle", "--cli", "--checkpoint", "best.pt", "--max-posts", "30",
            "--out", str(out), "--json", str(figures)]  # fmt: skip
    assert main(argv) == 0
    markdown, report = out.read_text(encoding="utf-8"), json.loads(figures.read_text(encoding="utf-8"))
    f1 = report["f1"]
    assert report["f1_posts"] == [30, 40]
    # mner-tag runs the same pipeline on the same tweets: the same entities, so the very same scores
    assert f1["cli"] == f1["raw"] and f1["raw"]["gold"] > 0 and f1["raw"]["predicted"] > 0
    cli = f1["cli"]
    assert (f"| raw tweet, `mner-tag` command | {100 * cli['precision']:.2f} | {100 * cli['recall']:.2f} "
            f"| {100 * cli['f1']:.2f} | {cli['gold']} | {cli['predicted']} |") in markdown  # fmt: skip
    # mner-eval's own figures on the same 30 posts: words and character spans coincide on the sample (no truncation)
    micro = report["eval"]["micro"]
    assert report["eval"]["decoding"] == "constrained" and micro["support"] == cli["gold"]
    assert micro["f1"] == pytest.approx(cli["f1"], abs=1e-12)
    assert (f"| checkpoint in PyTorch, `mner-eval` (reference: the data set's words, conlleval) "
            f"| {100 * micro['precision']:.2f} | {100 * micro['recall']:.2f} | {100 * micro['f1']:.2f} "
            f"| {micro['support']} | {cli['predicted']} |") in markdown  # fmt: skip
    assert (f"| test entity F1, `mner-tag` on raw tweets vs `mner-eval` on the checkpoint | within 0.1 points "
            f"| {100 * cli['f1']:.2f} vs {100 * micro['f1']:.2f} (+0.00 points) | met |") in markdown  # fmt: skip
    # the commands as given, no machine path
    assert "`mner-tag --engine bundle --input posts.jsonl --output tagged.jsonl`" in markdown
    assert "`mner-eval --checkpoint best.pt --data sample --split test --json --max-posts 30`" in markdown
    assert str(corpus.parent) not in markdown and str(Path(sys.executable).parent) not in markdown


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--cli"], "--cli tags with mner-tag --engine BUNDLE: give --engine"),
        (["--engine", "b", "--checkpoint", "c.pt"], "--checkpoint compares mner-eval with the mner-tag command's F1: give --cli"),
        (["--max-posts", "5"], "--max-posts limits the tagged test posts: it needs --engine and a value >= 1, got 5"),
        (["--engine", "b", "--max-posts", "0"], "it needs --engine and a value >= 1, got 0"),
    ],
)
def test_command_options_without_what_they_need_are_usage_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["--data", str(tmp_path), *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cli": True}, "cli=True tags with mner-tag --engine: it needs an engine"),
        ({"engine": Path("b"), "checkpoint": Path("c.pt")}, "checkpoint compares mner-eval with mner-tag's raw-tweet F1"),
        ({"engine": Path("b"), "max_posts": 0}, "max_posts must be >= 1 (or None for every test post), got 0"),
    ],
)
def test_run_refuses_options_without_what_they_need(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        raw_text.run(tmp_path, **{"engine": None, **kwargs})


def test_a_console_script_missing_beside_the_interpreter_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path / 'bin' / 'mner-tag'} does not exist: mner-tag must be installed")):
        raw_text.tag_with_cli(tmp_path, ["a tweet"])


def _fake_script(tmp_path: Path, monkeypatch, body: str) -> None:
    """Stand-ins for mner-tag and mner-eval: a shell script with the given body, beside a fake interpreter."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("mner-tag", "mner-eval"):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))


def test_a_failing_command_is_an_error_with_its_last_words(tmp_path, monkeypatch):
    _fake_script(tmp_path, monkeypatch, "echo 'Error: the bundle is broken' >&2; exit 1")
    with pytest.raises(RuntimeError, match="mner-tag exited with status 1: Error: the bundle is broken"):
        raw_text.tag_with_cli(tmp_path, ["a tweet"])
    with pytest.raises(RuntimeError, match="mner-eval exited with status 1: Error: the bundle is broken"):
        raw_text.evaluate_with_cli(tmp_path / "best.pt", tmp_path)


def test_mner_tag_error_records_and_wrong_ids_are_errors(tmp_path, monkeypatch):
    # the fake mner-tag writes its --output (the 6th argument) itself
    _fake_script(tmp_path, monkeypatch, 'echo \'{"id": 0, "line": 1, "error": "text too long"}\' > "$6"; exit 3')
    with pytest.raises(RuntimeError, match=r"mner-tag could not tag 1 test posts, first \(id 0\): text too long"):
        raw_text.tag_with_cli(tmp_path, ["a tweet"])
    (tmp_path / "bin" / "mner-tag").write_text('#!/bin/sh\necho \'{"id": 7, "line": 1, "entities": []}\' > "$6"\n')
    with pytest.raises(RuntimeError, match=r"mner-tag wrote records for ids \[7\]\.\.\.; expected 0\.\.0 in order"):
        raw_text.tag_with_cli(tmp_path, ["a tweet"])


def test_mner_eval_output_that_is_not_its_metrics_is_an_error(tmp_path, monkeypatch):
    _fake_script(tmp_path, monkeypatch, "echo 'decoding: constrained'")
    with pytest.raises(RuntimeError, match="mner-eval --json printed no metrics .*'decoding: constrained'"):
        raw_text.evaluate_with_cli(tmp_path / "best.pt", tmp_path)


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    assert main(["--data", str(tmp_path)]) == 2
    assert "train.txt does not exist: --data must be a TWITTER-format folder" in capsys.readouterr().err
