"""Plain NumPy reference for ``fastattn.scaled_dot_product_attention``.

Written for clarity, not speed: the full score matrix is materialised.  Every
restriction (boolean mask, additive mask, causal, window, kv_lengths) is turned
into one boolean "visible" array of shape ``(*batch, Hq, Lq, Lk)`` and the
softmax is taken over the visible keys only.

Semantics (the contract the implementation follows):

* query ``(..., Hq, Lq, D)``, key ``(..., Hkv, Lk, D)``, value ``(..., Hkv, Lk, Dv)``;
  also 2-D ``(L, D)`` and 3-D ``(H, L, D)``.  Leading batch dims broadcast.
* GQA: query head ``h`` uses kv head ``h // (Hq // Hkv)``.
* scores ``s_ij = scale * q_i . k_j`` (+ additive mask), default scale ``1/sqrt(D)``.
* causal: True/"top_left": ``j <= i``; "bottom_right": ``j <= i + Lk - Lq``.
* window ``(left, right)``: ``i + off - left <= j <= i + off + right`` with
  ``off = Lk - Lq`` for "bottom_right" causal, else 0; None = unbounded.
* kv_lengths: keys at positions ``>= length`` are ignored (per batch element).
* a row with no visible key outputs 0 and has lse = -inf.
"""

import math

import numpy as np

_CAUSAL_VALUES = (False, None, True, "top_left", "bottom_right")


def causal_offset(causal, lq, lk):
    """Diagonal offset used by causal and window restrictions."""
    return lk - lq if causal == "bottom_right" else 0


def _is_causal(causal):
    if causal is None or causal is False:
        return False
    if causal is True or causal in ("top_left", "bottom_right"):
        return True
    raise ValueError(f"causal must be False, True, 'top_left' or 'bottom_right', got {causal!r}")


def _check_window(window):
    if window is None:
        return None
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise ValueError(f"window must be a pair (left, right), got {window!r}")
    for w in window:
        if w is not None and (int(w) != w or w < 0):
            raise ValueError(f"window entries must be non-negative ints or None, got {window!r}")
    return tuple(None if w is None else int(w) for w in window)


def prepare(query, key, value, *, attn_mask=None, causal=False, window=None, kv_lengths=None):
    """Canonicalise the inputs.

    Returns ``(q, k, v, visible, additive, squeeze)`` where ``q`` is
    ``(*batch, Hq, Lq, D)``, ``k``/``v`` are broadcast to ``(*batch, Hq, Lk, .)``
    (GQA heads expanded), ``visible`` is a bool array ``(*batch, Hq, Lq, Lk)``,
    ``additive`` is a float64 array of the same shape or None, and ``squeeze``
    says the inputs were 2-D (the head axis must be dropped from the results).
    The arrays keep their input dtypes.
    """
    query = np.asarray(query)
    key = np.asarray(key)
    value = np.asarray(value)
    if query.ndim < 2 or key.ndim < 2 or value.ndim < 2:
        raise ValueError("inputs must have at least 2 dimensions")
    squeeze = query.ndim == 2 and key.ndim == 2 and value.ndim == 2
    if squeeze:
        query, key, value = query[None], key[None], value[None]
    if query.ndim < 3 or key.ndim < 3 or value.ndim < 3:
        raise ValueError("2-D inputs must all be 2-D")

    hq, lq, d = query.shape[-3:]
    hkv, lk, dk = key.shape[-3:]
    hv, lkv, dv = value.shape[-3:]
    if d != dk:
        raise ValueError(f"head dim mismatch {query.shape} vs {key.shape}")
    if lk != lkv or hkv != hv:
        raise ValueError(f"key/value mismatch {key.shape} vs {value.shape}")
    if hkv == 0 or hq % hkv != 0:
        raise ValueError(f"Hq={hq} not a multiple of Hkv={hkv}")
    batch = np.broadcast_shapes(query.shape[:-3], key.shape[:-3], value.shape[:-3])

    group = hq // hkv
    if group != 1:
        key = np.repeat(key, group, axis=-3)
        value = np.repeat(value, group, axis=-3)
    q = np.broadcast_to(query, batch + (hq, lq, d))
    k = np.broadcast_to(key, batch + (hq, lk, d))
    v = np.broadcast_to(value, batch + (hq, lk, dv))

    full = batch + (hq, lq, lk)
    visible = np.ones(full, dtype=bool)
    additive = None
    if attn_mask is not None:
        mask = np.asarray(attn_mask)
        target = (lq, lk) if squeeze else full
        mask = np.broadcast_to(mask, target)  # raises if not broadcastable
        if squeeze:
            mask = mask[None]
        if mask.dtype == np.bool_:
            visible &= mask
        else:
            additive = np.broadcast_to(mask.astype(np.float64), full)

    i = np.arange(lq)[:, None]
    j = np.arange(lk)[None, :]
    off = causal_offset(causal, lq, lk)
    if _is_causal(causal):
        visible &= j <= i + off
    window = _check_window(window)
    if window is not None:
        left, right = window
        if left is not None:
            visible &= j >= i + off - left
        if right is not None:
            visible &= j <= i + off + right

    if kv_lengths is not None:
        kvl = np.asarray(kv_lengths)
        if kvl.dtype.kind not in "iu":
            raise TypeError(f"kv_lengths must be integers, got {kvl.dtype}")
        if kvl.size and (kvl.min() < 0 or kvl.max() > lk):
            raise ValueError(f"kv_lengths out of range [0, {lk}]")
        kvl = np.broadcast_to(kvl, batch)
        visible &= np.arange(lk) < kvl[..., None, None, None]
    return q, k, v, visible, additive, squeeze


