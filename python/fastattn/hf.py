"""Reading Hugging Face weights with NumPy alone: the safetensors file format, and the names of
BERT-style attention blocks mapped to PyTorch nn.MultiheadAttention's (MultiHeadAttention's)."""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Any, Dict, List, Tuple

import numpy as np

# safetensors dtype names -> NumPy dtypes (little-endian, as the format stores them).
_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
    "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}


def read_safetensors(path: Any) -> Dict[str, np.ndarray]:
    """The tensors of a ``.safetensors`` file as read-only NumPy arrays, memory-mapped (nothing is
    read until used). Format: an 8-byte little-endian header length, a JSON header mapping each
    name to its dtype, shape and byte range, then the data. BF16 needs ``ml_dtypes``."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
            raise ValueError(f"{path}: header length {header_len} exceeds the file ({size} bytes)")
        header = _header(f.read(header_len), path)
    start = 8 + header_len
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=start, shape=(size - start,)) \
        if size > start else np.empty(0, np.uint8)
    tensors = {}
    ranges = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise ValueError(f"{path}: tensor {name!r} needs dtype, shape and data_offsets, got {info!r}")
        code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(code, str):
            raise ValueError(f"{path}: tensor {name!r} has dtype {code!r}, not a dtype name")
        dtype = _dtype(code, path, name)
        if not _uints(shape) or not _uints(offsets) or len(offsets) != 2:
            raise ValueError(f"{path}: tensor {name!r} needs a shape of non-negative ints and data_offsets "
                             f"[begin, end], got shape {shape!r} and data_offsets {offsets!r}")
        begin, end = offsets
        count = math.prod(shape)
        if not (begin <= end <= data.size) or end - begin != count * dtype.itemsize:
            raise ValueError(f"{path}: tensor {name!r} ({code} {list(shape)}) has byte "
                             f"range [{begin}, {end}) that does not fit it or the file")
        ranges.append((begin, end, name))
        try:
            tensors[name] = data[begin:end].view(dtype).reshape(shape)
        except (ValueError, OverflowError):  # a zero-size shape with a dim past NumPy's limits
            raise ValueError(f"{path}: tensor {name!r} has shape {shape}, which NumPy cannot make") from None
    # The tensors tile the data exactly, in some order (as the format requires): no overlaps, which
    # would alias two tensors' bytes, and no gaps.
    at = 0
    for begin, end, name in sorted(ranges):
        if begin != at:
            raise ValueError(f"{path}: tensor {name!r}'s byte range [{begin}, {end}) "
                             f"{'overlaps another' if begin < at else 'leaves a gap before it'}")
        at = end
    if at != data.size:
        raise ValueError(f"{path}: {data.size - at} bytes of data after the last tensor")
    return tensors


def _header(raw: bytes, path: str) -> Dict[str, Any]:
    """The JSON header, checked to be a UTF-8 JSON object (what the format requires)."""
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"{path}: the safetensors header is not UTF-8 JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the safetensors header must be a JSON object, got {type(header).__name__}")
    return header


def _unique_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate names {sorted({k for k in keys if keys.count(k) > 1})}")
    return dict(pairs)


def _uints(x: Any) -> bool:
    """A JSON list of non-negative integers (not bools, floats or strings)."""
    return isinstance(x, list) and all(type(n) is int and n >= 0 for n in x)


def _dtype(code: str, path: str, name: str) -> np.dtype:
    if code == "BF16":
        try:
            import ml_dtypes
        except ImportError:
            raise TypeError(f"{path}: tensor {name!r} is BF16, which needs ml_dtypes "
                            "(pip install ml_dtypes)") from None
        bf16: np.dtype = np.dtype(ml_dtypes.bfloat16)
        return bf16
    if code not in _DTYPES:
        raise TypeError(f"{path}: tensor {name!r} has dtype {code}, which this reader does not know")
    return np.dtype(_DTYPES[code])


def bert_attention_state_dict(weights: Any, prefix: str = "") -> Dict[str, np.ndarray]:
    """One BERT-style attention block's weights (Hugging Face names ``{prefix}self.query.weight``,
    ``self.key``, ``self.value``, ``output.dense``, each ``.weight`` and ``.bias``) under PyTorch
    nn.MultiheadAttention's names: ``in_proj_weight`` (query, key and value stacked),
    ``in_proj_bias``, ``out_proj.weight``, ``out_proj.bias``. Biases are taken if all four are
    there, and must be all there or all absent. Missing weights: ValueError naming them."""
    names = {"q": "self.query", "k": "self.key", "v": "self.value", "o": "output.dense"}
    missing = [prefix + n + ".weight" for n in names.values() if prefix + n + ".weight" not in weights]
    if missing:
        raise ValueError(f"BERT attention weights not found: {missing}")
    w = {k: np.asarray(weights[prefix + n + ".weight"]) for k, n in names.items()}
    biases = [prefix + n + ".bias" for n in names.values()]
    present = [name in weights for name in biases]
    if any(present) and not all(present):
        raise ValueError(f"BERT attention biases must be all present or all absent: missing "
                         f"{[n for n, p in zip(biases, present) if not p]}")
    e = w["q"].shape[0] if w["q"].ndim == 2 else -1
    if (w["q"].shape != (e, e) or w["o"].shape != (e, e) or w["k"].ndim != 2
            or w["k"].shape != w["v"].shape or w["k"].shape[1] != e):
        raise ValueError(f"BERT attention weights must be square query/output (E, E) and equal "
                         f"key/value (KV, E): query {w['q'].shape}, key {w['k'].shape}, value "
                         f"{w['v'].shape}, output {w['o'].shape}")
    state = {"in_proj_weight": np.concatenate([w["q"], w["k"], w["v"]])}
    if all(present):
        b = [np.asarray(weights[name]) for name in biases]
        # Each bias its weight's rows: only their total was checked later, so a query bias one
        # short and a key bias one long loaded shifted into the wrong heads.
        for name, bias, rows in zip(biases, b, (e, w["k"].shape[0], w["k"].shape[0], e)):
            if bias.shape != (rows,):
                raise ValueError(f"BERT attention bias {name} has shape {bias.shape}, expected ({rows},)")
        state["in_proj_bias"] = np.concatenate(b[:3])
    state["out_proj.weight"] = w["o"]
    if all(present):
        state["out_proj.bias"] = b[3]
    return state
