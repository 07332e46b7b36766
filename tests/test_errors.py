"""Bad input: the error type, and a message that names the offending shapes or values."""

import re

import numpy as np
import pytest

import fastattn
from helpers import BF16, randn, sdpa


def all_of(*words):
    """A regex that matches when every word occurs (as a whole token) somewhere in the message."""
    return "(?s)" + "".join(rf"(?=.*(?<![\w.]){re.escape(str(w))}(?![\w]))" for w in words)


def qkv(rng, qs, ks, vs, dtype=np.float32):
    return randn(rng, qs, dtype), randn(rng, ks, dtype), randn(rng, vs, dtype)


# ----------------------------------------------------------------------------- shapes


def test_head_dim_mismatch(rng):
    q, k, v = qkv(rng, (2, 4, 7, 17), (2, 4, 9, 16), (2, 4, 9, 16))
    with pytest.raises(ValueError, match=all_of(17, 16)):
        sdpa(q, k, v)


def test_head_dim_mismatch_2d(rng):
    q, k, v = qkv(rng, (7, 33), (9, 32), (9, 32))
    with pytest.raises(ValueError, match=all_of(33, 32)):
        sdpa(q, k, v)


def test_key_value_length_mismatch(rng):
    q, k, v = qkv(rng, (2, 4, 7, 16), (2, 4, 9, 16), (2, 4, 10, 16))
    with pytest.raises(ValueError, match=all_of(9, 10)):
        sdpa(q, k, v)


def test_key_value_heads_mismatch(rng):
    q, k, v = qkv(rng, (2, 4, 7, 16), (2, 4, 9, 16), (2, 2, 9, 16))
    with pytest.raises(ValueError, match=r"(?s)\(2, 4, 9, 16\).*\(2, 2, 9, 16\)|\(2, 2, 9, 16\).*\(2, 4, 9, 16\)"):
        sdpa(q, k, v)


@pytest.mark.parametrize("hq,hkv", [(6, 4), (4, 8), (5, 2), (3, 2)])
def test_gqa_heads_not_multiple(rng, hq, hkv):
    q, k, v = qkv(rng, (2, hq, 7, 16), (2, hkv, 9, 16), (2, hkv, 9, 16))
    with pytest.raises(ValueError, match=all_of(hq, hkv)):
        sdpa(q, k, v)


def test_batch_not_broadcastable(rng):
    q, k, v = qkv(rng, (2, 4, 7, 16), (3, 4, 9, 16), (3, 4, 9, 16))
    with pytest.raises(ValueError, match=all_of(2, 3)):
        sdpa(q, k, v)
    q, k, v = qkv(rng, (5, 1, 4, 7, 16), (5, 4, 9, 16), (5, 4, 9, 16))  # (5,1) vs (5,): fine
    sdpa(q, k, v)
    q, k, v = qkv(rng, (5, 4, 7, 16), (6, 4, 9, 16), (5, 4, 9, 16))
    with pytest.raises(ValueError, match=all_of(5, 6)):
        sdpa(q, k, v)


@pytest.mark.parametrize("mshape,word", [((7, 8), 8), ((4, 7, 10), 10), ((3, 1, 9), 3), ((2, 3, 7, 9), 3),
                                         ((3, 2, 4, 7, 9), 3), ((8, 9), 8)])
def test_mask_not_broadcastable(rng, mshape, word):
    # target (2, 4, 7, 9); the mask may not add batch dims either
    q, k, v = qkv(rng, (2, 4, 7, 16), (2, 4, 9, 16), (2, 4, 9, 16))
    for mask in (np.ones(mshape, bool), np.zeros(mshape, np.float32)):
        with pytest.raises(ValueError, match=all_of(word)):
            sdpa(q, k, v, attn_mask=mask)


def test_mask_message_names_shapes(rng):
    q, k, v = qkv(rng, (2, 4, 7, 16), (2, 4, 9, 16), (2, 4, 9, 16))
    with pytest.raises(ValueError, match=all_of(7, 8, 9)):
        sdpa(q, k, v, attn_mask=np.ones((7, 8), bool))


