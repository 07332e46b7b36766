"""vector_attention on the CUDA backend.

The checks and the kernel form are the CPU path's (``_vector_args.prepare``), so both backends
accept and refuse exactly the same calls with the same messages:

- NumPy operands: prepared as on the CPU, copied to device 0, results copied back.
- GPU operands (PyTorch, CuPy): converted to the compute dtype on the device by the caller's
  library (float16/bfloat16 are computed in float32, as on the CPU), then ``prepare`` runs on
  host stand-ins of the same shapes that own no data (so no operand is copied to the host) and
  the kernel reads the GPU memory in place. The neighbour ``index`` is the exception: its values
  must be range-checked, so it is copied to the host once (and back as int64 if it was not).
  Results are arrays of the caller's library on the operands' device, on its current stream.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _cuda_arrays as ca
from . import _sdpa_args, _vector_args


def _shadow(g: ca.GpuArray, dtype: Any) -> np.ndarray:
    """A host array with g's shape and `dtype` that owns one row of zeros: prepare() can check its
    shape and take it as contiguous in its last dim without copying anything of size."""
    dtype = np.dtype(dtype)
    if g.ndim == 0:
        return np.zeros((), dtype)
    base = np.zeros(max(g.shape[-1], 1), dtype)
    return np.lib.stride_tricks.as_strided(
        base, g.shape, (0,) * (g.ndim - 1) + (dtype.itemsize,), writeable=False
    )


def _row_bytes_check(module: Any, c: int, groups: int, hidden: int, f64: bool) -> None:
    need = (2 * c + hidden + 5 * groups) * (8 if f64 else 4)
    limit: int = module.vector_max_row_bytes()
    if need > limit:
        raise ValueError(
            f"the CUDA vector-attention kernel holds 2C + Hd + 5G values per query in shared "
            f"memory, at most {limit} bytes; C={c}, Hd={hidden}, G={groups} need {need}: use "
            "backend='cpu'"
        )


def _batch_strides(shape: Sequence[int], strides: Sequence[int], nb: int) -> List[int]:
    return [0 if n == 1 else s for n, s in zip(shape[:nb], strides[:nb])]


Desc = Tuple[int, List[int], int, int]


def _desc(ptr: int, shape: Sequence[int], strides: Sequence[int], nb: int, a: Optional[int], b: int) -> Desc:
    """(ptr, batch strides, stride of dim a, stride of dim b) of a kernel-form operand."""
    return (ptr, _batch_strides(shape, strides, nb), strides[a] if a is not None else 0, strides[b])


def run(
    query: Any, key: Any, value: Any, index: Any, pos: Any, relation: Any, weight_mlp: Any, groups: Any,
    sharing: Any, attn_mask: Any, return_weights: bool,
) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
    """The public function's CUDA branch. (GPU inputs give arrays of the caller's library, typed as
    the public signature's.)"""
    from . import _backend

    module, _ = _backend._cuda_module()
    if any(ca.is_gpu(a) for a in (query, key, value)):
        results, kernel = _run_gpu(module, query, key, value, index, pos, relation, weight_mlp,
                                   groups, sharing, attn_mask, return_weights)
    else:
        results, kernel = _run_host(module, query, key, value, index, pos, relation, weight_mlp,
                                    groups, sharing, attn_mask, return_weights)
    _backend.record_kernel(kernel)
    return (results[0], results[1]) if return_weights else results[0]


