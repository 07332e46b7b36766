"""Checking and normalising the arguments of scaled_dot_product_attention, in one place.

Every shape, dtype and option is checked here, with the offending shapes or values in the message,
and every operand is brought to the form the kernels take: the same number of dims (batch dims
first, size 1 where broadcast), the same storage dtype, the last dim contiguous. The kernels trust it.

The checks of a call without mask, kv_lengths and out= depend only on the operands' shapes,
strides and dtypes and on the options; their outcome is memoised under exactly those (shapes and
options in the key, strides and dtypes checked by the plan) as a `_cpu.SdpaPlan`, which runs a
repeated small call (decoding, tiny shapes) without the checks.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from . import _cpu, _dtypes

# Window extents at or beyond this are "unbounded" (the kernels take -1 for that).
_UNBOUNDED = 1 << 59


# What prepare() returns: (args, result, lse_result) with args the arguments of the kernel entry
# point _cpu.sdpa, result what the caller gets (out= itself or a new array, in the caller's
# layout) and lse_result the lse in the caller's layout or None.
SdpaCall = Tuple[Tuple[Any, ...], np.ndarray, Optional[np.ndarray]]


def _as_operand(x: Any, dtype: np.dtype) -> np.ndarray:
    """x in `dtype`, with a contiguous, aligned last dim (copied only when it is not)."""
    a: np.ndarray = x if x.dtype == dtype else x.astype(dtype)
    itemsize = a.itemsize
    if (a.shape[-1] > 1 and a.strides[-1] != itemsize) or not a.flags.aligned or any(
        s % itemsize for s in a.strides
    ):
        a = a.copy(order="C")  # not ascontiguousarray: it returns a contiguous misaligned array as is
    return a


def _with_leading_ones(a: np.ndarray, ndim: int) -> np.ndarray:
    return a if a.ndim == ndim else a.reshape((1,) * (ndim - a.ndim) + a.shape)


def broadcast_batch(shapes: Sequence[Tuple[int, ...]], names: Sequence[str]) -> Tuple[int, ...]:
    """NumPy broadcasting of batch shapes, with the shapes named in the error."""
    nb = max(len(s) for s in shapes)
    out = [1] * nb
    for s in shapes:
        for i, n in enumerate(s, start=nb - len(s)):
            if n != 1:
                if out[i] != 1 and out[i] != n:
                    listed = ", ".join(f"{name} {shape}" for name, shape in zip(names, shapes))
                    raise ValueError(f"batch dims do not broadcast: {listed}")
                out[i] = n
    return tuple(out)


def _causal_mode(causal: Any) -> Optional[str]:
    if causal is None or causal is False or (isinstance(causal, np.bool_) and not causal):
        return None
    if causal is True or isinstance(causal, np.bool_) or causal == "top_left":
        return "top_left"
    if causal == "bottom_right":
        return "bottom_right"
    raise ValueError(
        f"causal must be False, True, 'top_left' or 'bottom_right', got {causal!r}"
    )


def _window_extent(x: Any, which: str) -> int:
    if x is None:
        return -1
    try:
        n = operator.index(x)
    except TypeError:
        raise ValueError(f"window {which} extent must be a non-negative int or None, got {x!r}")
    if n < 0:
        raise ValueError(f"window {which} extent must be >= 0, got {n}")
    return -1 if n >= _UNBOUNDED else n


def _is_pair_sequence(x: Any) -> bool:
    """A tuple, list or 1-D array of two items (not a mapping or set, whose items are not what
    x[0] and x[1] read)."""
    if isinstance(x, np.ndarray):
        return x.ndim == 1 and len(x) == 2
    return isinstance(x, (tuple, list)) and len(x) == 2


def _window(window: Any) -> Tuple[int, int]:
    if window is None:
        return -1, -1
    if not _is_pair_sequence(window):
        raise ValueError(f"window must be a pair (left, right) of ints or None, got {window!r}")
    return _window_extent(window[0], "left"), _window_extent(window[1], "right")


def _scale(scale: Any, d: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(d) if d > 0 else 1.0
    if isinstance(scale, (str, bytes)) or isinstance(scale, complex):
        raise TypeError(f"scale must be a real number, got {scale!r}")
    try:
        return float(scale)
    except (TypeError, ValueError):
        raise TypeError(f"scale must be a real number, got {scale!r}") from None
    except OverflowError:
        raise ValueError(f"scale {scale!r} is beyond float64's range") from None


def mask_dtype_error(dtype: Any) -> TypeError:
    return TypeError(
        f"attn_mask has dtype {dtype}; it must be bool (True = attend) or float (added to the scores)"
    )


def check_mask_shape(shape: Tuple[int, ...], full: Tuple[int, ...]) -> None:
    if len(shape) > len(full) or any(
        n != 1 and n != want for n, want in zip(tuple(shape)[::-1], full[::-1])
    ):
        raise ValueError(f"attn_mask of shape {tuple(shape)} does not broadcast to {full}")


def float_mask_as(m: np.ndarray, cdt: np.dtype) -> np.ndarray:
    """An additive float mask in the compute dtype cdt, its finite entries kept finite: -1e300 in
    a float64 mask would cast to float32's -inf, which hides its key (the float64 reference only
    down-weights it)."""
    if m.dtype.itemsize > cdt.itemsize:
        info = np.finfo(cdt)
        m = np.where(np.isinf(m), m, np.clip(m, info.min, info.max))
    return m.astype(cdt, copy=False)


def mask_operand(attn_mask: Any, dtype: np.dtype, full: Tuple[int, ...]) -> np.ndarray:
    """The mask as bool or as the compute dtype, with full's ndim, each dim 1 or full's."""
    m = np.asarray(attn_mask)
    if m.dtype != np.bool_:
        if not _dtypes.is_supported_float(_dtypes.native(m.dtype)):
            raise mask_dtype_error(m.dtype)
        m = float_mask_as(m, _dtypes.compute_dtype(dtype))
    check_mask_shape(m.shape, full)
    m = _with_leading_ones(m, len(full))
    if not m.flags.aligned or any(s % m.itemsize for s in m.strides):
        m = m.copy(order="C")  # aligned (ascontiguousarray keeps a contiguous misaligned array)
    return m


def _kv_lengths(kv_lengths: Any, batch: Tuple[int, ...], lk: int) -> np.ndarray:
    kl = np.asarray(kv_lengths)
    if kl.dtype.kind not in "iu":
        raise TypeError(f"kv_lengths must be integers, got dtype {kl.dtype}")
    if kl.ndim > len(batch) or any(
        n != 1 and n != want for n, want in zip(kl.shape[::-1], batch[::-1])
    ):
        raise ValueError(
            f"kv_lengths of shape {kl.shape} does not broadcast to the batch dims {batch}"
        )
    if kl.size and (kl.min() < 0 or kl.max() > lk):
        bad = kl.min() if kl.min() < 0 else kl.max()
        raise ValueError(f"kv_lengths must lie in [0, Lk={lk}], got {bad}")
    return _with_leading_ones(kl.astype(np.int64, copy=False), len(batch))


def _out(
    out: Any, shape: Tuple[int, ...], dtype: np.dtype, inputs: Sequence[np.ndarray]
) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype)
    if not isinstance(out, np.ndarray):
        raise ValueError(f"out must be a NumPy array, got {type(out).__name__}")
    if out.shape != shape or out.dtype != dtype:
        raise ValueError(
            f"out has shape {out.shape} and dtype {out.dtype}; expected shape {shape} and dtype "
            f"{dtype}"
        )
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    if not out.flags.aligned:
        raise ValueError("out is not aligned to its item size; pass an aligned array")
    if any(np.may_share_memory(out, a) for a in inputs):
        raise ValueError(
            "out overlaps an input (query, key, value, attn_mask or kv_lengths); pass a separate array"
        )
    return out


def check_shapes(q: Any, k: Any, v: Any) -> Tuple[bool, Tuple[int, ...], int, int, int, int, int]:
    """(two_d, batch, hq, lq, lk, d, dv) of query, key and value, checked: anything with ``.ndim``
    and ``.shape`` (NumPy arrays, or the GPU operands' descriptions)."""
    for a, name in ((q, "query"), (k, "key"), (v, "value")):
        if a.ndim < 2:
            raise ValueError(f"{name} must have at least 2 dims (L, D), got shape {tuple(a.shape)}")
    two_d = q.ndim == 2 and k.ndim == 2 and v.ndim == 2
    # A 2-D (L, D) operand is one head.
    qs, ks, vs = ((1,) + tuple(a.shape) if a.ndim == 2 else tuple(a.shape) for a in (q, k, v))
    hq, lq, d = qs[-3:]
    hkv, lk, dk = ks[-3:]
    hv, lv, dv = vs[-3:]
    if d != dk:
        raise ValueError(
            f"query and key head dims differ: query {tuple(q.shape)} has D={d}, key "
            f"{tuple(k.shape)} has D={dk}"
        )
    if lk != lv or hkv != hv:
        raise ValueError(
            f"key {tuple(k.shape)} and value {tuple(v.shape)} must agree in heads and length "
            "(..., Hkv, Lk, *)"
        )
    if (hkv == 0 and hq != 0) or (hkv and hq % hkv):
        raise ValueError(
            f"query heads ({hq}) must be a multiple of key/value heads ({hkv}): query "
            f"{tuple(q.shape)}, key {tuple(k.shape)}"
        )
    batch = broadcast_batch((qs[:-3], ks[:-3], vs[:-3]), ("query", "key", "value"))
    return two_d, batch, hq, lq, lk, d, dv


def check_options(
    causal: Any, scale: Any, window: Any, lq: int, lk: int, d: int
) -> Tuple[float, int, int, int]:
    """(scale, diag, left, right) for the kernels, checked (-1 = unbounded)."""
    mode = _causal_mode(causal)
    left, right = _window(window)
    if mode is not None:
        right = 0 if right < 0 else min(right, 0)
    diag = lk - lq if mode == "bottom_right" else 0
    return _scale(scale, d), diag, left, right


def prepare(
    query: Any, key: Any, value: Any, attn_mask: Any, causal: Any, scale: Any, window: Any,
    kv_lengths: Any, return_lse: bool, out: Any,
) -> SdpaCall:
    """Check every argument and bring the operands to kernel form (see the module docstring)."""
    q, k, v = np.asarray(query), np.asarray(key), np.asarray(value)
    dtype = _dtypes.common_float_dtype((q, k, v), ("query", "key", "value"))
    two_d, batch, hq, lq, lk, d, dv = check_shapes(q, k, v)
    q3, k3, v3 = (a[None] if a.ndim == 2 else a for a in (q, k, v))
    ndim = len(batch) + 3
    qn, kn, vn = (_with_leading_ones(_as_operand(a, dtype), ndim) for a in (q3, k3, v3))

    mask = None
    if attn_mask is not None:
        mask = mask_operand(attn_mask, dtype, batch + (hq, lq, lk))
    lengths = None
    if kv_lengths is not None:
        lengths = _kv_lengths(kv_lengths, batch, lk)

    scale_value, diag, left, right = check_options(causal, scale, window, lq, lk, d)

    kernel_shape = batch + (hq, lq, dv)
    result_shape = (lq, dv) if two_d else kernel_shape
    inputs = [q, k, v] + [np.asarray(a) for a in (attn_mask, kv_lengths) if a is not None]
    result = _out(out, result_shape, dtype, inputs)
    # As a plain ndarray: a subclass (np.matrix) stays 2-D when reshaped to kernel form.
    kernel_out = result.view(np.ndarray).reshape(kernel_shape)
    lse = lse_result = None
    if return_lse:
        lse = np.empty(batch + (hq, lq), _dtypes.compute_dtype(dtype))
        lse_result = lse.reshape(lq) if two_d else lse
    args = (
        qn, kn, vn, kernel_out, lse, mask, lengths,
        _dtypes.code_of(dtype), scale_value, diag, left, right,
    )
    return args, result, lse_result


# ----------------------------------------------------------------------------- memoised checks
plans: Dict[Tuple[Any, ...], _cpu.SdpaPlan] = {}  # memo key -> plan
_PLANS_MAX = 256


def memo_key(
    query: Any, key: Any, value: Any, causal: Any, scale: Any, window: Any, return_lse: bool
) -> Optional[Tuple[Any, ...]]:
    """The memo key of a call without mask, kv_lengths and out=, or None when it cannot have one.

    The key holds shapes and options, with the options' types (causal=1 must not find causal=True's
    plan, as 1 == True); the plan itself checks strides, dtypes (by identity, so a byte-swapped
    float32, equal in hash but not identical, misses) and alignment.
    """
    if type(query) is not np.ndarray or type(key) is not np.ndarray or type(value) is not np.ndarray:
        return None
    if causal is False and scale is None and window is None and return_lse is False:
        # The default options (most calls, tiny ones included) by identity: a shorter key, made
        # in about half the time; its length keeps it apart from the full keys below.
        return (query.shape, key.shape, value.shape)
    if window is not None and not _is_pair_sequence(window):
        return None  # the checks will say what is wrong (a dict's tuple() would be its keys)
    try:
        memo = (
            query.shape, key.shape, value.shape, type(causal), causal, type(scale), scale,
            None if window is None else (tuple(window), tuple(map(type, window))),
            bool(return_lse),
        )
        hash(memo)
    except TypeError:  # an unhashable option: the checks will say what is wrong
        return None
    return memo


def remember(memo: Tuple[Any, ...], operands: Tuple[Any, ...], call: SdpaCall) -> None:
    """Keep the checked call `call` as the plan for `memo`, if no operand was converted or copied
    (its kernel-form views then share the caller's data pointers)."""
    args, result, lse_result = call
    if all(
        a.ctypes.data == b.ctypes.data and a.dtype is b.dtype for a, b in zip(args[:3], operands)
    ):
        if len(plans) >= _PLANS_MAX:
            plans.clear()
        q, k, v, out, lse, _mask, _lengths, code, scale, diag, left, right = args
        plans[memo] = _cpu.SdpaPlan(
            q, k, v, out, lse, code, scale, diag, left, right, tuple(operands), result, lse_result
        )
