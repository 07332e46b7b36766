"""Plain float64 NumPy reference for ``fastattn.attention`` and ``fastattn.output_layer``.

Written for clarity, not speed: every score is materialised as a float64
``(*batch, Lq, Lk)`` array, together with a boolean ``visible`` array of the same
shape, and the alignment is taken over the visible keys of each row.

Semantics (the contract the implementation follows):

* query ``(..., Lq, dq)`` (or 1-D ``(dq,)``: one query, whose axis is dropped
  from the results), keys ``(..., Lk, dk)``, values ``(..., Lk, dv)``
  (default: the keys).  Leading batch dims broadcast (NumPy rules).
* scores s_ij:

  - "dot": q.k; "scaled_dot": q.k / sqrt(dk); "cosine": q.k / (|q| |k|), 0
    when q or k is the zero vector (dot family: dq must equal dk);
  - "general": k^T W q, W ``(dk, dq)``;
  - "biased_general": k^T (W q + b), b ``(dk,)``;
  - "activated_general": act(k^T W q + b), b a scalar (default 0), act in
    "tanh" | "relu" | "sigmoid" | "identity" (default "tanh");
  - "additive" / "concat": w^T act(W_q q + W_k k + b), W_q ``(da, dq)``,
    W_k ``(da, dk)``, w ``(da,)``, b ``(da,)`` (default 0), act default "tanh".

* attn_mask: bool (True = attend) or float (added to the scores, -inf masks),
  broadcastable to ``(..., Lq, Lk)``.
* align: "softmax" over the visible keys; "sigmoid" elementwise (not
  normalised); "sparsemax" (Martins & Astudillo 2016: Euclidean projection of
  the visible scores onto the simplex, sort-based, on the scores minus their
  row maximum); "hard" (one-hot of the
  arg-max visible key, ties to the lowest index).
* masked keys get weight exactly 0 under every alignment; a query with no
  visible key gets all-zero weights and an all-zero context.
* context c_i = sum_j a_ij v_j.
"""

import math

import numpy as np

SCORES = ("dot", "scaled_dot", "cosine", "general", "biased_general", "activated_general", "additive",
          "concat")
ALIGNS = ("softmax", "sigmoid", "sparsemax", "hard")
ACTS = ("tanh", "relu", "sigmoid", "identity")

# score name -> (required params, optional params)
SCORE_PARAMS = {
    "dot": ((), ()),
    "scaled_dot": ((), ()),
    "cosine": ((), ()),
    "general": (("W",), ()),
    "biased_general": (("W", "b"), ()),
    "activated_general": (("W",), ("b", "act")),
    "additive": (("W_q", "W_k", "w"), ("b", "act")),
    "concat": (("W_q", "W_k", "w"), ("b", "act")),
}


