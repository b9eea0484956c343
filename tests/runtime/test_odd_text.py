"""Odd text on a real exported bundle (test_exported_bundle's tiny one): Pipeline.tag, mner-tag and a real
mner-serve process on 127.0.0.1. Every class of test_textcheck.TAGGED is tagged with exact offsets; a
lone surrogate is that post's error (mner-tag: one error record; mner-serve: that request's 422, or in a
batch call that post's error among the others' results) and the posts and requests beside it are tagged
as they would be alone."""

from __future__ import annotations

import asyncio
import json
import unicodedata

import numpy as np
import pytest
from click.testing import CliRunner
from test_exported_bundle import exported  # noqa: F401 -- `exported` is a fixture
from test_tagfile_odd_text import LINES
from test_textcheck import TAGGED

from mner.benchmarks.loadtest import Connection, free_port, post_body, scrape, start_server, stop_server
from mner.runtime.cli import tag_command
from mner.runtime.pipeline import Pipeline
from mner.runtime.tagfile import result_record

GOOD = ["Kawhi Leonard scores 30 in Toronto", "Obama meets Merkel in Berlin", "Nice day in Paris",
        "RT @user : Taylor Swift at Madison Square Garden tonight"]  # fmt: skip
CUT = "bad \ud800 text"  # a lone surrogate at character 4


@pytest.fixture(scope="module")
def pipeline(exported):  # noqa: F811
    with Pipeline.from_bundle(exported.bundle, batch_size=8) as pipeline:
        yield pipeline


def assert_same_result(got, alone) -> None:
    """Tags and entities equal; scores to 1e-4 (batch neighbours change ORT's float sums in the last bits)."""
    assert got.ok and alone.ok and got.tags == alone.tags
    assert [(e.type, e.text, e.start, e.end) for e in got.entities] == [(e.type, e.text, e.start, e.end) for e in alone.entities]
    np.testing.assert_allclose(got.scores, alone.scores, atol=1e-4)


@pytest.mark.parametrize("what, text", TAGGED, ids=[t[0] for t in TAGGED])
def test_every_odd_class_is_tagged_by_a_real_bundle_with_exact_offsets(pipeline, what, text):
    (result,) = pipeline.tag([text])
    assert result.ok, result.error
    assert "".join(w.text for w in result.words) == "".join(text.split())
    assert all(text[w.start : w.end] == w.text for w in result.words)
    assert len(result.tags) == len(result.scores) == len(result.words)
    assert all(text[e.start : e.end] == e.text for e in result.entities)
    # A word BERT's normaliser empties (controls, format characters, private use) is [UNK]; so is one holding
    # a code point it keeps but no vocabulary has (non-characters, unassigned: category Cn).
    encoder = pipeline.encoder
    for word in result.words:
        pieces = encoder.encode([word.text]).input_ids[1:-1].tolist()
        if not encoder.tokenizer.normalizer.normalize_str(word.text).strip():
            assert pieces == [encoder.unk_id], ascii(word.text)
        if any(unicodedata.category(c) == "Cn" for c in word.text):
            assert encoder.unk_id in pieces, ascii(word.text)


def test_a_surrogate_post_among_good_ones_is_its_own_error(pipeline):
    odd = [text for _, text in TAGGED]
    texts = [GOOD[0], CUT, *GOOD[1:], "pair \ud83d\ude00 as two code points", *odd]
    results = pipeline.tag(texts)
    assert results[1].error.startswith("text has a lone surrogate U+D800 at character 4; ")
    assert results[5].error.startswith("text has a UTF-16 surrogate pair U+D83D U+DE00 at character 5")
    for i, (text, result) in enumerate(zip(texts, results)):
        if i not in (1, 5):
            assert_same_result(result, pipeline.tag([text])[0])
    assert sum(len(r.entities) for r in results if r.ok) > 0


