"""The attention functions of fastattn's public API."""

from __future__ import annotations

from typing import Any, Literal, Mapping, Optional, Tuple, Union, overload

import numpy as np
from numpy.typing import ArrayLike

from . import _attention_args, _backend, _cpu, _cuda_arrays, _dtypes, _sdpa_args

# Option types of the public signatures (what mypy checks a caller against; the run-time checks
# in _sdpa_args / _attention_args still reject bad values with ValueError / TypeError).
Causal = Union[bool, Literal["top_left", "bottom_right"], None]
Window = Optional[Tuple[Optional[int], Optional[int]]]
Backend = Literal["auto", "cpu", "cuda"]


@overload
def scaled_dot_product_attention(
    query: ArrayLike, key: ArrayLike, value: ArrayLike, *, attn_mask: Optional[ArrayLike] = ...,
    causal: Causal = ..., scale: Optional[float] = ..., window: Window = ...,
    kv_lengths: Optional[ArrayLike] = ..., return_lse: Literal[False] = ...,
    out: Optional[np.ndarray] = ..., backend: Backend = ...,
) -> np.ndarray: ...
@overload
def scaled_dot_product_attention(
    query: ArrayLike, key: ArrayLike, value: ArrayLike, *, attn_mask: Optional[ArrayLike] = ...,
    causal: Causal = ..., scale: Optional[float] = ..., window: Window = ...,
    kv_lengths: Optional[ArrayLike] = ..., return_lse: Literal[True],
    out: Optional[np.ndarray] = ..., backend: Backend = ...,
) -> Tuple[np.ndarray, np.ndarray]: ...
@overload
def scaled_dot_product_attention(
    query: ArrayLike, key: ArrayLike, value: ArrayLike, *, attn_mask: Optional[ArrayLike] = ...,
    causal: Causal = ..., scale: Optional[float] = ..., window: Window = ...,
    kv_lengths: Optional[ArrayLike] = ..., return_lse: bool = ...,
    out: Optional[np.ndarray] = ..., backend: Backend = ...,
) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]: ...
def scaled_dot_product_attention(
    query: ArrayLike,
    key: ArrayLike,
    value: ArrayLike,
    *,
    attn_mask: Optional[ArrayLike] = None,
    causal: Causal = False,
    scale: Optional[float] = None,
    window: Window = None,
    kv_lengths: Optional[ArrayLike] = None,
    return_lse: bool = False,
    out: Optional[np.ndarray] = None,
    backend: Backend = "auto",
) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
    """softmax(scale * query @ key^T + mask) @ value, fused: the Lq x Lk scores are never stored.

    Shapes: query ``(..., Hq, Lq, D)``, key ``(..., Hkv, Lk, D)``, value ``(..., Hkv, Lk, Dv)``;
    2-D ``(L, D)`` and 3-D ``(H, L, D)`` work too. Leading batch dims broadcast (NumPy rules).
    Hq must be a multiple of Hkv: query head h uses key/value head ``h // (Hq // Hkv)`` (grouped-
    query attention, PyTorch's ``repeat_interleave`` order).

    Options, all combined (a key is visible only if every one of them allows it):

    - ``scale``: default ``1 / sqrt(D)``.
    - ``attn_mask``: bool, **True = attend** (as PyTorch SDPA and JAX), or float, added to the
      scores (``-inf`` masks); broadcastable to ``(..., Hq, Lq, Lk)``.
    - ``causal``: ``False``; ``True`` or ``"top_left"``: query i sees keys ``j <= i`` (PyTorch's
      ``is_causal``); ``"bottom_right"``: ``j <= i + Lk - Lq`` (FlashAttention, KV-cache decoding).
    - ``window=(left, right)``: query i sees keys ``i + off - left <= j <= i + off + right``,
      ``off = Lk - Lq`` with ``causal="bottom_right"`` and 0 otherwise (so without ``causal`` the
      window is aligned top-left); ``None`` for either side means unbounded.
    - ``kv_lengths``: ints broadcastable to the batch dims, each in ``[0, Lk]``; keys at positions
      ``>= length`` are ignored.

    A query with no visible key gets a zero output row and ``lse = -inf``; masking never makes NaN.
    Returns the output ``(..., Hq, Lq, Dv)`` in the input dtype, and with ``return_lse=True`` also
    ``lse`` ``(..., Hq, Lq)``, the log of the softmax denominator of the scaled, masked scores, in
    float32 (float64 for float64 inputs). ``out=`` must be a C-contiguous, writeable array of exactly
    the output's shape and dtype (never silently copied into); it is returned.
    """
    if _backend.select(backend, query, key, value) == "cuda":
        return _cuda_arrays.run_sdpa(
            query, key, value, attn_mask, causal, scale, window, kv_lengths, return_lse, out
        )
    memo = None
    if attn_mask is None and kv_lengths is None and out is None:
        memo = _sdpa_args.memo_key(query, key, value, causal, scale, window, return_lse)
        plan = _sdpa_args.plans.get(memo) if memo is not None else None
        if plan is not None:
            res = plan.run(query, key, value)
            if res is not None:
                _backend.record_kernel(plan.kernel)
                return res
    call = _sdpa_args.prepare(
        query, key, value, attn_mask, causal, scale, window, kv_lengths, return_lse, out
    )
    args, result, lse = call
    _backend.record_kernel(_cpu.sdpa(*args))
    if memo is not None:
        _sdpa_args.remember(memo, (query, key, value), call)
    if return_lse:
        assert lse is not None
        return result, lse
    return result


