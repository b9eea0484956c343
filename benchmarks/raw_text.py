"""How well raw tweets are split back into the data set's words, and what that costs in F1.

    python -m mner.benchmarks.raw_text --data ../shared/data/twitter2017 \\
        [--engine BUNDLE [--cli [--checkpoint BEST_PT]] [--max-posts N]] \\
        [--out benchmarks/results/raw-text.md] [--json FILE]

The TWITTER data sets give each post as words (``NYC .``, ``# NewYorkMets``, ``It ' s``).
Users send the tweet itself. For every post of train, dev and test this script writes
the words back into the tweet they were (``rejoin``: its own rules, below), splits that
text with the runtime's ``tweet`` splitter and reports

(a) the share of posts whose words come back exactly;
(b) the share of entity words (every word of a gold entity) recovered with exactly the
    character span the rejoined tweet gives them;
(c) with ``--engine``, a trained bundle's entity F1 on test: tagging the data set's words
    (``Pipeline.tag_words``) and tagging the rejoined tweet (``Pipeline.tag``), entities
    matched by type and character span in the tweet; and, for comparison, the tweet split
    on whitespace only (how the runtime split raw text before the tweet splitter);
(d) with ``--cli``, the same raw-tweet F1 through the installed ``mner-tag`` command: the
    rejoined tweets written as JSONL (``{"id", "text"}``), tagged by ``mner-tag --engine``
    in a subprocess, its records' entities (type, character offsets) scored as (c) scores
    ``Pipeline.tag``'s;
(e) with ``--checkpoint`` (and ``--cli``), the reference: ``mner-eval --json`` on the
    checkpoint the bundle was exported from, on the same test posts (PyTorch, the data
    set's words, conlleval), and whether ``mner-tag``'s raw-tweet F1 is within 0.1 points
    of it. ``mner-eval`` scores word sequences and drops a post's words past the model's
    ``max_length`` pieces from its gold; the other rows score every gold entity by
    character span, so the two agree where every entity word is split back exactly and no
    post is truncated.

``--max-posts N`` tags only the first N test posts in (c)-(e) (the split measurements
always cover every post).

and, for the posts that still differ, what differs (the classes, with counts and an
example each). Targets: (a) >= 97 %, (b) >= 99.5 %, (c) raw within 0.5 points, (e) ``mner-tag``
within 0.1 points of ``mner-eval`` (either way).

``rejoin`` is deliberately not the splitter run backwards: it writes tweets as people
type them (``NYC.``, ``#NewYorkMets``, ``@user``, ``It's``, ``2nd``, ``7:30``,
``Spider-Man``, ``"quoted"``, ``(brackets)``, ``❤️`` and ``👍🏼`` without a space), so a
split that only undid its own joins would not pass.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from mner.runtime.conll import ConllPost, read_conll
from mner.runtime.splitters import split_tweet
from mner.runtime.tags import entities_from_bio

logger = logging.getLogger("mner.benchmarks.raw_text")

SPLITS = (("train", "train.txt"), ("dev", "valid.txt"), ("test", "test.txt"))
TARGET_POSTS = 0.97
TARGET_ENTITY_WORDS = 0.995
TARGET_F1_GAP = 0.005
TARGET_CLI_GAP = 0.001  # mner-tag on raw tweets vs mner-eval on the checkpoint (issue 14), either way
TAG_INPUT, TAG_OUTPUT = "posts.jsonl", "tagged.jsonl"  # in a temporary folder

# --------------------------------------------------------------------------- rejoin

_CLOSERS = set(".,!?:;)]}%…") | {"»", "”", "’"}
_OPENERS = set("([{#@$£€¥") | {"«", "“", "‘"}
_CLITICS = {"s", "t", "re", "ve", "ll", "d", "m"}
_ORDINALS = {"st", "nd", "rd", "th"}
_APOSTROPHES = {"'", "’"}
_ZWJ = "\u200d"


def _is_modifier(word: str) -> bool:
    """A code point typed glued to the emoji before it: variation selectors, skin tones, keycaps."""
    return len(word) == 1 and (
        unicodedata.category(word) in ("Mn", "Me", "Sk") or 0x1F3FB <= ord(word) <= 0x1F3FF or 0xFE00 <= ord(word) <= 0xFE0F
    )


def _is_regional(word: str) -> bool:
    return len(word) == 1 and 0x1F1E6 <= ord(word) <= 0x1F1FF


def _glued(before: str, previous: str, word: str, following: str | None, quote_open: bool) -> bool:
    """Whether `word` is typed right after `previous` (itself after `before`), with no space."""
    if previous in _OPENERS and previous not in _CLOSERS:
        return True
    if previous == '"' and quote_open:  # the opening quote of a pair
        return True
    if word == '"':
        return quote_open  # a closing quote
    if word in _CLOSERS:
        return True
    if previous == ":" and word[:1].isdigit() and before[-1:].isdigit():  # 7:30, but "Score: Dallas"
        return True
    if _is_modifier(word) or word == _ZWJ or previous == _ZWJ:
        return True
    if _is_regional(previous) and _is_regional(word):
        return True
    if previous.isdigit() and word.lower() in _ORDINALS:  # 2 nd -> 2nd
        return True
    if previous in _APOSTROPHES and word.lower() in _CLITICS:  # It ' s -> It's
        return True
    if word in _APOSTROPHES and previous[-1:].isalpha() and (following or "").lower() in _CLITICS:
        return True
    if word in ("-", "/") and previous[-1:].isalnum() and (following or "")[:1].isalnum():  # Spider-Man, 10/3
        return True
    if previous in ("-", "/") and word[:1].isalnum():
        return True
    return False


def rejoin(words: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """The tweet the words were split from, as a person would type it, and each word's span in it."""
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    position = 0
    quote_open = False
    for i, word in enumerate(words):
        following = words[i + 1] if i + 1 < len(words) else None
        before = words[i - 2] if i > 1 else ""
        if i and not _glued(before, words[i - 1], word, following, quote_open):
            parts.append(" ")
            position += 1
        if word == '"':
            quote_open = not quote_open
        parts.append(word)
        spans.append((position, position + len(word)))
        position += len(word)
    text = "".join(parts)
    assert all(text[s:e] == w for w, (s, e) in zip(words, spans))
    return text, spans


