"""Backend choice and introspection: which backends exist, which one serves a call, threads.

The CPU backend (``fastattn._cpu``) is always built. The CUDA backend (``fastattn._cuda``) is a
separate module, imported lazily, so fastattn imports and runs on machines without a GPU or driver.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import operator
import os
import threading
from types import ModuleType
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from . import _cpu

_NAMES = ("auto", "cpu", "cuda")
_default: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar(
    "fastattn_backend", default=None
)
_last = threading.local()
# Read once, like the other FASTATTN_* settings: the default backend for backend="auto".
_env_backend = os.environ.get("FASTATTN_BACKEND") or None


def _cuda_module() -> Tuple[Optional[ModuleType], Optional[str]]:
    """The CUDA extension, or None with the reason it is not there (cached after the first look).
    Imported only here: `import fastattn` never loads it."""
    global _cuda_state
    if _cuda_state is None:
        try:
            _cuda_state = (importlib.import_module("fastattn._cuda"), None)
        except ImportError as exc:
            if not _cpu.build_info()["cuda_compiler_found"]:
                why = "fastattn was built without its CUDA module (no CUDA compiler was found, or FASTATTN_CUDA=OFF)"
            elif "No module named" in str(exc):
                why = "this version of fastattn builds no CUDA module"
            else:
                why = f"the CUDA module could not be loaded ({exc})"
            _cuda_state = (None, why)
    return _cuda_state


_cuda_state: Optional[Tuple[Optional[ModuleType], Optional[str]]] = None
_cuda_devices_state: Optional[Tuple[List[Dict[str, Any]], Optional[str]]] = None


def _cuda_devices() -> Tuple[List[Dict[str, Any]], Optional[str]]:
    """(devices, None) with a dict per CUDA device, or ([], why there is none); cached."""
    global _cuda_devices_state
    if _cuda_devices_state is None:
        module, why = _cuda_module()
        if module is None:
            _cuda_devices_state = ([], why)
        else:
            count, why = module.device_count()
            if count == 0 and why is None:
                why = "the CUDA runtime found no CUDA device"
            elif why is not None:
                why = f"no usable CUDA device ({why})"
            _cuda_devices_state = ([module.device_info(i) for i in range(count)], why)
    return _cuda_devices_state


def _check_name(name: str) -> str:
    if name not in _NAMES:
        origin = "FASTATTN_BACKEND (environment)" if name is _env_backend else "backend"
        raise ValueError(f"{origin} must be one of {list(_NAMES)}, got {name!r}")
    return name


def _on_gpu(x: Any) -> bool:
    if type(x) is np.ndarray:
        return False
    if hasattr(x, "__dlpack_device__") and not hasattr(x, "__array_interface__"):
        return _dlpack_is_cuda(x)
    try:  # a property that may raise more than AttributeError (PyTorch's, for bfloat16)
        return hasattr(x, "__cuda_array_interface__")
    except Exception:
        return False


def _dlpack_is_cuda(x: Any) -> bool:
    try:
        device_type, _ = x.__dlpack_device__()
    except Exception:
        return False
    return int(device_type) in (2, 3, 13)  # kDLCUDA, kDLCUDAHost, kDLCUDAManaged


def select(backend: str, *arrays: Any) -> str:
    """The backend that serves a call: the explicit one, else use_backend's / FASTATTN_BACKEND's,
    else CUDA when the inputs live on the GPU, else CPU. Raises RuntimeError if it is not there."""
    if backend == "auto":
        backend = _default.get() or _env_backend or "auto"
        if backend == "auto":
            for a in arrays:  # a loop, not all(generator): this runs on every call, tiny ones too
                if type(a) is not np.ndarray:
                    break
            else:
                return "cpu"
    if backend == "cpu":
        return backend
    _check_name(backend)
    if backend == "auto":
        backend = "cuda" if any(_on_gpu(a) for a in arrays) else "cpu"
    if backend == "cuda":
        devices, why = _cuda_devices()
        if not devices:
            raise RuntimeError(f"the 'cuda' backend is not available: {why}; available: ['cpu']")
    return backend


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Within the block, calls with backend="auto" use `name` ("auto", "cpu" or "cuda")."""
    token = _default.set(_check_name(name))
    try:
        yield
    finally:
        _default.reset(token)


def record_kernel(name: str) -> None:
    _last.kernel = name


def last_kernel() -> Optional[str]:
    """The backend/ISA/kernel/storage dtype that served the last call in this thread, e.g.
    "cpu/avx2/sdpa/float32"; None before the first call."""
    return getattr(_last, "kernel", None)


def get_num_threads() -> int:
    """Threads the CPU kernels use: set_num_threads(), else FASTATTN_NUM_THREADS, else
    OMP_NUM_THREADS, else all cores."""
    return _cpu.get_num_threads()


def set_num_threads(n: int) -> None:
    """Set the number of threads the CPU kernels use (1 <= n <= 1024), for all later calls. In a
    process forked after a kernel ran on several threads, kernels run on one thread whatever n is
    (GNU OpenMP's threads do not survive fork(); start workers with "spawn" or "forkserver")."""
    n = operator.index(n)
    if not 1 <= n <= _cpu.MAX_THREADS:
        raise ValueError(f"the number of threads must be between 1 and {_cpu.MAX_THREADS}, got {n}")
    _cpu.set_num_threads(n)


def backends() -> Dict[str, Dict[str, Any]]:
    """What this build has and this machine can use.

    ``["cpu"]``: ``compiled_isas``, ``available_isas`` (compiled and supported by this CPU and OS),
    ``isa`` (the one in use; FASTATTN_CPU_ISA forces it, and a forced ISA the CPU lacks raises
    RuntimeError here and on every kernel call), ``num_threads``, ``openmp``.
    ``["cuda"]``: ``compiled`` (bool: the ``_cuda`` module is there), ``available`` (bool: it
    found a device), ``devices`` (a dict per device: name, compute capability, multiprocessors,
    memory), ``tf32`` (whether float32 may use TF32 tensor cores, see ``set_cuda_tf32``), when
    compiled ``build`` (CUDA architectures, nvcc and runtime versions), and ``reason`` when not
    available.
    """
    info = _cpu.build_info()
    module, _ = _cuda_module()
    devices, why = _cuda_devices()
    from . import _cuda_arrays

    cuda: Dict[str, Any] = {"compiled": module is not None, "available": bool(devices),
                            "devices": devices, "tf32": _cuda_arrays.get_cuda_tf32()}
    if module is not None:
        cuda["build"] = module.build_info()
    if why:
        cuda["reason"] = why
    return {
        "cpu": {
            "compiled_isas": _cpu.compiled_isas(),
            "available_isas": _cpu.available_isas(),
            "isa": _cpu.isa(),
            "num_threads": _cpu.get_num_threads(),
            "openmp": info["openmp"],
        },
        "cuda": cuda,
    }
