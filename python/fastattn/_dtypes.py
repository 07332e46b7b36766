"""The dtype policy, in one place: which dtypes the kernels take and what mixed inputs become.

float32 and float64 are computed in their own precision; float16 and bfloat16 (ml_dtypes) are stored
as they are and computed with float32 accumulation. Mixed float dtypes promote with
``np.result_type``, except that float16 with bfloat16 (which NumPy cannot promote) gives float32.
Integer, bool, complex and object arrays raise TypeError.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

# Codes shared with the C++ kernels (fastattn::DType).
FLOAT32, FLOAT64, FLOAT16, BFLOAT16 = 0, 1, 2, 3

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_F16 = np.dtype(np.float16)


def is_bfloat16(dtype: np.dtype) -> bool:
    # ml_dtypes' bfloat16 is a 2-byte dtype of kind 'V' named "bfloat16"; checking the name avoids
    # importing ml_dtypes, which only a caller that already has bfloat16 arrays has loaded.
    return dtype.kind == "V" and dtype.itemsize == 2 and dtype.name == "bfloat16"


def is_supported_float(dtype: np.dtype) -> bool:
    return dtype in (_F32, _F64, _F16) or is_bfloat16(dtype)


def check_float(dtype: np.dtype, name: str) -> None:
    if not is_supported_float(dtype):
        raise TypeError(
            f"{name} has dtype {dtype}; fastattn computes on float16, bfloat16, float32 or float64"
        )


def native(dtype: np.dtype) -> np.dtype:
    """The same dtype in this machine's byte order (big-endian data read from a file is fine)."""
    return dtype if dtype.isnative else dtype.newbyteorder("=")


def common_float_dtype(arrays: Sequence[np.ndarray], names: Sequence[str]) -> np.dtype:
    """The storage dtype of a call: every array must be a supported float; mixed ones promote."""
    dtypes = [native(a.dtype) for a in arrays]
    first = dtypes[0]
    check_float(first, names[0])
    same = True
    for dtype, name in zip(dtypes[1:], names[1:]):
        check_float(dtype, name)
        same = same and dtype == first
    if same:
        return first
    try:
        dtype = np.result_type(*dtypes)
    except TypeError:  # DTypePromotionError: float16 with bfloat16
        return _F32
    return dtype if is_supported_float(dtype) else _F32


def code_of(dtype: np.dtype) -> int:
    if dtype == _F32:
        return FLOAT32
    if dtype == _F64:
        return FLOAT64
    if dtype == _F16:
        return FLOAT16
    return BFLOAT16


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """The precision the kernels accumulate in (and return lse in) for a storage dtype."""
    return _F64 if dtype == _F64 else _F32


def c_contiguous(a: Any, dtype: Optional[np.dtype] = None) -> np.ndarray:
    """a (in dtype, when given) itself when C-contiguous and aligned, as the kernels read their
    operands, else a C-order copy. Not np.ascontiguousarray: it returns a contiguous but misaligned
    array as it is, and the kernels' loads of such an array are undefined behaviour."""
    arr: np.ndarray = np.asarray(a)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    return arr if arr.flags.c_contiguous and arr.flags.aligned else arr.copy(order="C")
