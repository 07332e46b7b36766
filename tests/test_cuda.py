"""The CUDA backend.

Without a GPU (CI): the module is built whenever a CUDA compiler was found, `import fastattn` does
not load it, backends() says why it is unavailable, backend="cuda" raises RuntimeError naming what
is there, and the array plumbing (array interface, DLPack, dtype promotion) is checked on host data.

With a GPU: every option x dtype x awkward shape against the float64 reference (tests/reference.py)
and PyTorch, NumPy through the device, PyTorch/CuPy arrays zero-copy on the caller's stream, out=,
errors before any launch, and which kernel served each call.
"""

import importlib
import itertools

import numpy as np
import pytest

import fastattn
from fastattn import _backend, _cpu, _cuda_arrays
from helpers import BF16, TOL_HALF, check_sdpa, make_mask, run_python
from reference import sdpa_reference

CUDA = fastattn.backends()["cuda"]
HAVE_GPU = CUDA["available"]
NO_GPU_REASON = f"no CUDA device: {CUDA.get('reason')}"
needs_gpu = pytest.mark.skipif(not HAVE_GPU, reason=NO_GPU_REASON)

try:
    import torch

    TORCH_CUDA = HAVE_GPU and torch.cuda.is_available()
except ImportError:  # pragma: no cover - depends on the environment
    torch = None
    TORCH_CUDA = False
try:
    import cupy

    CUPY = HAVE_GPU
except ImportError:  # pragma: no cover - depends on the environment
    cupy = None
    CUPY = False
needs_torch = pytest.mark.skipif(not TORCH_CUDA, reason="needs PyTorch with CUDA and a CUDA device")
needs_cupy = pytest.mark.skipif(not CUPY, reason="needs CuPy and a CUDA device")


# ----------------------------------------------------------------------------- without a GPU


def test_cuda_module_built_when_compiler_found():
    if not _cpu.build_info()["cuda_compiler_found"]:
        assert not CUDA["compiled"]
        assert "no CUDA compiler" in CUDA["reason"]
        pytest.skip("this build found no CUDA compiler")
    assert CUDA["compiled"], CUDA.get("reason")
    build = CUDA["build"]
    archs = build["architectures"].split(",")
    assert archs and all(a.strip() for a in archs), build
    assert build["max_head_dim"] == 256
    assert isinstance(build["cudart"], int) and build["cudart"] >= 11000


def test_backends_cuda_entry():
    info = fastattn.backends()["cuda"]
    assert set(info) >= {"compiled", "available", "devices", "tf32"}
    assert isinstance(info["devices"], list)
    assert info["available"] == bool(info["devices"])
    if not info["available"]:
        assert isinstance(info["reason"], str) and info["reason"]
    for dev in info["devices"]:
        assert set(dev) >= {"name", "compute_capability", "multiprocessors", "memory_bytes"}


def test_import_does_not_load_cuda_module():
    code = (
        "import sys, numpy as np, fastattn\n"
        "assert 'fastattn._cuda' not in sys.modules, 'imported at import time'\n"
        "q = np.ones((2, 4, 8), np.float32)\n"
        "fastattn.scaled_dot_product_attention(q, q, q)\n"
        "assert 'fastattn._cuda' not in sys.modules, 'imported by a CPU call'\n"
        "fastattn.backends()\n"
        "print('cuda loaded after backends():', 'fastattn._cuda' in sys.modules)\n"
    )
    res = run_python(code)
    assert res.returncode == 0, res.stderr
    assert "cuda loaded after backends(): " in res.stdout


@pytest.mark.skipif(HAVE_GPU, reason="checks the no-device error; this machine has a CUDA device")
def test_backend_cuda_without_device_raises():
    q = np.ones((2, 4, 8), np.float32)
    with pytest.raises(RuntimeError, match=r"'cuda' backend is not available: .*available: \['cpu'\]"):
        fastattn.scaled_dot_product_attention(q, q, q, backend="cuda")
    with fastattn.use_backend("cuda"):
        with pytest.raises(RuntimeError, match="not available"):
            fastattn.scaled_dot_product_attention(q, q, q)
    # and backend="auto" on NumPy arrays still runs on the CPU
    fastattn.scaled_dot_product_attention(q, q, q)
    assert fastattn.last_kernel().startswith("cpu/")


