"""layer_norm: the normalisation around every attention block, on a vectorised C++ kernel."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _backend, _cpu, _dtypes


def layer_norm(x: Any, weight: Any = None, bias: Any = None, eps: float = 1e-5) -> np.ndarray:
    """``(x - mean) / sqrt(var + eps) * weight + bias`` over the last axis (biased variance, as
    PyTorch's ``layer_norm``).

    ``x`` ``(..., d)``; ``weight`` and ``bias`` ``(d,)`` or None. The result has ``x``'s shape and
    the common float dtype of ``x``, ``weight`` and ``bias``; float16 and bfloat16 are computed in
    float32. Runs on the C++ kernel of the chosen ISA (two passes over each row in L1: mean, then
    squared deviations), rows in parallel on large inputs.
    """
    a = np.asarray(x)
    arrays, names = [a], ["x"]
    for p, name in ((weight, "weight"), (bias, "bias")):
        if p is not None:
            arrays.append(np.asarray(p))
            names.append(name)
    dtype = _dtypes.common_float_dtype(arrays, names)
    if a.ndim < 1:
        raise ValueError(f"layer_norm needs x with at least 1 dim, got shape {a.shape}")
    d = a.shape[-1]
    for p, name in zip(arrays[1:], names[1:]):
        if p.shape != (d,):
            raise ValueError(f"{name} must have shape ({d},) for x of shape {a.shape}, got {p.shape}")
    try:
        e = float(eps)
    except (TypeError, ValueError):
        raise TypeError(f"eps must be a real number, got {eps!r}") from None
    if not (e >= 0 and math.isfinite(e)):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if a.size == 0:
        return np.empty(a.shape, dtype)

    cdt = _dtypes.compute_dtype(dtype)
    rows = a.astype(cdt, copy=False).reshape(-1, d)  # a view whenever the rows are evenly spaced
    if (
        (d > 1 and rows.strides[-1] != rows.itemsize)
        or not rows.flags.aligned
        or any(st % rows.itemsize for st in rows.strides)
    ):
        rows = _dtypes.c_contiguous(rows)
    params = {name: _dtypes.c_contiguous(p, cdt) for p, name in zip(arrays[1:], names[1:])}
    out = np.empty(rows.shape, cdt)
    _backend.record_kernel(
        _cpu.layer_norm(rows, params.get("weight"), params.get("bias"), out, e)
    )
    out = out.reshape(a.shape)
    return out if dtype == cdt else out.astype(dtype)
