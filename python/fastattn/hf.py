"""Reading Hugging Face weights with NumPy alone: the safetensors file format, and the names of
BERT-style attention blocks mapped to PyTorch nn.MultiheadAttention's (MultiHeadAttention's)."""

from __future__ import annotations

import json
import os
import struct
from typing import Any, Dict

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
        header = json.loads(f.read(header_len))
    start = 8 + header_len
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=start, shape=(size - start,)) \
        if size > start else np.empty(0, np.uint8)
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _dtype(info["dtype"], path, name)
        shape = tuple(int(n) for n in info["shape"])
        begin, end = (int(x) for x in info["data_offsets"])
        count = int(np.prod(shape, dtype=np.int64))
        if not (0 <= begin <= end <= data.size) or end - begin != count * dtype.itemsize:
            raise ValueError(f"{path}: tensor {name!r} ({info['dtype']} {list(shape)}) has byte "
                             f"range [{begin}, {end}) that does not fit it or the file")
        tensors[name] = data[begin:end].view(dtype).reshape(shape)
    return tensors


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
    if w["k"].shape != w["v"].shape or w["q"].ndim != 2 or w["q"].shape[0] != w["q"].shape[1]:
        raise ValueError(f"BERT attention weights must be square query/output (E, E) and equal "
                         f"key/value: query {w['q'].shape}, key {w['k'].shape}, value "
                         f"{w['v'].shape}")
    state = {"in_proj_weight": np.concatenate([w["q"], w["k"], w["v"]])}
    if all(present):
        b = [np.asarray(weights[name]) for name in biases]
        state["in_proj_bias"] = np.concatenate(b[:3])
    state["out_proj.weight"] = w["o"]
    if all(present):
        state["out_proj.bias"] = b[3]
    return state
