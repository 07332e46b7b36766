"""The CUDA backend's Python side: GPU arrays in and out, zero-copy, and NumPy arrays through the GPU.

GPU arrays are read where they lie, described by pointer, shape, element strides and dtype:
through ``__cuda_array_interface__`` (CuPy, PyTorch, Numba) where the array offers it, else through
DLPack (``__dlpack__``; PyTorch's bfloat16 tensors, which have no typestr in the array interface).
The result is allocated by the caller's own library (``torch.empty`` / ``cupy.empty``) on the
operands' device, and the kernel runs on that library's current stream, so it is ordered after the
work that produced the inputs and before whatever the caller queues next; nothing synchronises.

NumPy arrays (with ``backend="cuda"``) are checked and brought to kernel form by the CPU path's
``_sdpa_args.prepare``, copied to device 0, and the result copied back.

Every check happens before any launch, with the messages of the CPU path (``_sdpa_args``).
"""

from __future__ import annotations

import ctypes
import os
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _dtypes, _sdpa_args

# Storage dtypes by name, with their codes shared with the kernels (fastattn::DType).
_CODES = {"float32": 0, "float64": 1, "float16": 2, "bfloat16": 3}
_ITEMSIZE = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2, "bool": 1}
# Mask element types (fastattn::cuda::MaskType).
_MASK_TYPES = {"bool": 1, "float32": 2, "float64": 3, "float16": 4, "bfloat16": 5}
_TYPESTR = {"<f4": "float32", "<f8": "float64", "<f2": "float16", "|b1": "bool",
            "<i8": "int64", "<i4": "int32", "<u8": "uint64", "<u4": "uint32"}
_MAX_HEAD_DIM = 256
_MAX_BATCH_DIMS = 6

# TF32: off unless asked for, by set_cuda_tf32(True) or FASTATTN_CUDA_TF32=1.
_tf32 = os.environ.get("FASTATTN_CUDA_TF32", "0").strip().lower() in ("1", "true", "yes", "on")
_tf32_lock = threading.Lock()


def set_cuda_tf32(enabled: bool) -> None:
    """Let the CUDA backend compute float32 attention on tensor cores with TF32 operands (10-bit
    mantissa; about 1e-3 relative error instead of 1e-6), for every later call. Off by default;
    FASTATTN_CUDA_TF32=1 turns it on at import. float16, bfloat16 and float64 are not affected."""
    global _tf32
    if not isinstance(enabled, (bool, np.bool_)):  # bool("false") is True: refuse, never guess
        raise TypeError(f"set_cuda_tf32 takes True or False, got {enabled!r}")
    with _tf32_lock:
        _tf32 = bool(enabled)


def get_cuda_tf32() -> bool:
    """Whether float32 attention on the CUDA backend may use TF32 tensor cores."""
    return _tf32


# ----------------------------------------------------------------------------- GPU operands


class GpuArray:
    """A GPU array as the kernels see it: pointer, shape, element strides, dtype name, device, and
    the library that made it ("torch", "cupy" or "other"). Keeps `owner` (and a DLPack capsule)
    alive while it is alive."""

    __slots__ = ("ptr", "shape", "strides", "dtype", "device", "library", "owner", "_keep")

    def __init__(self, ptr: int, shape: Sequence[int], strides: Sequence[int], dtype: str, device: int,
                 library: str, owner: Any, keep: Any = None) -> None:
        self.ptr, self.shape, self.strides = int(ptr), tuple(int(n) for n in shape), tuple(int(s) for s in strides)
        self.dtype, self.device, self.library, self.owner = dtype, int(device), library, owner
        self._keep = keep

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def c_contiguous(self) -> bool:
        expect = 1
        for n, s in zip(reversed(self.shape), reversed(self.strides)):
            if n != 1 and s != expect:
                return False
            expect *= n
        return True

    def span(self) -> Tuple[int, int]:
        """[first byte, last byte + 1) of the memory this array can touch."""
        item = _ITEMSIZE.get(self.dtype, 1)
        if self.size == 0:
            return self.ptr, self.ptr
        lo = hi = 0
        for n, s in zip(self.shape, self.strides):
            (lo, hi) = (lo + (n - 1) * s, hi) if s < 0 else (lo, hi + (n - 1) * s)
        return self.ptr + lo * item, self.ptr + (hi + 1) * item


