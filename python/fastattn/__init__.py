"""fastattn: fast, exact attention for NumPy, on fused C++ kernels (scalar, AVX2, AVX-512)."""

from ._backend import (
    backends,
    get_num_threads,
    last_kernel,
    set_num_threads,
    use_backend,
)
from .functional import attention, output_layer, scaled_dot_product_attention
from .vector import knn, vector_attention

__version__ = "0.1.0"

__all__ = [
    "attention",
    "backends",
    "get_num_threads",
    "knn",
    "last_kernel",
    "output_layer",
    "scaled_dot_product_attention",
    "set_num_threads",
    "use_backend",
    "vector_attention",
]