# --------------------------------------------------------------------------- measure


@dataclass
class SplitStats:
    posts: int = 0
    posts_exact: int = 0
    entity_words: int = 0
    entity_words_exact: int = 0


def _classify(words: list[str], split: list[str]) -> tuple[str, str]:
    """A short name for the first difference between the data set's words and the split."""
    i = 0
    while i < min(len(words), len(split)) and words[i] == split[i]:
        i += 1
    ours = split[i] if i < len(split) else ""
    theirs = words[i] if i < len(words) else ""
    example = f"data {' '.join(words[max(0, i - 2) : i + 3])!r} / split {' '.join(split[max(0, i - 2) : i + 3])!r}"
    if len(ours) > len(theirs):  # we glued what the data set split
        if ours[:1].isdigit():
            kind = f"number glued to {ours[len(theirs):][:1]!r}" if ours.startswith(theirs) else "number"
        elif "@" in ours:
            kind = "split as an e-mail address"
        elif ours.startswith(("http", "www")):
            kind = "split as a URL"
        else:
            kind = f"glued: {theirs!r} + {ours[len(theirs):]!r}"
    else:  # we split what the data set kept whole
        kind = f"data keeps {theirs!r} whole" if len(theirs) <= 12 else "data keeps a longer word whole"
    return kind, example


def measure_split(posts: list[ConllPost], stats: SplitStats, misses: Counter, examples: dict[str, str]) -> None:
    for post in posts:
        text, spans = rejoin(post.words)
        split = split_tweet(text)
        stats.posts += 1
        if [w.text for w in split] == post.words:
            stats.posts_exact += 1
        else:
            kind, example = _classify(post.words, [w.text for w in split])
            misses[kind] += 1
            examples.setdefault(kind, example)
        found = {(w.start, w.end) for w in split}
        for _, first, end in entities_from_bio(post.tags):
            for k in range(first, end):
                stats.entity_words += 1
                stats.entity_words_exact += spans[k] in found