@overload
def attention(
    query: ArrayLike, keys: ArrayLike, values: Optional[ArrayLike] = ..., *, score: str = ...,
    align: str = ..., params: Optional[Mapping[str, Any]] = ...,
    attn_mask: Optional[ArrayLike] = ..., return_weights: Literal[False] = ...,
    backend: Backend = ...,
) -> np.ndarray: ...
@overload
def attention(
    query: ArrayLike, keys: ArrayLike, values: Optional[ArrayLike] = ..., *, score: str = ...,
    align: str = ..., params: Optional[Mapping[str, Any]] = ...,
    attn_mask: Optional[ArrayLike] = ..., return_weights: Literal[True],
    backend: Backend = ...,
) -> Tuple[np.ndarray, np.ndarray]: ...
@overload
def attention(
    query: ArrayLike, keys: ArrayLike, values: Optional[ArrayLike] = ..., *, score: str = ...,
    align: str = ..., params: Optional[Mapping[str, Any]] = ...,
    attn_mask: Optional[ArrayLike] = ..., return_weights: bool = ...,
    backend: Backend = ...,
) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]: ...
def attention(
    query: ArrayLike,
    keys: ArrayLike,
    values: Optional[ArrayLike] = None,
    *,
    score: str = "scaled_dot",
    align: str = "softmax",
    params: Optional[Mapping[str, Any]] = None,
    attn_mask: Optional[ArrayLike] = None,
    return_weights: bool = False,
    backend: Backend = "auto",
) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
    """The general attention module: scores s_ij of query i with key j, alignment weights a_ij over
    the keys, and the context c_i = sum_j a_ij v_j, fused in one kernel.

    Shapes: query ``(..., Lq, dq)`` (or ``(dq,)``, one query), keys ``(..., Lk, dk)``, values
    ``(..., Lk, dv)`` (default: the keys). Leading batch dims broadcast (NumPy rules).

    ``score`` (``params`` a dict of arrays):

    - ``"dot"``: q.k; ``"scaled_dot"``: q.k / sqrt(dk); ``"cosine"``: q.k / (|q| |k|), 0 for a zero
      vector.
    - ``"general"``: k^T W q, ``W`` ``(dk, dq)``; ``"biased_general"``: k^T (W q + b), ``b``
      ``(dk,)``; ``"activated_general"``: act(k^T W q + b), ``b`` a scalar (default 0), ``act``
      ``"tanh"`` (default), ``"relu"``, ``"sigmoid"`` or ``"identity"``.
    - ``"additive"`` (alias ``"concat"``, Bahdanau): w^T act(W_q q + W_k k + b), ``W_q``
      ``(da, dq)``, ``W_k`` ``(da, dk)``, ``w`` ``(da,)``, ``b`` ``(da,)`` (default 0), ``act``
      (default ``"tanh"``).

    ``align``: ``"softmax"`` over the keys; ``"sigmoid"`` of each score (not normalised);
    ``"sparsemax"`` (Martins & Astudillo 2016); ``"hard"``, one-hot of the arg-max key (ties to the
    lowest index).

    ``attn_mask``: bool (**True = attend**) or float (added to the scores), broadcastable to
    ``(..., Lq, Lk)``. Masked keys get weight 0 under every alignment; a query with no visible key
    gets a zero context (and zero weights). With a 1-D query the mask is shaped like the weights,
    ``(..., Lk)``.

    Returns the context ``(..., Lq, dv)``, and with ``return_weights=True`` also the weights
    ``(..., Lq, Lk)``, in the common float dtype of the inputs and the array params (a scalar
    ``b`` does not promote; float16 and bfloat16 are computed in float32).

    Paths: the dot-type scores (dot, scaled_dot, cosine, general, biased_general) are dot products
    of transformed queries and keys (W q + b, q / sqrt(dk), q / |q|, k / |k|); with softmax and no
    weights asked for they run on the scaled_dot_product_attention kernel, which scales and
    projects the queries itself as it packs them (W q + b by the same micro-kernel as fastattn's
    linear kernel), and otherwise, like activated_general and additive (their projections by the
    linear kernel), on the fused general-attention kernel, which
    keeps each query's whole row of scores (O(Lk) memory per query, as sparsemax and hard need).
    ``last_kernel()`` names the one that ran.
    """
    if _backend.select(backend, query, keys, values if values is not None else keys) == "cuda":
        raise RuntimeError(
            "fastattn.attention has no CUDA kernel; available for it: ['cpu'] (pass host arrays "
            "and backend='cpu')"
        )
    call = _attention_args.prepare(
        query, keys, values, score, align, params, attn_mask, return_weights
    )
    cdt = call.q.dtype
    lq, lk, dv = call.q.shape[-2], call.k.shape[-2], call.v.shape[-1]
    weights = None
    if call.sdpa:
        heads = (slice(None),) * len(call.batch) + (None,)  # a head dim of 1 for SDPA
        mask = None if call.mask is None else call.mask[heads]
        if call.q_proj is None:
            context4 = scaled_dot_product_attention(
                call.q[heads], call.k[heads], call.v[heads], scale=call.scale, attn_mask=mask
            )
        else:  # the SDPA kernel with the query projection fused into its query packing
            context4 = np.empty(call.batch + (1, lq, dv), cdt)
            if mask is not None:
                mask = _sdpa_args.mask_operand(mask, cdt, call.batch + (1, lq, lk))
            _backend.record_kernel(
                _cpu.sdpa(
                    call.q[heads], call.k[heads], call.v[heads], context4, None, mask, None,
                    _dtypes.code_of(cdt), 1.0, 0, -1, -1, call.q_proj, call.q_proj_bias,
                )
            )
        context = context4[(slice(None),) * len(call.batch) + (0,)]
    else:
        context = np.empty(call.batch + (lq, dv), cdt)
        if return_weights:
            weights = np.empty(call.batch + (lq, lk), cdt)
        _backend.record_kernel(
            _cpu.attention(
                call.q, call.k, call.v, context, weights, call.mask, call.w, call.kind, call.act,
                call.bias, _attention_args.ALIGNS[call.align],
            )
        )
    results = [context] if weights is None else [context, weights]
    if call.single_query:
        results = [r[..., 0, :] for r in results]
    results = [r if r.dtype == call.dtype else r.astype(call.dtype) for r in results]
    return (results[0], results[1]) if return_weights else results[0]


