"""x @ weight.T (+ bias) on fastattn's linear kernel (csrc/cpu/linear_kernel.h), for the
projections of the general attention module's scores and of MultiHeadAttention. Not NumPy's
matmul: OpenBLAS's threads spin for a while after each call and would take the cores from the
attention kernel that runs right after (1.2-1.8x slower dot-reducible scores, 4-9 ms more per
2-thread decode step; bench/RESULTS.md)."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from . import _cpu, _scratch
from ._dtypes import c_contiguous


def project(x: np.ndarray, weight: np.ndarray, bias: Optional[np.ndarray] = None,
            scratch_slot: Optional[str] = None) -> np.ndarray:
    """x (..., k) @ weight.T (+ bias) -> (..., n), all rows at once, in weight's dtype (float32 or
    float64); x is converted to it. With scratch_slot, the result lives in this thread's reusable
    buffer of that name (fastattn._scratch): for temporaries only."""
    x = x.astype(weight.dtype, copy=False)
    m, n = math.prod(x.shape[:-1]), weight.shape[0]
    x2 = x.reshape(m, x.shape[-1])
    if x2.strides[-1] != x2.itemsize or not x2.flags.aligned or any(s % x2.itemsize for s in x2.strides):
        x2 = x2.copy(order="C")  # rows contiguous and aligned, as the kernel reads them
    w = c_contiguous(weight)
    b = None if bias is None else c_contiguous(bias)
    shape = x.shape[:-1] + (n,)
    if scratch_slot is None:
        out = np.empty(shape, weight.dtype)
    else:
        out = _scratch.array(scratch_slot, shape, weight.dtype)
    _cpu.linear(x2, w, b, out.reshape(m, n))
    return out
