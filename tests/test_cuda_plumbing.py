"""The CUDA backend's Python plumbing, without a GPU.

`fastattn._cuda` is replaced by a fake whose "device memory" is host memory and whose sdpa() reads
the operands through exactly the descriptors (pointer, batch strides, head and row strides, mask
and kv_lengths descriptors, band) the real binding receives, and computes the float64 reference
from them. So every path that builds descriptors -- NumPy through the device, GPU arrays by the
array interface, broadcast batch dims, strided rows, masks of every shape, kv_lengths, GQA, 2-D
and 3-D inputs, out= -- is checked against tests/reference.py here; the GPU tests check the
kernels themselves.
"""

import ctypes

import numpy as np
import pytest

import fastattn
from fastattn import _backend, _cuda_arrays
from helpers import BF16, make_mask
from reference import sdpa_reference

_DTYPES = {0: np.dtype(np.float32), 1: np.dtype(np.float64), 2: np.dtype(np.float16)}
if BF16 is not None:
    _DTYPES[3] = BF16
_MASKS = {1: np.dtype(bool), 2: np.dtype(np.float32), 3: np.dtype(np.float64),
          4: np.dtype(np.float16)}


def _view(ptr, dtype, shape, strides):
    """The memory at ptr as an array of `shape` with element `strides` (all >= 0)."""
    dtype = np.dtype(dtype)
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype)
    span = (sum((n - 1) * s for n, s in zip(shape, strides)) + 1) * dtype.itemsize
    raw = np.frombuffer((ctypes.c_char * span).from_address(ptr), dtype=np.uint8)
    return np.lib.stride_tricks.as_strided(
        raw.view(dtype), shape, [s * dtype.itemsize for s in strides], writeable=False)


class FakeBuffer:
    def __init__(self, nbytes, device):
        self.mem = np.zeros(max(nbytes, 1), np.uint8)
        self.ptr, self.bytes = self.mem.ctypes.data, nbytes

    def upload(self, a, stream):
        self.mem[: a.nbytes] = np.frombuffer(np.ascontiguousarray(a).tobytes(), np.uint8)

    def download(self, a, stream):
        a.reshape(-1).view(np.uint8)[:] = self.mem[: a.nbytes]


