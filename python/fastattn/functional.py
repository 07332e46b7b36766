"""The attention functions of fastattn's public API."""

from __future__ import annotations

from typing import Any

from . import _backend, _cpu, _sdpa_args


def scaled_dot_product_attention(
    query: Any,
    key: Any,
    value: Any,
    *,
    attn_mask: Any = None,
    causal: Any = False,
    scale: Any = None,
    window: Any = None,
    kv_lengths: Any = None,
    return_lse: bool = False,
    out: Any = None,
    backend: str = "auto",
):
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
    _backend.select(backend, query, key, value)
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
    return (result, lse) if return_lse else result