def _library(x: Any) -> str:
    mod = type(x).__module__.split(".")[0]
    return mod if mod in ("torch", "cupy") else "other"


def _from_cai(x: Any, cai: Dict[str, Any], library: str) -> GpuArray:
    shape = tuple(int(n) for n in cai["shape"])
    typestr = cai["typestr"]
    dtype = _TYPESTR.get(typestr, typestr)
    item = np.dtype(typestr).itemsize
    strides: Tuple[int, ...]
    if cai.get("strides") is None:
        strides = _c_strides(shape)
    else:
        bstrides = tuple(int(s) for s in cai["strides"])
        if any(s % item for s in bstrides):
            raise ValueError(f"GPU array strides {bstrides} are not multiples of its item size {item}")
        strides = tuple(s // item for s in bstrides)
    ptr = int(cai["data"][0])
    return GpuArray(ptr, shape, strides, dtype, _device_of(x, ptr, library), library, x)


def _c_strides(shape: Tuple[int, ...]) -> Tuple[int, ...]:
    """Element strides of a C-contiguous array of `shape`."""
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= n
    return tuple(reversed(strides))


def _device_of(x: Any, ptr: int, library: str) -> int:
    if library == "torch":
        return int(x.device.index or 0)
    if library == "cupy":
        return int(x.device.id)
    dev = getattr(x, "device", None)
    idx = getattr(dev, "id", getattr(dev, "index", None))
    return int(idx) if isinstance(idx, int) else 0


# DLPack's C structures (dlpack.h, the ABI every producer shares).
class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64),
    ]


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.c_void_p)]


_DL_CODES = {(2, 32): "float32", (2, 64): "float64", (2, 16): "float16", (4, 16): "bfloat16",
             (6, 8): "bool", (1, 8): "bool", (0, 64): "int64", (0, 32): "int32"}
_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


def _from_dlpack(x: Any, library: str, stream: int) -> GpuArray:
    # The stream argument asks the producer to make the data ready on our stream (1 = legacy default).
    capsule = x.__dlpack__(stream=stream if stream else 1)
    managed = _DLManagedTensor.from_address(_capsule_pointer(capsule, b"dltensor"))
    t = managed.dl_tensor
    if t.device.device_type not in (2, 13):  # kDLCUDA, kDLCUDAManaged
        raise TypeError(f"a DLPack array on device type {t.device.device_type} is not a CUDA array")
    dtype = _DL_CODES.get((t.dtype.code, t.dtype.bits), f"dlpack({t.dtype.code},{t.dtype.bits})")
    if t.dtype.lanes != 1:
        raise TypeError(f"DLPack arrays of {t.dtype.lanes}-lane vectors are not supported")
    shape = tuple(int(t.shape[i]) for i in range(t.ndim))
    if t.strides:
        strides = tuple(int(t.strides[i]) for i in range(t.ndim))
    else:
        strides = _c_strides(shape)
    ptr = (t.data or 0) + t.byte_offset
    # The capsule stays referenced (so the producer's deleter has not run) as long as the GpuArray.
    return GpuArray(ptr, shape, strides, dtype, t.device.device_id, library, x, keep=capsule)


def gpu_array(x: Any, stream: int = 0) -> GpuArray:
    """The description of a GPU array (zero-copy)."""
    library = _library(x)
    if library == "torch" and getattr(x, "requires_grad", False):
        x = x.detach()  # fastattn computes no gradients; the values are the same memory
    try:
        cai = x.__cuda_array_interface__
    except Exception:  # absent, or refused (PyTorch's bfloat16 has no typestr): try DLPack
        cai = None
    if cai is not None:
        return _from_cai(x, cai, library)
    if hasattr(x, "__dlpack__"):
        return _from_dlpack(x, library, stream)
    raise TypeError(f"{type(x).__name__} is not a GPU array (no __cuda_array_interface__ or __dlpack__)")


def is_gpu(x: Any) -> bool:
    if x is None or isinstance(x, (np.ndarray, np.generic, int, float, bool, list, tuple)):
        return False
    from . import _backend

    return _backend._on_gpu(x)


