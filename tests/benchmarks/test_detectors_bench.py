"""python -m mner.benchmarks.detectors: the report's table and its argument checks (a tiny, eager-only run)."""

import pytest

from mner.benchmarks import detectors


def test_report_has_published_and_measured_figures(tmp_path):
    out = tmp_path / "detectors.md"
    detectors.main(["--detectors", "ssdlite", "--size", "ssdlite=64", "--no-ort", "--quick", "--threads", "1",
                    "--out", str(out)])  # fmt: skip
    report = out.read_text()
    (row,) = [line for line in report.splitlines() if line.startswith("| ssdlite320")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[:4] == ["ssdlite320_mobilenet_v3_large (`ssdlite`)", "64", "21.3", "0.58"]  # torchvision's table
    assert float(cells[4]) > 0 and cells[5] == "3.4" and cells[7] == "not run"
    assert "Command: `python -m mner.benchmarks.detectors --detectors ssdlite" in report


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--detectors", "yolo"], "unknown detector 'yolo'"),
        (["--size", "ssdlite=100"], "input size must be a positive multiple of 32"),
        (["--size", "ssdlite"], "--size takes DETECTOR=VALUE"),
        (["--threads", "0"], "--threads must be >= 1"),
    ],
)
def test_arguments_are_checked(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        detectors.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
