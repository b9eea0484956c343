"""The optional extras of the ``mner`` distribution, and one clear line when a command needs a missing one.

``pip install mner`` is the torch-free runtime (the Python API, ``mner-tag``, ``mner-serve``). Training,
evaluation, conversion and export need ``mner[train]``; ``mner-bench`` needs ``mner[bench]``; ``mner-tag --ray``
needs ``mner[ray]``. A command
of an extra that is not installed calls :func:`require_extra` first thing, so the user reads::

    Error: mner-train needs torch, torchvision, transformers and 6 more (not installed): pip install 'mner[train]'

instead of a ``ModuleNotFoundError`` traceback. The check only looks the modules up
(:func:`importlib.util.find_spec`), it imports nothing, so it costs microseconds and keeps ``--help`` fast.

This module imports only the standard library and click: it runs in the slim install.
"""

from __future__ import annotations

import importlib.util

import click

# The modules each extra brings, by import name (pytorch-crf installs ``torchcrf``). Kept in step with
# pyproject.toml's [project.optional-dependencies] by tests/test_packaging.py.
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "train": ("torch", "torchvision", "transformers", "onnx", "onnxscript", "gensim", "seqeval", "matplotlib",
              "pyarrow"),
    "bench": (
        "torch", "torchvision", "transformers", "onnx", "onnxscript", "gensim", "seqeval", "matplotlib", "pyarrow",
        "torchcrf",
    ),
    "ray": ("ray", "pyarrow"),
}


def install_line(extra: str) -> str:
    """The pip command that installs ``extra`` (quoted: an unquoted ``[...]`` is a glob in zsh)."""
    _check_extra(extra)
    return f"pip install 'mner[{extra}]'"


def missing_modules(modules: tuple[str, ...] | list[str]) -> list[str]:
    """The names in ``modules`` that cannot be imported here, in the given order (nothing is imported)."""
    missing = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a parent package that fails, or a module with __spec__ None
            found = False
        if not found:
            missing.append(name)
    return missing


def require_extra(extra: str, *modules: str, command: str | None = None) -> None:
    """Raise :class:`click.ClickException` naming ``extra``'s install line when a module it brings is missing.

    ``modules`` are the import names this command needs (default: all of ``EXTRA_MODULES[extra]``);
    ``command`` names the command in the message (default: the running click command's name).
    """
    _check_extra(extra)
    wanted = modules or EXTRA_MODULES[extra]
    unknown = [name for name in wanted if not isinstance(name, str) or not name]
    if unknown:
        raise ValueError(f"module names must be non-empty strings, got {unknown!r}")
    missing = missing_modules(wanted)
    if not missing:
        return
    if command is None:
        context = click.get_current_context(silent=True)
        command = context.info_name if context is not None and context.info_name else "this command"
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    raise click.ClickException(f"{command} needs {shown} (not installed): {install_line(extra)}")


def _check_extra(extra: str) -> None:
    if extra not in EXTRA_MODULES:
        raise ValueError(f"extra must be one of {sorted(EXTRA_MODULES)}, got {extra!r}")
