"""mner.runtime: the torch-free serving side of mner.

Imports numpy, OpenCV, tokenizers and onnxruntime only; TensorRT and torch are
imported lazily by the runners that need them.

The names below are imported on first use (PEP 562), not with the package: every
``mner.runtime.<module>`` import, the command-line kit's included, would otherwise pay
for numpy, OpenCV and the tokenizer, and ``mner-tag --help`` would take over a second.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mner.runtime.bundle import Bundle, BundleError
    from mner.runtime.pipeline import Pipeline, Post, TagResult
    from mner.runtime.viterbi import crf_marginals, native_available, viterbi_decode

_EXPORTS = {
    "Bundle": "mner.runtime.bundle",
    "BundleError": "mner.runtime.bundle",
    "Pipeline": "mner.runtime.pipeline",
    "Post": "mner.runtime.pipeline",
    "TagResult": "mner.runtime.pipeline",
    "viterbi_decode": "mner.runtime.viterbi",
    "crf_marginals": "mner.runtime.viterbi",
    "native_available": "mner.runtime.viterbi",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