class FakeModule:
    """The binding's interface, on host memory."""

    DeviceBuffer = FakeBuffer
    calls = []

    @staticmethod
    def vector_max_row_bytes():
        return 40 * 1024

    @staticmethod
    def copy_to_host(src, dst, device, stream):
        dst[...] = _view(src, dst.dtype, dst.shape, [s // dst.itemsize for s in dst.strides])

    @classmethod
    def sdpa(cls, dtype_code, batch_shape, hq, hkv, lq, lk, d, dv, q, k, v, out, lse, mask,
             kv_lengths, scale, diag, left, right, tf32, device, stream):
        cls.calls.append(dict(tf32=tf32, device=device, stream=stream))
        dt = _DTYPES[dtype_code]
        nb = len(batch_shape)
        batch = tuple(batch_shape)

        def operand(desc, heads, rows, cols):
            ptr, bs, hs, rs = desc
            assert len(bs) == nb
            return _view(ptr, dt, batch + (heads, rows, cols), list(bs) + [hs, rs, 1])

        qa, ka, va = operand(q, hq, lq, d), operand(k, hkv, lk, d), operand(v, hkv, lk, dv)
        i = np.arange(lq)[:, None]
        j = np.arange(lk)[None, :]
        visible = np.ones((lq, lk), bool)
        if left >= 0:
            visible &= j >= i + diag - left
        if right >= 0:
            visible &= j <= i + diag + right
        vis = np.broadcast_to(visible, batch + (hq, lq, lk)).copy()
        add = None
        if mask is not None:
            mtype, ptr, bs, hs, rs, cs = mask
            m = _view(ptr, _MASKS[mtype], batch + (hq, lq, lk), list(bs) + [hs, rs, cs])
            if mtype == 1:
                vis &= m
            else:
                add = m.astype(np.float64)
        if kv_lengths is not None:
            ptr, bs = kv_lengths
            lengths = _view(ptr, np.int64, batch, list(bs))
            vis &= np.arange(lk) < lengths[..., None, None, None]
        # The reference with the visibility as a bool mask and the additive part added to it.
        full_mask = np.where(vis, 0.0 if add is None else add, -np.inf)
        o, l = sdpa_reference(qa.astype(np.float64), ka.astype(np.float64), va.astype(np.float64),
                              attn_mask=full_mask, scale=scale)
        _view_w(out, dt, batch + (hq, lq, dv))[...] = o.astype(dt)
        if lse:
            _view_w(lse, np.float64 if dtype_code == 1 else np.float32, batch + (hq, lq))[...] = l
        return f"cuda/fake/sdpa/{dt.name}"


def _fake_vector_attention(f64, batch_shape, lq, lk, c, groups, hidden, key_rows, q, k, v, index,
                           pos, mask, relation, sharing, mlp, out, weights, device, stream):
    from reference_vector import vector_attention_reference

    FakeModule.calls.append(dict(kind="vector", device=device, stream=stream))
    dt = np.dtype(np.float64 if f64 else np.float32)
    batch = tuple(batch_shape)
    nb = len(batch)

    def rows(desc, n):
        ptr, bs, _, rs = desc
        assert len(bs) == nb
        return _view(ptr, dt, batch + (n, c), list(bs) + [rs, 1]).astype(np.float64)

    qa, ka, va = rows(q, lq), rows(k, key_rows), rows(v, key_rows)
    kw = {}
    if index:
        kw["index"] = _view(index, np.int64, (lq, lk), [lk, 1])
    if pos is not None:
        ptr, bs, rs, cs = pos
        kw["pos"] = _view(ptr, dt, batch + (lq, lk, c), list(bs) + [rs, cs, 1]).astype(np.float64)
    if mask is not None:
        mtype, ptr, bs, rs, cs = mask
        kw["attn_mask"] = _view(ptr, _MASKS[mtype], batch + (lq, lk), list(bs) + [rs, cs])
    if mlp is not None:
        w1, b1, w2, b2 = mlp
        kw["weight_mlp"] = (_view(w1, dt, (hidden, c), [c, 1]), _view(b1, dt, (hidden,), [1]),
                            _view(w2, dt, (groups, hidden), [hidden, 1]), _view(b2, dt, (groups,), [1]))
    else:
        kw["groups"] = groups
    o, w = vector_attention_reference(qa, ka, va, relation=["subtract", "add", "multiply"][relation],
                                      sharing=["blocked", "strided"][sharing], **kw)
    _view_w(out, dt, batch + (lq, c))[...] = o
    if weights:
        _view_w(weights, dt, batch + (lq, lk, groups))[...] = w
    return f"cuda/fake/vector_attention/{dt.name}"


FakeModule.vector_attention = staticmethod(_fake_vector_attention)


def _view_w(ptr, dtype, shape):
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    if n == 0:
        return np.zeros(shape, dtype)
    raw = np.frombuffer((ctypes.c_char * (n * dtype.itemsize)).from_address(ptr), np.uint8)
    return raw.view(dtype).reshape(shape)


class FakeGpu:
    """A 'GPU' array backed by host memory, seen only through __cuda_array_interface__."""

    def __init__(self, a):
        self.host = a
        self.__cuda_array_interface__ = {
            "shape": a.shape, "typestr": a.dtype.str if a.dtype != bool else "|b1",
            "data": (a.ctypes.data, False), "version": 3,
            "strides": None if a.flags.c_contiguous else a.strides,
        }

    def astype(self, dtype):
        return FakeGpu(self.host.astype(dtype))

    def reshape(self, *shape):
        return FakeGpu(self.host.reshape(*shape))  # a view: the same memory


@pytest.fixture
def fake_cuda(monkeypatch):
    FakeModule.calls = []
    monkeypatch.setattr(_backend, "_cuda_module", lambda: (FakeModule, None))
    monkeypatch.setattr(_backend, "_cuda_devices", lambda: ([{"name": "fake"}], None))
    monkeypatch.setattr(_cuda_arrays, "_empty",
                        lambda library, shape, dtype, device, like: FakeGpu(np.zeros(shape, dtype)))
    monkeypatch.setattr(_cuda_arrays, "_to_device",
                        lambda library, a, device, like: FakeGpu(np.array(a, order="C")))
    monkeypatch.setattr(_cuda_arrays, "_contiguous",
                        lambda library, x: FakeGpu(np.ascontiguousarray(x.host)))
    monkeypatch.setattr(_cuda_arrays, "_astype", lambda library, x, dtype: x.astype(dtype))
    return FakeModule


def _check(out, lse, q, k, v, tol, **kw):
    ref_out, ref_lse = sdpa_reference(q, k, v, **kw)
    out = out.host if isinstance(out, FakeGpu) else out
    lse = lse.host if isinstance(lse, FakeGpu) else lse
    assert out.shape == ref_out.shape and lse.shape == ref_lse.shape
    np.testing.assert_allclose(out.astype(np.float64), ref_out, rtol=tol, atol=tol)
    np.testing.assert_allclose(lse.astype(np.float64), ref_lse, rtol=1e-6, atol=1e-6)


CASES = [
    dict(),
    dict(causal=True),
    dict(causal="bottom_right", window=(3, None)),
    dict(window=(2, 1)),
    dict(kv_lengths=np.array([3, 7])),
    dict(mask="bool"),
    dict(mask="additive_inf", causal="bottom_right"),
]


def _inputs(rng, dtype, case):
    q = rng.standard_normal((2, 4, 5, 16)).astype(dtype)
    k = rng.standard_normal((2, 2, 7, 16)).astype(dtype)  # GQA: 2 kv heads for 4 query heads
    v = rng.standard_normal((2, 2, 7, 12)).astype(dtype)
    kw = {n: x for n, x in case.items() if n != "mask"}
    if "mask" in case:
        kw["attn_mask"] = make_mask(rng, case["mask"], (1, 4, 5, 7))
    return q, k, v, kw


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(c) or "plain")
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_numpy_through_device_descriptors(fake_cuda, rng, dtype, case):
    q, k, v, kw = _inputs(rng, dtype, case)
    out, lse = fastattn.scaled_dot_product_attention(q, k, v, return_lse=True, backend="cuda", **kw)
    assert fastattn.last_kernel() == f"cuda/fake/sdpa/{dtype}"
    assert isinstance(out, np.ndarray) and out.dtype == np.dtype(dtype)
    _check(out, lse, q.astype(np.float64), k.astype(np.float64), v.astype(np.float64),
           1e-3 if dtype == "float16" else 1e-6, **kw)


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(c) or "plain")
def test_gpu_array_descriptors(fake_cuda, rng, case):
    q, k, v, kw = _inputs(rng, "float32", case)
    # Strided views read in place: every other row of k, a broadcast batch dim of v.
    k2 = np.repeat(k, 2, axis=-2)[..., ::2, :]
    v1 = v[:1]
    gpu_kw = dict(kw)
    if "attn_mask" in kw:
        gpu_kw["attn_mask"] = FakeGpu(np.ascontiguousarray(kw["attn_mask"]))
    out, lse = fastattn.scaled_dot_product_attention(
        FakeGpu(q), FakeGpu(k2), FakeGpu(v1), return_lse=True, **gpu_kw)  # backend="auto"
    assert isinstance(out, FakeGpu) and fastattn.last_kernel() == "cuda/fake/sdpa/float32"
    _check(out, lse, q.astype(np.float64), k.astype(np.float64),
           np.broadcast_to(v1, (2,) + v1.shape[1:]).astype(np.float64), 1e-6, **kw)


