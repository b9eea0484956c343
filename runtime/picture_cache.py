"""What the tagger needs of a picture, remembered by the picture's content hash (a bounded LRU).

A retweet carries the same picture file as the tweet it repeats. ``Pipeline`` keeps, per picture it
has seen, the grid (49, 2048) and the object ids (K,) the detector and vision stages gave it -- or
why the picture could not be used -- so a repeated picture skips decoding, the detector and the
vision stage. The entities are the same as without the cache: the features are the stages' own
output for those bytes, kept as they were computed.

The key is the SHA-256 of the picture's encoded bytes as received:

* it is known before decoding, which is the cost to skip (hashing a 600 kB JPEG takes ~1 ms here,
  decoding it ~50 ms, the stages far more);
* a cryptographic hash: two different pictures never share a key, so a post never gets another
  picture's features (a non-cryptographic or pixel-sampled key could be made to collide on purpose);
* the same picture re-encoded (other bytes) is a miss: equal pixels are not checked, which would
  need the decode the cache is there to skip. Retweets repeat the file itself.

A picture that could not be used (not an image, corrupt, over the pipeline's pixel limit) is
remembered too: its error is a function of its bytes and of the pipeline's fixed settings, so the
next copy gets the same error without being decoded again. A stage that raises is not a property of
the picture (memory, a runner): nothing is remembered for it.

The bound is in bytes: each entry counts its arrays' bytes, its error's, and ``ENTRY_OVERHEAD`` for
the Python objects around them (so a flood of small error entries is bounded too). Thread-safe:
mner-serve looks pictures up on its picture thread, stores them on its worker and reads the counters
from the event loop.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import NamedTuple

import numpy as np

DEFAULT_PICTURE_CACHE_BYTES = 64 << 20  # ~160 pictures of a 49 x 2048 float32 grid (392 KiB each)
ENTRY_OVERHEAD = 512  # bytes counted per entry besides its arrays and error: key, tuple, array headers, dict node


class PictureFeatures(NamedTuple):
    """One picture's part of the tagger's input, or why the picture cannot be used."""

    grid: np.ndarray | None  # (cells, grid_dim) float32, read-only; None with an error
    object_ids: np.ndarray | None  # (max_objects,) int64, read-only; None with an error
    error: str | None = None

    @property
    def nbytes(self) -> int:
        """What this entry counts against the cache's bound."""
        arrays = sum(a.nbytes for a in (self.grid, self.object_ids) if a is not None)
        return arrays + (len(self.error.encode("utf-8", "replace")) if self.error is not None else 0) + ENTRY_OVERHEAD


class CacheStats(NamedTuple):
    hits: int  # look-ups that found the picture
    misses: int  # look-ups that did not
    evictions: int  # entries dropped, least recently used first, to stay within the bound
    entries: int
    bytes: int  # held now, as counted (PictureFeatures.nbytes)
    capacity_bytes: int


def picture_key(data: bytes) -> bytes:
    """The cache key of a picture: the SHA-256 digest of its encoded bytes as received."""
    return hashlib.sha256(data).digest()


class PictureCache:
    """A least-recently-used map of ``picture_key`` -> ``PictureFeatures``, at most ``capacity_bytes``."""

    def __init__(self, capacity_bytes: int) -> None:
        if isinstance(capacity_bytes, bool) or not isinstance(capacity_bytes, int) or capacity_bytes < 1:
            raise ValueError(f"capacity_bytes must be a positive int, got {capacity_bytes!r}")
        self.capacity_bytes = capacity_bytes
        self._entries: OrderedDict[bytes, PictureFeatures] = OrderedDict()  # least recently used first
        self._bytes = self._hits = self._misses = self._evictions = 0
        self._lock = threading.Lock()

    def get(self, key: bytes) -> PictureFeatures | None:
        """The picture's features (now the most recently used), or None; counted as a hit or a miss."""
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return found

    def put(self, key: bytes, features: PictureFeatures) -> None:
        """Remember ``features`` (their arrays are copied and made read-only, so the cache holds exactly their
        bytes and nobody changes them) and drop the least recently used entries past the bound. An entry
        larger than the whole bound is not kept."""
        if (features.error is None) == (features.grid is None or features.object_ids is None):
            raise ValueError("PictureFeatures needs a grid and object ids, or an error and neither")
        features = PictureFeatures(*(_frozen_copy(a) for a in (features.grid, features.object_ids)), features.error)
        size = features.nbytes
        if size > self.capacity_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[key] = features
            self._bytes += size
            while self._bytes > self.capacity_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= dropped.nbytes
                self._evictions += 1

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, self._evictions, len(self._entries), self._bytes,
                              self.capacity_bytes)  # fmt: skip

    def __contains__(self, key: bytes) -> bool:  # no effect on order or counters
        return key in self._entries


def _frozen_copy(array: np.ndarray | None) -> np.ndarray | None:
    if array is None:
        return None
    copy = np.array(array, copy=True)  # a row of a batch array would otherwise keep the whole batch alive
    copy.flags.writeable = False
    return copy


def format_stats(stats: CacheStats) -> str:
    """One line for a log or a run's summary."""
    looked_up = stats.hits + stats.misses
    rate = f" ({stats.hits / looked_up:.0%} hits)" if looked_up else ""
    return (f"picture cache: {stats.hits} hits, {stats.misses} misses{rate}, {stats.evictions} evictions, "
            f"{stats.entries} pictures in {stats.bytes / 2**20:.1f} of {stats.capacity_bytes / 2**20:.0f} MiB")  # fmt: skip
