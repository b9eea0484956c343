"""mner.runtime: the torch-free serving side of mner.

Imports numpy, OpenCV, tokenizers and onnxruntime only; TensorRT and torch are
imported lazily by the runners that need them.
"""

from mner.runtime.bundle import Bundle, BundleError
from mner.runtime.pipeline import Pipeline, Post, TagResult
from mner.runtime.viterbi import crf_marginals, native_available, viterbi_decode

__all__ = [
    "Bundle",
    "BundleError",
    "Pipeline",
    "Post",
    "TagResult",
    "viterbi_decode",
    "crf_marginals",
    "native_available",
]
