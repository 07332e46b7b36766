# Type stubs for the compiled CPU backend, fastattn._cpu (csrc/bindings/cpu_module.cpp).
# Private: the public API (fastattn.functional, fastattn.vector) checks every argument and calls
# these with operands in kernel form. `python -m mypy.stubtest fastattn._cpu` (run in CI) checks that these
# stubs and the compiled module agree; a new binding needs its line here.
from typing import Any, Optional, TypedDict, Union

import numpy as np

class _BuildInfo(TypedDict):  # the dict build_info() returns
    compiler: str
    openmp: bool
    compiled_isas: str
    cuda_compiler_found: bool
    build_type: str
    cxx_flags: str
    sanitize: str
    openmp_version: int
    openmp_runtime: str
    pybind11: str

def sdpa(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    out: np.ndarray,
    lse: Optional[np.ndarray],
    mask: Optional[np.ndarray],
    kv_lengths: Optional[np.ndarray],
    dtype_code: int,
    scale: float,
    diag: int,
    left: int,
    right: int,
    q_proj: Optional[np.ndarray] = None,
    q_proj_bias: Optional[np.ndarray] = None,
) -> str: ...

class SdpaPlan:
    def __init__(
        self,
        arg0: np.ndarray,
        arg1: np.ndarray,
        arg2: np.ndarray,
        arg3: np.ndarray,
        arg4: Optional[np.ndarray],
        arg5: int,
        arg6: float,
        arg7: int,
        arg8: int,
        arg9: int,
        arg10: tuple[Any, ...],
        arg11: np.ndarray,
        arg12: Optional[np.ndarray],
        /,
    ) -> None: ...
    # None when an operand's layout or dtype is not the remembered one (the caller then checks).
    def run(
        self, query: Any, key: Any, value: Any
    ) -> Union[np.ndarray, tuple[np.ndarray, np.ndarray], None]: ...
    @property
    def kernel(self) -> str: ...

def attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    out: np.ndarray,
    weights: Optional[np.ndarray],
    mask: Optional[np.ndarray],
    w: Optional[np.ndarray],
    score_code: int,
    act_code: int,
    bias: float,
    align_code: int,
) -> str: ...
def vector_attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    out: np.ndarray,
    weights: Optional[np.ndarray],
    index: Optional[np.ndarray],
    pos: Optional[np.ndarray],
    mask: Optional[np.ndarray],
    mlp: Optional[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    groups: int,
    relation_code: int,
    sharing_code: int,
) -> str: ...
def knn(points: np.ndarray, queries: np.ndarray, index: np.ndarray) -> str: ...
def linear(x: np.ndarray, w: np.ndarray, b: Optional[np.ndarray], out: np.ndarray) -> str: ...
def layer_norm(
    x: np.ndarray, weight: Optional[np.ndarray], bias: Optional[np.ndarray], out: np.ndarray, eps: float
) -> str: ...
def unit_rows(x: np.ndarray, out: np.ndarray) -> str: ...
def isa() -> str: ...
def compiled_isas() -> list[str]: ...
def available_isas() -> list[str]: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...

MAX_THREADS: int
def build_info() -> _BuildInfo: ...
