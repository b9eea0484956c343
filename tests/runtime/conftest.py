"""Fixtures shared by the runtime tests."""

import pytest


@pytest.fixture(scope="session")
def exported_once(tmp_path_factory):
    """The tiny exported bundle (test_exported_bundle.export_tiny_bundle), exported once for every
    module that uses it: the export is the slowest step of those modules (~20 s on two cores)."""
    from test_exported_bundle import export_tiny_bundle  # noqa: PLC0415 -- a test module, imported once collected

    return export_tiny_bundle(tmp_path_factory.mktemp("exported"))