@pytest.mark.skipif(HAVE_GPU or not CUDA["compiled"], reason="needs a CUDA build on a machine without a device")
def test_no_device_reason_names_the_cuda_error():
    module = importlib.import_module("fastattn._cuda")
    count, why = module.device_count()
    assert count == 0 and why.startswith("cuda"), why  # e.g. "cudaErrorNoDevice: ..."
    assert why in CUDA["reason"]


def test_tf32_switch(monkeypatch):
    assert fastattn.get_cuda_tf32() is False or "FASTATTN_CUDA_TF32" in __import__("os").environ
    old = fastattn.get_cuda_tf32()
    try:
        fastattn.set_cuda_tf32(True)
        assert fastattn.get_cuda_tf32() and fastattn.backends()["cuda"]["tf32"]
        fastattn.set_cuda_tf32(False)
        assert not fastattn.get_cuda_tf32()
    finally:
        fastattn.set_cuda_tf32(old)
    res = run_python("import fastattn; print(fastattn.get_cuda_tf32())", FASTATTN_CUDA_TF32="1")
    assert res.returncode == 0 and res.stdout.strip() == "True", res.stderr


class _FakeCai:
    """A GPU array as far as the array interface goes (never dereferenced in these tests)."""

    def __init__(self, shape, typestr, strides=None, ptr=4096):
        self.__cuda_array_interface__ = {
            "shape": shape, "typestr": typestr, "data": (ptr, False), "strides": strides,
            "version": 3,
        }


class _RefusingCai:
    """Like PyTorch's bfloat16 tensors: the interface property raises TypeError."""

    @property
    def __cuda_array_interface__(self):
        raise TypeError("dtype not supported by the array interface")


def test_array_interface_descriptions():
    g = _cuda_arrays.gpu_array(_FakeCai((2, 3, 4), "<f2"))
    assert (g.shape, g.strides, g.dtype, g.ptr) == ((2, 3, 4), (12, 4, 1), "float16", 4096)
    assert g.c_contiguous() and g.span() == (4096, 4096 + 24 * 2)
    t = _cuda_arrays.gpu_array(_FakeCai((3, 4), "<f4", strides=(4, 12)))  # a transposed view
    assert t.strides == (1, 3) and not t.c_contiguous()
    with pytest.raises(ValueError, match="not multiples"):
        _cuda_arrays.gpu_array(_FakeCai((3, 4), "<f4", strides=(16, 6)))
    assert _backend._on_gpu(_FakeCai((1,), "<f4"))
    assert not _backend._on_gpu(_RefusingCai())  # no exception escapes the GPU test
    assert not _backend._on_gpu(np.ones(3))


