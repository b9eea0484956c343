"""What every mner command shares on its command line: -h, --version, shown defaults, hidden old spellings.

Torch-free and cheap to import: each command's ``--help`` must answer in well under a second,
so the console modules import this and click only, and the heavy libraries inside the command.

The vocabulary (the README's option table lists it, and ``tests/test_cli_vocabulary.py``
checks the table against every command's ``--help``):

- ``--checkpoint`` a best.pt (old spelling ``--ckpt``); ``--engine`` a bundle directory;
- ``--output``/``-o`` what the command writes (old spelling ``--out``);
- ``--data`` TWITTER-format CoNLL data: a folder with train.txt, valid.txt, test.txt, or one file;
- ``--batch-size`` posts per batch; ``--max-posts`` use only the first N posts of the data;
- ``--progress/--no-progress`` a bar on a terminal, periodic log lines otherwise, or nothing.
"""

from __future__ import annotations

from typing import Any

import click

# The files of a --data folder, for --split (runtime.conll.SPLIT_FILES maps them to file names; spelled out here
# because conll imports numpy and the tokenizer, which --help must not wait for).
SPLITS = ("train", "valid", "test")

# -h as well as --help, and every default in the help text unless an option says otherwise.
CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "show_default": True}


class Option(click.Option):
    """A click option whose ``hidden_aliases`` are accepted but not shown in ``--help``.

    An old spelling (``--ckpt``) keeps working for the scripts that use it, while the help
    and the README show one name per concept.
    """

    def __init__(self, param_decls, hidden_aliases: tuple[str, ...] = (), **kwargs):
        self.hidden_aliases = tuple(hidden_aliases)
        super().__init__(list(param_decls) + list(self.hidden_aliases), **kwargs)

    def get_help_record(self, ctx: click.Context):
        shown = [name for name in self.opts if name not in self.hidden_aliases]
        hidden_opts, self.opts = self.opts, shown
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = hidden_opts


def option(*param_decls: str, **kwargs):
    """``click.option`` with :class:`Option`: pass ``hidden_aliases=("--old",)`` for an old spelling."""
    kwargs.setdefault("cls", Option)
    return click.option(*param_decls, **kwargs)


def command(**kwargs):
    """``click.command`` with -h, shown defaults and ``--version`` (the installed mner's version)."""
    settings = dict(CONTEXT_SETTINGS)
    settings.update(kwargs.pop("context_settings", {}))

    def decorate(function):
        function = click.version_option(package_name="mner", message="%(prog)s (mner) %(version)s")(function)
        return click.command(context_settings=settings, **kwargs)(function)

    return decorate


def progress_option():
    """``--progress/--no-progress`` with one meaning on every long command (see runtime.progress)."""
    return click.option(
        "--progress/--no-progress", default=None, show_default=False,
        help="Progress as a bar on a terminal, as a log line every few seconds otherwise "
             "[default: on]; --no-progress: none.",
    )  # fmt: skip


def verbose_option():
    """``-v/--verbose``: the same switch, with the same words, wherever a command has it."""
    return click.option("-v", "--verbose", is_flag=True, help="Debug-level logs (the libraries' too).")


def preset_default(name: str, values: dict[str, Any]) -> str:
    """Help text for an option whose default comes from ``--preset``: 'from --preset (paper: 30, tiny: 5)'."""
    shown = ", ".join(f"{preset}: {value}" for preset, value in sorted(values.items()))
    return f"[default: from --preset ({shown})]"
