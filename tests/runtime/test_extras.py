"""runtime/extras.py: the one line a command of a missing extra prints, and its input checks."""

import click
import pytest
from click.testing import CliRunner

from mner.runtime import extras


def run_demo(*require_args, **require_kwargs):
    @click.command()
    def demo():
        extras.require_extra(*require_args, **require_kwargs)

    return CliRunner().invoke(demo, [], prog_name="mner-demo")


def test_a_missing_module_gives_one_line_naming_the_extra():
    result = run_demo("train", "torch", "no_such_module_mner_test")
    assert result.exit_code == 1
    assert result.output == "Error: mner-demo needs no_such_module_mner_test (not installed): pip install 'mner[train]'\n"


def test_many_missing_modules_are_counted_not_all_listed():
    missing = [f"no_such_module_mner_{i}" for i in range(5)]
    with pytest.raises(click.ClickException) as raised:
        extras.require_extra("bench", *missing, command="mner-bench")
    assert raised.value.message == (
        "mner-bench needs no_such_module_mner_0, no_such_module_mner_1, no_such_module_mner_2 and 2 more "
        "(not installed): pip install 'mner[bench]'"
    )


def test_nothing_is_raised_when_the_modules_are_there():
    extras.require_extra("train", "json", "click", command="mner-train")


def test_outside_a_click_command_the_message_says_this_command():
    with pytest.raises(click.ClickException, match=r"^this command needs no_such_module_mner_test "):
        extras.require_extra("train", "no_such_module_mner_test")


def test_the_default_modules_are_the_extra_s_own(monkeypatch):
    looked_up = []
    monkeypatch.setattr(extras, "missing_modules", lambda names: looked_up.extend(names) or [])
    extras.require_extra("bench")
    assert tuple(looked_up) == extras.EXTRA_MODULES["bench"] and "torchcrf" in looked_up


def test_missing_modules_imports_nothing_and_handles_broken_parents():
    import sys

    assert "no_such_module_mner_test" not in sys.modules
    assert extras.missing_modules(["json", "no_such_module_mner_test", "no_such_parent_mner.child"]) == [
        "no_such_module_mner_test", "no_such_parent_mner.child"]  # fmt: skip


def test_an_unknown_extra_is_refused():
    with pytest.raises(ValueError, match=r"extra must be one of \['bench', 'ray', 'train'\], got 'gpu'"):
        extras.require_extra("gpu")
    with pytest.raises(ValueError, match="extra must be one of"):
        extras.install_line("test")


def test_an_empty_module_name_is_refused():
    with pytest.raises(ValueError, match=r"module names must be non-empty strings, got \[''\]"):
        extras.require_extra("train", "")


def test_install_line_is_quoted_for_shells_that_glob_brackets():
    assert extras.install_line("train") == "pip install 'mner[train]'"
