"""Fixtures shared across test folders."""

import sys
from pathlib import Path

import pytest

RUNTIME_TESTS = Path(__file__).resolve().parent / "runtime"


@pytest.fixture(scope="session")
def exported_once(tmp_path_factory):
    """The tiny exported bundle (tests/runtime/test_exported_bundle.export_tiny_bundle), exported once for every
    module that uses it -- the runtime tests and tests/test_slim_install.py: the export is the slowest step of
    those modules (~20 s on two cores)."""
    pytest.importorskip("torch", reason="the tiny bundle is exported with torch")
    # pytest puts tests/runtime on sys.path when it collects a module there; a run of another folder alone
    # has not, and test_exported_bundle imports its neighbours (runtime_samples) by plain name.
    if str(RUNTIME_TESTS) not in sys.path:
        sys.path.insert(0, str(RUNTIME_TESTS))
    from test_exported_bundle import export_tiny_bundle  # noqa: PLC0415 -- a test module, imported once collected

    return export_tiny_bundle(tmp_path_factory.mktemp("exported"))
