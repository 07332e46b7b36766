"""Checks of the test reference itself (no fastattn needed): an independent
per-row loop implementation and torch in float64."""

import itertools
import math

import numpy as np
import pytest

from reference import naive_sdpa_float32, sdpa_reference

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover
    torch = None


def loop_reference(q, k, v, *, mask=None, causal=False, scale=None, window=None, kv_len=None):
    """Row by row, 3-D (H, L, D) inputs, kv_len a scalar."""
    hq, lq, d = q.shape
    hkv, lk, _ = k.shape
    scale = 1 / math.sqrt(d) if scale is None else scale
    off = lk - lq if causal == "bottom_right" else 0
    out = np.zeros((hq, lq, v.shape[-1]))
    lse = np.full((hq, lq), -np.inf)
    for h in range(hq):
        g = h // (hq // hkv)
        for i in range(lq):
            scores, vals = [], []
            for j in range(lk):
                if causal in (True, "top_left", "bottom_right") and j > i + off:
                    continue
                if window is not None:
                    left, right = window
                    if left is not None and j < i + off - left:
                        continue
                    if right is not None and j > i + off + right:
                        continue
                if kv_len is not None and j >= kv_len:
                    continue
                s = scale * float(np.dot(q[h, i].astype(np.float64), k[g, j].astype(np.float64)))
                if mask is not None:
                    mm = np.broadcast_to(mask, (hq, lq, lk))[h, i, j]
                    if mask.dtype == bool:
                        if not mm:
                            continue
                    else:
                        s += float(mm)
                if s == -np.inf:
                    continue
                scores.append(s)
                vals.append(v[g, j].astype(np.float64))
            if scores:
                m = max(scores)
                w = np.exp(np.array(scores) - m)
                out[h, i] = (w[:, None] * np.array(vals)).sum(0) / w.sum()
                lse[h, i] = m + math.log(w.sum())
    return out, lse


@pytest.mark.parametrize("causal", [False, True, "bottom_right"])
@pytest.mark.parametrize("lq,lk", [(5, 9), (9, 5), (6, 6)])
@pytest.mark.parametrize("opt", ["plain", "bool", "add", "window", "kvlen", "gqa"])
def test_reference_matches_loop(rng, causal, lq, lk, opt):
    hq, hkv, d, dv = 4, 4, 5, 3
    kw, lkw = {}, {}
    if opt == "gqa":
        hkv = 2
    q = rng.standard_normal((hq, lq, d))
    k = rng.standard_normal((hkv, lk, d))
    v = rng.standard_normal((hkv, lk, dv))
    if opt == "bool":
        m = rng.random((hq, lq, lk)) < 0.6
        m[0, 1] = False
        kw["attn_mask"] = lkw["mask"] = m
    if opt == "add":
        m = rng.standard_normal((1, lq, lk))
        m[rng.random(m.shape) < 0.3] = -np.inf
        m[0, 2] = -np.inf
        kw["attn_mask"] = lkw["mask"] = m
    if opt == "window":
        kw["window"] = lkw["window"] = (2, None) if causal else (1, 2)
    if opt == "kvlen":
        kw["kv_lengths"] = lkw["kv_len"] = int(rng.integers(0, lk + 1))
    out, lse = sdpa_reference(q, k, v, causal=causal, **kw)
    out2, lse2 = loop_reference(q, k, v, causal=causal, **lkw)
    np.testing.assert_allclose(out, out2, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(lse == -np.inf, lse2 == -np.inf)
    fin = np.isfinite(lse2)
    np.testing.assert_allclose(lse[fin], lse2[fin], rtol=1e-12, atol=1e-12)
    assert np.all(out[~fin] == 0)
    o32, l32 = naive_sdpa_float32(q, k, v, causal=causal, **kw)
    assert o32.dtype == np.float32
    np.testing.assert_allclose(o32, out, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(torch is None, reason="torch not installed")
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("gqa", [False, True])
def test_reference_matches_torch(rng, causal, gqa):
    b, hq, lq, lk, d, dv = 2, 4, 11, 11, 8, 6
    hkv = 2 if gqa else hq
    q = rng.standard_normal((b, hq, lq, d))
    k = rng.standard_normal((b, hkv, lk, d))
    v = rng.standard_normal((b, hkv, lk, dv))
    out, lse = sdpa_reference(q, k, v, causal=causal, scale=0.7)
    t = F.scaled_dot_product_attention(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v),
                                       is_causal=causal, scale=0.7, enable_gqa=gqa).numpy()
    np.testing.assert_allclose(out, t, rtol=1e-10, atol=1e-12)
    # lse by definition
    kk = np.repeat(k, hq // hkv, axis=1)
    s = 0.7 * q @ np.swapaxes(kk, -1, -2)
    if causal:
        s = np.where(np.tril(np.ones((lq, lk), bool)), s, -np.inf)
    np.testing.assert_allclose(lse, np.log(np.exp(s).sum(-1)), rtol=1e-12)


def test_reference_bottom_right_equals_torch_tril_offset(rng):
    # FlashAttention's bottom-right alignment: tril with diagonal Lk - Lq.
    for lq, lk in [(3, 8), (8, 3)]:
        q, k, v = (rng.standard_normal((2, n, 4)) for n in (lq, lk, lk))
        out, lse = sdpa_reference(q, k, v, causal="bottom_right")
        m = np.tril(np.ones((lq, lk), bool), k=lk - lq)
        out2, lse2 = sdpa_reference(q, k, v, attn_mask=m)
        np.testing.assert_array_equal(out, out2)
        np.testing.assert_array_equal(lse, lse2)
        if lq > lk:
            assert np.all(lse[:, : lq - lk] == -np.inf)


def test_reference_broadcast_and_2d(rng):
    q = rng.standard_normal((2, 1, 3, 5, 4))
    k = rng.standard_normal((3, 3, 6, 4))
    v = rng.standard_normal((3, 3, 6, 2))
    out, lse = sdpa_reference(q, k, v, kv_lengths=np.array([[1], [6]]))
    assert out.shape == (2, 3, 3, 5, 2) and lse.shape == (2, 3, 3, 5)
    for a, bb in itertools.product(range(2), range(3)):
        o, l = sdpa_reference(q[a, 0], k[bb], v[bb], kv_lengths=[1, 6][a])
        np.testing.assert_allclose(out[a, bb], o, rtol=1e-14)
    o2, l2 = sdpa_reference(q[0, 0, 0], k[0, 0], v[0, 0])
    assert o2.shape == (5, 2) and l2.shape == (5,)
