"""The projection kernel behind the general attention module's scores and MultiHeadAttention
(fastattn._linear.project, csrc/cpu/linear_kernel.h) against a float64 NumPy product, on the
awkward shapes: rows that fill no, one or several register blocks, widths off the SIMD width."""

import numpy as np
import pytest

from fastattn._linear import project


@pytest.mark.parametrize("m", [1, 7, 9, 24, 25, 100, 1000])
@pytest.mark.parametrize("k,n", [(1, 1), (3, 17), (8, 8), (17, 3), (64, 64), (65, 63), (129, 24)])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_project_matches_numpy(rng, m, k, n, bias, dtype):
    x = rng.standard_normal((m, k)).astype(dtype)
    w = rng.standard_normal((n, k)).astype(dtype)
    b = rng.standard_normal(n).astype(dtype) if bias else None
    out = project(x, w, b)
    ref = x.astype(np.float64) @ w.astype(np.float64).T + (0 if b is None else b.astype(np.float64))
    assert out.shape == (m, n) and out.dtype == dtype
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, ref, rtol=tol, atol=tol * np.sqrt(k))


def test_project_leading_dims_and_strided_rows(rng):
    x = rng.standard_normal((3, 5, 40, 34)).astype(np.float32)[..., ::2]  # rows not contiguous
    w = rng.standard_normal((19, 17)).astype(np.float32)
    out = project(x, w)
    ref = x.astype(np.float64) @ w.astype(np.float64).T
    assert out.shape == (3, 5, 40, 19)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.sqrt(17))
