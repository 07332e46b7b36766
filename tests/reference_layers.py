"""Plain float64 NumPy reference for ``fastattn.MultiHeadAttention`` (and its grouped-query
heads, which PyTorch's layer lacks), written for clarity: the weights are materialised.

Semantics: q = query Wq^T + bq, k = key Wk^T + bk, v = value Wv^T + bv, split into heads (query
head h uses kv head h // (H // Hkv)); s = q.k / sqrt(D) (+ float masks); a key is visible unless
key_padding_mask marks it True (bool), attn_mask is False (bool) or causal hides it; softmax over
the visible keys (a row with none gives zeros); out = merge(heads) Wo^T + bo.
"""

import numpy as np


def mha_reference(state, num_heads, num_kv_heads, query, key=None, value=None, *,
                  key_padding_mask=None, attn_mask=None, causal=False):
    """Returns (out (B, Lq, E), weights (B, H, Lq, Lk)) in float64 for batched inputs."""
    key = query if key is None else key
    value = key if value is None else value
    q_in, k_in, v_in = (np.asarray(a, np.float64) for a in (query, key, value))
    s64 = {k: np.asarray(v, np.float64) for k, v in state.items()}
    e = q_in.shape[-1]
    d = e // num_heads
    kv = num_kv_heads * d
    if "in_proj_weight" in s64:
        w = s64["in_proj_weight"]
        wq, wk, wv = w[:e], w[e:e + kv], w[e + kv:]
    else:
        wq, wk, wv = s64["q_proj_weight"], s64["k_proj_weight"], s64["v_proj_weight"]
    b = s64.get("in_proj_bias", np.zeros(e + 2 * kv))
    q = q_in @ wq.T + b[:e]
    k = k_in @ wk.T + b[e:e + kv]
    v = v_in @ wv.T + b[e + kv:]
    bsz, lq, lk = q.shape[0], q.shape[1], k.shape[1]
    q = q.reshape(bsz, lq, num_heads, d).transpose(0, 2, 1, 3)
    k = k.reshape(bsz, lk, num_kv_heads, d).transpose(0, 2, 1, 3)
    v = v.reshape(bsz, lk, num_kv_heads, d).transpose(0, 2, 1, 3)
    group = num_heads // num_kv_heads
    k = np.repeat(k, group, axis=1)
    v = np.repeat(v, group, axis=1)
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
    visible = np.ones(s.shape, bool)
    if key_padding_mask is not None:
        kpm = np.asarray(key_padding_mask)
        if kpm.dtype == np.bool_:
            visible &= ~kpm[:, None, None, :]
        else:
            s = s + kpm.astype(np.float64)[:, None, None, :]
    if attn_mask is not None:
        am = np.asarray(attn_mask)
        if am.dtype == np.bool_:
            visible &= np.broadcast_to(am, s.shape)
        else:
            s = s + am.astype(np.float64)
    if causal:
        off = lk - lq if causal == "bottom_right" else 0
        visible &= np.arange(lk)[None, :] <= np.arange(lq)[:, None] + off
    visible &= s > -np.inf
    s = np.where(visible, s, -np.inf)
    m = np.max(s, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    p = np.where(visible, np.exp(s - m), 0.0)
    denom = p.sum(axis=-1, keepdims=True)
    weights = np.where(denom > 0, p / np.where(denom > 0, denom, 1.0), 0.0)
    heads = weights @ v
    merged = heads.transpose(0, 2, 1, 3).reshape(bsz, lq, e)
    out = merged @ s64["out_proj.weight"].T + s64.get("out_proj.bias", np.zeros(e))
    return out, weights