# ----------------------------------------------------------------------------- the caller's library


def current_stream(library: str, device: int) -> int:
    """The caller's library's current stream on `device`, as an int (0: the legacy default)."""
    if library == "torch":
        import torch

        return int(torch.cuda.current_stream(device).cuda_stream)
    if library == "cupy":
        import cupy

        with cupy.cuda.Device(device):
            return int(cupy.cuda.get_current_stream().ptr)
    return 0


def _empty(library: str, shape: Tuple[int, ...], dtype: str, device: int, like: Any) -> Any:
    """A new array of the caller's library on `device`."""
    if library == "torch":
        import torch

        return torch.empty(shape, dtype=getattr(torch, dtype), device=like.device)
    if library == "cupy":
        import cupy

        with cupy.cuda.Device(device):
            if dtype == "bfloat16":
                raise TypeError("CuPy has no bfloat16 arrays")
            return cupy.empty(shape, dtype=dtype)
    raise TypeError(
        f"{type(like).__name__} arrays are read zero-copy, but fastattn can allocate results only "
        "as PyTorch tensors or CuPy arrays; pass torch or cupy arrays"
    )


def _to_device(library: str, a: np.ndarray, device: int, like: Any) -> Any:
    """A host array (mask, kv_lengths) as an array of the caller's library on `device`."""
    if library == "torch":
        import torch

        return torch.from_numpy(np.array(a, order="C", copy=True)).to(like.device)  # writeable for torch
    if library == "cupy":
        import cupy

        with cupy.cuda.Device(device):
            return cupy.asarray(a)
    raise TypeError(f"cannot move host arrays next to {type(like).__name__} arrays")


def _astype(library: str, x: Any, dtype: str) -> Any:
    if library == "torch":
        import torch

        return x.to(getattr(torch, dtype))
    return x.astype(dtype)


def _promote(names: List[str]) -> str:
    """np.result_type over the storage dtypes, float16 with bfloat16 giving float32."""
    if all(n == names[0] for n in names):
        return names[0]
    if "float64" in names:
        return "float64"
    return "float32" if ("float32" in names or ("float16" in names and "bfloat16" in names)) else names[0]


# ----------------------------------------------------------------------------- SDPA


def _kernel_form(a: GpuArray, ndim: int) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """Shape and element strides with `ndim` dims: a 2-D (L, D) operand is one head, and missing
    leading batch dims are size 1 (stride 0)."""
    shape, strides = a.shape, a.strides
    if len(shape) == 2:
        shape, strides = (1,) + shape, (0,) + strides
    pad = ndim - len(shape)
    return (1,) * pad + shape, (0,) * pad + strides


def _batch_strides(shape: Sequence[int], strides: Sequence[int], nb: int) -> List[int]:
    return [0 if n == 1 else s for n, s in zip(shape[:nb], strides[:nb])]


def _check_dims(d: int, dv: int, nbatch: int) -> None:
    if d > _MAX_HEAD_DIM or dv > _MAX_HEAD_DIM:
        raise ValueError(
            f"the CUDA backend supports head dims up to {_MAX_HEAD_DIM}, got D={d}, Dv={dv}; use "
            "backend='cpu' for larger ones"
        )
    if nbatch > _MAX_BATCH_DIMS:
        raise ValueError(
            f"the CUDA backend supports up to {_MAX_BATCH_DIMS} batch dims, got {nbatch}; reshape "
            "the batch dims together"
        )


def _contiguous(library: str, x: Any) -> Any:
    if library == "torch":
        return x.contiguous()
    if library == "cupy":
        import cupy

        return cupy.ascontiguousarray(x)
    raise ValueError(f"a {type(x).__name__} operand whose last dim is not contiguous cannot be read")