def test_gpu_array_2d_mixed_dtypes_out_and_strided_last_dim(fake_cuda, rng):
    q = rng.standard_normal((6, 8)).astype(np.float16)
    k = rng.standard_normal((9, 8)).astype(np.float32)
    vt = rng.standard_normal((5, 9)).astype(np.float16)
    v = vt.T  # last dim strided: copied by the caller's library first
    out = FakeGpu(np.zeros((6, 5), np.float32))
    res, lse = fastattn.scaled_dot_product_attention(
        FakeGpu(q), FakeGpu(k), FakeGpu(v), out=out, return_lse=True, causal="bottom_right")
    assert res is out and lse.host.shape == (6,)
    _check(out, lse, q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), 1e-6,
           causal="bottom_right")
    with pytest.raises(ValueError, match="out has shape"):
        fastattn.scaled_dot_product_attention(FakeGpu(q), FakeGpu(k), FakeGpu(v),
                                              out=FakeGpu(np.zeros((6, 4), np.float32)))
    with pytest.raises(ValueError, match="overlaps"):
        qq = np.zeros((6, 8), np.float32)
        fastattn.scaled_dot_product_attention(FakeGpu(qq), FakeGpu(k), FakeGpu(k[:, :8]),
                                              out=FakeGpu(qq[:, :8]))


