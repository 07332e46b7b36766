"""Per-thread reusable arrays for a call's temporaries: the general attention module's scaled,
normalised or projected queries and keys, which the kernel reads and nobody keeps.

A fresh NumPy array of a megabyte or more is, on most calls, memory new from the system (glibc
hands large freed blocks back), and the first touch of each of its 4 KB pages is a page fault:
about 550 faults, 1 ms of a 5 ms general-score attention call (8 x 512 x 64) on this machine.
Each thread keeps its own buffers (no locks; concurrent calls on other threads get theirs), and
only up to MAX_BYTES each, so one huge call does not pin its memory for the thread's lifetime."""

from __future__ import annotations

import math
import threading
from typing import Dict, Tuple

import numpy as np

MAX_BYTES = 64 << 20
_local = threading.local()


def array(slot: str, shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-contiguous array for the temporary `slot`, valid until this thread asks
    for the same slot again."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > MAX_BYTES:
        return np.empty(shape, dtype)
    buffers: Dict[str, np.ndarray] = _local.__dict__.setdefault("buffers", {})
    buf = buffers.get(slot)
    if buf is None or buf.nbytes < nbytes:
        buf = np.empty(nbytes, np.uint8)
        buffers[slot] = buf
    return buf[:nbytes].view(dtype).reshape(shape)