def _span_entities(tags: list[str], spans: list[tuple[int, int]]) -> set[tuple[str, int, int]]:
    return {(entity_type, spans[first][0], spans[end - 1][1]) for entity_type, first, end in entities_from_bio(tags)}


def _f1(gold: list[set], pred: list[set]) -> dict[str, float]:
    true = sum(len(g & p) for g, p in zip(gold, pred))
    n_gold, n_pred = sum(map(len, gold)), sum(map(len, pred))
    precision = true / n_pred if n_pred else 0.0
    recall = true / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "gold": n_gold, "predicted": n_pred}


def measure_f1(engine: Path, posts: list[ConllPost], batch_size: int = 16, cli: bool = False) -> dict[str, dict[str, float]]:
    """Entity F1 (type + character span in the rejoined tweet) tagging the data set's words, the raw
    tweet, and the raw tweet split on whitespace; with ``cli``, also the raw tweet through ``mner-tag``."""
    from mner.runtime.pipeline import Pipeline  # the bundle's runtime; imported here so --help is quick

    texts, spans = zip(*(rejoin(post.words) for post in posts))
    gold = [_span_entities(post.tags, s) for post, s in zip(posts, spans)]
    with Pipeline.from_bundle(engine, batch_size=batch_size) as pipeline:
        splitter = getattr(pipeline, "splitter", "tweet")
        if splitter != "tweet":
            raise ValueError(f"{engine} splits raw text with {splitter!r}; this measures the tweet splitter")
        on_words = pipeline.tag_words([post.words for post in posts])
        on_text = pipeline.tag(list(texts))
    with Pipeline.from_bundle(engine, batch_size=batch_size, splitter="whitespace") as pipeline:
        on_spaces = pipeline.tag(list(texts))
    for results in (on_words, on_text, on_spaces):
        failed = [i for i, r in enumerate(results) if not r.ok]
        if failed:
            raise RuntimeError(f"test posts {failed[:10]} could not be tagged: {results[failed[0]].error}")
    pred_words = [_span_entities(r.tags, s) for r, s in zip(on_words, spans)]
    pred_text = [{(e.type, e.start, e.end) for e in r.entities} for r in on_text]
    pred_spaces = [{(e.type, e.start, e.end) for e in r.entities} for r in on_spaces]
    scores = {"words": _f1(gold, pred_words), "raw": _f1(gold, pred_text), "raw_whitespace": _f1(gold, pred_spaces)}
    if cli:
        scores["cli"] = _f1(gold, tag_with_cli(engine, list(texts), batch_size=batch_size))
    return scores


def console_script(name: str) -> Path:
    """The console script `name` installed beside this interpreter (the one these figures are about)."""
    path = Path(sys.executable).parent / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {name} must be installed in this interpreter's environment "
                                "(pip install -e '.[train]')")  # fmt: skip
    return path


def _run_script(arguments: list[str | Path]) -> subprocess.CompletedProcess:
    logger.info("running %s", shlex.join(str(a) for a in arguments))
    return subprocess.run([str(a) for a in arguments], capture_output=True, text=True, encoding="utf-8", check=False)


def _failure(name: str, completed: subprocess.CompletedProcess) -> RuntimeError:
    tail = "\n".join((completed.stderr or completed.stdout).strip().splitlines()[-5:])
    return RuntimeError(f"{name} exited with status {completed.returncode}: {tail or '(no output)'}")


