"""The layout helpers a transformer needs around attention: splitting and merging heads, causal
masks and sinusoidal positional encodings. Plain NumPy: views where the memory layout allows."""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np

from . import _dtypes


def _count(x: Any, name: str, minimum: int = 0) -> int:
    try:
        n = operator.index(x)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {x!r}") from None
    if n < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {n}")
    return n


def split_heads(x: Any, num_heads: int) -> np.ndarray:
    """``(..., L, H*D) -> (..., H, L, D)``: the last dim split into ``num_heads`` heads of ``D``.

    Always a view (no copy): splitting a dim never needs one, and the heads dim is moved by
    strides. The result goes straight into ``scaled_dot_product_attention``, which reads strided
    operands where they lie.
    """
    a = np.asarray(x)
    h = _count(num_heads, "num_heads", 1)
    if a.ndim < 2:
        raise ValueError(f"split_heads needs (..., L, H*D), got shape {a.shape}")
    if a.shape[-1] % h:
        raise ValueError(
            f"the last dim of {a.shape} ({a.shape[-1]}) is not a multiple of num_heads={h}"
        )
    split = a.reshape(a.shape[:-1] + (h, a.shape[-1] // h))
    lead = tuple(range(a.ndim - 2))  # (transpose with explicit axes: moveaxis costs more than the
    return split.transpose(lead + (a.ndim - 1, a.ndim - 2, a.ndim))  # rest of a decode step's call)


def merge_heads(x: Any) -> np.ndarray:
    """``(..., H, L, D) -> (..., L, H*D)``, the inverse of ``split_heads``.

    A view when the heads already lie side by side in memory (e.g. ``x`` came from
    ``split_heads``); otherwise (e.g. a C-contiguous attention output) one copy.
    """
    a = np.asarray(x)
    if a.ndim < 3:
        raise ValueError(f"merge_heads needs (..., H, L, D), got shape {a.shape}")
    h, length, d = a.shape[-3:]
    lead = tuple(range(a.ndim - 3))
    return a.transpose(lead + (a.ndim - 2, a.ndim - 3, a.ndim - 1)).reshape(
        a.shape[:-3] + (length, h * d))


def causal_mask(lq: int, lk: int, alignment: str = "top_left") -> np.ndarray:
    """Bool ``(lq, lk)`` mask, **True = attend** (this library's rule; ``~`` gives PyTorch
    nn.MultiheadAttention's). ``"top_left"``: query i sees keys ``j <= i`` (PyTorch's
    ``is_causal``); ``"bottom_right"``: ``j <= i + lk - lq`` (KV-cache decoding: the last query sees
    every key)."""
    lq, lk = _count(lq, "lq"), _count(lk, "lk")
    if alignment == "top_left":
        diag = 0
    elif alignment == "bottom_right":
        diag = lk - lq
    else:
        raise ValueError(f"alignment must be 'top_left' or 'bottom_right', got {alignment!r}")
    return np.arange(lk)[None, :] <= np.arange(lq)[:, None] + diag


def sinusoidal_positional_encoding(
    length: int, dim: int, *, base: float = 10000.0, dtype: Any = np.float32
) -> np.ndarray:
    """The Transformer's positional encoding ``(length, dim)``: ``PE[p, 2i] = sin(p / base^(2i/dim))``,
    ``PE[p, 2i+1] = cos(p / base^(2i/dim))`` (an odd ``dim`` ends with a sine column). Computed in
    float64, returned in ``dtype``."""
    length, dim = _count(length, "length"), _count(dim, "dim")
    try:
        b = float(base)
    except (TypeError, ValueError):
        raise TypeError(f"base must be a real number, got {base!r}") from None
    if not (b > 0 and math.isfinite(b)):
        raise ValueError(f"base must be a positive finite number, got {base!r}")
    dt = np.dtype(dtype)
    _dtypes.check_float(dt, "dtype")
    pe = np.empty((length, dim), np.float64)
    if dim:
        pair = np.arange(0, dim, 2, dtype=np.float64)  # 2i for each sine column
        angles = np.arange(length, dtype=np.float64)[:, None] / b ** (pair / dim)
        pe[:, 0::2] = np.sin(angles)
        pe[:, 1::2] = np.cos(angles[:, : dim // 2])
    return pe.astype(dt)
