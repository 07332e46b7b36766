"""Property tests (hypothesis): random shapes, masks, dtypes and options against the float64
references, for the entry points beyond SDPA (whose property test is in test_sdpa.py). Each
example draws a seed for its arrays, so a failure replays from hypothesis' report alone."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastattn
from helpers import BF16, make_mask, randn
from reference_attention import output_layer_reference
from test_attention import check_attention, make_params

SCORES = ["dot", "scaled_dot", "cosine", "general", "biased_general", "activated_general", "additive", "concat"]
DTYPES = ["float32", "float64", "float16"] + (["bfloat16"] if BF16 is not None else [])
PROFILE = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))


def _dt(name):
    return BF16 if name == "bfloat16" else np.dtype(name)


batches = st.sampled_from([((), (), ()), ((2,), (2,), (2,)), ((2, 1), (3,), (1,)), ((), (2,), (2,)), ((0,), (), ())])


@PROFILE
@given(seed=st.integers(0, 2**32 - 1), score=st.sampled_from(SCORES),
       align=st.sampled_from(["softmax", "sigmoid", "sparsemax", "hard"]),
       dtype=st.sampled_from(DTYPES), batch=batches,
       lq=st.integers(0, 20), lk=st.integers(0, 40), dq=st.integers(1, 24), dk=st.integers(1, 24),
       dv=st.integers(1, 12), da=st.integers(1, 16), variant=st.integers(0, 5),
       mask_kind=st.sampled_from(["none", "bool", "additive", "additive_inf"]),
       one_query=st.booleans(), values_default=st.booleans())
def test_attention_matches_reference(seed, score, align, dtype, batch, lq, lk, dq, dk, dv, da, variant,
                                     mask_kind, one_query, values_default):
    rng = np.random.default_rng(seed)
    dt = _dt(dtype)
    base = "additive" if score == "concat" else score
    if base in ("dot", "scaled_dot", "cosine"):
        dk = dq
    bq, bk, bv = batch
    scale = 1.5 * dq ** -0.25
    q = randn(rng, (dq,) if one_query else bq + (lq, dq), dt, scale)
    k = randn(rng, bk + (lk, dk), dt, 1.5 * dk ** -0.25)
    v = None if values_default else randn(rng, bv + (lk, dv), dt)
    params = make_params(rng, base, dq, dk, da, dt, variant)
    n_q = 1 if one_query else lq
    mshape = (lk,) if one_query else (n_q, lk)
    mask = make_mask(rng, mask_kind, mshape, np.float64 if dtype == "float64" else np.float32) if lk else None
    check_attention(q, k, v, score=score, align=align, params=params, attn_mask=mask)


@PROFILE
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(DTYPES),
       batch=st.sampled_from([(), (0,), (3,), (2, 3)]), dv=st.integers(1, 40), n_out=st.integers(1, 50),
       bias=st.booleans(), scale=st.sampled_from([0.1, 1.0, 10.0]))
def test_output_layer_matches_reference(seed, dtype, batch, dv, n_out, bias, scale):
    rng = np.random.default_rng(seed)
    dt = _dt(dtype)
    c = randn(rng, batch + (dv,), dt, scale)
    w = randn(rng, (n_out, dv), dt, dv ** -0.5)
    b = randn(rng, (n_out,), dt) if bias else None
    y = fastattn.output_layer(c, w, b)
    ref = output_layer_reference(c, w, b)
    assert y.shape == ref.shape and y.dtype == dt
    # The README's accuracy bound: float32 rounds each logit to about 2^-24 of its size before the
    # softmax, so its bound grows with the largest |logit| S (a fixed 2e-6 failed at S ~ 24).
    logits = c.astype(np.float64) @ w.astype(np.float64).T + (0 if b is None else b.astype(np.float64))
    big = float(np.max(np.abs(logits), initial=0.0))
    tol = {"float64": 1e-12, "float32": max(2e-6, 1e-6 * (1 + big)), "float16": 2e-3,
           "bfloat16": 1.6e-2}[dtype]
    np.testing.assert_allclose(y.astype(np.float64), ref, rtol=0, atol=tol)
    if y.size:
        np.testing.assert_allclose(y.astype(np.float64).sum(axis=-1), 1.0, atol=tol * n_out)
