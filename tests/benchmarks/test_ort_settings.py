"""python -m mner.benchmarks.ort_settings: every variant measured on a real tagger graph (the session's tiny
bundle, conftest's ``exported_once``), emissions compared with the defaults', the report and its verdict."""

from __future__ import annotations

import json

import pytest

from mner.benchmarks import ort_settings
from mner.benchmarks.ort_settings import MIN_ROUNDS, Variant, is_faster, measure, variants, verdict
from mner.runtime.runners import DEFAULT_ORT_SETTINGS

POSTS = [["Kawhi", "Leonard", "in", "Toronto"], ["RT", "@user", ":", "Paris", "is", "lovely", "today", "!"], ["ok"],
         ["New", "York", "Knicks", "fans", "at", "the", "Garden"], ["hi", "there"], ["#Raptors", "win"],
         ["a", "long", "post", "about", "the", "game", "last", "night", "in", "Toronto", "with", "friends"],
         ["yes"], ["Leonard"], ["at", "the", "game"]]  # fmt: skip


@pytest.fixture(scope="module")
def conll(tmp_path_factory):
    path = tmp_path_factory.mktemp("ort-settings") / "test.txt"
    path.write_text("".join(f"IMGID:{i}\n" + "".join(f"{w}\tO\n" for w in words) + "\n" for i, words in enumerate(POSTS)))
    return path


def test_the_variants_change_one_thing_each_from_the_defaults():
    found = variants(cores=8)
    names = [v.name for v in found]
    assert names[0] == "defaults" and len(set(names)) == len(names)
    assert [v.settings.intra_op_threads for v in found if v.name.startswith("intra ")] == [1, 2, 8]
    assert [v.name for v in variants(cores=2) if v.name.startswith("intra ")] == ["intra 1", "intra 2"]
    base = vars(DEFAULT_ORT_SETTINGS)
    for variant in found[1:]:
        changed = {key for key, value in vars(variant.settings).items() if value != base[key]}
        assert changed, variant.name
        assert len(changed) == 1 or variant.name == "parallel, inter 2" or variant.split is not None, variant.name
    assert {v.split for v in found} == {None, "halves", "batches"}
    with pytest.raises(ValueError, match=r"split must be None or one of \('halves', 'batches'\), got 'thirds'"):
        Variant("x", "y", DEFAULT_ORT_SETTINGS, "thirds")


def test_every_variant_tags_the_posts_as_the_defaults_do(exported_once, conll):
    report = measure(exported_once.bundle, conll, batch_size=4, rounds=1, warmup=1, echo=lambda line: None)
    rows = {row["name"]: row for row in report["variants"]}
    assert list(rows) == [v.name for v in variants(report["machine"]["usable_cores"])]
    assert report["workload"]["posts"] == len(POSTS) and report["workload"]["batches"] == 3
    assert 0 < report["workload"]["real_pieces"] <= report["workload"]["padded_pieces"]
    for name, row in rows.items():
        assert row["posts_s"]["median"] > 0 and row["batch_ms_p50"] > 0, name
        assert row["max_abs_diff"] < 1e-3, name  # the two-session variants put the halves back in order
        assert row["faster"] is False, name  # one round decides nothing
    assert rows["defaults"]["max_abs_diff"] == 0.0 and rows["defaults"]["vs_defaults"] == 1.0
    assert report["verdict"]["apply"] is None and "fewer than the 3" in report["verdict"]["why"]
    text = ort_settings.markdown(report, "python -m mner.benchmarks.ort_settings ...")
    assert "| defaults | runners.DEFAULT_ORT_SETTINGS, what the runtime runs |" in text
    assert "| 2 x 1 thread, halves |" in text and "## Verdict" in text


def test_the_command_writes_the_report_and_its_json(exported_once, conll, tmp_path, capsys):
    out = tmp_path / "ort-settings-tiny.md"
    code = ort_settings.main(["--engine", str(exported_once.bundle), "--data", str(conll), "--batch-size", "8",
                              "--rounds", "1", "--warmup", "0", "--only", "no spinning", "--out", str(out)])  # fmt: skip
    assert code == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert [row["name"] for row in report["variants"]] == ["defaults", "no spinning"]
    assert out.read_text().startswith("# ONNX Runtime session settings, measured on the tagger")
    assert "--only 'no spinning'" in out.read_text()
    assert ort_settings.main(["--engine", str(exported_once.bundle), "--data", str(conll), "--only", "fastest"]) == 2
    assert "unknown variants ['fastest']" in capsys.readouterr().err


@pytest.mark.parametrize("option", [{"batch_size": 0}, {"rounds": 0}, {"warmup": -1}, {"sort_window": 0}])
def test_measure_refuses_what_cannot_be_measured(tmp_path, option):
    with pytest.raises(ValueError, match="must be >= 1 and warm-up >= 0"):
        measure(tmp_path, tmp_path, **option)


def test_faster_means_every_round_beats_the_defaults_best_by_a_clear_median():
    defaults = [10.0, 10.5, 11.0]
    assert is_faster([9.0, 9.2, 9.4], defaults)
    assert not is_faster([8.0, 8.0, 11.0], defaults)  # its slowest round is no faster than the defaults' best
    assert not is_faster([9.8, 9.8, 9.8], [10.0, 10.1, 10.2])  # every round faster, but by under 5 % in the median
    assert not is_faster([5.0, 5.0], defaults[:2])  # too few rounds
    rows = [{"name": "defaults", "faster": False, "split": None, "vs_defaults": 1.0, "settings": vars(DEFAULT_ORT_SETTINGS)},
            {"name": "no spinning", "faster": True, "split": None, "vs_defaults": 1.2,
             "settings": {**vars(DEFAULT_ORT_SETTINGS), "allow_spinning": False}},
            {"name": "2 x 1 thread, batches", "faster": True, "split": "batches", "vs_defaults": 1.6,
             "settings": {**vars(DEFAULT_ORT_SETTINGS), "intra_op_threads": 1}}]  # fmt: skip
    decided = verdict(rows, MIN_ROUNDS)
    assert decided["apply"] == {"allow_spinning": False} and decided["variant"] == "no spinning"
    assert verdict(rows[:1], MIN_ROUNDS)["apply"] is None
    assert verdict(rows, MIN_ROUNDS - 1)["apply"] is None
