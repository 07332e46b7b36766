"""Checking the arguments of fastattn.attention and bringing them to score form, in one place.

Every name, parameter, shape and dtype is checked here, with the offending names, shapes or values
in the message. Then the score's cheap transforms are applied (the projections by the library's own linear kernel,
on its own threads), so the kernels see score-form query and key rows:

- dot: q, k as they are; scaled_dot: q / sqrt(dk); cosine: q / |q| and k / |k| (zero rows stay 0);
- general: W q; biased_general: W q + b (all of these are dot products of the transformed rows);
- activated_general: W q, and the kernel adds the scalar b and applies act to q.k + b;
- additive (alias concat): W_q q + b and W_k k, and the kernel sums w[a] act(q[a] + k[a]).
"""

from __future__ import annotations

import math
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from . import _cpu, _dtypes, _scratch
from ._dtypes import c_contiguous
from ._linear import project
from ._sdpa_args import broadcast_batch, mask_operand

SCORES = ("dot", "scaled_dot", "cosine", "general", "biased_general", "activated_general",
          "additive", "concat")
ALIGNS = {"softmax": 0, "sigmoid": 1, "sparsemax": 2, "hard": 3}
ACTIVATIONS = {"identity": 0, "tanh": 1, "relu": 2, "sigmoid": 3}
# Kernel score kinds (fastattn::ScoreKind).
DOT, ACTIVATED, ADDITIVE = 0, 1, 2
# The params each score requires and accepts.
_REQUIRED = {"general": ("W",), "biased_general": ("W", "b"), "activated_general": ("W",),
             "additive": ("W_q", "W_k", "w")}
_OPTIONAL = {"activated_general": ("b", "act"), "additive": ("b", "act")}
# Scores that are dot products of transformed rows: with softmax they run on the SDPA kernel.
DOT_REDUCIBLE = ("dot", "scaled_dot", "cosine", "general", "biased_general")


class AttentionCall(NamedTuple):
    score: str
    align: str
    q: np.ndarray  # score form, (*batch, Lq, d), compute dtype
    k: np.ndarray  # score form, (*batch, Lk, d)
    v: np.ndarray  # (*batch, Lk, dv)
    mask: Optional[np.ndarray]  # bool or compute dtype, (*batch, Lq, Lk)-broadcastable
    w: Optional[np.ndarray]  # additive: (d,)
    kind: int  # DOT, ACTIVATED or ADDITIVE
    act: int
    bias: float
    batch: Tuple[int, ...]
    dtype: np.dtype  # of the results: the inputs' and params' common float dtype
    single_query: bool  # a 1-D query: the results drop the Lq dim
    # On the SDPA kernel (softmax, a dot-reducible score, no weights asked for): its scale, and for
    # general / biased_general the query projection it applies itself (W (d, dq), b (d,) or None),
    # q then being the raw queries.
    sdpa: bool
    scale: float
    q_proj: Optional[np.ndarray]
    q_proj_bias: Optional[np.ndarray]