def _run_host(
    module: Any, query: Any, key: Any, value: Any, index: Any, pos: Any, relation: Any, weight_mlp: Any,
    groups: Any, sharing: Any, attn_mask: Any, return_weights: bool,
) -> Tuple[List[Any], str]:
    call = _vector_args.prepare(query, key, value, index, pos, relation, weight_mlp, groups,
                                sharing, attn_mask)
    cdt = call.q.dtype
    f64 = cdt == np.float64
    nb = len(call.out_shape) - 2
    lq, c = call.out_shape[-2:]
    lk, g = call.weights_shape[-2:]
    hidden = 0 if call.mlp is None else call.mlp[0].shape[0]
    _row_bytes_check(module, c, g, hidden, f64)
    device, stream = 0, 0
    keep: List[Any] = []

    def upload(a: np.ndarray) -> Tuple[int, Tuple[int, ...], List[int]]:
        a = np.ascontiguousarray(a)  # kernel form: broadcast dims are size 1, never a blow-up
        buf = module.DeviceBuffer(a.nbytes, device)
        buf.upload(a, stream)
        keep.append(buf)
        return int(buf.ptr), a.shape, [s // a.itemsize for s in a.strides]

    descs = []
    for a in (call.q, call.k, call.v):
        ptr, shape, strides = upload(a)
        descs.append(_desc(ptr, shape, strides, nb, None, -2))
    index_ptr = upload(call.index)[0] if call.index is not None else 0
    pos_desc = None
    if call.pos is not None:
        ptr, shape, strides = upload(call.pos)
        strides = [0 if n == 1 else s for n, s in zip(shape, strides)]
        pos_desc = _desc(ptr, shape, strides, nb, -3, -2)
    mask_desc = None
    if call.mask is not None:
        ptr, shape, strides = upload(call.mask)
        strides = [0 if n == 1 else s for n, s in zip(shape, strides)]
        mtype = ca._MASK_TYPES["bool" if call.mask.dtype == np.bool_ else str(call.mask.dtype)]
        mask_desc = (mtype, ptr, strides[:nb], strides[-2], strides[-1])
    mlp_desc = None if call.mlp is None else tuple(upload(a)[0] for a in call.mlp)
    out = np.empty(call.out_shape, cdt)
    out_buf = module.DeviceBuffer(out.nbytes, device)
    weights = np.empty(call.weights_shape, cdt) if return_weights else None
    w_buf = module.DeviceBuffer(weights.nbytes, device) if weights is not None else None
    kernel: str = module.vector_attention(
        f64, list(call.out_shape[:-2]), lq, lk, c, g, hidden, call.k.shape[-2], *descs,
        index_ptr, pos_desc, mask_desc, call.relation, call.sharing, mlp_desc, out_buf.ptr,
        w_buf.ptr if w_buf is not None else 0, device, stream,
    )
    out_buf.download(out, stream)
    results = [out]
    if w_buf is not None and weights is not None:
        w_buf.download(weights, stream)
        results.append(weights)
    results = [r if r.dtype == call.dtype else r.astype(call.dtype) for r in results]
    return results, kernel


def _run_gpu(
    module: Any, query: Any, key: Any, value: Any, index: Any, pos: Any, relation: Any, weight_mlp: Any,
    groups: Any, sharing: Any, attn_mask: Any, return_weights: bool,
) -> Tuple[List[Any], str]:
    arrays, originals, dtype, library, device, stream = ca._operands(query, key, value)
    extra: Dict[str, Any] = {}
    if pos is not None:
        extra["pos"] = pos
    if weight_mlp is not None:
        if isinstance(weight_mlp, (str, bytes, dict)) or not hasattr(weight_mlp, "__len__") or \
                len(weight_mlp) != 4:
            _vector_args._mlp_arrays(weight_mlp)  # raises the CPU path's ValueError
        for n, a in zip(("w1", "b1", "w2", "b2"), weight_mlp):
            extra[n] = a
    # Host operands beside GPU ones (a NumPy pos or weight MLP) go to the device.
    for n, a in list(extra.items()):
        if not ca.is_gpu(a):
            extra[n] = ca._to_device(library, np.asarray(a), device, query)
    names = [a.dtype for a in arrays] + [ca.gpu_array(a, stream).dtype for a in extra.values()]
    for n in names:
        if n not in ca._CODES:
            raise TypeError(f"vector_attention operands must be float16, bfloat16, float32 or float64, got {n}")
    out_dtype = ca._promote(names)
    compute = "float64" if out_dtype == "float64" else "float32"
    # Everything in the compute dtype and contiguous rows, converted on the device.
    conv: Dict[str, Tuple[Any, ca.GpuArray]] = {}
    for n, x in list(zip(("q", "k", "v"), originals)) + list(extra.items()):
        g = ca.gpu_array(x, stream)
        if g.dtype != compute:
            x = ca._astype(ca._library(x), x, compute)
            g = ca.gpu_array(x, stream)
        if g.ndim and g.shape[-1] > 1 and g.strides[-1] != 1:
            x = ca._contiguous(library, x)
            g = ca.gpu_array(x, stream)
        conv[n] = (x, g)
    mask_dev = None
    if attn_mask is not None:
        if ca.is_gpu(attn_mask):
            mask_dev = attn_mask
        else:
            host = np.asarray(attn_mask)
            if host.dtype.kind == "V" or (host.dtype.kind == "f" and not host.dtype.isnative):
                host = host.astype(np.float32)  # bfloat16 (which torch cannot take from NumPy)
            mask_dev = ca._to_device(library, np.ascontiguousarray(host), device, query)
        mg = ca.gpu_array(mask_dev, stream)
        if mg.dtype != "bool":
            if mg.dtype not in ca._CODES:
                raise _sdpa_args.mask_dtype_error(mg.dtype)
            if mg.dtype != compute:
                mask_dev = ca._astype(ca._library(mask_dev), mask_dev, compute)
                mg = ca.gpu_array(mask_dev, stream)
        conv["mask"] = (mask_dev, mg)
    host_index = None
    if index is not None:
        if ca.is_gpu(index):
            host_index = ca._gpu_to_host(module, ca.gpu_array(index, stream), stream)
        else:
            host_index = np.asarray(index)

    # The CPU path's checks, on stand-ins that own no operand data.
    sh = {n: _shadow(g, compute if n != "mask" else (np.bool_ if g.dtype == "bool" else compute))
          for n, (_, g) in conv.items()}
    mlp_sh = None if weight_mlp is None else (sh["w1"], sh["b1"], sh["w2"], sh["b2"])
    call = _vector_args.prepare(sh["q"], sh["k"], sh["v"], host_index, sh.get("pos"), relation,
                                mlp_sh, groups, sharing, sh.get("mask"))
    nb = len(call.out_shape) - 2
    lq, c = call.out_shape[-2:]
    lk, ngroups = call.weights_shape[-2:]
    hidden = 0 if call.mlp is None else call.mlp[0].shape[0]
    f64 = compute == "float64"
    _row_bytes_check(module, c, ngroups, hidden, f64)

    def kernel_form(garr: ca.GpuArray, ndim: int) -> Tuple[Tuple[int, ...], List[int]]:
        pad = ndim - garr.ndim
        shape, strides = (1,) * pad + garr.shape, (0,) * pad + garr.strides
        return shape, [0 if n == 1 else s for n, s in zip(shape, strides)]

    descs = []
    for n in ("q", "k", "v"):
        shape, strides = kernel_form(conv[n][1], nb + 2)
        descs.append(_desc(conv[n][1].ptr, shape, strides, nb, None, -2))
    keep = [x for x, _ in conv.values()]
    index_ptr = 0
    if call.index is not None:
        dev_index = ca._to_device(library, call.index, device, query)
        keep.append(dev_index)
        index_ptr = ca.gpu_array(dev_index, stream).ptr
    pos_desc = None
    if "pos" in conv:
        shape, strides = kernel_form(conv["pos"][1], nb + 3)
        pos_desc = _desc(conv["pos"][1].ptr, shape, strides, nb, -3, -2)
    mask_desc = None
    if "mask" in conv:
        mg = conv["mask"][1]
        shape, strides = kernel_form(mg, nb + 2)
        mask_desc = (ca._MASK_TYPES[mg.dtype], mg.ptr, strides[:nb], strides[-2], strides[-1])
    mlp_desc = None
    if weight_mlp is not None:
        for n in ("w1", "b1", "w2", "b2"):
            if not conv[n][1].c_contiguous():
                x = ca._contiguous(library, conv[n][0])
                conv[n] = (x, ca.gpu_array(x, stream))
                keep.append(x)
        mlp_desc = tuple(conv[n][1].ptr for n in ("w1", "b1", "w2", "b2"))
    out = ca._empty(library, call.out_shape, compute, device, query)
    weights = ca._empty(library, call.weights_shape, compute, device, query) if return_weights else None
    kernel: str = module.vector_attention(
        f64, list(call.out_shape[:-2]), lq, lk, c, ngroups, hidden, conv["k"][1].shape[-2], *descs,
        index_ptr, pos_desc, mask_desc, call.relation, call.sharing, mlp_desc,
        ca.gpu_array(out, stream).ptr, ca.gpu_array(weights, stream).ptr if weights is not None else 0,
        device, stream,
    )
    del keep  # freed by the caller's library in stream order, after the kernel
    results = [out] if weights is None else [out, weights]
    if out_dtype != compute:
        results = [ca._astype(library, r, out_dtype) for r in results]
    return results, kernel