def output_layer(context: ArrayLike, weight: ArrayLike, bias: Optional[ArrayLike] = None) -> np.ndarray:
    """y = softmax(context @ weight.T + bias) over the last axis: the output model of the attention
    literature, a distribution over ``n_out`` outputs from a context vector.

    context ``(..., dv)``, weight ``(n_out, dv)``, bias ``(n_out,)`` or None. Returns ``(..., n_out)``
    probabilities in the common float dtype (computed in float32 at least).
    """
    c, w = np.asarray(context), np.asarray(weight)
    arrays, names = [c, w], ["context", "weight"]
    if bias is not None:
        arrays.append(np.asarray(bias))
        names.append("bias")
    dtype = _dtypes.common_float_dtype(arrays, names)
    if c.ndim < 1 or w.ndim != 2 or w.shape[1] != c.shape[-1]:
        raise ValueError(f"weight must be (n_out, dv) with dv = context's last dim: context {c.shape}, weight {w.shape}")
    if bias is not None and arrays[2].shape != (w.shape[0],):
        raise ValueError(f"bias must have shape ({w.shape[0]},), got {arrays[2].shape}")
    cdt = _dtypes.compute_dtype(dtype)
    logits: np.ndarray = c.astype(cdt) @ w.astype(cdt).T
    if bias is not None:
        logits += arrays[2].astype(cdt)
    if logits.shape[-1] == 0:  # a distribution over no outputs: empty, as torch.softmax gives
        return logits.astype(dtype, copy=False)
    logits -= logits.max(axis=-1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=-1, keepdims=True)
    return logits.astype(dtype, copy=False)