def tag_with_cli(engine: Path, texts: list[str], batch_size: int = 16) -> list[set[tuple[str, int, int]]]:
    """Each text's entities (type, start, end) as the installed ``mner-tag`` command writes them: the texts
    as one JSONL file (id = position), tagged in a subprocess, its output records read back."""
    with tempfile.TemporaryDirectory(prefix="mner-raw-text-") as folder:
        posts, tagged = Path(folder) / TAG_INPUT, Path(folder) / TAG_OUTPUT
        posts.write_text("".join(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(texts)),
                         encoding="utf-8")  # fmt: skip
        completed = _run_script([console_script("mner-tag"), "--engine", engine, "--input", posts, "--output", tagged,
                                 "--batch-size", str(batch_size), "--no-progress"])  # fmt: skip
        records = [json.loads(line) for line in tagged.read_text(encoding="utf-8").splitlines()] if tagged.is_file() else []
    errors = [r for r in records if "error" in r]
    if errors:  # mner-tag's status 3; the record says why
        raise RuntimeError(f"mner-tag could not tag {len(errors)} test posts, first (id {errors[0].get('id')}): {errors[0]['error']}")
    if completed.returncode != 0:
        raise _failure("mner-tag", completed)
    ids = [r.get("id") for r in records]
    if ids != list(range(len(texts))):
        raise RuntimeError(f"mner-tag wrote records for ids {ids[:10]}...; expected 0..{len(texts) - 1} in order")
    return [{(e["type"], e["start"], e["end"]) for e in r["entities"]} for r in records]


def evaluate_with_cli(checkpoint: Path, data: Path, max_posts: int | None = None) -> dict:
    """``mner-eval --json`` on the test split: its micro and per-type scores (conlleval, the data set's words)."""
    arguments = [console_script("mner-eval"), "--checkpoint", checkpoint, "--data", data, "--split", "test", "--json",
                 "--no-progress"]  # fmt: skip
    if max_posts is not None:
        arguments += ["--max-posts", str(max_posts)]
    completed = _run_script(arguments)
    if completed.returncode != 0:
        raise _failure("mner-eval", completed)
    try:
        result = json.loads(completed.stdout)
        result["micro"]["f1"]
    except (ValueError, KeyError, TypeError) as error:
        raise RuntimeError(f"mner-eval --json printed no metrics (expected a JSON object with 'micro'): "
                           f"{completed.stdout.strip()[:200]!r}") from error  # fmt: skip
    return result


# --------------------------------------------------------------------------- report


def run(data: Path, engine: Path | None, *, cli: bool = False, checkpoint: Path | None = None,
        max_posts: int | None = None) -> dict:
    """The split measurements on every post; with ``engine``, test F1 (on the first ``max_posts`` test
    posts), ``cli`` adding ``mner-tag``'s and ``checkpoint`` ``mner-eval``'s (which needs ``cli``)."""
    if cli and engine is None:
        raise ValueError("cli=True tags with mner-tag --engine: it needs an engine (a bundle)")
    if checkpoint is not None and not cli:
        raise ValueError("checkpoint compares mner-eval with mner-tag's raw-tweet F1: it needs cli=True")
    if max_posts is not None and max_posts < 1:
        raise ValueError(f"max_posts must be >= 1 (or None for every test post), got {max_posts}")
    report: dict = {"splits": {}, "misses": {}, "examples": {}}
    misses: Counter = Counter()
    examples: dict[str, str] = {}
    test_posts: list[ConllPost] = []
    for name, file_name in SPLITS:
        path = data / file_name
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: --data must be a TWITTER-format folder with {[f for _, f in SPLITS]}")
        posts = read_conll(path)
        stats = SplitStats()
        measure_split(posts, stats, misses, examples)
        report["splits"][name] = stats.__dict__
        if name == "test":
            test_posts = posts
    report["misses"] = dict(misses.most_common())
    report["examples"] = examples
    if engine is not None:
        tagged = test_posts[:max_posts] if max_posts else test_posts
        started = time.perf_counter()
        report["f1"] = measure_f1(engine, tagged, cli=cli)
        report["f1_seconds"] = time.perf_counter() - started
        report["f1_posts"] = [len(tagged), len(test_posts)]
    if checkpoint is not None:
        started = time.perf_counter()
        report["eval"] = evaluate_with_cli(checkpoint, data, max_posts=max_posts)
        report["eval_seconds"] = time.perf_counter() - started
    return report


def _pct(numerator: int, denominator: int) -> str:
    return f"{100 * numerator / denominator:.2f} %" if denominator else "n/a"