def test_dlpack_parsing_on_host_array():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)[:, ::2, :]
    capsule = a.__dlpack__()
    t = _cuda_arrays._DLManagedTensor.from_address(
        _cuda_arrays._capsule_pointer(capsule, b"dltensor")
    ).dl_tensor
    assert t.data + t.byte_offset == a.ctypes.data
    assert t.device.device_type == 1  # kDLCPU
    assert (t.dtype.code, t.dtype.bits, t.dtype.lanes) == (2, 32, 1)
    assert tuple(t.shape[i] for i in range(t.ndim)) == a.shape
    assert tuple(t.strides[i] for i in range(t.ndim)) == tuple(s // 4 for s in a.strides)

    class HostDlpack:  # a DLPack producer whose data is on the host
        def __dlpack__(self, stream=None):
            return a.__dlpack__()

    with pytest.raises(TypeError, match="not a CUDA array"):
        _cuda_arrays._from_dlpack(HostDlpack(), "other", 0)


def test_dtype_promotion_matches_cpu_rule():
    p = _cuda_arrays._promote
    assert p(["float16"] * 3) == "float16"
    assert p(["float16", "bfloat16", "float16"]) == "float32"
    assert p(["float16", "float32", "float16"]) == "float32"
    assert p(["bfloat16", "float64", "float32"]) == "float64"
    assert p(["bfloat16", "bfloat16", "bfloat16"]) == "bfloat16"


def test_head_dim_limit_message():
    with pytest.raises(ValueError, match="head dims up to 256, got D=300"):
        _cuda_arrays._check_dims(300, 64, 1)
    with pytest.raises(ValueError, match="up to 6 batch dims"):
        _cuda_arrays._check_dims(64, 64, 7)


# ----------------------------------------------------------------------------- with a GPU

DTYPES = ["float16", "bfloat16", "float32", "float64"]
# Head dims: the tensor-core tiles (64, 128, 256) and odd ones padded up to them.
DIMS = [(64, 64), (128, 128), (256, 256), (1, 1), (40, 40), (59, 59), (96, 96), (111, 111),
        (17, 65), (128, 64), (64, 200)]
LENGTHS = [(1, 1), (1, 33), (3, 300), (8, 1025), (9, 9), (113, 203), (64, 64), (65, 130),
           (1023, 1024), (300, 1)]


def _tol(dtype, tf32=False):
    if tf32:
        return 5e-3
    return {"float16": TOL_HALF["float16"], "bfloat16": TOL_HALF["bfloat16"], "float32": 1e-5,
            "float64": 1e-12}[dtype]


def _torch_dtype(name):
    return getattr(torch, name)


def _rand(shape, dtype, device="cuda", scale=1.0):
    return (scale * torch.randn(shape, dtype=torch.float32, device=device)).to(_torch_dtype(dtype))


def _np64(t):
    return t.detach().double().cpu().numpy() if torch is not None and isinstance(t, torch.Tensor) else np.asarray(t, np.float64)


def _compare(out, lse, q, k, v, dtype, tf32=False, **kw):
    """fastattn's GPU result against the float64 reference on the same (rounded) inputs."""
    ref_out, ref_lse = sdpa_reference(_np64(q), _np64(k), _np64(v), **kw)
    o, l = _np64(out), _np64(lse)
    assert o.shape == ref_out.shape and l.shape == ref_lse.shape
    empty = ref_lse == -np.inf
    assert np.all(o[empty] == 0), "rows with no visible key must be exactly 0"
    assert np.all(l[empty] == -np.inf), "rows with no visible key must have lse -inf"
    rows = ~empty & np.all(np.isfinite(ref_out), axis=-1)
    assert np.all(np.isfinite(o[rows])), "non-finite output where the reference is finite"
    if rows.any() and o[rows].size:
        err = np.max(np.abs(o[rows] - ref_out[rows])) / max(np.max(np.abs(ref_out[rows])), 1e-300)
        assert err <= _tol(dtype, tf32), f"{dtype}: relative error {err:.3g} > {_tol(dtype, tf32):.3g}"
    if rows.any():
        lerr = np.max(np.abs(l[rows] - ref_lse[rows]) / np.maximum(1.0, np.abs(ref_lse[rows])))
        assert lerr <= (1e-12 if dtype == "float64" else 5e-3 if tf32 else 1e-5), f"lse error {lerr:.3g}"


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d,dv", DIMS)
def test_head_dims(dtype, d, dv):
    for lq, lk in [(1, 77), (100, 129)]:
        q, k, v = _rand((2, 3, lq, d), dtype), _rand((2, 3, lk, d), dtype), _rand((2, 3, lk, dv), dtype)
        out, lse = fastattn.scaled_dot_product_attention(q, k, v, return_lse=True)
        assert isinstance(out, torch.Tensor) and out.device == q.device and out.dtype == q.dtype
        _compare(out, lse, q, k, v, dtype)


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lq,lk", LENGTHS)
@pytest.mark.parametrize("causal", [False, "top_left", "bottom_right"])
def test_lengths_and_causal(dtype, lq, lk, causal):
    q, k, v = _rand((2, lq, 64), dtype), _rand((2, lk, 64), dtype), _rand((2, lk, 64), dtype)
    out, lse = fastattn.scaled_dot_product_attention(q, k, v, causal=causal, return_lse=True)
    _compare(out, lse, q, k, v, dtype, causal=causal)


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["bool", "additive", "additive_inf"])
@pytest.mark.parametrize("mask_shape", ["full", "row", "head_broadcast", "host"])
def test_masks(dtype, kind, mask_shape):
    rng = np.random.default_rng(0)
    b, h, lq, lk = 2, 4, 70, 150
    q, k, v = _rand((b, h, lq, 64), dtype), _rand((b, h, lk, 64), dtype), _rand((b, h, lk, 64), dtype)
    shape = {"full": (b, h, lq, lk), "row": (lk,), "head_broadcast": (b, 1, lq, lk),
             "host": (lq, lk)}[mask_shape]
    mask = make_mask(rng, kind, shape)
    gpu_mask = mask if mask_shape == "host" else torch.from_numpy(mask).cuda()
    for causal in (False, "bottom_right"):
        out, lse = fastattn.scaled_dot_product_attention(
            q, k, v, attn_mask=gpu_mask, causal=causal, return_lse=True)
        _compare(out, lse, q, k, v, dtype, attn_mask=mask, causal=causal)