def sdpa(
    module: Any, query: Any, key: Any, value: Any, attn_mask: Any, causal: Any, scale: Any, window: Any,
    kv_lengths: Any, return_lse: bool, out: Any,
) -> Tuple[Any, Any, str]:
    """scaled_dot_product_attention on the CUDA backend: GPU arrays zero-copy, NumPy arrays (and
    anything np.asarray takes) through device 0. Returns (result, lse or None, kernel name)."""
    if any(is_gpu(a) for a in (query, key, value)):
        return _sdpa_gpu(module, query, key, value, attn_mask, causal, scale, window, kv_lengths,
                         return_lse, out)
    return _sdpa_host(module, query, key, value, attn_mask, causal, scale, window, kv_lengths,
                      return_lse, out)


def _operands(query: Any, key: Any, value: Any) -> Tuple[List[GpuArray], List[Any], str, str, int, int]:
    """The three operands as GpuArrays of one storage dtype on one device, with the caller's
    library and stream. Mixed dtypes are converted on the device by the caller's library."""
    originals = [query, key, value]
    names = ("query", "key", "value")
    for x, name in zip(originals, names):
        if not is_gpu(x):
            raise TypeError(
                f"{name} is a {type(x).__name__} on the host while another operand is on the GPU; "
                "pass query, key and value on the same GPU"
            )
    library = _library(query)
    # The device and stream first: a DLPack export is then made ready on the caller's stream.
    if library == "torch":
        device = int(query.device.index or 0)
    elif library == "cupy":
        device = int(query.device.id)
    else:
        device = gpu_array(query).device
    stream = current_stream(library, device)
    arrays = [gpu_array(x, stream) for x in originals]
    for a, name in zip(arrays, names):
        if a.dtype not in _CODES:
            raise TypeError(
                f"{name} has dtype {a.dtype}; fastattn computes on float16, bfloat16, float32 or "
                "float64"
            )
        if a.device != device:
            raise ValueError(f"{name} is on GPU {a.device}, query on GPU {device}: use one device")
    dtype = _promote([a.dtype for a in arrays])
    for i, a in enumerate(arrays):
        if a.dtype != dtype:
            originals[i] = _astype(_library(originals[i]), originals[i], dtype)
            arrays[i] = gpu_array(originals[i], stream)
    return arrays, originals, dtype, library, device, stream


def _sdpa_gpu(
    module: Any, query: Any, key: Any, value: Any, attn_mask: Any, causal: Any, scale: Any, window: Any,
    kv_lengths: Any, return_lse: bool, out: Any,
) -> Tuple[Any, Any, str]:
    arrays, originals, dtype, library, device, stream = _operands(query, key, value)
    two_d, batch, hq, lq, lk, d, dv = _sdpa_args.check_shapes(*arrays)
    nb = len(batch)
    _check_dims(d, dv, nb)
    ndim = nb + 3
    # The kernels read rows contiguously: an operand whose last dim is strided is copied (on the
    # device, by the caller's library), as the CPU path copies one on the host.
    for i, a in enumerate(arrays):
        if a.shape[-1] > 1 and a.strides[-1] != 1:
            originals[i] = _contiguous(library, originals[i])
            arrays[i] = gpu_array(originals[i], stream)
    q, k, v = arrays
    hkv = k.shape[-3] if k.ndim > 2 else 1

    keep: List[Any] = []  # device arrays made here, alive until the launch is queued
    mask_desc = None
    if attn_mask is not None:
        mask_desc = _mask_gpu(attn_mask, batch + (hq, lq, lk), library, device, stream, query, keep)
    len_desc = None
    if kv_lengths is not None:
        lengths = kv_lengths
        if is_gpu(kv_lengths):  # the range check reads the values: a small copy and a wait
            lengths = _gpu_to_host(module, gpu_array(kv_lengths, stream), stream)
        host = np.ascontiguousarray(_sdpa_args._kv_lengths(lengths, batch, lk))
        dev = _to_device(library, host, device, query)
        keep.append(dev)
        g = gpu_array(dev, stream)
        len_desc = (g.ptr, _batch_strides(host.shape, g.strides, nb))
    scale_value, diag, left, right = _sdpa_args.check_options(causal, scale, window, lq, lk, d)

    kernel_shape = batch + (hq, lq, dv)
    result_shape = (lq, dv) if two_d else kernel_shape
    compute = "float64" if dtype == "float64" else "float32"
    if out is None:
        result = _empty(library, result_shape, dtype, device, query)
    else:
        on_gpu = [gpu_array(a, stream) for a in (attn_mask, kv_lengths) if a is not None and is_gpu(a)]
        _check_out(out, result_shape, dtype, [q, k, v] + on_gpu, stream)
        result = out
    lse = _empty(library, batch + (hq, lq), compute, device, query) if return_lse else None

    if int(np.prod(batch, dtype=np.int64)) * hq * lq == 0:  # no output row: nothing to launch
        return result, (lse.reshape(lq) if lse is not None and two_d else lse), f"cuda/none/sdpa/{dtype}"
    descs = []
    for a in (q, k, v):
        shape, strides = _kernel_form(a, ndim)
        descs.append((a.ptr, _batch_strides(shape, strides, nb), strides[-3], strides[-2]))
    kernel: str = module.sdpa(
        _CODES[dtype], list(batch), hq, hkv, lq, lk, d, dv, descs[0], descs[1], descs[2],
        gpu_array(result, stream).ptr, gpu_array(lse, stream).ptr if lse is not None else 0,
        mask_desc, len_desc, scale_value, diag, left, right, dtype == "float32" and _tf32,
        device, stream,
    )
    del keep  # freed by the caller's library in stream order, after the kernel
    if lse is not None and two_d:
        lse = lse.reshape(lq)
    return result, lse, kernel