def test_mner_tag_writes_one_error_record_for_the_surrogate_line_and_reruns_cleanly(exported, tmp_path):  # noqa: F811
    source = tmp_path / "posts.jsonl"
    source.write_bytes("".join(line + "\n" for line in LINES).encode("ascii"))
    output = tmp_path / "tagged.jsonl"
    arguments = ["--engine", str(exported.bundle), "--input", str(source), "--output", str(output),
                 "--batch-size", "3", "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(tag_command, arguments)
    assert result.exit_code == 3, result.output  # finished, with error records
    records = [json.loads(line) for line in output.read_bytes().splitlines()]
    assert [r["line"] for r in records] == list(range(1, len(LINES) + 1))
    errors = {r["id"]: r["error"] for r in records if "error" in r}
    assert set(errors) == {"cut", "pic"} and "lone surrogate U+D83D at character 15" in errors["cut"]
    assert records[3]["id"] == "\udc00" and "entities" in records[3]
    assert f"{len(LINES)} lines" in result.output and "5 tagged" in result.output and "2 errors" in result.output

    before = output.read_bytes()
    again = CliRunner().invoke(tag_command, arguments)
    assert again.exit_code == 3, again.output
    assert f"{len(LINES)} already done" in again.output and output.read_bytes() == before


async def send_together(port: int, requests: list[tuple[str, bytes]]):
    """Each request on its own connection, all at once."""
    return await asyncio.gather(*(Connection(port).request("POST", path, body) for path, body in requests))


def test_mner_serve_refuses_the_surrogate_request_and_answers_the_requests_beside_it(exported, pipeline):  # noqa: F811
    port = free_port()
    # A long wait: requests sent together are tagged in one batch. No drain when it is stopped (5 idle seconds).
    process = start_server(exported.bundle, port, "--max-batch", "16", "--max-wait-ms", "1500", "--drain-s", "0")
    try:
        before = scrape(port)
        batch_body = json.dumps({"posts": [{"text": GOOD[0]}, {"text": CUT}]}).encode()
        requests = [("/v1/tag", post_body(GOOD[0])), ("/v1/tag", post_body(CUT)), *(("/v1/tag", post_body(t)) for t in GOOD[1:]),
                    ("/v1/tag/batch", batch_body)]  # fmt: skip
        assert b"\\ud800" in requests[1][1]  # as a client sends it: a JSON escape
        replies = asyncio.run(send_together(port, requests))
        after = scrape(port)

        bad, batch = replies[1], replies[-1]
        assert bad.status == 422, bad.body
        assert bad.json()["error"]["kind"] == "bad text"
        assert bad.json()["error"]["message"].startswith("body.text has a lone surrogate U+D800 at character 4; ")
        assert batch.status == 200, batch.body  # the surrogate post is its own error; the other is tagged
        batch_good, batch_bad = batch.json()["results"]
        assert batch_bad["error"]["kind"] == "bad text"
        assert batch_bad["error"]["message"].startswith("posts[1].text has a lone surrogate U+D800 at character 4")
        good = [reply.json() for reply in [replies[0], *replies[2:-1]]] + [batch_good]
        assert [reply.status for reply in [replies[0], *replies[2:-1]]] == [200] * len(GOOD)
        for got, text in zip(good, [*GOOD, GOOD[0]]):
            expected = result_record(pipeline.tag([text])[0], with_tags=False)
            assert [{k: v for k, v in e.items() if k != "score"} for e in got["entities"]] == \
                   [{k: v for k, v in e.items() if k != "score"} for e in expected["entities"]]  # fmt: skip
            assert got["objects"] == expected["objects"] == []
        assert any(got["entities"] for got in good)
        # The good posts (the batch call's included) shared one batch; the refused ones never reached the batcher.
        assert after["mner_batch_size_count"] - before["mner_batch_size_count"] == 1
        assert after["mner_batch_size_sum"] - before["mner_batch_size_sum"] == len(GOOD) + 1
        assert after['mner_errors_total{kind="bad text"}'] == 2

        # Every class that tags goes through the server too, its JSON offsets exact.
        odd = asyncio.run(send_together(port, [("/v1/tag", post_body(text)) for _, text in TAGGED]))
        assert [reply.status for reply in odd] == [200] * len(TAGGED)
        for reply, (_, text) in zip(odd, TAGGED):
            assert all(text[e["start"] : e["end"]] == e["text"] for e in reply.json()["entities"])
    finally:
        stop_server(process)
