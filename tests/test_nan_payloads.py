"""A NaN stays NaN whatever its payload bits, through every exponential the kernels compute.

NumPy's np.nan has an all-zero payload below its quiet bit, and so does every NaN the FPU makes
(0/0, inf - inf). NaNs made elsewhere need not: R's NA is a float64 NaN with payload 1954, and
NaN-boxing or a bit-level mask leaves any bits there. The SIMD exp2 builds 2^n from the low bits
of a rounding sum; if those bits are a NaN's payload, adding them to the result's exponent bits
turns the NaN into a number (before the fix: an ordinary-looking, wrong output row).
"""

import numpy as np
import pytest

import fastattn
from helpers import randn

PAYLOAD_NANS = {
    "float32": [0x7FC00001, 0x7FC0001F, 0xFFC00155, 0x7FC001FF],
    "float64": [0x7FF00000000007A2, 0x7FF8000000000FFF, 0xFFF8000000000001],  # the first: R's NA
}
UINT = {"float32": np.uint32, "float64": np.uint64}


def payload_nans(dtype):
    bits = np.array(PAYLOAD_NANS[dtype], UINT[dtype])
    values = bits.view(dtype)
    assert np.isnan(values).all()
    return values


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("lq", [1, 64], ids=["rowwise", "blocked"])
@pytest.mark.parametrize("key", [5, 590], ids=["lazy-tile", "first-tile"])
def test_sdpa_key_nan_reaches_every_row_that_sees_it(rng, dtype, lq, key):
    # Keys are visited last to first: key 590 is in the first tile visited (the classic softmax),
    # key 5 in a later, lazily rescaled one.
    for nan in payload_nans(dtype):
        q, k, v = (randn(rng, (2, n, 16), np.dtype(dtype)) for n in (lq, 600, 600))
        k[1, key, 7] = nan
        out = fastattn.scaled_dot_product_attention(q, k, v)
        assert np.isnan(out[1]).all(), f"NaN {nan.view(UINT[dtype]):#x} lost"
        assert np.isfinite(out[0]).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("lq", [1, 64], ids=["rowwise", "blocked"])
def test_sdpa_query_nan_stays_in_its_row(rng, dtype, lq):
    for nan in payload_nans(dtype):
        q, k, v = (randn(rng, (1, n, 16), np.dtype(dtype)) for n in (lq, 300, 300))
        q[0, lq - 1, 3] = nan
        out = fastattn.scaled_dot_product_attention(q, k, v)
        assert np.isnan(out[0, lq - 1]).all(), f"NaN {nan.view(UINT[dtype]):#x} lost"
        assert np.isfinite(out[0, : lq - 1]).all()


# The float64 NaNs with the quiet bit clear are signalling: NumPy's own arithmetic on them (the
# Python layer scales q for scaled_dot) warns, which is NumPy's business, not this test's.
@pytest.mark.filterwarnings("ignore:invalid value encountered")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "score,align,act",
    [("scaled_dot", "softmax", None), ("dot", "sigmoid", None), ("activated_general", "softmax", "tanh"),
     ("activated_general", "softmax", "sigmoid"), ("additive", "softmax", "tanh")],
)
def test_attention_query_nan_stays_in_its_row(rng, dtype, score, align, act):
    dt = np.dtype(dtype)
    d = 8
    params = {}
    if score == "activated_general":
        params = {"W": randn(rng, (d, d), dt), "act": act}
    elif score == "additive":
        params = {"W_q": randn(rng, (6, d), dt), "W_k": randn(rng, (6, d), dt), "w": randn(rng, (6,), dt), "act": act}
    for nan in payload_nans(dtype):
        q, k, v = randn(rng, (20, d), dt), randn(rng, (50, d), dt), randn(rng, (50, 5), dt)
        q[4, 2] = nan
        out = fastattn.attention(q, k, v, score=score, align=align, params=params)
        assert np.isnan(out[4]).all(), f"NaN {nan.view(UINT[dtype]):#x} lost"
        assert np.isfinite(np.delete(out, 4, axis=0)).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("mlp", [False, True], ids=["relation", "weight-mlp"])
def test_vector_attention_query_nan_stays_in_its_point(rng, dtype, mlp):
    dt = np.dtype(dtype)
    n, s, c, g = 40, 16, 64, 8
    index = rng.integers(0, n, (n, s))
    weight_mlp = (randn(rng, (8, c), dt), randn(rng, (8,), dt), randn(rng, (g, 8), dt), randn(rng, (g,), dt)) if mlp else None
    for nan in payload_nans(dtype):
        q, k, v = (randn(rng, (n, c), dt) for _ in range(3))
        pos = randn(rng, (n, s, c), dt)
        q[9, 11] = nan
        out = fastattn.vector_attention(q, k, v, index=index, pos=pos, weight_mlp=weight_mlp, groups=g)
        # The NaN reaches the group of channel 11 without the MLP (channels 8..15), every group with it.
        assert np.isnan(out[9, 8:16] if not mlp else out[9]).all(), f"NaN {nan.view(UINT[dtype]):#x} lost"
        assert np.isfinite(np.delete(out, 9, axis=0)).all()
