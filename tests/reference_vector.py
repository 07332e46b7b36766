"""Plain float64 NumPy reference for ``fastattn.vector_attention`` and ``fastattn.knn``.

Written for clarity, not speed: the relation, weights and softmax of every (query, key) pair are
materialised as float64 arrays, with a boolean ``visible`` array beside them.

Semantics (the contract the implementation follows):

* dense form: query ``(..., Lq, C)``, key/value ``(..., Lk, C)``, all pairs, batch dims broadcast;
  neighbour form: ``index (N, S)`` into key/value rows ``(M, C)``, query ``(N, C)``, -1 = none.
* r_ij = q_i - k_j | q_i + k_j | q_i * k_j, plus delta_ij (``pos``) when given.
* w_ij = W2 relu(W1 r_ij + b1) + b2 with a weight MLP, else the sum of r_ij over each group's
  channels; group of channel c: c // (C // G) (blocked) or c % G (strided).
* attn_mask: bool (True = attend) or float (added to every group's weight, -inf masks).
* a_ij = softmax over the visible j of w_ij, per group; 0 for invisible j; a query with no
  visible key gets all-zero weights and output.
* out_i[c] = sum_j a_ij[g(c)] (v_j[c] + delta_ij[c]).
"""

import numpy as np


def group_of_channel(c, groups, sharing):
    ch = np.arange(c)
    return ch // (c // groups) if sharing == "blocked" else ch % groups


def vector_attention_reference(query, key, value, *, index=None, pos=None, relation="subtract",
                               weight_mlp=None, groups=None, sharing="blocked", attn_mask=None):
    """Returns (out, weights) in float64."""
    out, a, _, _ = _vector_attention(query, key, value, index, pos, relation, weight_mlp, groups, sharing,
                                     attn_mask)
    return out, a


def vector_logits_reference(query, key, value, **kw):
    """(w, visible): the float64 logits w_ij (..., Lq, Lk, G), an additive mask included, and the
    boolean (..., Lq, Lk) of the pairs that take part in the softmax."""
    _, _, w, visible = _vector_attention(query, key, value, kw.get("index"), kw.get("pos"),
                                         kw.get("relation", "subtract"), kw.get("weight_mlp"),
                                         kw.get("groups"), kw.get("sharing", "blocked"), kw.get("attn_mask"))
    return w, visible


def _vector_attention(query, key, value, index, pos, relation, weight_mlp, groups, sharing, attn_mask):
    q = np.asarray(query, dtype=np.float64)
    k = np.asarray(key, dtype=np.float64)
    v = np.asarray(value, dtype=np.float64)
    c = q.shape[-1]
    if index is None:
        batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
        lq, lk = q.shape[-2], k.shape[-2]
        qi = np.broadcast_to(q[..., :, None, :], batch + (lq, lk, c))
        kj = np.broadcast_to(k[..., None, :, :], batch + (lq, lk, c))
        vj = np.broadcast_to(v[..., None, :, :], batch + (lq, lk, c))
        visible = np.ones(batch + (lq, lk), bool)
    else:
        idx = np.asarray(index)
        lq, lk = idx.shape
        visible = idx >= 0
        safe = np.where(visible, idx, 0)
        qi = np.broadcast_to(q[:, None, :], (lq, lk, c))
        if k.shape[0] == 0:  # no key rows: every index is -1
            kj = vj = np.zeros((lq, lk, c))
        else:
            kj, vj = k[safe], v[safe]
    r = {"subtract": qi - kj, "add": qi + kj, "multiply": qi * kj}[relation]
    delta = 0.0 if pos is None else np.broadcast_to(np.asarray(pos, dtype=np.float64), r.shape)
    r = r + delta
    if weight_mlp is not None:
        w1, b1, w2, b2 = (np.asarray(a, dtype=np.float64) for a in weight_mlp)
        groups = w2.shape[0]
        w = np.maximum(r @ w1.T + b1, 0.0) @ w2.T + b2
    else:
        groups = c if groups is None else groups
        gmap = group_of_channel(c, groups, sharing)
        w = np.stack([r[..., gmap == g].sum(axis=-1) for g in range(groups)], axis=-1)
    gmap = group_of_channel(c, groups, sharing)
    if attn_mask is not None:
        m = np.asarray(attn_mask)
        if m.dtype == np.bool_:
            visible = visible & m
        else:
            m = m.astype(np.float64)
            visible = visible & (m != -np.inf)
            w = w + np.where(m == -np.inf, 0.0, m)[..., None]
    visible = np.broadcast_to(visible, w.shape[:-1])
    logits = w
    w = np.where(visible[..., None], w, -np.inf)
    top = w.max(axis=-2, keepdims=True, initial=-np.inf)
    top = np.where(np.isfinite(top), top, 0.0)
    e = np.where(visible[..., None], np.exp(w - top), 0.0)
    total = e.sum(axis=-2, keepdims=True)
    a = np.divide(e, total, out=np.zeros_like(e), where=total > 0)
    vd = np.where(visible[..., None], vj + delta, 0.0)
    out = np.einsum("...jc,...jc->...c", a[..., gmap], vd)
    return out, a, logits, visible


def knn_reference(points, k, queries=None):
    """Brute force: the k nearest by (squared distance, index), -1 past N."""
    p = np.asarray(points, dtype=np.float64)
    q = p if queries is None else np.asarray(queries, dtype=np.float64)
    d2 = ((q[:, None, :] - p[None, :, :]) ** 2).sum(axis=-1)
    order = np.lexsort((np.broadcast_to(np.arange(p.shape[0]), d2.shape), d2), axis=-1)[:, :k]
    out = np.full((q.shape[0], k), -1, np.int64)
    out[:, : order.shape[1]] = order
    return out
