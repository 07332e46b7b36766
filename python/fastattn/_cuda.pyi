# Type stubs for the compiled CUDA backend, fastattn._cuda (csrc/bindings/cuda_module.cpp), built
# when a CUDA compiler is found. Private: fastattn._cuda_arrays and fastattn._cuda_vector describe
# the operands (pointers, shapes, element strides) and call these. The module imports without a
# driver or a device (only the calls that reach the device fail), so `python -m mypy.stubtest
# fastattn._cuda` (run in CI by .ci/typing wherever the module was built) checks these stubs
# against it; a new binding needs its line here.
from typing import Any, Optional, Sequence

import numpy as np

# (number of CUDA devices, None), or (0, the CUDA runtime's reason) when there is none.
def device_count() -> tuple[int, Optional[str]]: ...
def device_info(device: int) -> dict[str, Any]: ...
def sdpa(
    dtype_code: int,
    batch_shape: Sequence[int],
    hq: int,
    hkv: int,
    lq: int,
    lk: int,
    d: int,
    dv: int,
    q: tuple[Any, ...],
    k: tuple[Any, ...],
    v: tuple[Any, ...],
    out: int,
    lse: int,
    mask: Optional[tuple[Any, ...]],
    kv_lengths: Optional[tuple[Any, ...]],
    scale: float,
    diag: int,
    left: int,
    right: int,
    tf32: bool,
    device: int,
    stream: int,
) -> str: ...
def vector_attention(
    f64: bool,
    batch_shape: Sequence[int],
    lq: int,
    lk: int,
    c: int,
    groups: int,
    hidden: int,
    key_rows: int,
    q: tuple[Any, ...],
    k: tuple[Any, ...],
    v: tuple[Any, ...],
    index: int,
    pos: Optional[tuple[Any, ...]],
    mask: Optional[tuple[Any, ...]],
    relation: int,
    sharing: int,
    mlp: Optional[tuple[int, int, int, int]],
    out: int,
    weights: int,
    device: int,
    stream: int,
) -> str: ...
def vector_max_row_bytes() -> int: ...

class DeviceBuffer:
    """Device memory for NumPy callers' operands."""

    def __init__(self, bytes: int, device: int) -> None: ...
    @property
    def ptr(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    def upload(self, array: np.ndarray, stream: int) -> None: ...
    def download(self, array: np.ndarray, stream: int) -> None: ...

def synchronize(device: int, stream: int) -> None: ...
def copy_to_host(src: int, dst: np.ndarray, device: int, stream: int) -> None: ...
def build_info() -> dict[str, Any]: ...