def sigmoid(x):
    """Numerically stable logistic function (float64)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore"):
        e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def activation(name, x):
    if name == "tanh":
        return np.tanh(x)
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "sigmoid":
        return sigmoid(x)
    if name == "identity":
        return np.asarray(x, dtype=np.float64)
    raise ValueError(f"unknown act {name!r}; expected one of {ACTS}")


def _f64(x):
    return np.asarray(x).astype(np.float64)


def _check_params(score, params):
    params = {} if params is None else dict(params)
    required, optional = SCORE_PARAMS[score]
    missing = [k for k in required if k not in params]
    if missing:
        raise ValueError(f"score {score!r} needs params {missing}")
    extra = sorted(set(params) - set(required) - set(optional))
    if extra:
        raise ValueError(f"score {score!r} got unexpected params {extra}")
    return params


def raw_scores(q, k, score, params):
    """Unmasked float64 scores ``(*batch, Lq, Lk)`` for broadcast float64 q ``(*b, Lq, dq)``, k ``(*b, Lk, dk)``."""
    if score not in SCORE_PARAMS:
        raise ValueError(f"unknown score {score!r}; expected one of {SCORES}")
    params = _check_params(score, params)
    dq, dk = q.shape[-1], k.shape[-1]
    kt = np.swapaxes(k, -1, -2)
    if score in ("dot", "scaled_dot", "cosine"):
        if dq != dk:
            raise ValueError(f"score {score!r} needs dq == dk, got {dq} and {dk}")
        s = q @ kt
        if score == "scaled_dot":
            s = s / math.sqrt(dk)
        elif score == "cosine":
            nq = np.sqrt(np.sum(q * q, axis=-1))[..., :, None]
            nk = np.sqrt(np.sum(k * k, axis=-1))[..., None, :]
            denom = nq * nk
            with np.errstate(invalid="ignore", divide="ignore"):
                s = np.where(denom > 0, s / np.where(denom > 0, denom, 1.0), 0.0)
        return s
    if score in ("general", "biased_general", "activated_general"):
        W = _f64(params["W"])
        if W.shape != (dk, dq):
            raise ValueError(f"W must have shape {(dk, dq)}, got {W.shape}")
        wq = q @ W.T  # (*b, Lq, dk)
        if score == "biased_general":
            b = _f64(params["b"])
            if b.shape != (dk,):
                raise ValueError(f"b must have shape {(dk,)}, got {b.shape}")
            wq = wq + b
        s = wq @ kt
        if score == "activated_general":
            b = _f64(params.get("b", 0.0))
            if b.size != 1:
                raise ValueError(f"b must be a scalar, got shape {b.shape}")
            s = activation(params.get("act", "tanh"), s + b.reshape(()))
        return s
    # additive / concat
    Wq, Wk, w = _f64(params["W_q"]), _f64(params["W_k"]), _f64(params["w"])
    if Wq.ndim != 2 or Wk.ndim != 2 or Wq.shape[1] != dq or Wk.shape[1] != dk or Wq.shape[0] != Wk.shape[0]:
        raise ValueError(f"W_q {Wq.shape} / W_k {Wk.shape} do not fit dq={dq}, dk={dk}")
    da = Wq.shape[0]
    if w.shape != (da,):
        raise ValueError(f"w must have shape {(da,)}, got {w.shape}")
    b = _f64(params["b"]) if "b" in params else np.zeros(da)
    if b.shape != (da,):
        raise ValueError(f"b must have shape {(da,)}, got {b.shape}")
    hq = q @ Wq.T  # (*b, Lq, da)
    hk = k @ Wk.T  # (*b, Lk, da)
    pre = hq[..., :, None, :] + hk[..., None, :, :] + b  # (*b, Lq, Lk, da)
    return activation(params.get("act", "tanh"), pre) @ w


def prepare(query, keys, values=None):
    """Broadcast float64 ``(q, k, v, squeeze)``; ``squeeze``: the query was 1-D."""
    query = np.asarray(query)
    keys = np.asarray(keys)
    values = keys if values is None else np.asarray(values)
    squeeze = query.ndim == 1
    if squeeze:
        query = query[None, :]
    if query.ndim < 2 or keys.ndim < 2 or values.ndim < 2:
        raise ValueError("keys and values must have at least 2 dimensions")
    if keys.shape[-2] != values.shape[-2]:
        raise ValueError(f"keys {keys.shape} and values {values.shape} differ in length")
    batch = np.broadcast_shapes(query.shape[:-2], keys.shape[:-2], values.shape[:-2])
    q = np.broadcast_to(_f64(query), batch + query.shape[-2:])
    k = np.broadcast_to(_f64(keys), batch + keys.shape[-2:])
    v = np.broadcast_to(_f64(values), batch + values.shape[-2:])
    return q, k, v, squeeze


def attention_scores_reference(query, keys, values=None, *, score="scaled_dot", params=None, attn_mask=None):
    """``(scores, visible)``: the masked float64 scores and where keys are visible.

    Both ``(*batch, Lq, Lk)`` (``(*batch, Lk)`` for a 1-D query); scores are
    -inf where not visible.
    """
    q, k, _, squeeze = prepare(query, keys, values)
    s = raw_scores(q, k, score, params)
    visible = np.ones(s.shape, dtype=bool)
    if attn_mask is not None:
        mask = np.broadcast_to(np.asarray(attn_mask), s.shape)  # raises if not broadcastable
        if mask.dtype == np.bool_:
            visible &= mask
        else:
            add = _f64(mask)
            visible &= add != -np.inf
            with np.errstate(invalid="ignore"):
                s = s + np.where(visible, add, 0.0)
    s = np.where(visible, s, -np.inf)
    if squeeze:
        s, visible = s[..., 0, :], visible[..., 0, :]
    return s, visible


def sparsemax(z, visible):
    """Row-wise sparsemax of ``z`` over the visible entries (sort-based, Martins & Astudillo 2016)."""
    z = np.where(visible, z, -np.inf)
    lk = z.shape[-1]
    nvis = visible.sum(axis=-1, keepdims=True)
    # sparsemax(z + c) = sparsemax(z): work on z - max(z) so that 1 is never absorbed by large scores
    zmax = np.max(z, axis=-1, keepdims=True) if lk else np.zeros(z.shape[:-1] + (1,))
    z = z - np.where(nvis > 0, zmax, 0.0)
    zs = -np.sort(-z, axis=-1)  # descending; -inf (hidden) last
    kk = np.arange(1, lk + 1, dtype=np.float64)
    in_vis = kk <= nvis  # the first nvis sorted entries are the visible ones
    zs_safe = np.where(in_vis, zs, 0.0)
    cs = np.cumsum(zs_safe, axis=-1)
    support = in_vis & (1.0 + kk * zs_safe > cs)  # a prefix of the sorted entries
    kz = support.sum(axis=-1, keepdims=True)  # >= 1 whenever a key is visible
    kz_safe = np.maximum(kz, 1)
    tau = (np.take_along_axis(cs, kz_safe - 1, axis=-1) - 1.0) / kz_safe
    with np.errstate(invalid="ignore"):
        p = np.where(visible, np.maximum(z - tau, 0.0), 0.0)
    return np.where(nvis > 0, p, 0.0)


def align_weights(s, visible, align):
    """Weights ``(..., Lk)`` from masked scores (``-inf`` where not visible)."""
    if align not in ALIGNS:
        raise ValueError(f"unknown align {align!r}; expected one of {ALIGNS}")
    any_vis = visible.any(axis=-1, keepdims=True)
    if s.shape[-1] == 0:
        return np.zeros(s.shape)
    if align == "softmax":
        m = np.max(np.where(visible, s, -np.inf), axis=-1, keepdims=True)
        m = np.where(any_vis, m, 0.0)
        with np.errstate(invalid="ignore", over="ignore"):
            p = np.where(visible, np.exp(np.where(visible, s, 0.0) - m), 0.0)
        denom = np.sum(p, axis=-1, keepdims=True)
        return np.where(any_vis, p / np.where(any_vis, denom, 1.0), 0.0)
    if align == "sigmoid":
        return np.where(visible, sigmoid(np.where(visible, s, 0.0)), 0.0)
    if align == "sparsemax":
        return sparsemax(s, visible)
    # hard: np.argmax returns the first (lowest) index among equal maxima
    idx = np.argmax(np.where(visible, s, -np.inf), axis=-1)
    w = (np.arange(s.shape[-1]) == idx[..., None]).astype(np.float64)
    return np.where(any_vis, w, 0.0)


def attention_reference(query, keys, values=None, *, score, align, params=None, attn_mask=None):
    """float64 reference of ``fastattn.attention``: returns ``(context, weights)``."""
    q, k, v, squeeze = prepare(query, keys, values)
    s, visible = attention_scores_reference(query, keys, values, score=score, params=params,
                                            attn_mask=attn_mask)
    w = align_weights(s, visible, align)
    if squeeze:
        ctx = (w[..., None, :] @ v)[..., 0, :]
    else:
        ctx = w @ v
    return ctx, w


def output_layer_reference(context, weight, bias=None):
    """y = softmax(context @ weight.T + bias) over the last axis, in float64."""
    logits = _f64(context) @ _f64(weight).T
    if bias is not None:
        logits = logits + _f64(bias)
    logits = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=-1, keepdims=True)