@needs_torch
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_half_precision_float_mask(dtype):
    # A GPU additive mask in float16/bfloat16 is read in its own dtype.
    q, k, v = _rand((1, 2, 80, 64), dtype), _rand((1, 2, 90, 64), dtype), _rand((1, 2, 90, 64), dtype)
    mask = torch.randn(80, 90, device="cuda").to(_torch_dtype(dtype))
    out, lse = fastattn.scaled_dot_product_attention(q, k, v, attn_mask=mask, return_lse=True)
    _compare(out, lse, q, k, v, dtype, attn_mask=_np64(mask))


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", [(0, 0), (5, 3), (None, 7), (16, None), (200, 0)])
@pytest.mark.parametrize("causal", [False, "bottom_right"])
def test_window(dtype, window, causal):
    q, k, v = _rand((2, 2, 130, 64), dtype), _rand((2, 2, 260, 64), dtype), _rand((2, 2, 260, 64), dtype)
    out, lse = fastattn.scaled_dot_product_attention(q, k, v, window=window, causal=causal, return_lse=True)
    _compare(out, lse, q, k, v, dtype, window=window, causal=causal)


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lq", [1, 4, 100])
def test_kv_lengths_and_gqa(dtype, lq):
    lengths = np.array([0, 1, 77, 300])
    q = _rand((4, 8, lq, 64), dtype)
    k, v = _rand((4, 2, 300, 64), dtype), _rand((4, 2, 300, 64), dtype)
    for kl in (lengths, torch.from_numpy(lengths).cuda()):
        out, lse = fastattn.scaled_dot_product_attention(
            q, k, v, kv_lengths=kl, causal="bottom_right", return_lse=True)
        _compare(out, lse, q, k, v, dtype, kv_lengths=lengths, causal="bottom_right")
    with pytest.raises(ValueError, match=r"kv_lengths must lie in \[0, Lk=300\]"):
        fastattn.scaled_dot_product_attention(q, k, v, kv_lengths=np.array([1, 2, 3, 301]))


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
def test_broadcast_batch_strided_and_2d(dtype):
    q = _rand((3, 1, 4, 50, 64), dtype)
    k = _rand((1, 2, 4, 120, 64), dtype)[..., ::2, :]  # every other row: read in place
    v = _rand((3, 2, 4, 64, 60), dtype).transpose(-1, -2)  # strided last dim: copied first
    out, lse = fastattn.scaled_dot_product_attention(q, k, v, return_lse=True)
    assert out.shape == (3, 2, 4, 50, 64)
    _compare(out, lse, q, k, v, dtype)
    q2, k2, v2 = _rand((37, 40), dtype), _rand((41, 40), dtype), _rand((41, 24), dtype)
    out, lse = fastattn.scaled_dot_product_attention(q2, k2, v2, return_lse=True, causal=True)
    assert out.shape == (37, 24) and lse.shape == (37,)
    _compare(out, lse, q2, k2, v2, dtype, causal=True)


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_split_kv(dtype):
    # Lq = 1 against a long cache: the split-KV decode kernel, GQA and MHA.
    for hq, hkv in [(16, 16), (32, 4), (8, 1)]:
        q = _rand((2, hq, 1, 128), dtype)
        k, v = _rand((2, hkv, 32768, 128), dtype), _rand((2, hkv, 32768, 128), dtype)
        out, lse = fastattn.scaled_dot_product_attention(q, k, v, return_lse=True)
        assert fastattn.last_kernel() == f"cuda/decode-splitkv/sdpa/{dtype}"
        _compare(out, lse, q, k, v, dtype)
    lengths = np.array([5, 20000])
    out, lse = fastattn.scaled_dot_product_attention(q, k, v, kv_lengths=lengths, return_lse=True)
    _compare(out, lse, q, k, v, dtype, kv_lengths=lengths)


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
def test_fully_masked_rows_and_nonfinite_values(dtype):
    q, k, v = _rand((1, 2, 70, 64), dtype), _rand((1, 2, 80, 64), dtype), _rand((1, 2, 80, 64), dtype)
    mask = torch.ones(70, 80, dtype=torch.bool, device="cuda")
    mask[::3] = False  # every third query sees nothing
    mask[:, 79] = False  # nobody sees the last key...
    v[..., 79, :] = float("inf")  # ...so its Inf value must not reach anyone
    out, lse = fastattn.scaled_dot_product_attention(q, k, v, attn_mask=mask, return_lse=True)
    assert not torch.isnan(out).any()
    _compare(out, lse, q, k, v, dtype, attn_mask=mask.cpu().numpy())
    # lk = 0: every row empty
    out, lse = fastattn.scaled_dot_product_attention(q, k[..., :0, :], v[..., :0, :], return_lse=True)
    assert torch.all(out == 0) and torch.all(lse == -float("inf"))


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
def test_lowest_finite_padding_with_inf_values(dtype):
    # Left padding at np.finfo(float32).min (Hugging Face's value) over the first key tiles, with
    # Inf in the padded value rows: those keys are visible (finite mask) but their weights become
    # exactly 0 once the real keys' scores arrive, so their values are skipped (README), never
    # 0 x Inf = NaN. A float64 mask of -1e300 keeps its keys visible too (clipped, as on the CPU).
    q, k, v = _rand((1, 2, 70, 64), dtype), _rand((1, 2, 200, 64), dtype), _rand((1, 2, 200, 64), dtype)
    v[..., :130, :] = float("inf")
    for low, mdt in ((np.finfo(np.float32).min, torch.float32), (-1e300, torch.float64)):
        mask = torch.zeros(70, 200, dtype=mdt, device="cuda")
        mask[:, :130] = low
        out, lse = fastattn.scaled_dot_product_attention(q, k, v, attn_mask=mask, return_lse=True)
        assert not torch.isnan(out).any(), low
        v_ref = v.clone()
        v_ref[..., :130, :] = 0  # weight exactly 0: skipped, as the reference's rule says
        _compare(out, lse, q, k, v_ref, dtype, attn_mask=mask.cpu().numpy())


