"""MultiHeadAttention: the layer, interchangeable with PyTorch's nn.MultiheadAttention through state
dicts, on fastattn's linear kernel (projections) and the fused attention kernel (attention itself)."""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from typing import Any, Dict, Optional, Tuple, cast

import numpy as np

from . import _dtypes, _sdpa_args
from ._linear import project
from .functional import scaled_dot_product_attention
from .hf import bert_attention_state_dict
from .kv_cache import KVCache
from .layout import causal_mask, split_heads


def _positive(x: Any, name: str) -> int:
    try:
        n = operator.index(x)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {x!r}") from None
    if n < 1:
        raise ValueError(f"{name} must be >= 1, got {n}")
    return n


class MultiHeadAttention:
    """Multi-head attention, as PyTorch's ``nn.MultiheadAttention`` (with ``batch_first=True``, in
    eval mode: no dropout), plus grouped-query heads and a KV cache.

    ``MultiHeadAttention(embed_dim, num_heads, *, num_kv_heads=None, kdim=None, vdim=None,
    bias=True, dtype=np.float32, seed=None)``: ``num_heads`` query heads of ``embed_dim //
    num_heads`` dims; ``num_kv_heads`` (default ``num_heads``) key/value heads, a divisor of
    ``num_heads`` (grouped-query attention: query head h uses kv head ``h // (num_heads //
    num_kv_heads)``); ``kdim``/``vdim`` the key and value inputs' feature dims (default
    ``embed_dim``). Weights are drawn as PyTorch draws them (Xavier-uniform projections, zero
    biases) from ``np.random.default_rng(seed)``, stored in ``dtype`` (float16/bfloat16 layers
    compute their projections in float32 and store keys, values and outputs in their dtype).

    ``layer(query, key=None, value=None, *, key_padding_mask=None, attn_mask=None, causal=False,
    need_weights=False, average_attn_weights=True, cache=None)`` returns ``(output, weights)``
    like PyTorch's layer (``weights`` is None unless ``need_weights``), so ``out, _ = layer(x)``.

    - ``query`` ``(B, Lq, embed_dim)``, ``key`` ``(B, Lk, kdim)`` (default: ``query``), ``value``
      ``(B, Lk, vdim)`` (default: ``key``); or all unbatched ``(L, features)``. **Batch first**:
      PyTorch's default layout ``(L, B, E)`` must be transposed (``x.transpose(1, 0, 2)``).
      Inputs are converted to the layer's dtype. Output ``(B, Lq, embed_dim)``.
    - ``key_padding_mask`` ``(B, Lk)``: bool, **True marks padding** (as in PyTorch's layer), or
      float, added to the scores. Rows of padding at the end of each sequence cost nothing extra
      (they become the kernel's per-batch key lengths).
    - ``attn_mask``: **True = attend** (this library's rule, as PyTorch's
      ``scaled_dot_product_attention``, but the **opposite of nn.MultiheadAttention's**, where
      True means *not* allowed: convert a PyTorch bool mask with ``~mask``); or float, added to
      the scores (PyTorch's float masks carry over unchanged). It broadcasts to
      ``(B, num_heads, Lq, Lk)``: a ``(Lq, Lk)`` mask is shared by all; PyTorch's 3-D
      ``(B * num_heads, Lq, Lk)`` mask becomes ``mask.reshape(B, num_heads, Lq, Lk)``.
    - ``causal``: ``True`` (``"top_left"``, query i sees keys ``j <= i``, PyTorch's
      ``is_causal``) or ``"bottom_right"``; with a ``cache``, ``True`` means ``"bottom_right"``
      (the new queries are the last positions).
    - ``need_weights``: also return the attention weights, averaged over heads ``(B, Lq, Lk)``
      (``average_attn_weights=True``) or per head ``(B, num_heads, Lq, Lk)``. The fused kernel
      never stores them; they are recomputed as a softmax of ``scale * q.k + mask`` over the
      visible keys, exact, at the cost of one ``Lq x Lk`` matrix per head.
    - ``cache``: a ``KVCache`` from ``new_cache``: the new keys and values are appended to it and
      the queries attend over every cached position, so feeding a sequence in pieces gives the
      outputs of feeding it whole. ``key_padding_mask`` then covers the new positions ``(B, T)``
      and is remembered with them; ``attn_mask`` broadcasts to ``(B, num_heads, T_q, cached)``.

    A query that sees no key at all gets a zero attention output (PyTorch's layer gives NaN).
    ``state_dict()`` / ``load_state_dict(d)`` use PyTorch's names and shapes; ``from_hf_bert`` and
    ``load_hf_bert`` read Hugging Face BERT-style attention weights.
    """

    def __init__(self, embed_dim: int, num_heads: int, *, num_kv_heads: Optional[int] = None,
                 kdim: Optional[int] = None, vdim: Optional[int] = None, bias: bool = True,
                 dtype: Any = np.float32, seed: Any = None):
        self.embed_dim = _positive(embed_dim, "embed_dim")
        self.num_heads = _positive(num_heads, "num_heads")
        self.num_kv_heads = self.num_heads if num_kv_heads is None else _positive(
            num_kv_heads, "num_kv_heads")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim ({self.embed_dim}) must be a multiple of num_heads ({self.num_heads})")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                             f"({self.num_kv_heads})")
        self.kdim = self.embed_dim if kdim is None else _positive(kdim, "kdim")
        self.vdim = self.embed_dim if vdim is None else _positive(vdim, "vdim")
        self.bias = bool(bias)
        self.dtype = np.dtype(dtype)
        _dtypes.check_float(self.dtype, "dtype")
        self.head_dim = self.embed_dim // self.num_heads
        # What PyTorch calls _qkv_same_embed_dim: then one packed in_proj_weight, else three.
        self.packed = self.kdim == self.embed_dim and self.vdim == self.embed_dim
        self._cdt = _dtypes.compute_dtype(self.dtype)

        e, kv = self.embed_dim, self.num_kv_heads * self.head_dim
        rng = np.random.default_rng(seed)

        def xavier(rows: int, cols: int) -> np.ndarray:
            bound = math.sqrt(6.0 / (rows + cols))
            return self._round(rng.uniform(-bound, bound, (rows, cols)))

        # Weights live in the compute dtype (rounded to the layer's dtype), as views of one block
        # where PyTorch packs them, so the self-attention projection is one GEMM.
        # (Any: None where the layer has no packed weight or no biases, which the code checks.)
        self._in_w: Any
        self._in_b: Any
        self._bq: Optional[np.ndarray]
        self._bk: Optional[np.ndarray]
        self._bv: Optional[np.ndarray]
        self._bo: Optional[np.ndarray]
        if self.packed:
            self._in_w = xavier(e + 2 * kv, e)
            self._wq, self._wk, self._wv = self._in_w[:e], self._in_w[e:e + kv], self._in_w[e + kv:]
        else:
            self._in_w = None
            self._wq, self._wk, self._wv = xavier(e, e), xavier(kv, self.kdim), xavier(kv, self.vdim)
        self._in_b = np.zeros(e + 2 * kv, self._cdt) if self.bias else None
        self._bq, self._bk, self._bv = (
            (self._in_b[:e], self._in_b[e:e + kv], self._in_b[e + kv:]) if self.bias
            else (None, None, None))
        bound = 1.0 / math.sqrt(e)  # nn.Linear's default, which PyTorch keeps for out_proj.weight
        self._wo = self._round(rng.uniform(-bound, bound, (e, e)))
        self._bo = np.zeros(e, self._cdt) if self.bias else None

    def _round(self, a: Any) -> np.ndarray:
        """a rounded to the layer's dtype, held in the compute dtype."""
        return np.asarray(a).astype(self.dtype).astype(self._cdt)

    def __repr__(self) -> str:
        extra = "" if self.num_kv_heads == self.num_heads else f", num_kv_heads={self.num_kv_heads}"
        if not self.packed:
            extra += f", kdim={self.kdim}, vdim={self.vdim}"
        return (f"MultiHeadAttention(embed_dim={self.embed_dim}, num_heads={self.num_heads}{extra}, "
                f"bias={self.bias}, dtype={self.dtype})")

    # ------------------------------------------------------------------ weights in PyTorch's names
    def _named(self) -> Dict[str, Any]:
        """Name -> the array that holds it (in the compute dtype), in PyTorch's order."""
        named = {"in_proj_weight": self._in_w} if self.packed else {
            "q_proj_weight": self._wq, "k_proj_weight": self._wk, "v_proj_weight": self._wv}
        if self.bias:
            named["in_proj_bias"] = self._in_b
        named["out_proj.weight"] = self._wo
        if self.bias:
            named["out_proj.bias"] = self._bo
        return named

    def state_dict(self) -> Dict[str, np.ndarray]:
        """The weights as new NumPy arrays in the layer's dtype, under PyTorch's
        nn.MultiheadAttention names: ``in_proj_weight`` ``(E + 2 * KV, E)`` (or
        ``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight`` when kdim or vdim differ from E),
        ``in_proj_bias``, ``out_proj.weight``, ``out_proj.bias`` (no biases when bias=False). KV
        = num_kv_heads * head_dim, which is E unless the heads are grouped."""
        return {name: a.astype(self.dtype) for name, a in self._named().items()}

    def load_state_dict(self, state: Any) -> None:
        """Copy weights in from ``state``, a mapping with exactly ``state_dict()``'s names and
        shapes (NumPy arrays or anything ``np.asarray`` takes, e.g. the tensors of a PyTorch
        nn.MultiheadAttention's ``state_dict()``). Values are rounded to the layer's dtype. Missing
        or unexpected names, wrong shapes: ValueError; not a mapping, non-float values: TypeError."""
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping of names to arrays, got {type(state).__name__}")
        named = self._named()
        keys = set(state.keys())
        missing, unexpected = sorted(set(named) - keys), sorted(keys - set(named))
        if missing or unexpected:
            raise ValueError(
                f"state dict does not fit {self!r}: missing {missing}, unexpected {unexpected}")
        values = {}
        for name, target in named.items():
            a = np.asarray(state[name])
            _dtypes.check_float(_dtypes.native(a.dtype), f"state dict entry {name!r}")
            if a.shape != target.shape:
                raise ValueError(f"state dict entry {name!r} has shape {a.shape}, expected "
                                 f"{target.shape} for {self!r}")
            values[name] = a
        for name, target in named.items():  # all checked first: a bad dict changes nothing
            target[...] = self._round(values[name])

    @classmethod
    def from_hf_bert(cls, weights: Any, num_heads: int, prefix: str = "",
                     dtype: Any = np.float32) -> "MultiHeadAttention":
        """A layer holding one Hugging Face BERT-style attention block's weights:
        ``{prefix}self.query.weight``, ``self.key.*``, ``self.value.*`` and ``output.dense.*``
        (e.g. ``prefix="encoder.layer.0.attention."``); ``embed_dim`` is read from the query
        weight. The block's LayerNorm (``output.LayerNorm``) is not part of the layer."""
        state = bert_attention_state_dict(weights, prefix)
        w = np.asarray(state["in_proj_weight"])
        layer = cls(w.shape[1], num_heads, bias="in_proj_bias" in state, dtype=dtype)
        layer.load_state_dict(state)
        return layer

    def load_hf_bert(self, weights: Any, prefix: str = "") -> None:
        """Load Hugging Face BERT-style attention weights (see ``from_hf_bert``) into this layer."""
        self.load_state_dict(bert_attention_state_dict(weights, prefix))

    # ------------------------------------------------------------------ incremental decoding
    def new_cache(self, batch_size: int, max_length: int) -> KVCache:
        """An empty KV cache for ``batch_size`` sequences of up to ``max_length`` positions."""
        return KVCache(self, _positive(batch_size, "batch_size"),
                       _positive(max_length, "max_length"), self.num_kv_heads, self.head_dim,
                       self.dtype)

    # ------------------------------------------------------------------ forward
    def _input(self, x: Any, name: str, features: int) -> np.ndarray:
        a = np.asarray(x)
        _dtypes.check_float(_dtypes.native(a.dtype), name)
        if a.ndim not in (2, 3) or a.shape[-1] != features:
            raise ValueError(f"{name} must be (B, L, {features}) or (L, {features}), got shape "
                             f"{a.shape}")
        return a

    def __call__(self, query: Any, key: Any = None, value: Any = None, *,
                 key_padding_mask: Any = None, attn_mask: Any = None, causal: Any = False,
                 need_weights: bool = False, average_attn_weights: bool = True,
                 cache: Optional[KVCache] = None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        key = query if key is None else key
        value = key if value is None else value
        self_attention = key is query and value is query  # one input: one packed GEMM
        kv_same = value is key
        q_in = self._input(query, "query", self.embed_dim)
        k_in = self._input(key, "key", self.kdim)
        v_in = self._input(value, "value", self.vdim)
        if not (q_in.ndim == k_in.ndim == v_in.ndim):
            raise ValueError(f"query {q_in.shape}, key {k_in.shape} and value {v_in.shape} must "
                             "all be batched (B, L, E) or all unbatched (L, E)")
        unbatched = q_in.ndim == 2
        if unbatched:
            q_in, k_in, v_in = q_in[None], k_in[None], v_in[None]
        b, lq = q_in.shape[:2]
        if k_in.shape[:2] != v_in.shape[:2] or k_in.shape[0] != b:
            raise ValueError(f"query {np.shape(query)}, key {np.shape(key)} and value "
                             f"{np.shape(value)} must agree in batch, key and value in length")
        lk = k_in.shape[1]
        if cache is not None:
            if not isinstance(cache, KVCache) or not cache.belongs_to(self):
                raise ValueError("cache must be a KVCache made by this layer's new_cache()")
            cache.check_room(b, lk)
            if causal is True:
                causal = "bottom_right"
        total = lk if cache is None else cache.length + lk
        causal_mode = _sdpa_args._causal_mode(causal)

        # Masks, checked before anything is computed or cached.
        padding = None
        if key_padding_mask is not None:
            padding = np.asarray(key_padding_mask)
            want = (lk,) if unbatched else (b, lk)
            if padding.shape != want:
                raise ValueError(f"key_padding_mask must have shape {want} (True = padding) for "
                                 f"key {np.shape(key)}, got {padding.shape}")
            padding = padding.reshape(b, lk)
            if padding.dtype != np.bool_:
                _dtypes.check_float(_dtypes.native(padding.dtype), "key_padding_mask")
                if cache is not None:
                    raise TypeError("with a cache, key_padding_mask must be bool (True = padding)")
        if attn_mask is not None:
            attn_mask = _sdpa_args.mask_operand(
                attn_mask, self.dtype, (b, self.num_heads, lq, total))

        q, k, v = self._project_heads(q_in, k_in, v_in, self_attention, kv_same)
        if cache is not None:
            start = cache.length
            k, v, padding = cache.append(k, v, padding)
            if not padding.any():
                padding = None
        try:
            lengths, mask = _combine_masks(padding, attn_mask, self._cdt)
            res = scaled_dot_product_attention(q, k, v, attn_mask=mask, causal=cast(Any, causal_mode),
                                               kv_lengths=lengths, return_lse=need_weights)
        except BaseException:
            if cache is not None:
                cache.length = start  # the new positions were not attended to: forget them
            raise
        lse: Optional[np.ndarray] = None
        if need_weights:
            heads, lse = cast(Tuple[np.ndarray, np.ndarray], res)
        else:
            heads = cast(np.ndarray, res)

        # (B, H, Lq, D) -> (B, Lq, E): one copy (the kernel writes heads apart), then out_proj.
        merged = heads.transpose(0, 2, 1, 3).reshape(b, lq, self.embed_dim)
        out = project(merged, self._wo, self._bo)
        out = out if out.dtype == self.dtype else out.astype(self.dtype)
        weights = None
        if lse is not None:  # need_weights
            weights = _attention_weights(q, k, lse, mask, lengths, causal_mode, self._cdt)
            if average_attn_weights:
                weights = weights.mean(axis=1)
            weights = weights.astype(self.dtype, copy=False)
        if unbatched:
            out = out[0]
            weights = None if weights is None else weights[0]
        return out, weights

    def _project_heads(self, q_in: np.ndarray, k_in: np.ndarray, v_in: np.ndarray,
                       self_attention: bool, kv_same: bool) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Queries (B, H, Lq, D), keys and values (B, Hkv, Lk, D) in the layer's dtype: strided
        views of the projections (split_heads moves no data)."""
        e, kv = self.embed_dim, self.num_kv_heads * self.head_dim
        if self.packed and self_attention:  # one GEMM for q, k and v
            qkv = project(q_in, self._in_w, self._in_b)
            q, k, v = qkv[..., :e], qkv[..., e:e + kv], qkv[..., e + kv:]
        else:
            q = project(q_in, self._wq, self._bq)
            if self.packed and kv_same:  # one GEMM for k and v
                kvp = project(k_in, self._in_w[e:], None if self._in_b is None else self._in_b[e:])
                k, v = kvp[..., :kv], kvp[..., kv:]
            else:
                k, v = project(k_in, self._wk, self._bk), project(v_in, self._wv, self._bv)
        if self.dtype != self._cdt:  # float16 / bfloat16: attention reads them in storage form
            q, k, v = (a.astype(self.dtype) for a in (q, k, v))
        return (split_heads(q, self.num_heads), split_heads(k, self.num_kv_heads),
                split_heads(v, self.num_kv_heads))


def _combine_masks(padding: Optional[np.ndarray], attn_mask: Optional[np.ndarray], cdt: np.dtype
                   ) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """(kv_lengths, attn_mask) for the kernel from the key padding (B, Lk) (bool, True = padding,
    or additive float) and the attention mask (True = attend, or additive; (B, H, Lq, Lk)-
    broadcastable). Padding only at the ends of the rows becomes per-batch key lengths; other
    padding a (B, 1, 1, Lk) mask combined with attn_mask."""
    if padding is None:
        return None, attn_mask
    b, lk = padding.shape
    if padding.dtype == np.bool_:
        if not padding.any():
            return None, attn_mask
        visible = ~padding
        lengths = visible.sum(axis=1)
        if np.array_equal(visible, np.arange(lk) < lengths[:, None]):
            return lengths, attn_mask
        pad = visible[:, None, None, :]
    else:
        pad = _sdpa_args.float_mask_as(padding, cdt)[:, None, None, :]
    if attn_mask is None:
        return None, pad
    if pad.dtype == np.bool_ and attn_mask.dtype == np.bool_:
        return None, pad & attn_mask
    if pad.dtype == np.bool_:
        return None, np.where(pad, attn_mask, -np.inf).astype(cdt, copy=False)
    if attn_mask.dtype == np.bool_:
        return None, np.where(attn_mask, pad, -np.inf).astype(cdt, copy=False)
    # Summed in float64: two float32 entries near the lowest finite value would overflow to -inf.
    return None, _sdpa_args.float_mask_as(pad.astype(np.float64) + attn_mask, cdt)


def _attention_weights(q: np.ndarray, k: np.ndarray, lse: np.ndarray, mask: Optional[np.ndarray],
                       lengths: Optional[np.ndarray], causal_mode: Optional[str],
                       cdt: np.dtype) -> np.ndarray:
    """Per-head softmax weights (B, H, Lq, Lk) of scale * q.k + mask over the visible keys, zero
    where a key is not visible (-inf in a float mask included: a NaN or Inf key there stays out).
    A softmax of its own (max-subtracted), not exp(s - lse) with the kernel's lse: at huge scores
    the two computations of s round apart by more than 1, and exp(s - lse) then overflows or
    vanishes. lse still says which rows see no key (-inf: zeros) or read a NaN query (NaN)."""
    b, h, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    if lk == 0:  # no key: no weight (the output is out_proj's bias)
        return np.zeros((b, h, lq, 0), cdt)
    group = h // hkv
    qg = q.reshape(b, hkv, group, lq, d).astype(cdt, copy=False)
    kt = k.astype(cdt, copy=False)[:, :, None].swapaxes(-1, -2)
    s = np.matmul(qg, kt).reshape(b, h, lq, lk)
    s *= 1.0 / math.sqrt(d) if d else 1.0
    # rows that see no key (lse -inf) get zeros; a NaN lse (a NaN query) stays NaN
    visible = (lse != -np.inf)[..., None]
    if mask is not None:
        if mask.dtype == np.bool_:
            visible = visible & mask
        else:
            visible = visible & (mask != -np.inf)
            s += mask
    if causal_mode is not None:
        visible = visible & causal_mask(lq, lk, causal_mode)
    if lengths is not None:
        visible = visible & (np.arange(lk) < lengths[:, None, None, None])
    visible = np.broadcast_to(visible, s.shape)
    with np.errstate(invalid="ignore", over="ignore"):
        s[~visible] = -np.inf
        top = s.max(axis=-1, keepdims=True)
        s -= np.where(top == -np.inf, 0, top)  # a row with no visible key stays -inf (weights 0)
        np.exp(s, out=s)
        s /= np.where(visible.any(axis=-1, keepdims=True), s.sum(axis=-1, keepdims=True), 1)
    return np.where(visible, s, 0).astype(cdt, copy=False)