def _softmax_attention(q, k, v, visible, additive, scale, dtype):
    """Masked softmax attention computed entirely in ``dtype``."""
    q = q.astype(dtype)
    k = k.astype(dtype)
    v = v.astype(dtype)
    s = (q @ np.swapaxes(k, -1, -2)) * dtype(scale)
    if additive is not None:
        s = s + additive.astype(dtype)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        s = np.where(visible, s, dtype(-np.inf))
        if s.shape[-1] == 0:
            m = np.full(s.shape[:-1] + (1,), -np.inf, dtype=dtype)
        else:
            m = np.max(s, axis=-1, keepdims=True)
        empty = m == -np.inf  # no visible key (or additive -inf everywhere)
        m_safe = np.where(empty, dtype(0), m)
        p = np.exp(s - m_safe)  # exactly 0 where not visible
        denom = np.sum(p, axis=-1, keepdims=True)
        bad = ~np.isfinite(v)
        if bad.any():
            # Non-finite values only reach the rows that give them weight.
            clean = p @ np.where(bad, dtype(0), v)
            touched = ((p != 0).astype(dtype) @ bad.astype(dtype)) > 0
            num = np.where(touched, p @ v, clean)
        else:
            num = p @ v
        out = np.where(empty, dtype(0), num / np.where(empty, dtype(1), denom))
        lse = np.where(empty, dtype(-np.inf), m_safe + np.log(np.where(empty, dtype(1), denom)))
    return out.astype(dtype), lse[..., 0].astype(dtype)


def _run(query, key, value, attn_mask, causal, scale, window, kv_lengths, dtype):
    q, k, v, visible, additive, squeeze = prepare(
        query, key, value, attn_mask=attn_mask, causal=causal, window=window, kv_lengths=kv_lengths
    )
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    out, lse = _softmax_attention(q, k, v, visible, additive, scale, dtype)
    if squeeze:
        out, lse = out[0], lse[0]
    return out, lse


def sdpa_reference(query, key, value, *, attn_mask=None, causal=False, scale=None, window=None,
                   kv_lengths=None):
    """float64 reference. Returns ``(out, lse)`` as float64 arrays."""
    return _run(query, key, value, attn_mask, causal, scale, window, kv_lengths, np.float64)


def naive_sdpa_float32(query, key, value, *, attn_mask=None, causal=False, scale=None, window=None,
                       kv_lengths=None):
    """The same computation done naively in float32 (an error yardstick)."""
    return _run(query, key, value, attn_mask, causal, scale, window, kv_lengths, np.float32)


def visibility(query, key, value, *, attn_mask=None, causal=False, window=None, kv_lengths=None):
    """``(visible, additive)`` for the canonical (head-explicit) shapes."""
    _, _, _, visible, additive, _ = prepare(
        query, key, value, attn_mask=attn_mask, causal=causal, window=window, kv_lengths=kv_lengths
    )
    return visible, additive
