"""split_heads, merge_heads, causal_mask, sinusoidal_positional_encoding."""

import numpy as np
import pytest

import fastattn


@pytest.mark.parametrize("shape,h", [((2, 5, 12), 3), ((7, 8), 8), ((2, 3, 4, 10), 1), ((1, 0, 6), 2)])
def test_split_merge_round_trip_without_copies(rng, shape, h):
    x = rng.standard_normal(shape).astype(np.float32)
    s = fastattn.split_heads(x, h)
    d = shape[-1] // h
    assert s.shape == shape[:-2] + (h, shape[-2], d)
    assert np.shares_memory(s, x) or x.size == 0
    for i in range(h):  # head i is columns [i*d, (i+1)*d)
        np.testing.assert_array_equal(s[..., i, :, :], x[..., i * d:(i + 1) * d])
    m = fastattn.merge_heads(s)
    np.testing.assert_array_equal(m, x)
    assert np.shares_memory(m, x) or x.size == 0  # heads side by side: a view back


def test_split_heads_of_strided_input_is_a_view(rng):
    qkv = rng.standard_normal((2, 5, 3 * 16)).astype(np.float32)
    k = fastattn.split_heads(qkv[..., 16:32], 4)  # the packed-projection slice MultiHeadAttention uses
    assert np.shares_memory(k, qkv) and k.shape == (2, 4, 5, 4)
    np.testing.assert_array_equal(fastattn.merge_heads(k), qkv[..., 16:32])


def test_merge_heads_of_contiguous_heads_copies_correctly(rng):
    x = rng.standard_normal((2, 3, 5, 4))  # (B, H, L, D), C-contiguous as the kernel writes it
    m = fastattn.merge_heads(x)
    assert m.shape == (2, 5, 12)
    np.testing.assert_array_equal(m, x.transpose(0, 2, 1, 3).reshape(2, 5, 12))


def test_split_merge_errors():
    with pytest.raises(ValueError, match=r"last dim of \(2, 5, 10\) \(10\) is not a multiple of num_heads=3"):
        fastattn.split_heads(np.zeros((2, 5, 10)), 3)
    with pytest.raises(ValueError, match="num_heads must be >= 1"):
        fastattn.split_heads(np.zeros((2, 5, 10)), 0)
    with pytest.raises(ValueError, match=r"\(\.\.\., L, H\*D\)"):
        fastattn.split_heads(np.zeros(10), 2)
    with pytest.raises(ValueError, match=r"\(\.\.\., H, L, D\)"):
        fastattn.merge_heads(np.zeros((5, 10)))


@pytest.mark.parametrize("lq,lk", [(1, 1), (4, 4), (3, 7), (7, 3), (1, 9), (0, 3)])
def test_causal_mask(lq, lk):
    tl = fastattn.causal_mask(lq, lk)
    br = fastattn.causal_mask(lq, lk, "bottom_right")
    assert tl.dtype == np.bool_ and tl.shape == (lq, lk)
    for i in range(lq):
        for j in range(lk):
            assert tl[i, j] == (j <= i) and br[i, j] == (j <= i + lk - lq)
    if lq and lk:  # agrees with the kernel's own causal options
        rng = np.random.default_rng(0)
        q, k = rng.standard_normal((lq, 8)), rng.standard_normal((lk, 8))
        for mode, mask in (("top_left", tl), ("bottom_right", br)):
            np.testing.assert_allclose(
                fastattn.scaled_dot_product_attention(q, k, k, causal=mode),
                fastattn.scaled_dot_product_attention(q, k, k, attn_mask=mask), atol=1e-12)


def test_causal_mask_errors():
    with pytest.raises(ValueError, match="alignment must be"):
        fastattn.causal_mask(3, 3, "top")
    with pytest.raises(ValueError, match="lk must be >= 0"):
        fastattn.causal_mask(3, -1)


@pytest.mark.parametrize("length,dim", [(50, 16), (7, 9), (1, 1), (0, 4), (5, 0)])
@pytest.mark.parametrize("base", [10000.0, 500.0])
def test_sinusoidal_positional_encoding(length, dim, base):
    pe = fastattn.sinusoidal_positional_encoding(length, dim, base=base, dtype=np.float64)
    assert pe.shape == (length, dim) and pe.dtype == np.float64
    for p in range(length):
        for c in range(dim):
            i = c // 2
            angle = p / base ** (2 * i / dim)
            want = np.sin(angle) if c % 2 == 0 else np.cos(angle)
            assert abs(pe[p, c] - want) <= 1e-12, (p, c)
    pe32 = fastattn.sinusoidal_positional_encoding(length, dim, base=base)
    assert pe32.dtype == np.float32
    np.testing.assert_array_equal(pe32, pe.astype(np.float32))


def test_sinusoidal_errors():
    with pytest.raises(ValueError, match="base must be a positive"):
        fastattn.sinusoidal_positional_encoding(4, 4, base=0)
    with pytest.raises(TypeError, match="int64"):
        fastattn.sinusoidal_positional_encoding(4, 4, dtype=np.int64)
    with pytest.raises(TypeError, match="dim must be an int"):
        fastattn.sinusoidal_positional_encoding(4, 4.5)
