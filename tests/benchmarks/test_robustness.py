"""The robustness report: a handful of its classes end to end on a tiny bundle the script builds itself (a real
mner-serve on 127.0.0.1 and a real mner-tag run), and its pieces alone."""

import json
import re
from collections import Counter

import pytest
from click.testing import CliRunner

from mner.benchmarks import robustness
from mner.benchmarks.robustness import Case, Observed, Row, _parse_reply, build_cases, main, render, status_kind
from mner.runtime.serve_batcher import ServeConfig

# A few classes of each group where the tagger-only bundle answers as a full one would (the timeout classes take
# seconds each: tests/runtime/test_serve_hostile.py has them).
SOME = ("integer of 5,000 digits", "nesting 100,000 levels", "ReDoS: part header repeating", "lone surrogate",
        "garbage request line", "404", "too many posts")  # fmt: skip


@pytest.fixture(scope="module")
def bundle(tagger_bundle):
    """The tiny tagger-only bundle the script builds when given no --engine (build_bundle), built once per session
    in tests/conftest.py."""
    return tagger_bundle.bundle


@pytest.mark.slow  # ~15 s to run (a server, three mner-tag processes), besides the session's tagger bundle
def test_the_report_of_a_few_classes_has_its_sections_and_no_500(bundle, tmp_path):
    out = tmp_path / "robustness.md"
    args = ["--engine", str(bundle), "--out", str(out), "--quick", "--no-fairness"]
    result = CliRunner().invoke(main, [*args, *(item for name in SOME for item in ("--only", name))], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = out.read_text()
    for section in ("## Headline", "## mner-serve: every class", "## A short request behind the largest legal request",
                    "## mner-tag"):  # fmt: skip
        assert section in report
    assert "## Classes not answered as expected" not in report, report
    rows = [line for line in report.splitlines() if re.match(r"\| (JSON|multipart|pictures|text|HTTP|batch) \|", line)]
    assert len(rows) == len(SOME) and all("| yes |" in row for row in rows), rows
    assert re.search(r"\| 500s .* \| 0 / 0 \| yes \|", report)
    assert re.search(r"\| slowest /healthz .* \| yes \|", report)
    # mner-tag: every line answered, nothing planted outside --images opened, the disk errors one line each
    assert re.search(r"\| mner-tag runs aborted by a line = 0 \| 0 \(exit 3, traceback: no; (\d+) records for \1 lines\) \| yes \|", report)
    assert "| files read outside --images = 0 | 0 planted files outside --images opened | yes |" in report
    assert report.count("- disk error,") == 2 and "traceback: **yes**" not in report
    assert "Not measured in this run." in report  # the p99 part was skipped, and says so


def test_there_are_at_least_40_classes_in_every_group():
    cases = build_cases(ServeConfig())
    names = [case.name for case in cases]
    assert len(cases) >= 40 and len(set(names)) == len(names)
    groups = Counter(case.group for case in cases)
    assert set(groups) == {"JSON", "multipart", "pictures", "text", "HTTP", "batch"}
    assert min(groups.values()) >= 4, groups


def test_replies_are_read_by_status_and_error_kind():
    body = json.dumps({"error": {"kind": "body timeout", "message": "m"}}).encode()
    reply = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
    assert _parse_reply(reply) == Observed(408, "body timeout", "connection: close")
    batch = json.dumps({"results": [{"entities": []}, {"error": {"kind": "bad text"}}]}).encode()
    assert _parse_reply(b"HTTP/1.1 200 OK\r\n\r\n" + batch).kind == "1 ok + errors ['bad text']"
    assert _parse_reply(b"HTTP/1.1 500 Internal Server Error\r\n\r\nInternal Server Error").kind == "not JSON"
    assert _parse_reply(b"").status is None
    assert _parse_reply(b"SSH-2.0\r\n\r\n").kind.startswith("not HTTP")


def test_expectations_check_status_and_kind():
    text, accept = status_kind(400, "integer too long")
    assert text == "400 integer too long"
    assert accept(Observed(400, "integer too long")) and not accept(Observed(400, "malformed JSON"))
    assert not accept(Observed(500, "integer too long"))
    assert status_kind(200)[1](Observed(200, "-"))


def test_a_class_not_answered_as_expected_and_a_500_are_reported_as_missed():
    case = Case("JSON", "a class", *status_kind(400, "integer too long"), send=lambda port: Observed(500, "internal"))
    rows = [Row(case, Observed(500, "internal"), healthz_ms=150.0, probes=10, probe_failures=0, seconds=0.1)]
    report = render(rows, [], None, {"ms": 5.0, "probes": 100}, errors_500=1, metrics_500=1, bundle_text="b", quick=True, seconds=1, server_options="")
    assert "| 150.0 ms (a class) | **no** |" in report
    assert "| 1 / 1 | **no** |" in report
    assert "- JSON / a class: expected 400 integer too long, observed 500 internal" in report


def test_the_module_runs_as_documented():
    assert "python -m mner.benchmarks.robustness --engine BUNDLE" in robustness.__doc__
