"""Fixtures shared across test folders."""

import os
import sys
from pathlib import Path

import pytest

RUNTIME_TESTS = Path(__file__).resolve().parent / "runtime"


@pytest.fixture(scope="session", autouse=True)
def own_verification_cache(tmp_path_factory):
    """The bundle verification cache (runtime/bundle.py, ``$MNER_CACHE_DIR``) in a folder of this session's, so
    the suite's many temporary bundles are not remembered in the user's ~/.cache/mner. Tests that test the
    cache itself set their own."""
    before = os.environ.get("MNER_CACHE_DIR")
    os.environ["MNER_CACHE_DIR"] = str(tmp_path_factory.mktemp("verification-cache"))
    yield
    if before is None:
        os.environ.pop("MNER_CACHE_DIR", None)
    else:
        os.environ["MNER_CACHE_DIR"] = before


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