@needs_torch
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_empty_shapes(dtype):
    for qs, ks, vs in [((2, 0, 5, 64), (2, 0, 7, 64), (2, 0, 7, 64)),  # no heads
                       ((2, 4, 0, 64), (2, 4, 7, 64), (2, 4, 7, 64)),  # no queries
                       ((2, 4, 5, 64), (2, 4, 7, 64), (2, 4, 7, 0))]:  # Dv = 0: lse still counts
        q, k, v = _rand(qs, dtype), _rand(ks, dtype), _rand(vs, dtype)
        out, lse = fastattn.scaled_dot_product_attention(q, k, v, return_lse=True)
        assert tuple(out.shape) == qs[:-1] + vs[-1:] and tuple(lse.shape) == qs[:-1]
        if out.numel() or lse.numel():
            _compare(out, lse, q, k, v, dtype)


@needs_torch
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_against_torch_sdpa(dtype):
    # Error against the float64 reference within twice PyTorch's own (flash / efficient backend).
    for causal in (False, True):
        q, k, v = (_rand((2, 8, 1024, 128), dtype) for _ in range(3))
        out = fastattn.scaled_dot_product_attention(q, k, v, causal=causal)
        ref, _ = sdpa_reference(_np64(q), _np64(k), _np64(v), causal=causal)
        with torch.no_grad():
            theirs = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        ours_err = np.max(np.abs(_np64(out) - ref))
        their_err = np.max(np.abs(_np64(theirs) - ref))
        assert ours_err <= 2 * their_err + 1e-6, (ours_err, their_err)