@pytest.mark.parametrize("which", [0, 1, 2])
def test_too_few_dims(rng, which):
    arrs = list(qkv(rng, (7, 16), (9, 16), (9, 16)))
    arrs[which] = arrs[which][0]  # 1-D
    with pytest.raises(ValueError, match=r"(?i)dim|shape|\(16,\)"):
        sdpa(*arrs)
    arrs[which] = np.float32(1.0)  # 0-D
    with pytest.raises(ValueError):
        sdpa(*arrs)


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize("bad", ["bottom-left", "Top_Left", "causal", "", "yes"])
def test_bad_causal(rng, bad):
    q, k, v = qkv(rng, (2, 7, 16), (2, 9, 16), (2, 9, 16))
    pattern = re.escape(bad) if bad else r"''|\"\"|causal"
    with pytest.raises(ValueError, match=pattern):
        sdpa(q, k, v, causal=bad)


@pytest.mark.parametrize("bad,word", [((-1, 0), "-1"), ((0, -3), "-3"), ((-2, None), "-2"), ((1, 2, 3), "3"),
                                      (5, "5"), ((4,), "4")])
def test_bad_window(rng, bad, word):
    q, k, v = qkv(rng, (2, 7, 16), (2, 9, 16), (2, 9, 16))
    with pytest.raises(ValueError, match=re.escape(word)):
        sdpa(q, k, v, window=bad)


@pytest.mark.parametrize("bad,words", [(-1, ["-1"]), (10, ["10", "9"]), (np.array([3, 12]), ["12", "9"]),
                                       (np.array([-5, 2]), ["-5"])])
def test_kv_lengths_out_of_range(rng, bad, words):
    q, k, v = qkv(rng, (2, 2, 7, 16), (2, 2, 9, 16), (2, 2, 9, 16))
    with pytest.raises(ValueError, match=all_of(*words)):
        sdpa(q, k, v, kv_lengths=bad)


@pytest.mark.parametrize("bad", [np.array([1.0, 2.0]), 3.0, np.array([True, False]), np.array([1 + 0j, 2])])
def test_kv_lengths_not_integer(rng, bad):
    q, k, v = qkv(rng, (2, 2, 7, 16), (2, 2, 9, 16), (2, 2, 9, 16))
    with pytest.raises(TypeError):
        sdpa(q, k, v, kv_lengths=bad)


def test_kv_lengths_not_broadcastable(rng):
    q, k, v = qkv(rng, (2, 2, 7, 16), (2, 2, 9, 16), (2, 2, 9, 16))
    with pytest.raises(ValueError, match=all_of(3)):
        sdpa(q, k, v, kv_lengths=np.array([1, 2, 3]))
    with pytest.raises(ValueError):
        sdpa(q, k, v, kv_lengths=np.ones((2, 2), np.int64))  # has more dims than the batch
    # 3-D input: batch is empty, only a scalar is allowed
    with pytest.raises(ValueError):
        sdpa(q[0], k[0], v[0], kv_lengths=np.array([3, 4]))


@pytest.mark.parametrize("bad", ["tpu", "CPU2", "", "gpu"])
def test_bad_backend_name(rng, bad):
    q, k, v = qkv(rng, (2, 7, 16), (2, 9, 16), (2, 9, 16))
    pattern = re.escape(bad) if bad else r"''|\"\"|backend"
    with pytest.raises(ValueError, match=pattern):
        sdpa(q, k, v, backend=bad)


def test_cuda_backend_unavailable(rng):
    info = fastattn.backends()
    if info["cuda"]["compiled"] and info["cuda"]["devices"]:
        pytest.skip("a CUDA device is available")
    q, k, v = qkv(rng, (2, 7, 16), (2, 9, 16), (2, 9, 16))
    with pytest.raises(RuntimeError, match=r"(?i)cpu"):
        sdpa(q, k, v, backend="cuda")


