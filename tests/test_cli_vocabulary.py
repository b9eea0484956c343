"""The README's option table is what every command's --help says.

The table (README, "One vocabulary") has a row per shared option and a column per command;
a ✓ means the command's ``--help`` lists that option. This test reads both and compares
them both ways: a ✓ the help lacks, an option the help lists without a ✓, and an option
two commands share that the table does not list are all failures, each named.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

COMMANDS = {
    "mner-train": "mner.train.cli:train_command",
    "mner-eval": "mner.train.cli:eval_command",
    "mner-convert": "mner.train.cli:convert_command",
    "mner-export": "mner.export.cli:export_command",
    "mner-tag": "mner.runtime.cli:tag_command",
    "mner-serve": "mner.runtime.serve_cli:serve_command",
    "mner-bench": "mner.benchmarks.cli:bench_command",
    "mner-triton": "mner.runtime.triton_cli:triton_command",
}
# What every command has from the shared kit, so the table need not repeat it on each row.
EVERYWHERE = {"-h", "--help", "--version"}
_OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z0-9][A-Za-z0-9-]*)")


def load(command: str):
    module, name = COMMANDS[command].split(":")
    return getattr(importlib.import_module(module), name)


def help_options(command: str) -> set[str]:
    """The option names ``command --help`` prints: the left column of its Options section."""
    result = CliRunner().invoke(load(command), ["--help"], prog_name=command, terminal_width=200)
    assert result.exit_code == 0, result.output
    names: set[str] = set()
    in_options = False
    for line in result.output.splitlines():
        if line.strip() == "Options:":
            in_options = True
            continue
        if in_options and line.startswith("  -"):
            left = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
            names.update(_OPTION.findall(left))
    return names


def readme_table() -> tuple[list[str], dict[str, dict[str, bool]]]:
    """The table under the README's "One vocabulary" heading: its command columns and, per row, ✓ per command."""
    text = README.read_text(encoding="utf-8")
    start = text.index("### One vocabulary")
    lines: list[str] = []
    for line in text[start:].splitlines()[1:]:
        if line.startswith("|"):
            lines.append(line)
        elif lines:  # the first table under the heading ends at its first other line
            break
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    commands = [cell.strip("`") for cell in header[2:]]
    rows: dict[str, dict[str, bool]] = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) != len(header):
            raise AssertionError(f"README option table row has {len(cells)} cells, the header {len(header)}: {line}")
        for name in _OPTION.findall(cells[0]):
            rows[name] = {command: cell == "✓" for command, cell in zip(commands, cells[2:])}
    return commands, rows


def test_the_table_has_a_column_for_every_command():
    commands, rows = readme_table()
    assert commands == list(COMMANDS)
    assert rows, "the README option table has no rows"


def test_every_tick_is_an_option_of_that_command_and_every_shared_option_is_ticked():
    commands, rows = readme_table()
    helps = {command: help_options(command) for command in commands}
    problems = []
    for name, ticks in rows.items():
        for command, ticked in ticks.items():
            listed = name in helps[command]
            if ticked and not listed:
                problems.append(f"{name}: ticked for {command}, whose --help does not list it")
            if listed and not ticked:
                problems.append(f"{name}: {command} --help lists it, the table has no tick")
    counts: dict[str, list[str]] = {}
    for command, names in helps.items():
        for name in names - EVERYWHERE:
            counts.setdefault(name, []).append(command)
    for name, users in sorted(counts.items()):
        if len(users) > 1 and name not in rows:
            problems.append(f"{name}: shared by {', '.join(users)} but not in the README option table")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_answers_h_and_version(command):
    runner = CliRunner()
    short = runner.invoke(load(command), ["-h"], prog_name=command)
    assert short.exit_code == 0 and "Usage:" in short.output, short.output
    version = runner.invoke(load(command), ["--version"], prog_name=command)
    assert version.exit_code == 0, version.output
    assert re.search(r"\(mner\) \d+\.\d+", version.output), version.output
    assert EVERYWHERE <= help_options(command)