@needs_torch
def test_tf32_opt_in():
    q, k, v = (_rand((2, 4, 300, 64), "float32") for _ in range(3))
    try:
        fastattn.set_cuda_tf32(True)
        out, lse = fastattn.scaled_dot_product_attention(q, k, v, causal=True, return_lse=True)
        assert fastattn.last_kernel() == "cuda/tf32/sdpa/float32"
        _compare(out, lse, q, k, v, "float32", tf32=True, causal=True)
    finally:
        fastattn.set_cuda_tf32(False)
    fastattn.scaled_dot_product_attention(q, k, v)
    assert fastattn.last_kernel() == "cuda/fma/sdpa/float32"


@needs_torch
@pytest.mark.parametrize("dtype,kernel", [("float16", "mma"), ("bfloat16", "mma"),
                                          ("float32", "fma"), ("float64", "fma")])
def test_kernel_names(dtype, kernel):
    q = _rand((1, 2, 100, 64), dtype)
    fastattn.scaled_dot_product_attention(q, q, q)
    assert fastattn.last_kernel() == f"cuda/{kernel}/sdpa/{dtype}"
    fastattn.scaled_dot_product_attention(q[..., :1, :], q, q)
    assert fastattn.last_kernel() == f"cuda/decode/sdpa/{dtype}"


@needs_torch
def test_zero_copy_out_and_mixed_dtypes():
    q, k, v = (_rand((2, 4, 100, 64), "float16") for _ in range(3))
    out = torch.empty_like(q)
    ptr = out.data_ptr()
    res = fastattn.scaled_dot_product_attention(q, k, v, out=out)
    assert res is out and out.data_ptr() == ptr
    ref, _ = sdpa_reference(_np64(q), _np64(k), _np64(v))
    assert np.max(np.abs(_np64(out) - ref)) / np.max(np.abs(ref)) <= 2e-3
    with pytest.raises(ValueError, match="out has shape"):
        fastattn.scaled_dot_product_attention(q, k, v, out=out[:, :2])
    with pytest.raises(ValueError, match="C-contiguous"):
        fastattn.scaled_dot_product_attention(q, k, v, out=torch.empty(2, 4, 64, 100, dtype=q.dtype, device="cuda").transpose(-1, -2))
    with pytest.raises(ValueError, match="overlaps"):
        fastattn.scaled_dot_product_attention(q, k, v, out=q)
    # float16 with bfloat16 promotes to float32, like the CPU path
    res = fastattn.scaled_dot_product_attention(q, k.to(torch.bfloat16), v)
    assert res.dtype == torch.float32


@needs_torch
def test_runs_on_the_callers_stream():
    # The inputs are written on a side stream after a long sleep; only a kernel queued on that
    # same stream reads the final values.
    src = [_rand((4, 8, 512, 64), "float16") for _ in range(3)]
    q, k, v = (torch.empty_like(s) for s in src)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        torch.cuda._sleep(200_000_000)
        for dst, x in zip((q, k, v), src):
            dst.copy_(x)
        out = fastattn.scaled_dot_product_attention(q, k, v)
    s.synchronize()
    ref, _ = sdpa_reference(*(_np64(x) for x in src))
    assert np.max(np.abs(_np64(out) - ref)) / np.max(np.abs(ref)) <= 2e-3


@needs_cupy
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_cupy_zero_copy(dtype):
    rng = np.random.default_rng(1)
    q, k, v = (cupy.asarray(rng.standard_normal((2, 4, 90, 64)).astype(dtype)) for _ in range(3))
    out, lse = fastattn.scaled_dot_product_attention(q, k, v, causal=True, return_lse=True)
    assert isinstance(out, cupy.ndarray) and out.dtype == q.dtype and out.device == q.device
    _compare(cupy.asnumpy(out), cupy.asnumpy(lse), cupy.asnumpy(q), cupy.asnumpy(k),
             cupy.asnumpy(v), dtype, causal=True)
    s = cupy.cuda.Stream(non_blocking=True)
    with s:
        out2 = fastattn.scaled_dot_product_attention(q, k, v, causal=True)
    s.synchronize()
    assert cupy.array_equal(out, out2)


