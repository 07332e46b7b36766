"""The key/value cache of incremental decoding: what MultiHeadAttention keeps of the positions it
has already seen, so that a decode step projects only the new tokens and reads the cache once."""

from __future__ import annotations

import weakref
from typing import Any, Optional, Tuple

import numpy as np


class KVCache:
    """Keys and values of every position fed so far to one ``MultiHeadAttention``, projected and
    split into heads, in preallocated buffers.

    Made by ``MultiHeadAttention.new_cache(batch_size, max_length)``; pass it as ``cache=`` to the
    layer. Attributes: ``key`` and ``value`` ``(batch_size, num_kv_heads, max_length, head_dim)`` in
    the layer's dtype (positions ``>= length`` are unused), ``padding`` ``(batch_size, max_length)``
    bool (True = a padding position, never attended to), ``length`` (positions filled).
    Each kv head's keys are contiguous rows, so a decode step streams them once.
    """

    def __init__(self, layer: Any, batch_size: int, max_length: int, num_kv_heads: int,
                 head_dim: int, dtype: np.dtype):
        shape = (batch_size, num_kv_heads, max_length, head_dim)
        self.key = np.zeros(shape, dtype)
        self.value = np.zeros(shape, dtype)
        self.padding = np.zeros((batch_size, max_length), bool)
        self.length = 0
        self._layer = weakref.ref(layer)

    @property
    def batch_size(self) -> int:
        return int(self.key.shape[0])

    @property
    def max_length(self) -> int:
        return int(self.key.shape[2])

    def reset(self) -> None:
        """Forget every position (the buffers are kept)."""
        self.length = 0
        self.padding[:] = False

    def belongs_to(self, layer: Any) -> bool:
        return self._layer() is layer

    def check_room(self, batch_size: int, new: int) -> None:
        if batch_size != self.batch_size:
            raise ValueError(
                f"the cache holds a batch of {self.batch_size}, the inputs have batch {batch_size}"
            )
        if self.length + new > self.max_length:
            raise ValueError(
                f"the cache is full: {self.length} positions cached + {new} new > max_length "
                f"{self.max_length}; make it with a larger max_length"
            )

    def append(self, key: np.ndarray, value: np.ndarray, padding: Optional[np.ndarray]
               ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Store ``key``/``value`` ``(B, Hkv, T, D)`` (and their padding ``(B, T)``, None = none)
        after the cached positions; return views of everything cached: keys, values, padding."""
        start, end = self.length, self.length + key.shape[2]
        self.key[:, :, start:end] = key
        self.value[:, :, start:end] = value
        self.padding[:, start:end] = False if padding is None else padding
        self.length = end
        return self.key[:, :, :end], self.value[:, :, :end], self.padding[:, :end]

    def __repr__(self) -> str:
        b, h, n, d = self.key.shape
        return (f"KVCache(batch_size={b}, num_kv_heads={h}, head_dim={d}, length={self.length}, "
                f"max_length={n}, dtype={self.key.dtype})")
