"""Shared test helpers: input generation, the torch / naive yardstick, and the
one accuracy check every correctness test goes through."""

import os
import subprocess
import sys

import numpy as np

import fastattn
from reference import naive_sdpa_float32, prepare, sdpa_reference

try:  # optional
    import ml_dtypes

    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - depends on the environment
    ml_dtypes = None
    BF16 = None

try:  # optional: only used as an error yardstick
    import torch
    import torch.nn.functional as torch_F
except ImportError:  # pragma: no cover - depends on the environment
    torch = None
    torch_F = None

F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)

DTYPE_NAMES = ["float32", "float64", "float16", "bfloat16"]


def dtype_from_name(name):
    if name == "bfloat16":
        if BF16 is None:
            import pytest

            pytest.skip("ml_dtypes not installed")
        return BF16
    return np.dtype(name)


def is_half(dt):
    dt = np.dtype(dt)
    return dt == F16 or (BF16 is not None and dt == BF16)


def expected_out_dtype(*dtypes):
    """np.result_type, except float16 with bfloat16 gives float32."""
    dts = [np.dtype(d) for d in dtypes]
    dts = [d.newbyteorder("=") if d.byteorder not in "=|" else d for d in dts]
    if BF16 is not None and BF16 in dts and F16 in dts:
        return F32 if F64 not in dts else F64
    return np.result_type(*dts)


def lse_dtype_for(out_dtype):
    return F64 if np.dtype(out_dtype) == F64 else F32


def randn(rng, shape, dtype=np.float32, scale=1.0):
    """Standard normal (times scale), rounded to dtype."""
    return (scale * rng.standard_normal(shape)).astype(dtype)


def make_qkv(rng, *, batch=(), hq=2, hkv=None, lq=7, lk=7, d=16, dv=None, dtype=np.float32,
             scale=1.0, two_d=False):
    hkv = hq if hkv is None else hkv
    dv = d if dv is None else dv
    if two_d:
        return (randn(rng, (lq, d), dtype, scale), randn(rng, (lk, d), dtype, scale),
                randn(rng, (lk, dv), dtype, scale))
    return (randn(rng, tuple(batch) + (hq, lq, d), dtype, scale),
            randn(rng, tuple(batch) + (hkv, lk, d), dtype, scale),
            randn(rng, tuple(batch) + (hkv, lk, dv), dtype, scale))