def _eval_row(micro: dict) -> dict:
    """mner-eval's micro scores as a row of the F1 table; its predicted count follows from them exactly."""
    true = round(micro["recall"] * micro["support"])
    predicted = round(true / micro["precision"]) if micro["precision"] else "n/a"
    return {**micro, "gold": micro["support"], "predicted": predicted}


def _scope(report: dict, engine_args: dict[str, str]) -> str:
    """Which posts the F1 rows cover and how the command rows were produced (paths as given)."""
    tagged, total = report["f1_posts"]
    lines = [f"- Posts: {'all' if tagged == total else f'the first {tagged} of the'} {total} test posts, every row; "
             f"the rows above the reference took {report['f1_seconds']:.0f} s."]  # fmt: skip
    if "cli" in report["f1"]:
        tag = shlex.join(["mner-tag", "--engine", engine_args["engine"], "--input", TAG_INPUT, "--output", TAG_OUTPUT])
        lines.append(f'- `mner-tag` row: the rejoined tweets written as JSONL (`{{"id", "text"}}` per line), then `{tag}` '
                     "in a subprocess; its records' entities (type, start, end) scored as `tag`'s.")  # fmt: skip
    if "eval" in report:
        command = ["mner-eval", "--checkpoint", engine_args["checkpoint"], "--data", engine_args["data"], "--split", "test",
                   "--json"]  # fmt: skip
        if tagged != total:
            command += ["--max-posts", str(tagged)]
        lines.append(f"- Reference row: `{shlex.join(command)}` ({report['eval_seconds']:.0f} s). It scores word "
                     "sequences, and leaves out of gold a post's words past the model's max_length pieces (the rows "
                     "above count entities there as missed).")  # fmt: skip
    return "\n".join(lines)


