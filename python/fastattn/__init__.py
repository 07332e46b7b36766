"""fastattn: fast, exact attention for NumPy, on fused C++ kernels (scalar, AVX2, AVX-512)."""

from ._backend import (
    backends,
    get_num_threads,
    last_kernel,
    set_num_threads,
    use_backend,
)
from ._cuda_arrays import get_cuda_tf32, set_cuda_tf32
from .functional import attention, output_layer, scaled_dot_product_attention
from .vector import knn, vector_attention

__version__ = "0.1.0"

__all__ = [
    "attention",
    "backends",
    "get_cuda_tf32",
    "get_num_threads",
    "knn",
    "last_kernel",
    "output_layer",
    "scaled_dot_product_attention",
    "set_cuda_tf32",
    "set_num_threads",
    "use_backend",
    "vector_attention",
]

# Layers and helpers (MultiHeadAttention, KV cache, layout helpers, layer_norm).
from .kv_cache import KVCache
from .layers import MultiHeadAttention
from .layout import causal_mask, merge_heads, sinusoidal_positional_encoding, split_heads
from .normalization import layer_norm

__all__ += [
    "KVCache",
    "MultiHeadAttention",
    "causal_mask",
    "layer_norm",
    "merge_heads",
    "sinusoidal_positional_encoding",
    "split_heads",
]