def make_mask(rng, kind, shape, dtype=np.float32):
    """A random mask of the given kind and (broadcastable) shape.

    kinds: "none", "bool" (random pattern, some rows fully masked when the
    shape has a query axis > 1), "additive" (finite random values),
    "additive_inf" (random values with -inf entries and some rows all -inf).
    """
    if kind == "none":
        return None
    shape = tuple(shape)
    lq_axis = shape[-2] if len(shape) >= 2 else 1
    if kind == "bool":
        m = rng.random(shape) < 0.7
        if lq_axis > 1:
            rows = rng.choice(lq_axis, size=max(1, lq_axis // 5), replace=False)
            m[..., rows, :] = False
            m[..., (rows[0] + 1) % lq_axis, :] = True  # and one row sees everything
        return m
    if kind == "additive":
        return (2.0 * rng.standard_normal(shape)).astype(dtype)
    if kind == "additive_inf":
        m = (2.0 * rng.standard_normal(shape)).astype(dtype)
        m[rng.random(shape) < 0.25] = -np.inf
        if lq_axis > 1:
            rows = rng.choice(lq_axis, size=max(1, lq_axis // 5), replace=False)
            m[..., rows, :] = -np.inf
        return m
    raise AssertionError(kind)


def sdpa(query, key, value, **kw):
    return fastattn.scaled_dot_product_attention(query, key, value, **kw)


def _as64(x):
    return None if x is None else np.asarray(x).astype(np.float64)


def torch_sdpa_float32(query, key, value, *, attn_mask=None, causal=False, scale=None, window=None,
                       kv_lengths=None):
    """torch's float32 SDPA on equivalent inputs (None when torch is missing).

    Every restriction is folded into one float mask (-inf where not visible),
    GQA heads are expanded like repeat_interleave, batch dims are broadcast and
    flattened.  Returns the float64 output in the reference's shape.
    """
    if torch is None:
        return None
    q, k, v, visible, additive, squeeze = prepare(
        query, key, value, attn_mask=attn_mask, causal=causal, window=window, kv_lengths=kv_lengths
    )
    out_shape = q.shape[:-1] + (v.shape[-1],)
    if q.size == 0 or k.shape[-2] == 0 or out_shape[-1] == 0 or np.prod(out_shape) == 0:
        return None
    fmask = np.where(visible, 0.0 if additive is None else additive, -np.inf).astype(np.float32)
    hq, lq, d = q.shape[-3:]
    lk, dv = k.shape[-2], v.shape[-1]
    tq = torch.from_numpy(np.ascontiguousarray(q.astype(np.float32)).reshape(-1, hq, lq, d))
    tk = torch.from_numpy(np.ascontiguousarray(k.astype(np.float32)).reshape(-1, hq, lk, d))
    tv = torch.from_numpy(np.ascontiguousarray(v.astype(np.float32)).reshape(-1, hq, lk, dv))
    tm = torch.from_numpy(np.ascontiguousarray(fmask).reshape(-1, hq, lq, lk))
    if scale is None:
        scale = 1.0 / np.sqrt(d)
    with torch.no_grad():
        res = torch_F.scaled_dot_product_attention(tq, tk, tv, attn_mask=tm, scale=float(scale))
    res = res.numpy().astype(np.float64).reshape(out_shape)
    return res[0] if squeeze else res


def yardstick_float32(query, key, value, **kw):
    """Output of the float32 yardstick: torch if importable, else naive NumPy."""
    res = torch_sdpa_float32(query, key, value, **kw)
    if res is None:
        res = naive_sdpa_float32(query, key, value, **kw)[0].astype(np.float64)
    return res


def rel_err(out, ref, rows):
    """max|out-ref| / max|ref| over the selected rows (rows: bool (..., Lq))."""
    if not rows.any():
        return 0.0
    o = np.asarray(out, dtype=np.float64)[rows]
    r = ref[rows]
    if r.size == 0:
        return 0.0
    denom = max(np.max(np.abs(r)), np.finfo(np.float64).tiny)
    with np.errstate(invalid="ignore"):
        diff = np.abs(o - r)
    if np.isnan(diff).any():
        return np.inf
    return float(np.max(diff) / denom)


TOL_HALF = {"float16": 2e-3, "bfloat16": 1.6e-2}


def score_max(query, key, value, *, attn_mask=None, causal=False, scale=None, window=None,
              kv_lengths=None):
    """S of README's accuracy table: the largest |score| (scaled, plus any additive mask) of a
    visible pair, in float64."""
    q, k, _, visible, additive, _ = prepare(query, key, value, attn_mask=attn_mask, causal=causal,
                                            window=window, kv_lengths=kv_lengths)
    if scale is None:
        scale = 1.0 / np.sqrt(q.shape[-1])
    s = (q.astype(np.float64) @ np.swapaxes(k.astype(np.float64), -1, -2)) * scale
    if additive is not None:
        s = s + np.where(visible, additive, 0.0)
    with np.errstate(invalid="ignore"):
        s = np.abs(np.where(visible, s, 0.0))
    return float(np.max(s[np.isfinite(s)], initial=0.0))


def check_sdpa(query, key, value, *, check_lse=True, yardstick=True, **kw):
    """Run fastattn on the inputs and compare with the float64 reference.

    Checks shape and dtype of out and lse, exact zeros / -inf for rows with no
    visible key, and the accuracy criterion of the output dtype.  Returns
    ``(out, lse, ref_out, ref_lse)``.
    """
    query, key, value = (np.asarray(a) for a in (query, key, value))
    res = sdpa(query, key, value, return_lse=True, **kw)
    assert isinstance(res, tuple) and len(res) == 2, type(res)
    out, lse = res
    ref_out, ref_lse = sdpa_reference(query, key, value, **kw)

    out_dt = expected_out_dtype(query.dtype, key.dtype, value.dtype)
    assert isinstance(out, np.ndarray) and isinstance(lse, np.ndarray)
    assert out.shape == ref_out.shape, (out.shape, ref_out.shape)
    assert out.dtype == out_dt, (out.dtype, out_dt)
    assert lse.shape == ref_lse.shape, (lse.shape, ref_lse.shape)
    assert lse.dtype == lse_dtype_for(out_dt), (lse.dtype, lse_dtype_for(out_dt))

    out64 = out.astype(np.float64)
    lse64 = lse.astype(np.float64)
    empty = ref_lse == -np.inf
    if empty.any():
        bad = out64[empty]
        assert np.all(bad == 0), f"rows with no visible key must be exactly 0, got {bad[bad != 0][:5]}"
        assert np.all(lse64[empty] == -np.inf), f"lse of empty rows must be -inf, got {lse64[empty][:5]}"
    rows = ~empty & np.isfinite(ref_lse) & np.all(np.isfinite(ref_out), axis=-1)
    # no NaN/Inf where the reference is finite
    assert np.all(np.isfinite(out64[rows])), "non-finite output where the reference is finite"
    assert np.all(np.isfinite(lse64[rows])), "non-finite lse where the reference is finite"

    err = rel_err(out64, ref_out, rows)
    if out_dt == F64:
        refmax = float(np.max(np.abs(ref_out[rows]), initial=0.0))
        abs_err = err * max(refmax, np.finfo(np.float64).tiny)
        assert abs_err <= 1e-12 * max(1.0, refmax), f"float64 abs error {abs_err:.3g}"
        lse_tol = 1e-12
    elif out_dt == F32:
        tol = 3e-6
        if yardstick and rows.any():
            ys = yardstick_float32(query, key, value, **kw)
            ys_rows = rows & np.all(np.isfinite(ys), axis=-1)
            tol = max(4.0 * rel_err(ys, ref_out, ys_rows), tol)
        if rows.any():
            # float32 rounds a score s to about 2^-24 |s| before exponentiating it, which moves
            # its weight, and so the output, by as much relatively; the yardstick's own error can
            # be luckily small for the same scores (test_scores_growing_against_visit_order, S =
            # 853: 4.3x the yardstick's, but 0.76 x 2^-24 S; at most 1.1 x 2^-24 S over 1200
            # random cases). 4 x 2^-24 S is still a quarter of README's bound, 1e-6 (1 + S).
            tol = max(tol, 4.0 * 2.0**-24 * score_max(query, key, value, **kw))
        assert err <= tol, f"float32 relative error {err:.3g} > {tol:.3g}"
        lse_tol = 1e-5
    else:
        name = "float16" if out_dt == F16 else "bfloat16"
        tol = TOL_HALF[name]
        assert err <= tol, f"{name} relative error {err:.3g} > {tol:.3g}"
        lse_tol = 1e-5
    if check_lse and rows.any():
        if out_dt != F64:
            # lse is float32 here, and README's accuracy bound for it is 1e-6 (1 + S): a score
            # that cancels (terms of 100 summing to 0.5) keeps float32's error of the terms.
            lse_tol = max(lse_tol, 1e-6 * (1.0 + score_max(query, key, value, **kw)))
        lerr = np.abs(lse64[rows] - ref_lse[rows]) / np.maximum(1.0, np.abs(ref_lse[rows]))
        assert np.max(lerr) <= lse_tol, f"lse error {np.max(lerr):.3g} > {lse_tol:.3g}"
    return out, lse, ref_out, ref_lse


def available_isas():
    return list(fastattn.backends()["cpu"]["available_isas"])


TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def subprocess_env(**extra):
    """os.environ without FASTATTN_* overrides, tests/ on PYTHONPATH, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTATTN_")}
    env["PYTHONPATH"] = os.pathsep.join([TESTS_DIR] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_python(code, timeout=300, **env_extra):
    """Runs ``python -c code`` in a fresh interpreter; returns CompletedProcess."""
    return subprocess.run([sys.executable, "-c", code], cwd=TESTS_DIR, env=subprocess_env(**env_extra),
                          capture_output=True, text=True, timeout=timeout)
