"""Native CRF decoding (C++, pybind11); private: call it through mner.runtime.viterbi.

These functions expect what mner.runtime.viterbi's wrappers hand them: C-contiguous
float32 scores, int64 lengths each in [1, L], finite values, and for ``allowed`` at
least one allowed tag at every real position. They check shapes and length ranges
only (raising ValueError), so that a direct caller cannot read out of bounds. Both
release the GIL while computing.
"""

import numpy as np
import numpy.typing as npt

def viterbi_decode(
    emissions: npt.NDArray[np.float32],  # (B, L, T)
    lengths: npt.NDArray[np.int64],  # (B,)
    start: npt.NDArray[np.float32],  # (T,)
    end: npt.NDArray[np.float32],  # (T,)
    transitions: npt.NDArray[np.float32],  # (T, T), [from, to]
    allowed: npt.NDArray[np.bool_] | None = None,  # (B, L, T)
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]:
    """Best path per sequence: tags (B, L) int32 padded with -1, scores (B,) float32.

    Bit-for-bit equal to the numpy fallback in mner.runtime.viterbi.
    """

def crf_marginals(
    emissions: npt.NDArray[np.float32],  # (B, L, T)
    lengths: npt.NDArray[np.int64],  # (B,)
    start: npt.NDArray[np.float32],  # (T,)
    end: npt.NDArray[np.float32],  # (T,)
    transitions: npt.NDArray[np.float32],  # (T, T), [from, to]
) -> npt.NDArray[np.float32]:
    """Forward-backward tag posteriors (B, L, T) float32, computed in float64; 0 at padding."""
