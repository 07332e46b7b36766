"""layer_norm against a float64 reference (and PyTorch's when installed), on every ISA."""

import numpy as np
import pytest

import fastattn
from helpers import BF16, TESTS_DIR, run_python, torch

SIZES = [1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 384, 1000]


def reference(x, weight=None, bias=None, eps=1e-5):
    x = np.asarray(x, np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    y = (x - mean) / np.sqrt(var + eps)
    if weight is not None:
        y = y * np.asarray(weight, np.float64)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return y


def allowed_error(x, weight, bias, eps, tol):
    """Per-row bound: tol times the row's scale and condition |mean| / std (the rounding of
    x - mean in the working precision is relative to |mean|, the result to std)."""
    x = np.asarray(x, np.float64)
    mean = np.abs(x.mean(-1, keepdims=True))
    std = np.sqrt(x.var(-1, keepdims=True) + eps)
    cond = np.maximum(1.0, mean / std)
    w = 1.0 if weight is None else np.abs(np.asarray(weight, np.float64)).max(initial=0)
    b = 0.0 if bias is None else np.abs(np.asarray(bias, np.float64)).max(initial=0)
    return tol * cond * max(1.0, w + b)


def check(x, weight=None, bias=None, eps=1e-5, dtype=None):
    out = fastattn.layer_norm(x, weight, bias, eps)
    ref = reference(x, weight, bias, eps)
    dt = np.dtype(dtype or x.dtype)
    assert out.shape == np.shape(x) and out.dtype == dt
    tol = {"float64": 1e-13, "float32": 3e-6, "float16": 2e-3, "bfloat16": 1.6e-2}[dt.name]
    err = np.abs(out.astype(np.float64) - ref)
    bound = allowed_error(x, weight, bias, eps, tol)
    assert np.all(err <= bound), f"max error {err.max():.3g}, bound there {np.broadcast_to(bound, err.shape).flat[err.argmax()]:.3g}"
    assert fastattn.last_kernel().split("/")[2] == "layer_norm"
    return out


@pytest.mark.parametrize("d", SIZES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sizes(rng, d, dtype):
    x = (3 + 2 * rng.standard_normal((5, d))).astype(dtype)  # a mean far from 0
    w = rng.standard_normal(d).astype(dtype)
    b = rng.standard_normal(d).astype(dtype)
    check(x, w, b)
    check(x)
    check(x, w, None, eps=1e-12)
    check(x, None, b, eps=0.5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_dtypes(rng, dtype):
    if dtype == "bfloat16" and BF16 is None:
        pytest.skip("ml_dtypes not installed")
    dt = BF16 if dtype == "bfloat16" else np.dtype(dtype)
    x = rng.standard_normal((3, 4, 37)).astype(dt)
    check(x, np.ones(37, dt), np.zeros(37, dt))
    out = fastattn.layer_norm(x, np.ones(37, np.float32))  # mixed: promotes
    assert out.dtype == np.float32


def test_large_parallel_and_strided(rng, restore_threads):
    x = rng.standard_normal((64, 300, 96)).astype(np.float32)  # 1.8M elements: in parallel
    w, b = rng.standard_normal(96).astype(np.float32), rng.standard_normal(96).astype(np.float32)
    fastattn.set_num_threads(2)
    a = check(x, w, b)
    fastattn.set_num_threads(1)
    np.testing.assert_array_equal(fastattn.layer_norm(x, w, b), a)  # rows are independent
    big = rng.standard_normal((8, 20, 200)).astype(np.float32)
    check(big[:, ::3, 5:101], w, b)  # unevenly spaced rows: copied
    check(big[:, :, 7:103], w, b)  # evenly spaced rows: read in place
    check(np.asfortranarray(big[0, :, :96]), w, b)
    check(big[0, 0, :96], w, b)  # 1-D


def test_constant_rows_and_nan(rng):
    x = np.full((2, 33), 5.0, np.float32)
    out = fastattn.layer_norm(x)
    assert np.all(out == 0)  # zero variance: (x - mean) = 0, no NaN with eps > 0
    x = rng.standard_normal((3, 20)).astype(np.float32)
    x[1, 4] = np.nan
    out = fastattn.layer_norm(x)
    assert np.all(np.isnan(out[1])) and np.all(np.isfinite(out[[0, 2]]))


def test_empty():
    assert fastattn.layer_norm(np.zeros((0, 5), np.float32)).shape == (0, 5)
    assert fastattn.layer_norm(np.zeros((3, 0))).shape == (3, 0)


@pytest.mark.skipif(torch is None, reason="torch is not installed")
def test_matches_torch(rng):
    x = rng.standard_normal((4, 9, 384)).astype(np.float32)
    w, b = rng.standard_normal(384).astype(np.float32), rng.standard_normal(384).astype(np.float32)
    t = torch.nn.functional.layer_norm(torch.from_numpy(x), (384,), torch.from_numpy(w),
                                       torch.from_numpy(b), eps=1e-12)
    # Both round in float32 with their own summation orders: a few ulp of the output, whose
    # entries (w * normalised x + b) reach about 10 here (2e-6 absolute alone failed at 7.7).
    np.testing.assert_allclose(fastattn.layer_norm(x, w, b, eps=1e-12), t.numpy(), rtol=5e-7, atol=2e-6)


def test_errors():
    x = np.zeros((2, 8), np.float32)
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\) for x of shape \(2, 8\), got \(7,\)"):
        fastattn.layer_norm(x, np.ones(7, np.float32))
    with pytest.raises(ValueError, match="bias must have shape"):
        fastattn.layer_norm(x, None, np.ones((1, 8), np.float32))
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        fastattn.layer_norm(x, eps=-1.0)
    with pytest.raises(TypeError, match="int32"):
        fastattn.layer_norm(x.astype(np.int32))
    with pytest.raises(ValueError, match="at least 1 dim"):
        fastattn.layer_norm(np.float32(3))


_SWEEP = """
import numpy as np, fastattn
from test_layer_norm import allowed_error, reference
rng = np.random.default_rng(%d)
for d in %r:
    for dt, tol in ((np.float32, 3e-6), (np.float64, 1e-13)):
        x = (2 + rng.standard_normal((70, d))).astype(dt)
        w, b = rng.standard_normal(d).astype(dt), rng.standard_normal(d).astype(dt)
        out = fastattn.layer_norm(x, w, b)
        ref = reference(x, w, b)
        err = np.abs(out - ref)
        assert np.all(err <= allowed_error(x, w, b, 1e-5, tol)), (d, dt, err.max())
        assert fastattn.last_kernel().startswith("cpu/%s/layer_norm/"), fastattn.last_kernel()
print("OK")
"""


@pytest.mark.parametrize("isa", fastattn.backends()["cpu"]["available_isas"])
def test_every_isa(isa, rng):
    r = run_python(_SWEEP % (int(rng.integers(1 << 31)), SIZES, isa), timeout=120,
                   FASTATTN_CPU_ISA=isa)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]