@needs_gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_numpy_through_the_gpu(dtype):
    # NumPy inputs with backend="cuda": the CPU path's checks, copied to device 0 and back.
    if dtype == "bfloat16" and BF16 is None:
        pytest.skip("ml_dtypes not installed")
    rng = np.random.default_rng(2)
    dt = BF16 if dtype == "bfloat16" else np.dtype(dtype)
    q = rng.standard_normal((2, 8, 77, 64)).astype(dt)
    k = rng.standard_normal((2, 2, 99, 64)).astype(dt)
    v = rng.standard_normal((2, 2, 99, 40)).astype(dt)
    with fastattn.use_backend("cuda"):
        out, lse, _, _ = check_sdpa(q, k, v, causal="bottom_right", yardstick=False)
        assert fastattn.last_kernel().startswith("cuda/")
        mask = make_mask(rng, "additive_inf", (77, 99))
        check_sdpa(q, k, v, attn_mask=mask, kv_lengths=np.array([50, 99]), yardstick=False)
        check_sdpa(q[..., :1, :], k, v, window=(10, 2), yardstick=False)
    assert isinstance(out, np.ndarray)


@needs_torch
def test_errors_before_launch():
    q = _rand((2, 4, 10, 64), "float16")
    before = fastattn.last_kernel()
    with pytest.raises(ValueError, match="head dims differ"):
        fastattn.scaled_dot_product_attention(q, _rand((2, 4, 10, 32), "float16"), q)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        fastattn.scaled_dot_product_attention(q, _rand((2, 3, 10, 64), "float16"), _rand((2, 3, 10, 64), "float16"))
    with pytest.raises(ValueError, match="head dims up to 256"):
        big = _rand((1, 1, 4, 300), "float16")
        fastattn.scaled_dot_product_attention(big, big, big)
    with pytest.raises(TypeError, match="same GPU"):
        fastattn.scaled_dot_product_attention(q, q.cpu(), q)
    with pytest.raises(TypeError, match="dtype"):
        iq = torch.ones(2, 4, 10, 64, dtype=torch.int32, device="cuda")
        fastattn.scaled_dot_product_attention(iq, iq, iq)
    with pytest.raises(ValueError, match="does not broadcast"):
        fastattn.scaled_dot_product_attention(q, q, q, attn_mask=torch.ones(3, 10, dtype=torch.bool, device="cuda"))
    with pytest.raises(ValueError, match="causal must be"):
        fastattn.scaled_dot_product_attention(q, q, q, causal="sideways")
    assert fastattn.last_kernel() == before


@needs_gpu
def test_out_of_memory_is_memory_error():
    module = importlib.import_module("fastattn._cuda")
    with pytest.raises(MemoryError, match="cudaErrorMemoryAllocation"):
        module.DeviceBuffer(1 << 50, 0)


# ----------------------------------------------------------------------------- vector attention


@pytest.mark.skipif(not CUDA["compiled"], reason="no CUDA module in this build")
def test_vector_attention_shared_memory_limit_message():
    from fastattn import _cuda_vector

    module = importlib.import_module("fastattn._cuda")
    _cuda_vector._row_bytes_check(module, 64, 64, 64, False)  # fits
    with pytest.raises(ValueError, match=r"2C \+ Hd \+ 5G .* C=4096, Hd=4096, G=4096"):
        _cuda_vector._row_bytes_check(module, 4096, 4096, 4096, False)


def _vector_case(rng, form, dtype, c, groups, with_pos, with_mlp):
    from test_vector_attention import dense_inputs, mlp_for, neighbour_inputs

    if form == "dense":
        q, k, v, pos, mask = dense_inputs(rng, c, dtype, with_pos=with_pos)
        kw = dict(attn_mask=mask)
    else:
        q, k, v, pos, index = neighbour_inputs(rng, c, dtype, with_pos=with_pos)
        kw = dict(index=index)
    mlp = mlp_for(rng, c, groups, 7, dtype) if with_mlp else None
    return q, k, v, pos, mlp, kw