# ----------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint8", "bool", "complex64", "complex128", "object"])
@pytest.mark.parametrize("which", [0, 1, 2])
def test_bad_input_dtype(rng, dtype, which):
    arrs = list(qkv(rng, (2, 7, 16), (2, 9, 16), (2, 9, 16)))
    arrs[which] = (arrs[which] * 3).astype(dtype)
    with pytest.raises(TypeError, match=re.escape(dtype)):
        sdpa(*arrs)


def test_bad_mask_dtype(rng):
    q, k, v = qkv(rng, (2, 7, 16), (2, 9, 16), (2, 9, 16))
    with pytest.raises(TypeError, match="complex64"):
        sdpa(q, k, v, attn_mask=np.zeros((7, 9), np.complex64))
    with pytest.raises(TypeError, match="object"):
        sdpa(q, k, v, attn_mask=np.zeros((7, 9), object))


# ----------------------------------------------------------------------------- out=


def test_out_wrong_shape(rng):
    q, k, v = qkv(rng, (2, 4, 7, 16), (2, 4, 9, 16), (2, 4, 9, 5))
    out = np.empty((2, 4, 7, 16), np.float32)
    with pytest.raises(ValueError, match=r"(?s)\(2, 4, 7, 5\).*\(2, 4, 7, 16\)|\(2, 4, 7, 16\).*\(2, 4, 7, 5\)"):
        sdpa(q, k, v, out=out)
    with pytest.raises(ValueError):
        sdpa(q, k, v, out=np.empty((8, 7, 5), np.float32))  # same size, wrong shape


def test_out_wrong_dtype(rng):
    q, k, v = qkv(rng, (2, 4, 7, 16), (2, 4, 9, 16), (2, 4, 9, 16))
    with pytest.raises(ValueError, match=all_of("float32", "float64")):
        sdpa(q, k, v, out=np.empty((2, 4, 7, 16), np.float64))
    with pytest.raises(ValueError, match=all_of("float32", "float16")):
        sdpa(q, k, v, out=np.empty((2, 4, 7, 16), np.float16))
    if BF16 is not None:
        qb, kb, vb = (a.astype(BF16) for a in (q, k, v))
        with pytest.raises(ValueError, match=all_of("bfloat16", "float32")):
            sdpa(qb, kb, vb, out=np.empty((2, 4, 7, 16), np.float32))


def test_out_not_contiguous(rng):
    q, k, v = qkv(rng, (2, 4, 7, 16), (2, 4, 9, 16), (2, 4, 9, 16))
    big = np.zeros((2, 4, 7, 32), np.float32)
    view = big[..., ::2]
    with pytest.raises(ValueError, match=r"(?i)contiguous"):
        sdpa(q, k, v, out=view)
    assert np.all(big == 0)  # nothing written
    fortran = np.asfortranarray(np.zeros((2, 4, 7, 16), np.float32))
    with pytest.raises(ValueError, match=r"(?i)contiguous"):
        sdpa(q, k, v, out=fortran)


def test_out_read_only(rng):
    q, k, v = qkv(rng, (2, 4, 7, 16), (2, 4, 9, 16), (2, 4, 9, 16))
    out = np.zeros((2, 4, 7, 16), np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match=r"(?i)writ|read.?only"):
        sdpa(q, k, v, out=out)
    assert np.all(out == 0)


def test_out_not_an_ndarray(rng):
    q, k, v = qkv(rng, (3, 16), (4, 16), (4, 16))
    with pytest.raises(ValueError):
        sdpa(q, k, v, out=[[0.0] * 16] * 3)


def test_error_leaves_library_usable(rng):
    q, k, v = qkv(rng, (2, 7, 16), (2, 9, 16), (2, 9, 16))
    with pytest.raises(ValueError):
        sdpa(q, k[..., :5], v)
    out = sdpa(q, k, v)
    assert np.all(np.isfinite(out))