def _name(value: Any, what: str, valid: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")
    return value


def _params(score: str, params: Any) -> Dict[str, Any]:
    params = {} if params is None else params
    if not hasattr(params, "keys"):
        raise TypeError(f"params must be a dict, got {type(params).__name__}")
    required = _REQUIRED.get(score, ())
    allowed = set(required) | set(_OPTIONAL.get(score, ()))
    missing = [name for name in required if name not in params]
    if missing:
        raise ValueError(f"score {score!r} needs params {list(required)}; missing {missing}")
    extra = sorted(set(params) - allowed)
    if extra:
        raise ValueError(
            f"score {score!r} takes params {sorted(allowed) or 'none'}; unexpected {extra}"
        )
    return dict(params)


def _float_array(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x)
    _dtypes.check_float(_dtypes.native(a.dtype), f"params[{name!r}]")
    return a


def _shape_check(a: np.ndarray, shape: Tuple[int, ...], name: str, meaning: str) -> None:
    if a.shape != shape:
        raise ValueError(f"params[{name!r}] must have shape {shape} ({meaning}), got {a.shape}")


def _normalised(x: np.ndarray, slot: str) -> np.ndarray:
    """x / |x| per row by fastattn's kernel (one pass for the norm, one to scale; NumPy's einsum and
    divide took 15% of the attention's time). A zero row stays zero; rows whose squared norm under-
    or overflows are scaled by their largest element first, so tiny vectors get their true cosine."""
    unit = _scratch.array(slot, x.shape, x.dtype)
    if unit.size:
        rows = c_contiguous(x.reshape(-1, x.shape[-1]))  # a view where the layout allows
        _cpu.unit_rows(rows, unit.reshape(rows.shape))
    return unit


def _kernel_form(a: np.ndarray, cdt: np.dtype, ndim: int) -> np.ndarray:
    if a.dtype != cdt:
        a = a.astype(cdt)
    if a.strides[-1] != a.itemsize or not a.flags.aligned or any(s % a.itemsize for s in a.strides):
        a = a.copy(order="C")  # aligned and contiguous, as the kernels read it
    return a.reshape((1,) * (ndim - a.ndim) + a.shape)


def prepare(
    query: Any, keys: Any, values: Any, score: Any, align: Any, params: Any, attn_mask: Any,
    return_weights: bool = False,
) -> AttentionCall:
    score = _name(score, "score", SCORES)
    score = "additive" if score == "concat" else score
    align = _name(align, "align", tuple(ALIGNS))
    sdpa = align == "softmax" and score in DOT_REDUCIBLE and not return_weights
    params = _params(score, params)
    q, k = np.asarray(query), np.asarray(keys)
    v = k if values is None else np.asarray(values)
    arrays = {name: _float_array(params[name], name) for name in ("W", "W_q", "W_k", "w")
              if name in params}
    if "b" in params:
        arrays["b"] = _float_array(params["b"], "b")
    # Scalar params (activated_general's b) do not promote, as NumPy's Python scalars do not.
    promoting = {name: a for name, a in arrays.items() if a.ndim > 0}
    dtype = _dtypes.common_float_dtype(
        (q, k, v, *promoting.values()),
        ("query", "keys", "values", *(f"params[{n!r}]" for n in promoting)),
    )
    cdt = _dtypes.compute_dtype(dtype)
    single_query = q.ndim == 1
    if single_query:
        q = q[None]
    for a, name in ((q, "query"), (k, "keys"), (v, "values")):
        if a.ndim < 2:
            raise ValueError(f"{name} must have at least 2 dims (L, d), got shape {a.shape}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"keys {k.shape} and values {v.shape} must have the same length Lk")
    batch = broadcast_batch((q.shape[:-2], k.shape[:-2], v.shape[:-2]), ("query", "keys", "values"))
    lq, dq = q.shape[-2:]
    lk, dk = k.shape[-2:]
    q, k, v = (a.astype(cdt, copy=False) for a in (q, k, v))
    arrays = {name: a.astype(cdt, copy=False) for name, a in arrays.items()}

    kind, act, bias, w = DOT, 0, 0.0, None
    sdpa_scale, q_proj, q_proj_bias = 1.0, None, None
    if score in ("dot", "scaled_dot", "cosine") and dq != dk:
        raise ValueError(f"score {score!r} needs query and keys of one width: query {q.shape}, keys {k.shape}")
    # The scaled, normalised or projected queries and keys are temporaries of this call: they
    # live in this thread's reusable buffers (fastattn._scratch), not in fresh arrays. The SDPA
    # kernel scales and projects the queries itself, as it packs them (no pass of their own).
    if score == "scaled_dot":
        scale = cdt.type(1.0 / math.sqrt(dk) if dk else 1.0)
        if sdpa:
            sdpa_scale = float(scale)
        else:
            q = np.multiply(q, scale, out=_scratch.array("q", q.shape, cdt))
    elif score == "cosine":
        q, k = _normalised(q, "q"), _normalised(k, "k")
    elif score in ("general", "biased_general", "activated_general"):
        _shape_check(arrays["W"], (dk, dq), "W", "(dk, dq)")
        biased = score == "biased_general"
        if biased:
            _shape_check(arrays["b"], (dk,), "b", "(dk,)")
        if sdpa:
            q_proj = c_contiguous(arrays["W"])
            q_proj_bias = c_contiguous(arrays["b"]) if biased else None
        else:
            q = project(q, arrays["W"], arrays["b"] if biased else None, scratch_slot="q")
        if score == "activated_general":
            kind = ACTIVATED
            act = ACTIVATIONS[_name(params.get("act", "tanh"), "act", tuple(ACTIVATIONS))]
            if "b" in arrays:
                if arrays["b"].ndim != 0:
                    raise ValueError(f"params['b'] must be a scalar for 'activated_general', got shape {arrays['b'].shape}")
                bias = float(arrays["b"])
    elif score == "additive":
        w_q, w_k, w = arrays["W_q"], arrays["W_k"], arrays["w"]
        if w_q.ndim != 2 or w_k.ndim != 2 or w.ndim != 1:
            raise ValueError(
                f"params W_q, W_k, w must be (da, dq), (da, dk), (da,); got {w_q.shape}, {w_k.shape}, {w.shape}"
            )
        da = w.shape[0]
        _shape_check(w_q, (da, dq), "W_q", "(da, dq)")
        _shape_check(w_k, (da, dk), "W_k", "(da, dk)")
        if "b" in arrays:
            _shape_check(arrays["b"], (da,), "b", "(da,)")
        q = project(q, w_q, arrays.get("b"), scratch_slot="q")
        k = project(k, w_k, scratch_slot="k")
        w = w.copy(order="C")  # contiguous and aligned (a few da values)
        kind, act = ADDITIVE, ACTIVATIONS[_name(params.get("act", "tanh"), "act", tuple(ACTIVATIONS))]
    if align == "hard" and cdt == np.float32 and lk > 1 << 24:
        raise ValueError(f"align='hard' in float32 takes at most 2^24 keys, got Lk={lk}")

    ndim = len(batch) + 2
    q, k, v = (_kernel_form(a, cdt, ndim) for a in (q, k, v))
    if attn_mask is not None and single_query:
        attn_mask = np.asarray(attn_mask)  # shaped like the weights, (..., Lk), or 0-d
        if attn_mask.ndim > 0:
            attn_mask = attn_mask[..., None, :]
    mask = None if attn_mask is None else mask_operand(attn_mask, cdt, batch + (lq, lk))
    return AttentionCall(
        score, align, q, k, v, mask, w, kind, act, bias, batch, dtype, single_query, sdpa,
        sdpa_scale, q_proj, q_proj_bias,
    )
