"""Split-KV: when (batch x kv heads x query blocks) cannot keep the threads busy, each item's keys
are split into chunks computed in parallel and merged with the log-sum-exp rule. Four threads and
long key sequences force it on any machine; every case is checked against the float64 reference."""

import numpy as np
import pytest

import fastattn
from helpers import check_sdpa, make_mask, make_qkv, sdpa


@pytest.fixture(autouse=True)
def four_threads(restore_threads):
    fastattn.set_num_threads(4)


@pytest.mark.parametrize("hq, hkv, lq", [(1, 1, 1), (8, 1, 1), (4, 2, 1), (16, 1, 1), (2, 1, 3), (1, 1, 20)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_decode_shapes(rng, hq, hkv, lq, dtype):
    q, k, v = make_qkv(rng, hq=hq, hkv=hkv, lq=lq, lk=3000, d=64, dv=40, dtype=dtype)
    check_sdpa(q, k, v)
    check_sdpa(q, k, v, causal="bottom_right")


@pytest.mark.parametrize(
    "options",
    [
        {"kv_lengths": np.array([0, 1, 700, 2999])},  # whole splits see no key
        {"window": (500, 0), "causal": "bottom_right"},  # only the last split sees keys
        {"window": (0, 0)},  # only the first split sees one key per query
    ],
)
def test_splits_with_no_visible_key(rng, options):
    q, k, v = make_qkv(rng, batch=(4,), hq=2, hkv=1, lq=1, lk=3000, d=32)
    check_sdpa(q, k, v, **options)


def test_masks_across_splits(rng):
    q, k, v = make_qkv(rng, hq=4, hkv=1, lq=2, lk=2500, d=48)
    check_sdpa(q, k, v, attn_mask=make_mask(rng, "bool", (4, 2, 2500)))
    check_sdpa(q, k, v, attn_mask=make_mask(rng, "additive", (1, 2, 2500)))
    mask = np.zeros((2, 2500), bool)
    mask[1, 1234] = True  # query 0 sees nothing, query 1 one key in the middle of a split
    out, lse = sdpa(q, k, v, attn_mask=mask, return_lse=True)
    assert np.all(out[:, 0] == 0) and np.all(lse[:, 0] == -np.inf)
    np.testing.assert_allclose(out[:, 1], np.broadcast_to(v[0, 1234], out[:, 1].shape), rtol=1e-6)


def test_nan_in_one_split_reaches_only_its_readers(rng):
    q, k, v = make_qkv(rng, hq=2, hkv=1, lq=1, lk=3000, d=32)
    v[0, 2900] = np.nan
    out = sdpa(q, k, v)
    assert np.isnan(out).all()
    out = sdpa(q, k, v, kv_lengths=2900)
    assert np.isfinite(out).all()


def test_same_answer_as_one_thread(rng):
    q, k, v = make_qkv(rng, hq=8, hkv=2, lq=1, lk=4000, d=64)
    split, lse_split = sdpa(q, k, v, return_lse=True)
    fastattn.set_num_threads(1)
    whole, lse_whole = sdpa(q, k, v, return_lse=True)
    np.testing.assert_allclose(split, whole, rtol=2e-6, atol=2e-7)
    np.testing.assert_allclose(lse_split, lse_whole, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_split_whose_weight_is_zero_is_skipped(rng, dtype):
    # The last split holds an Inf value, summed with weight 1 there; the first split holds a key
    # whose score is larger by 1e28, so the merge weighs the last split by exactly 0: skipped (the
    # README's rule for weight-0 values), not 0 x Inf = NaN.
    q = np.ones((1, 32), dtype)
    k = np.zeros((3000, 32), dtype)
    k[5, 0] = 1e28
    v = rng.standard_normal((3000, 24)).astype(dtype)
    v[2990, 1] = np.inf
    out = sdpa(q, k, v, scale=1.0)
    np.testing.assert_array_equal(out, v[5:6])