def to_markdown(report: dict, command: str, notes: str = "", engine_args: dict[str, str] | None = None) -> str:
    """The report; ``engine_args``: the --engine, --checkpoint and --data values as given, to name them."""
    engine_args = engine_args or {"engine": "BUNDLE", "checkpoint": "BEST_PT", "data": "DATA"}
    splits = report["splits"]
    total = SplitStats(**{k: sum(s[k] for s in splits.values()) for k in SplitStats.__dataclass_fields__})
    lines = [
        "# Raw tweets: word split and F1",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} with `{command}` (Python {platform.python_version()}).",
        "Each post's words are rejoined into the tweet they came from (`mner.benchmarks.raw_text.rejoin`: "
        "`NYC.`, `#NewYorkMets`, `@user`, `It's`, `2nd`, `7:30`, `Spider-Man`, `❤️`), then split by the runtime's "
        "`tweet` splitter (`mner.runtime.splitters`).",
        "",
        "| split | posts | posts split exactly | entity words | entity words with exact span |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, s in [*splits.items(), ("all", total.__dict__)]:
        lines.append(
            f"| {name} | {s['posts']} | {s['posts_exact']} ({_pct(s['posts_exact'], s['posts'])}) | {s['entity_words']} "
            f"| {s['entity_words_exact']} ({_pct(s['entity_words_exact'], s['entity_words'])}) |"
        )
    post_share = total.posts_exact / total.posts
    word_share = total.entity_words_exact / total.entity_words if total.entity_words else 1.0
    lines += [
        "",
        "| target | required | measured | |",
        "|---|---:|---:|---|",
        f"| posts whose words come back exactly (all splits) | ≥ {100 * TARGET_POSTS:.1f} % | {100 * post_share:.2f} % "
        f"| {'met' if post_share >= TARGET_POSTS else 'missed'} |",
        f"| entity words recovered with exact spans (all splits) | ≥ {100 * TARGET_ENTITY_WORDS:.1f} % | {100 * word_share:.2f} % "
        f"| {'met' if word_share >= TARGET_ENTITY_WORDS else 'missed'} |",
    ]
    if "f1" in report:
        words, raw = report["f1"]["words"], report["f1"]["raw"]
        gap = words["f1"] - raw["f1"]
        lines.append(
            f"| test entity F1, raw tweet vs data set's words | within {100 * TARGET_F1_GAP:.1f} points "
            f"| {100 * raw['f1']:.2f} vs {100 * words['f1']:.2f} ({100 * gap:+.2f} points) "
            f"| {'met' if gap <= TARGET_F1_GAP else 'missed'} |"
        )
        if "eval" in report:
            tag, reference = report["f1"]["cli"]["f1"], report["eval"]["micro"]["f1"]
            difference = tag - reference
            lines.append(
                f"| test entity F1, `mner-tag` on raw tweets vs `mner-eval` on the checkpoint "
                f"| within {100 * TARGET_CLI_GAP:.1f} points | {100 * tag:.2f} vs {100 * reference:.2f} "
                f"({100 * difference:+.2f} points) | {'met' if abs(difference) <= TARGET_CLI_GAP + 1e-12 else 'missed'} |"
            )
        lines += [
            "",
            "Test entity scores (entities matched by type and character span in the tweet):",
            "",
            "| input | precision | recall | F1 | gold | predicted |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        rows = [("data set's words (`tag_words`)", words), ("raw tweet, tweet splitter (`tag`)", raw),
                ("raw tweet, whitespace splitter (`tag`, `splitter='whitespace'`)", report["f1"]["raw_whitespace"])]
        if "cli" in report["f1"]:
            rows.append(("raw tweet, `mner-tag` command", report["f1"]["cli"]))
        if "eval" in report:
            rows.append(("checkpoint in PyTorch, `mner-eval` (reference: the data set's words, conlleval)",
                         _eval_row(report["eval"]["micro"])))
        for name, s in rows:
            lines.append(f"| {name} | {100 * s['precision']:.2f} | {100 * s['recall']:.2f} | {100 * s['f1']:.2f} "
                         f"| {s['gold']} | {s['predicted']} |")  # fmt: skip
        lines += ["", _scope(report, engine_args)]
    lines += ["", "## Posts that still differ", ""]
    if report["misses"]:
        lines += ["| class (first difference in the post) | posts | example |", "|---|---:|---|"]
        for kind, count in report["misses"].items():
            lines.append(f"| {kind} | {count} | {report['examples'][kind]} |")
    else:
        lines.append("None.")
    if notes:
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mner.benchmarks.raw_text", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="TWITTER-format folder (train.txt, valid.txt, test.txt)")
    parser.add_argument("--engine", type=Path, help="a trained bundle: also measure entity F1 on test, raw vs words")
    parser.add_argument("--cli", action="store_true",
                        help="with --engine: also tag the raw tweets with the installed mner-tag command (a subprocess)")
    parser.add_argument("--checkpoint", type=Path,
                        help="with --cli: the best.pt the bundle was exported from; mner-eval on it is the reference")
    parser.add_argument("--max-posts", type=int, help="with --engine: tag only the first N test posts")
    parser.add_argument("--out", type=Path, help="write the Markdown report here")
    parser.add_argument("--json", type=Path, help="write the figures as JSON here")
    parser.add_argument("--notes", type=Path, help="a Markdown file appended to the report (how the bundle was made)")
    args = parser.parse_args(argv)
    if args.cli and args.engine is None:
        parser.error("--cli tags with mner-tag --engine BUNDLE: give --engine")
    if args.checkpoint is not None and not args.cli:
        parser.error("--checkpoint compares mner-eval with the mner-tag command's F1: give --cli (and --engine)")
    if args.max_posts is not None and (args.engine is None or args.max_posts < 1):
        parser.error(f"--max-posts limits the tagged test posts: it needs --engine and a value >= 1, got {args.max_posts}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        report = run(args.data, args.engine, cli=args.cli, checkpoint=args.checkpoint, max_posts=args.max_posts)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    command = shlex.join(["python", "-m", "mner.benchmarks.raw_text", *(argv if argv is not None else sys.argv[1:])])
    notes = args.notes.read_text(encoding="utf-8") if args.notes else ""
    given = {"engine": str(args.engine), "checkpoint": str(args.checkpoint), "data": str(args.data)}
    markdown = to_markdown(report, command, notes, engine_args=given)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(markdown, encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
