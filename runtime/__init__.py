"""mner.runtime: the torch-free serving side of mner.

Imports numpy, OpenCV, tokenizers and onnxruntime only; TensorRT and torch are
imported lazily by the runners that need them.
"""

from mner.runtime.viterbi import crf_marginals, native_available, viterbi_decode

__all__ = ["viterbi_decode", "crf_marginals", "native_available"]