def test_gpu_kv_lengths_and_errors_before_launch(fake_cuda, rng):
    q, k, v, _ = _inputs(rng, "float32", {})
    lengths = np.array([0, 5])
    out, lse = fastattn.scaled_dot_product_attention(
        FakeGpu(q), FakeGpu(k), FakeGpu(v), kv_lengths=FakeGpu(lengths), return_lse=True)
    _check(out, lse, q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), 1e-6,
           kv_lengths=lengths)
    FakeModule.calls = []
    for kw, err, words in [
        (dict(kv_lengths=FakeGpu(np.array([0, 8]))), ValueError, r"kv_lengths must lie in \[0, Lk=7\]"),
        (dict(attn_mask=FakeGpu(np.ones((3, 5, 7), bool))), ValueError, "does not broadcast"),
        (dict(attn_mask=FakeGpu(np.ones((5, 7), np.int32))), TypeError, "attn_mask has dtype"),
        (dict(causal="diagonal"), ValueError, "causal must be"),
        (dict(window=(1, 2, 3)), ValueError, "window must be a pair"),
    ]:
        with pytest.raises(err, match=words):
            fastattn.scaled_dot_product_attention(FakeGpu(q), FakeGpu(k), FakeGpu(v), **kw)
    with pytest.raises(ValueError, match="head dims differ"):
        fastattn.scaled_dot_product_attention(FakeGpu(q), FakeGpu(k[..., :8]), FakeGpu(v))
    with pytest.raises(TypeError, match="on the host while another operand is on the GPU"):
        fastattn.scaled_dot_product_attention(FakeGpu(q), k, FakeGpu(v))
    with pytest.raises(ValueError, match="head dims up to 256"):
        big = np.zeros((1, 2, 300), np.float32)
        fastattn.scaled_dot_product_attention(FakeGpu(big), FakeGpu(big), FakeGpu(big))
    assert FakeModule.calls == [], "a kernel was launched for a bad call"


def test_tf32_flag_reaches_the_kernel(fake_cuda, rng):
    q, k, v, _ = _inputs(rng, "float32", {})
    try:
        fastattn.set_cuda_tf32(True)
        fastattn.scaled_dot_product_attention(FakeGpu(q), FakeGpu(k), FakeGpu(v))
        fastattn.scaled_dot_product_attention(FakeGpu(q.astype(np.float16)),
                                              FakeGpu(k.astype(np.float16)), FakeGpu(v.astype(np.float16)))
    finally:
        fastattn.set_cuda_tf32(False)
    fastattn.scaled_dot_product_attention(FakeGpu(q), FakeGpu(k), FakeGpu(v))
    assert [c["tf32"] for c in FakeModule.calls] == [True, False, False]


@pytest.mark.parametrize("form", ["dense", "neighbour"])
@pytest.mark.parametrize("on_gpu", [False, True], ids=["numpy", "gpu"])
@pytest.mark.parametrize("with_mlp", [False, True], ids=["nomlp", "mlp"])
def test_vector_attention_descriptors(fake_cuda, rng, form, on_gpu, with_mlp):
    from reference_vector import vector_attention_reference

    c, groups, hidden = 12, 4, 5
    if form == "dense":
        q = rng.standard_normal((2, 5, c)).astype(np.float32)
        k = rng.standard_normal((1, 7, c)).astype(np.float32)  # broadcast over the batch
        v = rng.standard_normal((2, 7, c)).astype(np.float32)
        pos = rng.standard_normal((2, 5, 7, c)).astype(np.float32)
        extra = dict(attn_mask=rng.random((5, 7)) < 0.7)
    else:
        q = rng.standard_normal((6, c)).astype(np.float32)
        k = rng.standard_normal((9, c)).astype(np.float32)
        v = rng.standard_normal((9, c)).astype(np.float32)
        pos = rng.standard_normal((6, 4, c)).astype(np.float32)
        index = rng.integers(-1, 9, (6, 4))
        index[1] = -1
        extra = dict(index=index)
    mlp = None
    if with_mlp:
        mlp = (rng.standard_normal((hidden, c)).astype(np.float32), rng.standard_normal(hidden).astype(np.float32),
               rng.standard_normal((groups, hidden)).astype(np.float32), rng.standard_normal(groups).astype(np.float32))
    kw = dict(relation="add", sharing="strided", groups=None if mlp else groups, return_weights=True)
    wrap = FakeGpu if on_gpu else (lambda a: a)
    args = [wrap(a) for a in (q, k, v)]
    call_extra = {n: (wrap(a) if n != "index" else a) for n, a in extra.items()}
    out, w = fastattn.vector_attention(*args, pos=wrap(pos), weight_mlp=mlp and tuple(wrap(a) for a in mlp),
                                       backend="cuda", **kw, **call_extra)
    assert fastattn.last_kernel() == "cuda/fake/vector_attention/float32"
    if on_gpu:
        assert isinstance(out, FakeGpu)
        out, w = out.host, w.host
    ref, ref_w = vector_attention_reference(
        q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), pos=pos.astype(np.float64),
        weight_mlp=mlp and tuple(a.astype(np.float64) for a in mlp), relation="add",
        sharing="strided", groups=None if mlp else groups, **extra)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(w, ref_w, rtol=1e-5, atol=1e-5)


def test_attention_has_no_cuda_kernel(fake_cuda, rng):
    q = rng.standard_normal((3, 4)).astype(np.float32)
    with pytest.raises(RuntimeError, match="no CUDA kernel; available for it: \\['cpu'\\]"):
        fastattn.attention(q, q, backend="cuda")
