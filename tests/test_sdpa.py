"""Correctness of fastattn.scaled_dot_product_attention against the float64
reference (tests/reference.py), over shapes, masks, options and dtypes."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastattn

from helpers import (
    BF16, DTYPE_NAMES, check_sdpa, dtype_from_name, expected_out_dtype, make_mask, make_qkv, randn,
    sdpa,
)
from reference import sdpa_reference

HEAD_DIMS = [1, 3, 17, 63, 65, 129, 257]
LENGTHS = [(1, 1), (1, 7), (7, 1), (7, 65), (65, 7), (65, 65), (1000, 65), (65, 1000), (1000, 1000)]


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("lq,lk", LENGTHS)
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_head_dims_and_lengths(rng, dtype, d, lq, lk):
    dt = dtype_from_name(dtype)
    big = lq * lk >= 65000
    hq = 1 if big else 2
    q, k, v = make_qkv(rng, batch=() if big else (2,), hq=hq, lq=lq, lk=lk, d=d, dtype=dt)
    check_sdpa(q, k, v)


@pytest.mark.parametrize("d,dv", [(17, 65), (65, 17), (1, 129), (257, 3), (64, 1), (3, 257)])
@pytest.mark.parametrize("lq,lk", [(7, 65), (65, 7), (1000, 1000)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_value_dim_differs(rng, dtype, d, dv, lq, lk):
    dt = dtype_from_name(dtype)
    q, k, v = make_qkv(rng, hq=2, lq=lq, lk=lk, d=d, dv=dv, dtype=dt)
    out, *_ = check_sdpa(q, k, v, causal=True if lq == lk else False)
    assert out.shape == (2, lq, dv)


@pytest.mark.parametrize("d", [3, 17, 64, 129])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_large_magnitude_inputs(rng, dtype, d):
    # 5 * randn: scores with std ~ 25 stress the running max / rescaling
    dt = dtype_from_name(dtype)
    q, k, v = make_qkv(rng, batch=(2,), hq=2, lq=300, lk=333, d=d, dtype=dt, scale=5.0)
    check_sdpa(q, k, v)
    check_sdpa(q, k, v, causal="bottom_right")


@pytest.mark.parametrize("d", [16, 100])
@pytest.mark.parametrize("rise", [0.02, 0.2, 0.6, 1.0, 2.0])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_scores_rising_across_key_tiles(rng, dtype, rise, d):
    # Scores grow by `rise` per key towards the first key, and the kernel visits key tiles last to
    # first: each tile's max exceeds the running max by about rise * tile length (times log2 e in
    # the kernel's base 2). Small rises stay within the lazy path's headroom (8), middle ones make
    # it rescale the tile (up to 120), large ones redo it the classic way; the tile lengths of every
    # ISA (48, 64, 96 keys; on AVX2 head dims up to 64 take 96, longer ones 48) meet all three.
    # Larger rises would leave the float64 criterion below the rounding of scores in the thousands.
    dt = dtype_from_name(dtype)
    lq, lk = 40, 500
    q, k, v = make_qkv(rng, batch=(2,), hq=2, lq=lq, lk=lk, d=d, dtype=dt)
    q[..., 0] = 1
    k[..., 0] = rise * (lk - np.arange(lk))
    check_sdpa(q, k, v, scale=1.0)
    check_sdpa(q, k, v, scale=1.0, causal="bottom_right")


def test_2d_inputs(rng):
    for lq, lk in [(1, 1), (7, 65), (65, 7), (130, 130)]:
        q, k, v = make_qkv(rng, lq=lq, lk=lk, d=17, dv=9, two_d=True)
        out, lse, _, _ = check_sdpa(q, k, v)
        assert out.shape == (lq, 9) and lse.shape == (lq,)
        mask = make_mask(rng, "bool", (lq, lk))
        check_sdpa(q, k, v, attn_mask=mask, causal="bottom_right")
        check_sdpa(q, k, v, kv_lengths=lk // 2)
        check_sdpa(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), window=(3, 1))


def test_3d_inputs(rng):
    for lq, lk in [(1, 1), (7, 65), (65, 7)]:
        q, k, v = make_qkv(rng, hq=4, lq=lq, lk=lk, d=33, dv=9)
        out, lse, _, _ = check_sdpa(q, k, v)
        assert out.shape == (4, lq, 9) and lse.shape == (4, lq)
        check_sdpa(q, k, v, attn_mask=make_mask(rng, "additive_inf", (4, lq, lk)), causal=True)
        check_sdpa(q, k, v, kv_lengths=np.int64(lk - 1))
        # GQA in 3-D
        q8 = randn(rng, (8, lq, 33))
        check_sdpa(q8, k[:2], v[:2])


def test_return_lse_flag(rng):
    q, k, v = make_qkv(rng, batch=(2,), hq=3, lq=9, lk=11, d=8)
    out = sdpa(q, k, v)
    assert isinstance(out, np.ndarray) and out.shape == (2, 3, 9, 8)
    out2 = sdpa(q, k, v, return_lse=False)
    assert isinstance(out2, np.ndarray)
    res = sdpa(q, k, v, return_lse=True)
    assert isinstance(res, tuple) and len(res) == 2
    np.testing.assert_array_equal(res[0], out)
    np.testing.assert_array_equal(out2, out)


def test_lse_merges_key_blocks(rng):
    # The documented use of lse: attention over [K1; K2] from the two halves.
    q, k, v = make_qkv(rng, batch=(2,), hq=2, lq=33, lk=100, d=16, dtype=np.float64)
    o, l = sdpa(q, k, v, return_lse=True)
    o1, l1 = sdpa(q, k[..., :37, :], v[..., :37, :], return_lse=True)
    o2, l2 = sdpa(q, k[..., 37:, :], v[..., 37:, :], return_lse=True)
    lm = np.logaddexp(l1, l2)
    merged = np.exp(l1 - lm)[..., None] * o1 + np.exp(l2 - lm)[..., None] * o2
    np.testing.assert_allclose(lm, l, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(merged, o, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- masks

MASK_KINDS = ["none", "bool", "additive", "additive_inf"]
MASK_SHAPES = ["full", "lq_lk", "1_lk", "hq_1_lk", "b_1_lq_lk", "1_1_1_lk"]


def mask_shape(kind, b, hq, lq, lk):
    return {
        "full": (b, hq, lq, lk),
        "lq_lk": (lq, lk),
        "1_lk": (1, lk),
        "hq_1_lk": (hq, 1, lk),
        "b_1_lq_lk": (b, 1, lq, lk),
        "1_1_1_lk": (1, 1, 1, lk),
    }[kind]


@pytest.mark.parametrize("lq,lk", [(7, 65), (65, 7), (33, 33)])
@pytest.mark.parametrize("causal", [False, "top_left", "bottom_right"])
@pytest.mark.parametrize("shape", MASK_SHAPES)
@pytest.mark.parametrize("kind", MASK_KINDS[1:])
def test_masks(rng, kind, shape, causal, lq, lk):
    b, hq = 2, 3
    q, k, v = make_qkv(rng, batch=(b,), hq=hq, lq=lq, lk=lk, d=19, dv=10)
    mask = make_mask(rng, kind, mask_shape(shape, b, hq, lq, lk))
    if kind == "bool" and shape == "hq_1_lk":
        mask[1] = False  # a whole head sees nothing
    check_sdpa(q, k, v, attn_mask=mask, causal=causal)


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("dtype", ["float64", "float16", "bfloat16"])
def test_masks_other_dtypes(rng, kind, dtype):
    dt = dtype_from_name(dtype)
    q, k, v = make_qkv(rng, batch=(2,), hq=2, lq=40, lk=70, d=24, dtype=dt)
    mdt = np.float64 if dt == np.float64 else np.float32
    mask = make_mask(rng, kind, (2, 1, 40, 70), dtype=mdt)
    check_sdpa(q, k, v, attn_mask=mask)
    check_sdpa(q, k, v, attn_mask=mask, causal="bottom_right", window=(10, None))


@pytest.mark.parametrize("kind", MASK_KINDS[1:])
@pytest.mark.parametrize("causal", [False, True, "bottom_right"])
def test_masks_long(rng, kind, causal):
    q, k, v = make_qkv(rng, hq=2, lq=1000, lk=777, d=64)
    check_sdpa(q, k, v, attn_mask=make_mask(rng, kind, (1000, 777)), causal=causal)


@pytest.mark.parametrize("mdtype", ["float64", "float16", "float32"])
def test_additive_mask_dtype_differs_from_inputs(rng, mdtype):
    q, k, v = make_qkv(rng, batch=(2,), hq=2, lq=30, lk=45, d=16)
    mask = make_mask(rng, "additive_inf", (30, 45), np.dtype(mdtype))
    out, *_ = check_sdpa(q, k, v, attn_mask=mask)
    assert out.dtype == np.float32  # the mask does not promote the output
    q64, k64, v64 = (a.astype(np.float64) for a in (q, k, v))
    out64, *_ = check_sdpa(q64, k64, v64, attn_mask=mask)
    assert out64.dtype == np.float64


def test_mask_broadcast_views_and_noncontiguous(rng):
    q, k, v = make_qkv(rng, batch=(2,), hq=3, lq=20, lk=33, d=16)
    row = make_mask(rng, "bool", (1, 33))
    check_sdpa(q, k, v, attn_mask=np.broadcast_to(row, (2, 3, 20, 33)))  # zero strides
    big = make_mask(rng, "additive_inf", (3, 40, 66))
    check_sdpa(q, k, v, attn_mask=big[:, ::2, ::2])  # strided
    bigb = make_mask(rng, "bool", (33, 20))
    check_sdpa(q, k, v, attn_mask=bigb.T)  # transposed
    check_sdpa(q, k, v, attn_mask=bigb.T.tolist())  # nested lists of bools


def test_mask_all_false_and_all_neg_inf(rng):
    q, k, v = make_qkv(rng, batch=(2,), hq=2, lq=5, lk=9, d=8)
    for mask in (np.zeros((5, 9), bool), np.full((5, 9), -np.inf, np.float32)):
        out, lse = sdpa(q, k, v, attn_mask=mask, return_lse=True)
        assert out.shape == (2, 2, 5, 8)
        assert np.all(out == 0) and not np.isnan(out).any()
        assert np.all(lse == -np.inf)


def test_mask_single_visible_key(rng):
    # each row sees exactly one key: output is that value row, lse is its score
    lq, lk = 9, 13
    q, k, v = make_qkv(rng, hq=2, lq=lq, lk=lk, d=8, dtype=np.float64)
    cols = rng.integers(0, lk, size=lq)
    mask = np.zeros((lq, lk), bool)
    mask[np.arange(lq), cols] = True
    out, lse = sdpa(q, k, v, attn_mask=mask, return_lse=True)
    np.testing.assert_allclose(out, v[:, cols, :], rtol=1e-13, atol=1e-14)
    scores = np.einsum("hid,hid->hi", q, k[:, cols, :]) / math.sqrt(8)
    np.testing.assert_allclose(lse, scores, rtol=1e-12, atol=1e-13)


# ----------------------------------------------------------------------------- causal / window


@pytest.mark.parametrize("lq,lk", [(1, 1), (1, 65), (65, 1), (7, 65), (65, 7), (64, 64), (1000, 65), (65, 1000)])
@pytest.mark.parametrize("causal", [False, None, True, "top_left", "bottom_right"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_causal(rng, dtype, causal, lq, lk):
    dt = dtype_from_name(dtype)
    q, k, v = make_qkv(rng, batch=(2,), hq=2, lq=lq, lk=lk, d=17, dtype=dt)
    out, lse, _, _ = check_sdpa(q, k, v, causal=causal)
    if causal == "bottom_right" and lq > lk:
        assert np.all(out[..., : lq - lk, :] == 0)
        assert np.all(lse[..., : lq - lk] == -np.inf)


def test_causal_true_equals_top_left(rng):
    q, k, v = make_qkv(rng, hq=2, lq=30, lk=50, d=16)
    a = sdpa(q, k, v, causal=True)
    b = sdpa(q, k, v, causal="top_left")
    c = sdpa(q, k, v, attn_mask=np.tril(np.ones((30, 50), bool)))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)
    d = sdpa(q, k, v, causal="bottom_right")
    e = sdpa(q, k, v, attn_mask=np.tril(np.ones((30, 50), bool), k=20))
    np.testing.assert_allclose(d, e, rtol=1e-5, atol=1e-6)
    assert np.abs(a - d).max() > 1e-3  # the two alignments really differ here


WINDOWS = [(0, 0), (3, 0), (0, 3), (5, 2), (None, 0), (0, None), (None, None), (2, None), (None, 5),
           (0, 1000), (1000, 1000)]


@pytest.mark.parametrize("lq,lk", [(65, 65), (7, 65), (65, 7)])
@pytest.mark.parametrize("causal", [False, True, "bottom_right"])
@pytest.mark.parametrize("window", WINDOWS, ids=str)
def test_window(rng, window, causal, lq, lk):
    q, k, v = make_qkv(rng, batch=(2,), hq=2, lq=lq, lk=lk, d=9, dv=12)
    check_sdpa(q, k, v, window=window, causal=causal)


@pytest.mark.parametrize("lq", [16, 32, 64, 128, 160, 250])
@pytest.mark.parametrize("causal,window", [(False, None), (True, None), ("bottom_right", None),
                                           (False, (20, 5)), (True, (40, 0))], ids=str)
def test_query_block_widths(rng, lq, causal, window):
    # Query counts per work item that take the narrower register blocks (a last block of 9-16 or
    # 25-32 queries on AVX2), with the band cutting tiles through those blocks.
    q, k, v = make_qkv(rng, batch=(2,), hq=2, lq=lq, lk=lq + 13, d=17)
    check_sdpa(q, k, v, window=window, causal=causal)


def test_window_as_list_and_long(rng):
    q, k, v = make_qkv(rng, hq=1, lq=1000, lk=1000, d=32)
    check_sdpa(q, k, v, window=[16, 16])
    check_sdpa(q, k, v, window=(128, 0), causal="bottom_right")
    check_sdpa(q, k, v, window=(np.int64(7), np.int32(3)))


@pytest.mark.parametrize("window,causal", [((100, 0), True), ((64, 64), False), ((0, 200), False),
                                           ((300, None), "bottom_right"), ((None, 37), False)])
def test_window_long_sequences(rng, window, causal):
    # long enough that whole key blocks fall outside the window on both sides
    q, k, v = make_qkv(rng, hq=1, lq=3000, lk=3500, d=32)
    check_sdpa(q, k, v, window=window, causal=causal)


def test_window_none_none_is_no_window(rng):
    q, k, v = make_qkv(rng, hq=2, lq=20, lk=31, d=8)
    np.testing.assert_allclose(sdpa(q, k, v, window=(None, None)), sdpa(q, k, v), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(sdpa(q, k, v, window=(None, None), causal=True), sdpa(q, k, v, causal=True),
                               rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- kv_lengths


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("causal", [False, "bottom_right"])
def test_kv_lengths(rng, dtype, causal):
    dt = dtype_from_name(dtype)
    lk = 65
    q, k, v = make_qkv(rng, batch=(5,), hq=4, hkv=2, lq=9, lk=lk, d=17, dtype=dt)
    lens = np.array([0, lk, 1, 33, 64])
    out, lse, _, _ = check_sdpa(q, k, v, kv_lengths=lens, causal=causal)
    assert np.all(out[0] == 0) and np.all(lse[0] == -np.inf)
    if causal is False:
        # same as cutting the keys at the length
        for b in range(1, 5):
            o2 = sdpa(q[b], k[b, :, : lens[b]], v[b, :, : lens[b]])
            np.testing.assert_allclose(out[b], o2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lk", [1, 100, 5000])
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_decoding_shapes(rng, lk, dtype):
    # one (or a few) query rows against a long KV cache, GQA, per-sequence lengths
    dt = np.dtype(dtype)
    for lq in (1, 4):
        q, k, v = make_qkv(rng, batch=(4,), hq=8, hkv=2, lq=lq, lk=lk, d=64, dtype=dt)
        lens = rng.integers(0, lk + 1, size=4)
        lens[0] = lk
        check_sdpa(q, k, v, kv_lengths=lens)
        check_sdpa(q, k, v, causal="bottom_right")


@pytest.mark.parametrize("group", [2, 3, 4])
@pytest.mark.parametrize("d,dv", [(3, 5), (13, 17), (24, 40), (65, 3), (129, 7)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_decoding_query_groups_and_odd_dims(rng, group, d, dv, dtype):
    # Decode with 2-4 query heads per kv head: the row-wise path's score and value-sum blocks for
    # several queries (3 queries run as 4 with a padding query), with head dims that leave vector
    # tails.
    q, k, v = make_qkv(rng, batch=(2,), hq=2 * group, hkv=2, lq=1, lk=100, d=d, dv=dv,
                       dtype=np.dtype(dtype))
    check_sdpa(q, k, v)
    check_sdpa(q, k, v, kv_lengths=np.array([100, 37]))


def test_many_small_problems(rng):
    q, k, v = make_qkv(rng, batch=(64,), hq=8, hkv=4, lq=3, lk=5, d=8)
    check_sdpa(q, k, v, causal="bottom_right", kv_lengths=rng.integers(0, 6, size=64))


@pytest.mark.parametrize("kvl", ["int", "np_scalar", "int32_arr", "uint8_arr", "shape_b1", "shape_1"])
def test_kv_lengths_forms(rng, kvl):
    b1, b2, lk = 2, 3, 20
    q, k, v = make_qkv(rng, batch=(b1, b2), hq=2, lq=6, lk=lk, d=8)
    vals = {
        "int": 7,
        "np_scalar": np.int16(13),
        "int32_arr": rng.integers(0, lk + 1, size=(b1, b2)).astype(np.int32),
        "uint8_arr": rng.integers(0, lk + 1, size=(b2,)).astype(np.uint8),
        "shape_b1": rng.integers(0, lk + 1, size=(b1, 1)),
        "shape_1": np.array([lk]),
    }[kvl]
    check_sdpa(q, k, v, kv_lengths=vals)
    check_sdpa(q, k, v, kv_lengths=vals, causal=True, attn_mask=make_mask(rng, "bool", (6, lk)))
    if np.ndim(vals) and np.size(vals) > 1:
        check_sdpa(q, k, v, kv_lengths=np.asarray(vals).tolist())  # a list is fine too
        strided = np.repeat(np.asarray(vals), 2, axis=-1)[..., ::2]  # non-contiguous
        check_sdpa(q, k, v, kv_lengths=strided)


def test_kv_lengths_with_broadcast_batch(rng):
    q = randn(rng, (2, 1, 4, 9, 16))
    k = randn(rng, (3, 2, 30, 16))
    v = randn(rng, (3, 2, 30, 5))
    lens = np.array([[0, 30, 12], [5, 1, 29]])
    out, *_ = check_sdpa(q, k, v, kv_lengths=lens)
    assert out.shape == (2, 3, 4, 9, 5)


# ----------------------------------------------------------------------------- GQA and batch broadcasting


@pytest.mark.parametrize("hq,hkv", [(8, 2), (8, 1), (4, 4), (6, 3), (3, 1)])
@pytest.mark.parametrize("causal", [False, "bottom_right"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gqa(rng, dtype, hq, hkv, causal):
    dt = dtype_from_name(dtype)
    q, k, v = make_qkv(rng, batch=(2,), hq=hq, hkv=hkv, lq=17, lk=40, d=20, dv=7, dtype=dt)
    out, *_ = check_sdpa(q, k, v, causal=causal)
    # explicit repeat_interleave expansion gives the same thing
    g = hq // hkv
    full = sdpa(q, np.repeat(k, g, axis=1), np.repeat(v, g, axis=1), causal=causal)
    np.testing.assert_allclose(out, full, rtol=1e-5 if dt == np.float32 else 1e-12, atol=1e-6)


def test_gqa_head_mapping(rng):
    # distinct kv heads with very different values: query head h must use kv head h // 4
    hq, hkv = 8, 2
    q = randn(rng, (hq, 5, 4))
    k = randn(rng, (hkv, 6, 4))
    v = np.stack([np.full((6, 3), 100.0 * (g + 1), np.float32) for g in range(hkv)])
    out = sdpa(q, k, v)
    for h in range(hq):
        np.testing.assert_allclose(out[h], 100.0 * (h // 4 + 1), rtol=1e-6)


@pytest.mark.parametrize("qb,kb,vb", [
    ((2, 1), (3,), (3,)),
    ((1,), (4,), (4,)),
    ((4,), (1,), (1,)),
    ((3,), (), ()),
    ((), (2,), (2,)),
    ((2, 3), (2, 3), (1, 3)),
    ((2, 1), (1, 3), (2, 3)),
    ((1, 1, 2), (3, 1, 1), (3, 1, 1)),
])
def test_batch_broadcasting(rng, qb, kb, vb):
    hq, hkv, lq, lk, d, dv = 4, 2, 7, 11, 10, 6
    q = randn(rng, qb + (hq, lq, d))
    k = randn(rng, kb + (hkv, lk, d))
    v = randn(rng, vb + (hkv, lk, dv))
    batch = np.broadcast_shapes(qb, kb, vb)
    out, lse, _, _ = check_sdpa(q, k, v, causal=True)
    assert out.shape == batch + (hq, lq, dv)
    assert lse.shape == batch + (hq, lq)
    check_sdpa(q, k, v, attn_mask=make_mask(rng, "bool", (hq, lq, lk)))


# ----------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("d", [1, 17, 64, 129])
@pytest.mark.parametrize("causal", [False, "bottom_right"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_dtypes(rng, dtype, causal, d):
    dt = dtype_from_name(dtype)
    q, k, v = make_qkv(rng, batch=(2,), hq=4, hkv=2, lq=70, lk=130, d=d, dv=max(d, 8), dtype=dt)
    out, lse, _, _ = check_sdpa(q, k, v, causal=causal)
    assert out.dtype == dt and lse.dtype == np.float32


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_dtypes_long_and_large(rng, dtype):
    dt = dtype_from_name(dtype)
    q, k, v = make_qkv(rng, hq=1, lq=1000, lk=1000, d=65, dtype=dt, scale=3.0)
    check_sdpa(q, k, v, causal=True)
    check_sdpa(q, k, v, kv_lengths=999, window=(100, 100))


@pytest.mark.parametrize("dq,dk,dv", [
    ("float16", "bfloat16", "bfloat16"),
    ("bfloat16", "float16", "float16"),
    ("float32", "float64", "float32"),
    ("float16", "float32", "float16"),
    ("bfloat16", "float32", "bfloat16"),
    ("float16", "float16", "float64"),
    ("float32", "float32", "float16"),
])
def test_mixed_dtypes(rng, dq, dk, dv):
    dts = [dtype_from_name(x) for x in (dq, dk, dv)]
    q = randn(rng, (2, 9, 16), dts[0])
    k = randn(rng, (2, 12, 16), dts[1])
    v = randn(rng, (2, 12, 8), dts[2])
    out, *_ = check_sdpa(q, k, v, causal=True)
    assert out.dtype == expected_out_dtype(*dts)


def test_python_lists_accepted(rng):
    q, k, v = make_qkv(rng, lq=3, lk=4, d=2, dtype=np.float64, two_d=True)
    out = sdpa(q.tolist(), k.tolist(), v.tolist())
    ref, _ = sdpa_reference(q, k, v)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-13)


# ----------------------------------------------------------------------------- scale


@pytest.mark.parametrize("scale", [0.3, 2.0, -1.0, 1e-3, np.float32(0.7), 1])
def test_explicit_scale(rng, scale):
    q, k, v = make_qkv(rng, batch=(2,), hq=2, lq=13, lk=21, d=16)
    check_sdpa(q, k, v, scale=scale)
    check_sdpa(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), scale=scale, causal=True)


def test_scale_zero_is_uniform_average(rng):
    # scale=0.0 must not be mistaken for "default": every visible key gets equal weight
    q, k, v = make_qkv(rng, hq=2, lq=6, lk=10, d=8, dtype=np.float64)
    out, lse = sdpa(q, k, v, scale=0.0, return_lse=True)
    np.testing.assert_allclose(out, np.broadcast_to(v.mean(axis=1, keepdims=True), out.shape), rtol=1e-12)
    np.testing.assert_allclose(lse, math.log(10), rtol=1e-12)
    out_c = sdpa(q, k, v, scale=0.0, causal=True)
    cum = np.cumsum(v, axis=1)[:, :6] / np.arange(1, 7)[:, None]
    np.testing.assert_allclose(out_c, cum, rtol=1e-12)


def test_default_scale(rng):
    q, k, v = make_qkv(rng, hq=2, lq=6, lk=10, d=37, dtype=np.float64)
    np.testing.assert_allclose(sdpa(q, k, v), sdpa(q, k, v, scale=1 / math.sqrt(37)), rtol=1e-13, atol=1e-15)


# ----------------------------------------------------------------------------- layouts


def test_noncontiguous_inputs(rng):
    hq, lq, lk, d, dv = 4, 33, 47, 24, 13
    bigq = randn(rng, (2, hq, 2 * lq, d + 5))
    q = bigq[..., ::2, 3 : 3 + d]  # step in L, offset in D
    kl = randn(rng, (2, lk, hq, d))
    k = np.swapaxes(kl, 1, 2)  # (2, H, Lk, D) from a (2, Lk, H, D) array
    bigv = randn(rng, (2, hq, lk, dv + 11))
    v = bigv[..., :dv]  # row stride != Dv
    assert not (q.flags.c_contiguous or k.flags.c_contiguous or v.flags.c_contiguous)
    qc, kc, vc = (np.ascontiguousarray(a) for a in (q, k, v))
    mask = make_mask(rng, "additive_inf", (hq, 2 * lq, lk))[:, ::2]
    out, lse, _, _ = check_sdpa(q, k, v, attn_mask=mask, causal="bottom_right")
    out_c, lse_c = sdpa(qc, kc, vc, attn_mask=np.ascontiguousarray(mask), causal="bottom_right",
                        return_lse=True)
    np.testing.assert_allclose(out, out_c, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(lse, lse_c, rtol=1e-6, atol=1e-6)
    # negative strides and Fortran order
    qf = np.asfortranarray(qc)
    kr = kc[:, :, ::-1, :]
    vr = vc[:, :, ::-1, :]
    check_sdpa(qf, kr, vr)
    check_sdpa(qf, kr, vr, kv_lengths=np.array([5, 40]))
    # broadcast (zero-stride) views
    check_sdpa(np.broadcast_to(qc[:1], qc.shape), kc, vc)
    check_sdpa(qc, np.broadcast_to(kc[:, :1], kc.shape), np.broadcast_to(vc[:, :1], vc.shape))


@pytest.mark.parametrize("dtype", ["float64", "float16", "bfloat16"])
def test_noncontiguous_other_dtypes(rng, dtype):
    dt = dtype_from_name(dtype)
    big = randn(rng, (3, 40, 2, 20), dt)
    q = np.swapaxes(big, 1, 2)[:, :, ::3, :17]
    k = np.swapaxes(big, 1, 2)[:, :, 1::2, 2:19]
    v = np.swapaxes(big, 1, 2)[:, :, ::2, ::2]
    check_sdpa(q, k, v, causal=True)


@pytest.mark.parametrize("dtype", [">f4", ">f8", ">f2"])
def test_byteswapped_inputs(rng, dtype):
    # non-native byte order is still float32/float64/float16 data (e.g. read from a file)
    q, k, v = make_qkv(rng, batch=(2,), hq=2, lq=9, lk=17, d=16, dtype=np.dtype(dtype))
    out, *_ = check_sdpa(q, k, v, causal=True)
    assert out.dtype == np.dtype(dtype).newbyteorder("=")
    native = [a.astype(a.dtype.newbyteorder("=")) for a in (q, k, v)]
    np.testing.assert_array_equal(out, sdpa(*native, causal=True))


def test_unaligned_inputs(rng):
    q, k, v = make_qkv(rng, batch=(2,), hq=2, lq=9, lk=17, d=16)
    buf = np.zeros(q.nbytes + 1, np.uint8)[1:].view(np.float32).reshape(q.shape)
    buf[...] = q
    assert not buf.flags.aligned
    np.testing.assert_array_equal(sdpa(buf, k, v), sdpa(q, k, v))


def test_readonly_inputs(rng):
    q, k, v = make_qkv(rng, batch=(2,), hq=2, lq=9, lk=17, d=16)
    mask = make_mask(rng, "bool", (9, 17))
    lens = np.array([3, 17])
    expected = sdpa(q, k, v, attn_mask=mask, kv_lengths=lens)
    for a in (q, k, v, mask, lens):
        a.flags.writeable = False
    out, *_ = check_sdpa(q, k, v, attn_mask=mask, kv_lengths=lens)
    np.testing.assert_array_equal(out, expected)
    # inputs are not modified
    q2 = q.copy()
    sdpa(q, k, v)
    np.testing.assert_array_equal(q, q2)


def test_inputs_not_modified(rng):
    q, k, v = make_qkv(rng, batch=(2,), hq=4, hkv=2, lq=9, lk=17, d=16)
    mask = make_mask(rng, "additive_inf", (9, 17))
    copies = [a.copy() for a in (q, k, v, mask)]
    sdpa(q, k, v, attn_mask=mask, causal=True, return_lse=True)
    for a, c in zip((q, k, v, mask), copies):
        np.testing.assert_array_equal(a, c)


# ----------------------------------------------------------------------------- out=


@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_out_parameter(rng, dtype):
    dt = dtype_from_name(dtype)
    q, k, v = make_qkv(rng, batch=(2,), hq=4, hkv=2, lq=9, lk=17, d=16, dv=5, dtype=dt)
    expected = sdpa(q, k, v, causal=True)
    out = np.full((2, 4, 9, 5), 7, dtype=dt)
    res = sdpa(q, k, v, causal=True, out=out)
    assert res is out
    np.testing.assert_array_equal(out, expected)
    out2 = np.empty_like(out)
    res2 = sdpa(q, k, v, causal=True, out=out2, return_lse=True)
    assert isinstance(res2, tuple) and res2[0] is out2
    np.testing.assert_array_equal(out2, expected)


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_out_parameter_2d_and_empty_rows(rng):
    q, k, v = make_qkv(rng, lq=6, lk=4, d=8, two_d=True)
    out = np.full((6, 8), np.nan, np.float32)
    res = sdpa(q, k, v, causal="bottom_right", out=out)
    assert res is out
    assert np.all(out[:2] == 0)  # rows with no visible key are written as zeros
    check_sdpa(q, k, v, causal="bottom_right")
    # An ndarray subclass works as out= too (np.matrix stays 2-D when reshaped to kernel form).
    m = np.asmatrix(np.zeros((6, 8), np.float32))
    assert sdpa(q, k, v, out=m) is m
    np.testing.assert_array_equal(np.asarray(m), sdpa(q, k, v))


# ----------------------------------------------------------------------------- empty sizes


@pytest.mark.parametrize("shapes", [
    ((2, 3, 0, 8), (2, 3, 5, 8), (2, 3, 5, 4)),   # Lq = 0
    ((2, 3, 6, 8), (2, 3, 0, 8), (2, 3, 0, 4)),   # Lk = 0
    ((0, 3, 6, 8), (0, 3, 5, 8), (0, 3, 5, 4)),   # batch 0
    ((0, 3, 6, 8), (1, 3, 5, 8), (1, 3, 5, 4)),   # batch 0 by broadcasting
    ((6, 8), (0, 8), (0, 4)),                    # 2-D, Lk = 0
    ((0, 8), (5, 8), (5, 4)),                    # 2-D, Lq = 0
    ((2, 0, 6, 8), (2, 2, 5, 8), (2, 2, 5, 4)),   # Hq = 0 with Hkv > 0 (0 is a multiple of 2)
])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_empty_sizes(rng, shapes, dtype):
    dt = np.dtype(dtype)
    q, k, v = (randn(rng, s, dt) for s in shapes)
    out, lse = sdpa(q, k, v, return_lse=True)
    ref, ref_lse = sdpa_reference(q, k, v)
    assert out.shape == ref.shape and out.dtype == dt
    assert lse.shape == ref_lse.shape
    assert np.all(out == 0) and np.all(lse == -np.inf)
    out2, lse2 = sdpa(q, k, v, return_lse=True, causal="bottom_right")
    assert out2.shape == ref.shape and np.all(out2 == 0) and np.all(lse2 == -np.inf)


def test_lk_zero_with_kv_lengths_and_mask(rng):
    q = randn(rng, (2, 3, 6, 8))
    k = randn(rng, (2, 3, 0, 8))
    v = randn(rng, (2, 3, 0, 4))
    out, lse = sdpa(q, k, v, return_lse=True, kv_lengths=0, attn_mask=np.zeros((6, 0), bool))
    assert out.shape == (2, 3, 6, 4) and np.all(out == 0) and np.all(lse == -np.inf)


# ----------------------------------------------------------------------------- special values


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nan_in_query_row_stays_in_that_row(rng, dtype):
    dt = np.dtype(dtype)
    q, k, v = make_qkv(rng, batch=(2,), hq=2, lq=20, lk=30, d=16, dtype=dt)
    q[1, 0, 5, 3] = np.nan
    out, lse = sdpa(q, k, v, return_lse=True)
    bad = np.zeros(out.shape[:-1], bool)
    bad[1, 0, 5] = True
    assert np.all(np.isnan(out[bad])) and np.isnan(lse[1, 0, 5])
    assert np.all(np.isfinite(out[~bad])) and np.all(np.isfinite(lse[~bad]))
    ref, _ = sdpa_reference(q, k, v)
    np.testing.assert_allclose(out[~bad], ref[~bad], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("where", ["key", "value"])
def test_nan_in_key_or_value_reaches_only_rows_that_see_it(rng, where):
    lq = lk = 40
    j = 17
    q, k, v = make_qkv(rng, batch=(2,), hq=2, lq=lq, lk=lk, d=16)
    (k if where == "key" else v)[0, 1, j, 2] = np.nan
    out = sdpa(q, k, v, causal=True)
    rows_nan = np.isnan(out).any(axis=-1)
    expected = np.zeros(rows_nan.shape, bool)
    expected[0, 1, j:] = True  # causal: rows i >= j see key j
    if where == "key":
        np.testing.assert_array_equal(rows_nan, expected)
    else:
        # a NaN value entry poisons column 2 of the rows that see it
        np.testing.assert_array_equal(np.isnan(out[..., 2]), expected)
        assert np.all(np.isfinite(np.delete(out, 2, axis=-1)))
    # masked away by a boolean mask or kv_lengths: no NaN anywhere
    mask = np.ones((lq, lk), bool)
    mask[:, j] = False
    assert np.all(np.isfinite(sdpa(q, k, v, attn_mask=mask)))
    assert np.all(np.isfinite(sdpa(q, k, v, kv_lengths=np.array([j, lk]))[0]))
    assert np.all(np.isfinite(sdpa(q, k, v, window=(0, 0), causal=True)[0, 1, :j]))


@pytest.mark.parametrize("dtype,kept,skipped", [("float32", 85, 110), ("float64", 705, 750)])
@pytest.mark.parametrize("lq", [1, 64], ids=["rowwise", "blocked"])
@pytest.mark.parametrize("key", [7, 95], ids=["lazy-tile", "first-tile"])
def test_visible_value_whose_weight_flushed_to_zero_is_skipped(rng, dtype, kept, skipped, lq, key):
    # The rule README states: a weight that is exactly 0 skips its value, as a masked one does.
    # The SIMD exponential flushes below 2^-125 (float32) / 2^-1021 (float64), a score gap of
    # about 87 / 708; the scalar path's std::exp2 keeps subnormals, to about 103 / 744. Short of
    # both the NaN value reaches every row, past both it reaches none. Key 7 lies in a lazily
    # rescaled tile, key 95 in the first tile visited (the classic path).
    dt = np.dtype(dtype)
    for gap, reaches in ((kept, True), (skipped, False)):
        q = np.zeros((1, lq, 16), dt)
        q[..., 0] = 4.0  # score of key j = k[j, 0] (scale 1/4)
        k = (0.01 * rng.standard_normal((1, 100, 16))).astype(dt)
        k[..., key, :] = 0
        k[..., key, 0] = -gap
        v = randn(rng, (1, 100, 16), dt)
        v[..., key, 3] = np.nan
        out = sdpa(q, k, v)
        assert np.isnan(out[..., 3]).all() if reaches else np.isfinite(out).all(), f"gap {gap}"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("lq", [1, 17, 100], ids=["rowwise", "blocked-narrow", "blocked"])
@pytest.mark.parametrize("inf_key,big_key", [(64, 3), (0, 69), (69, 0)])
def test_value_seen_before_a_far_larger_score_is_skipped(rng, dtype, lq, inf_key, big_key):
    # Tiles are visited last to first, so with inf_key 64 / big_key 3 the Inf value is summed with
    # a weight of 1 before key 3's score (larger by 1e28) rescales everything before it by exactly
    # 0. Its final weight is exactly 0, so by the README's rule it is skipped, not 0 x Inf = NaN.
    dt = np.dtype(dtype)
    q = np.ones((lq, 1), dt)
    k = np.zeros((70, 1), dt)
    k[big_key] = 1e28
    v = np.arange(70, dtype=dt)[:, None] * np.ones((1, 2), dt)
    v[inf_key, 1] = np.inf
    out = sdpa(q, k, v, scale=1.0)
    np.testing.assert_array_equal(out, np.broadcast_to(v[big_key], out.shape))
    np.testing.assert_array_equal(fastattn.attention(q, k, v, score="dot"), out)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("length", [4, 200])
@pytest.mark.parametrize("band", [{"causal": True}, {"window": (0, 0)}], ids=["causal", "window"])
def test_nan_or_inf_mask_entry_at_a_key_the_band_hides(rng, bad, length, band):
    # The band hides the last key from every row but the last; a NaN or +Inf additive mask entry
    # there must not reach the rows that do not see that key (it used to add to the band's -inf).
    q, k, v = make_qkv(rng, hq=2, lq=length, lk=length, d=16)
    zeros = np.zeros((length, length), np.float32)
    mask = zeros.copy()
    mask[:, -1] = bad
    out, lse = sdpa(q, k, v, attn_mask=mask, return_lse=True, **band)
    want, want_lse = sdpa(q, k, v, attn_mask=zeros, return_lse=True, **band)
    # Equal up to rounding: with a NaN row among its queries, the row-wise path redoes the item's
    # value sums in its careful order (which an unfused multiply-add rounds differently).
    np.testing.assert_allclose(out[..., :-1, :], want[..., :-1, :], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(lse[..., :-1], want_lse[..., :-1], rtol=1e-6, atol=1e-6)
    assert np.isnan(out[..., -1, :]).all()  # the last row sees it: s + NaN, or +Inf - Inf


@pytest.mark.parametrize("where", ["query", "key", "value"])
def test_inf_reaches_only_rows_that_see_it(rng, where):
    lq = lk = 40
    j = 21
    q, k, v = make_qkv(rng, batch=(2,), hq=2, lq=lq, lk=lk, d=16)
    arr = {"query": q, "key": k, "value": v}[where]
    arr[1, 0, j, 5] = np.inf
    out, lse = sdpa(q, k, v, causal=True, return_lse=True)
    finite_rows = np.isfinite(out).all(axis=-1)
    touched = np.zeros(finite_rows.shape, bool)
    if where == "query":
        touched[1, 0, j] = True
    else:
        touched[1, 0, j:] = True  # rows that see key j
    assert np.all(finite_rows[~touched]), "Inf leaked into rows that do not read it"
    assert np.all(np.isfinite(lse[~touched]))
    if where == "value":
        assert not np.isfinite(out[1, 0, j:, 5]).any()
    ref, _ = sdpa_reference(q, k, v, causal=True)
    np.testing.assert_allclose(out[~touched], ref[~touched], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_huge_logits_no_nan(rng, dtype):
    dt = dtype_from_name(dtype)
    lq, lk, d = 9, 50, 8
    q = rng.standard_normal((2, lq, d))
    k = rng.standard_normal((2, lk, d))
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    q, k = q.astype(dt), k.astype(dt)
    v = randn(rng, (2, lk, 6), dt)
    s = np.einsum("hid,hjd->hij", q.astype(np.float64), k.astype(np.float64))
    top2 = np.sort(s, axis=-1)[..., -2:]
    assert np.all(top2[..., 1] - top2[..., 0] > 1e-7), "ambiguous argmax; re-run"
    out = sdpa(q, k, v, scale=1e25)
    assert not np.isnan(out.astype(np.float64)).any()
    best = np.argmax(s, axis=-1)
    expected = np.take_along_axis(v, best[..., None], axis=1)
    np.testing.assert_array_equal(out, expected)
    # and with causal (row 0 sees only key 0)
    out_c = sdpa(q, k, v, scale=1e25, causal=True)
    assert not np.isnan(out_c.astype(np.float64)).any()
    np.testing.assert_array_equal(out_c[:, 0], v[:, 0])


def test_large_negative_additive_mask_is_not_empty(rng):
    # finite but huge negative additive mask: the row is NOT empty, softmax is shift invariant
    q, k, v = make_qkv(rng, hq=1, lq=4, lk=6, d=8, dtype=np.float64)
    mask = np.full((4, 6), -1e30)
    mask[:, 0] = 0.0
    out, lse = sdpa(q, k, v, attn_mask=mask, return_lse=True)
    np.testing.assert_allclose(out, np.broadcast_to(v[:, :1], out.shape), rtol=1e-12)
    mask2 = np.full((4, 6), -1e30)
    out2, lse2 = sdpa(q, k, v, attn_mask=mask2, return_lse=True)
    ref2, ref_lse2 = sdpa_reference(q, k, v, attn_mask=mask2)
    np.testing.assert_allclose(out2, ref2, rtol=1e-10, atol=1e-12)
    assert np.all(np.isfinite(lse2))


# ----------------------------------------------------------------------------- combined options, property based


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_everything_combined(rng, dtype):
    dt = dtype_from_name(dtype)
    q = randn(rng, (2, 1, 8, 37, 33), dt)
    k = randn(rng, (3, 2, 71, 33), dt)
    v = randn(rng, (3, 2, 71, 20), dt)
    mdt = np.float64 if dt == np.float64 else np.float32
    mask = make_mask(rng, "additive_inf", (8, 37, 71), mdt)
    lens = rng.integers(0, 72, size=(2, 3))
    lens[0, 0], lens[1, 2] = 0, 71
    for causal in (False, True, "bottom_right"):
        check_sdpa(q, k, v, attn_mask=mask, causal=causal, window=(20, 3), kv_lengths=lens, scale=0.2)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    seed=st.integers(0, 2**32 - 1),
    lq=st.integers(1, 40), lk=st.integers(0, 40), d=st.integers(1, 40), dv=st.integers(1, 20),
    heads=st.sampled_from([(1, 1), (2, 1), (4, 2), (3, 3)]),
    batch=st.sampled_from([(), (2,), (2, 1)]),
    causal=st.sampled_from([False, True, "top_left", "bottom_right"]),
    window=st.one_of(st.none(), st.tuples(st.one_of(st.none(), st.integers(0, 10)),
                                          st.one_of(st.none(), st.integers(0, 10)))),
    mask_kind=st.sampled_from(MASK_KINDS),
    use_lens=st.booleans(),
    dtype=st.sampled_from(["float32", "float64"] + (["bfloat16"] if BF16 is not None else []) + ["float16"]),
)
def test_property_random_configs(seed, lq, lk, d, dv, heads, batch, causal, window, mask_kind, use_lens, dtype):
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype) if dtype != "bfloat16" else BF16
    hq, hkv = heads
    q, k, v = make_qkv(rng, batch=batch, hq=hq, hkv=hkv, lq=lq, lk=lk, d=d, dv=dv, dtype=dt)
    mdt = np.float64 if dt == np.float64 else np.float32
    mask = make_mask(rng, mask_kind, (hq, lq, lk), mdt) if lk else None
    lens = rng.integers(0, lk + 1, size=batch) if use_lens else None
    check_sdpa(q, k, v, attn_mask=mask, causal=causal, window=window, kv_lengths=lens)


# ----------------------------------------------------------------------------- lazy rescaling
# Unmasked tiles are exponentiated against the running max of the tiles seen so far (visited last
# to first); a tile whose scores exceed it by more than 2^8 in weight must be redone with a fresh
# max. Scores that grow towards the first keys force that on nearly every tile.
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("growth", [0.05, 1.0, 30.0, 120.0])
def test_scores_growing_against_visit_order(rng, dtype, growth):
    lq, lk, d = 70, 1000, 16
    q = np.abs(rng.standard_normal((2, lq, d))).astype(dtype)
    k = np.abs(rng.standard_normal((2, lk, d))).astype(dtype)
    k *= (1.0 + growth * np.linspace(1.0, 0.0, lk))[:, None].astype(dtype)  # key 0 scores highest
    v = rng.standard_normal((2, lk, 9)).astype(dtype)
    check_sdpa(q, k, v)
    check_sdpa(q, k, v, causal="bottom_right")


def test_nan_in_a_lazily_rescaled_tile_reaches_only_its_readers(rng):
    q, k, v = make_qkv(rng, hq=1, lq=64, lk=600, d=8)
    k[..., 5, :] = np.nan  # a key in the last tile visited (the first keys)
    out = sdpa(q, k, v, window=(None, None))
    assert np.isnan(out).all()  # every query sees key 5
    out = sdpa(q, k, v, kv_lengths=5)
    assert np.isfinite(out).all()  # no query sees it
