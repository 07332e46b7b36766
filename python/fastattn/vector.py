"""Vector attention (per-channel attention weights, Point Transformer v1/v2) and the exact k-nearest-
neighbour search that builds its neighbourhoods."""

from __future__ import annotations

from typing import Any, Literal, Optional, Sequence, Tuple, Union, overload

import numpy as np
from numpy.typing import ArrayLike

from . import _backend, _cpu, _cuda_vector, _vector_args

# Option types of the public signature (what mypy checks a caller against; _vector_args still
# rejects bad values at run time with ValueError / TypeError).
Relation = Literal["subtract", "add", "multiply"]
Sharing = Literal["blocked", "strided"]
Backend = Literal["auto", "cpu", "cuda"]
WeightMlp = Optional[Sequence[ArrayLike]]  # (W1, b1, W2, b2)


@overload
def vector_attention(
    query: ArrayLike, key: ArrayLike, value: ArrayLike, *, index: Optional[ArrayLike] = ...,
    pos: Optional[ArrayLike] = ..., relation: Relation = ..., weight_mlp: WeightMlp = ...,
    groups: Optional[int] = ..., sharing: Sharing = ..., attn_mask: Optional[ArrayLike] = ...,
    return_weights: Literal[False] = ..., backend: Backend = ...,
) -> np.ndarray: ...
@overload
def vector_attention(
    query: ArrayLike, key: ArrayLike, value: ArrayLike, *, index: Optional[ArrayLike] = ...,
    pos: Optional[ArrayLike] = ..., relation: Relation = ..., weight_mlp: WeightMlp = ...,
    groups: Optional[int] = ..., sharing: Sharing = ..., attn_mask: Optional[ArrayLike] = ...,
    return_weights: Literal[True], backend: Backend = ...,
) -> Tuple[np.ndarray, np.ndarray]: ...
@overload
def vector_attention(
    query: ArrayLike, key: ArrayLike, value: ArrayLike, *, index: Optional[ArrayLike] = ...,
    pos: Optional[ArrayLike] = ..., relation: Relation = ..., weight_mlp: WeightMlp = ...,
    groups: Optional[int] = ..., sharing: Sharing = ..., attn_mask: Optional[ArrayLike] = ...,
    return_weights: bool = ..., backend: Backend = ...,
) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]: ...
def vector_attention(
    query: ArrayLike,
    key: ArrayLike,
    value: ArrayLike,
    *,
    index: Optional[ArrayLike] = None,
    pos: Optional[ArrayLike] = None,
    relation: Relation = "subtract",
    weight_mlp: WeightMlp = None,
    groups: Optional[int] = None,
    sharing: Sharing = "blocked",
    attn_mask: Optional[ArrayLike] = None,
    return_weights: bool = False,
    backend: Backend = "auto",
) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
    """Vector attention: every (query, key) pair gets a vector of G weights, softmax-normalised over
    the keys independently per group, fused in one kernel (no (N, S, C) temporary).

    Forms:

    - dense: query ``(..., Lq, C)``, key and value ``(..., Lk, C)``, all pairs; batch dims
      broadcast (NumPy rules).
    - neighbour: ``index`` int ``(N, S)`` into the rows of key and value ``(M, C)``, query
      ``(N, C)``; ``-1`` = no neighbour (weight 0, contributes nothing). ``knn(points, S)`` makes
      such an index from coordinates.

    With r_ij the relation (``"subtract"``: q_i - k_j, ``"add"``: q_i + k_j, ``"multiply"``:
    q_i * k_j, channel by channel) plus the positional term delta_ij when ``pos`` is given
    (``(..., Lq, Lk, C)`` dense or ``(N, S, C)``, broadcastable):

    - weights w_ij = W2 relu(W1 r_ij + b1) + b2 with ``weight_mlp=(W1, b1, W2, b2)`` of shapes
      ``(Hd, C)``, ``(Hd,)``, ``(G, Hd)``, ``(G,)``; without it w_ij[g] = sum of r_ij over the
      channels of group g (w_ij = r_ij when G = C);
    - a_ij = softmax over j of w_ij, per group; keys masked out by ``attn_mask`` (bool, True =
      attend, or float, added to every group's weight) or index -1 get weight 0;
    - out_i[c] = sum_j a_ij[g(c)] (v_j[c] + delta_ij[c]), with g(c) = c // (C // G) for
      ``sharing="blocked"`` (Point Transformer v2) or c % G for ``"strided"`` (v1).

    ``groups`` G defaults to C, or to W2's rows (and must equal them when both are given); it must
    divide C. A query with no visible key gets exact zeros (and zero weights). Returns out
    ``(..., Lq, C)`` / ``(N, C)`` in the inputs' common float dtype (float16 and bfloat16 are
    computed in float32), and with ``return_weights=True`` also a ``(..., Lq, Lk, G)`` / ``(N, S, G)``.
    """
    if _backend.select(backend, query, key, value) == "cuda":
        return _cuda_vector.run(query, key, value, index, pos, relation, weight_mlp, groups,
                                sharing, attn_mask, return_weights)
    call = _vector_args.prepare(query, key, value, index, pos, relation, weight_mlp, groups, sharing, attn_mask)
    cdt = call.q.dtype
    out = np.empty(call.out_shape, cdt)
    weights = np.empty(call.weights_shape, cdt) if return_weights else None
    _backend.record_kernel(
        _cpu.vector_attention(call.q, call.k, call.v, out, weights, call.index, call.pos, call.mask,
                              call.mlp, call.groups, call.relation, call.sharing)
    )
    results = [out] if weights is None else [out, weights]
    results = [r if r.dtype == call.dtype else r.astype(call.dtype) for r in results]
    return (results[0], results[1]) if return_weights else results[0]


def knn(points: ArrayLike, k: int, *, queries: Optional[ArrayLike] = None) -> np.ndarray:
    """Exact k nearest neighbours by Euclidean distance, from a k-d tree, threaded over queries.

    points ``(N, D)``; queries ``(Nq, D)`` (default: the points themselves, so each point's own
    index comes first, unless a lower-indexed point has the same coordinates). Returns int64 ``(Nq, k)``: row i lists the k points nearest to query i,
    nearest first, ties to the lower index; when k > N the columns past N are -1 (which
    ``vector_attention`` reads as "no neighbour").
    """
    pts, qs, k = _vector_args.prepare_knn(points, k, queries)
    index = np.empty((qs.shape[0], k), np.int64)
    _backend.record_kernel(_cpu.knn(pts, qs, index))
    return index