@needs_gpu
@pytest.mark.parametrize("form", ["dense", "neighbour"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("with_pos", [False, True], ids=["nopos", "pos"])
@pytest.mark.parametrize("with_mlp", [False, True], ids=["nomlp", "mlp"])
def test_vector_attention_numpy_through_the_gpu(form, dtype, with_pos, with_mlp):
    from reference_vector import vector_attention_reference
    from test_vector_attention import TOLERANCE, check

    rng = np.random.default_rng(3)
    for relation, sharing, (c, groups) in itertools.product(
            ["subtract", "add", "multiply"], ["blocked", "strided"], [(12, 1), (12, 4), (12, 12), (16, 8)]):
        q, k, v, pos, mlp, kw = _vector_case(rng, form, dtype, c, groups, with_pos, with_mlp)
        common = dict(relation=relation, sharing=sharing, groups=None if mlp else groups)
        out, weights = fastattn.vector_attention(
            q[0], k[0], v[0], pos=pos[0], weight_mlp=mlp and mlp[0], return_weights=True,
            backend="cuda", **common, **kw)
        assert fastattn.last_kernel() == f"cuda/warp/vector_attention/{dtype}"
        ref, ref_w = vector_attention_reference(q[1], k[1], v[1], pos=pos[1],
                                                weight_mlp=mlp and mlp[1], **common, **kw)
        check(out, ref, dtype, f"{form} {relation} {sharing} G={groups}")
        assert np.abs(weights.astype(np.float64) - ref_w).max() <= 4 * TOLERANCE[np.dtype(dtype)]


@needs_torch
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("form", ["dense", "neighbour"])
def test_vector_attention_torch_zero_copy(dtype, form):
    from reference_vector import vector_attention_reference

    rng = np.random.default_rng(4)
    c, groups = 32, 8
    q, k, v, pos, mlp, kw = _vector_case(rng, form, "float32", c, groups, True, True)
    cast = lambda a: None if a is None else torch.from_numpy(np.asarray(a, np.float32)).cuda().to(_torch_dtype(dtype))
    tq, tk, tv, tpos = (cast(a[0]) for a in (q, k, v, pos))
    tmlp = tuple(cast(a) for a in mlp[0])
    tkw = {n: torch.from_numpy(np.asarray(a)).cuda() for n, a in kw.items()}
    out, weights = fastattn.vector_attention(tq, tk, tv, pos=tpos, weight_mlp=tmlp,
                                             return_weights=True, **tkw)
    assert isinstance(out, torch.Tensor) and out.device == tq.device and out.dtype == tq.dtype
    ref, ref_w = vector_attention_reference(_np64(tq), _np64(tk), _np64(tv), pos=_np64(tpos),
                                            weight_mlp=tuple(_np64(a) for a in tmlp), **kw)
    o = _np64(out)
    scale = np.abs(ref).max(axis=-1, keepdims=True)
    empty = scale[..., 0] == 0
    assert np.all(o[empty] == 0)
    tol = {"float16": 2e-3, "bfloat16": 1.6e-2, "float32": 3e-5, "float64": 1e-12}[dtype]
    assert np.max(np.abs(o - ref)[~empty] / scale[~empty]) <= tol
    assert np.abs(_np64(weights) - ref_w).max() <= 4 * tol


@needs_gpu
def test_vector_attention_isolates_nonfinite_and_empty_rows():
    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((6, 8), (5, 8), (5, 8)))
    index = np.array([[0, 1, -1], [-1, -1, -1], [4, 4, 2], [3, -1, 0], [1, 2, 3], [0, 0, 0]])
    k[4] = np.nan  # only rows that use key 4 may turn NaN
    v[4] = np.inf
    out, w = fastattn.vector_attention(q, k, v, index=index, return_weights=True, backend="cuda")
    assert np.all(out[1] == 0) and np.all(w[1] == 0)
    assert np.all(np.isfinite(out[[0, 1, 3, 4, 5]]))