def _check_out(out: Any, shape: Tuple[int, ...], dtype: str, inputs: Sequence[GpuArray], stream: int) -> None:
    """out= on the GPU: exactly the result's shape and dtype, C-contiguous, not overlapping an input
    (the CPU path's rules)."""
    if not is_gpu(out):
        raise ValueError(f"out must be a GPU array like the inputs, got {type(out).__name__}")
    o = gpu_array(out, stream)
    if o.shape != tuple(shape) or o.dtype != dtype:
        raise ValueError(
            f"out has shape {o.shape} and dtype {o.dtype}; expected shape {tuple(shape)} and dtype "
            f"{dtype}"
        )
    if not o.c_contiguous():
        raise ValueError("out must be C-contiguous")
    lo, hi = o.span()
    for a in inputs:
        a_lo, a_hi = a.span()
        if a.size and o.size and lo < a_hi and a_lo < hi:
            raise ValueError(
                "out overlaps an input (query, key, value, attn_mask or kv_lengths); pass a separate array"
            )


def _mask_gpu(
    attn_mask: Any, full: Tuple[int, ...], library: str, device: int, stream: int, like: Any, keep: List[Any]
) -> Tuple[Any, ...]:
    """The mask descriptor (type, ptr, batch strides, head, row, col strides): a GPU mask is read
    where it lies, in its own dtype (bool, or any float: added to the scores); a host mask is
    checked like the CPU path's and copied to the device."""
    if is_gpu(attn_mask):
        m = gpu_array(attn_mask, stream)
        if m.dtype not in _MASK_TYPES:
            raise _sdpa_args.mask_dtype_error(m.dtype)
        if m.device != device:
            raise ValueError(f"attn_mask is on GPU {m.device}, query on GPU {device}")
    else:
        host = np.asarray(attn_mask)
        if host.dtype != np.bool_ and not _dtypes.is_supported_float(_dtypes.native(host.dtype)):
            raise _sdpa_args.mask_dtype_error(host.dtype)
        _sdpa_args.check_mask_shape(host.shape, full)
        if host.dtype != np.bool_ and host.dtype.name not in ("float16", "float32", "float64"):
            host = host.astype(np.float32)  # bfloat16 (which torch cannot take from NumPy)
        host = host.astype(_dtypes.native(host.dtype), copy=False)  # the kernels read native order
        dev = _to_device(library, np.ascontiguousarray(host), device, like)
        keep.append(dev)
        m = gpu_array(dev, stream)
    _sdpa_args.check_mask_shape(m.shape, full)
    pad = len(full) - m.ndim
    shape, strides = (1,) * pad + m.shape, (0,) * pad + m.strides
    strides = tuple(0 if n == 1 else s for n, s in zip(shape, strides))
    nb = len(full) - 3
    return (_MASK_TYPES[m.dtype], m.ptr, list(strides[:nb]), strides[-3], strides[-2], strides[-1])


def _gpu_to_host(module: Any, g: GpuArray, stream: int) -> np.ndarray:
    dtype = np.dtype(g.dtype) if g.dtype in ("int64", "int32") else None
    if dtype is None:
        raise TypeError(f"kv_lengths must be integers, got dtype {g.dtype}")
    if not g.c_contiguous():
        raise ValueError("kv_lengths on the GPU must be C-contiguous")
    host = np.empty(g.shape, dtype)
    module.copy_to_host(g.ptr, host, g.device, stream)
    return host


def _sdpa_host(
    module: Any, query: Any, key: Any, value: Any, attn_mask: Any, causal: Any, scale: Any, window: Any,
    kv_lengths: Any, return_lse: bool, out: Any,
) -> Tuple[Any, Any, str]:
    """NumPy operands: the CPU path's checks and kernel form, then through device 0 and back."""
    args, result, lse_result = _sdpa_args.prepare(
        query, key, value, attn_mask, causal, scale, window, kv_lengths, return_lse, out
    )
    qn, kn, vn, kernel_out, lse, mask, lengths, code, scale_value, diag, left, right = args
    dtype = {v: k for k, v in _CODES.items()}[code]
    batch = kernel_out.shape[:-3]
    hq, lq, dv = kernel_out.shape[-3:]
    lk, d = kn.shape[-2], qn.shape[-1]
    nb = len(batch)
    _check_dims(d, dv, nb)
    if int(np.prod(batch, dtype=np.int64)) * hq * lq == 0:  # no output row: nothing to launch
        return result, lse_result, f"cuda/none/sdpa/{dtype}"
    device, stream = 0, 0
    buffers: List[Any] = []

    def upload(a: np.ndarray) -> Tuple[Any, Tuple[int, ...], List[int]]:
        a = np.ascontiguousarray(a)  # kernel form has size-1 broadcast dims: never a blow-up
        buf = module.DeviceBuffer(a.nbytes, device)
        buf.upload(a, stream)
        buffers.append(buf)
        strides = [s // a.itemsize for s in a.strides]
        return buf, a.shape, strides

    descs = []
    for a in (qn, kn, vn):
        buf, shape, strides = upload(a)
        descs.append((buf.ptr, _batch_strides(shape, strides, nb), strides[-3], strides[-2]))
    mask_desc = None
    if mask is not None:
        buf, shape, strides = upload(mask)
        strides = [0 if n == 1 else s for n, s in zip(shape, strides)]
        mtype = "bool" if mask.dtype == np.bool_ else str(mask.dtype)
        mask_desc = (_MASK_TYPES[mtype], buf.ptr, strides[:nb], strides[-3], strides[-2], strides[-1])
    len_desc = None
    if lengths is not None:
        buf, shape, strides = upload(lengths)
        len_desc = (buf.ptr, _batch_strides(shape, strides, nb))
    out_buf = module.DeviceBuffer(kernel_out.nbytes, device)
    lse_buf = module.DeviceBuffer(lse.nbytes, device) if lse is not None else None
    kernel: str = module.sdpa(
        code, list(batch), hq, kn.shape[-3], lq, lk, d, dv, descs[0], descs[1], descs[2],
        out_buf.ptr, lse_buf.ptr if lse_buf is not None else 0, mask_desc, len_desc, scale_value,
        diag, left, right, dtype == "float32" and _tf32, device, stream,
    )
    out_buf.download(kernel_out, stream)
    if lse_buf is not None:
        lse_buf.download(lse, stream)
    return result, lse_result, kernel


def run_sdpa(
    query: Any, key: Any, value: Any, attn_mask: Any, causal: Any, scale: Any, window: Any, kv_lengths: Any,
    return_lse: bool, out: Any,
) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
    """The public function's CUDA branch: runs the call and records the kernel that served it.
    (GPU inputs give arrays of the caller's library, typed as the public signature's.)"""
    from . import _backend

    module, _ = _backend._cuda_module()
    result, lse, kernel = sdpa(
        module, query, key, value, attn_mask, causal, scale, window, kv_lengths, return_lse, out
    )
    _backend.record_kernel(kernel)
    return (result, lse) if return_lse else result
