"""Checking the arguments of fastattn.vector_attention and fastattn.knn, in one place.

Every name, shape, dtype and index value is checked here, with the offending names, shapes or values
in the message, and every operand is brought to the form the kernels take (compute dtype, last dim
contiguous, batch dims first with size 1 where broadcast). The kernels trust it.
"""

from __future__ import annotations

import operator
from typing import Any, Dict, NamedTuple, Optional, Tuple

import numpy as np

from . import _dtypes
from ._sdpa_args import _as_operand, _with_leading_ones, broadcast_batch, mask_operand

RELATIONS = {"subtract": 0, "add": 1, "multiply": 2}
SHARINGS = {"blocked": 0, "strided": 1}


class VectorCall(NamedTuple):
    q: np.ndarray  # (*batch, Lq, C) dense, (N, C) neighbour form; compute dtype
    k: np.ndarray  # (*batch, Lk, C) or (M, C)
    v: np.ndarray  # like k
    # int64 C-contiguous (N, S), values in [-1, M). (The name shadows tuple.index, which no caller uses.)
    index: Optional[np.ndarray]  # type: ignore[assignment]
    pos: Optional[np.ndarray]  # (*batch, Lq|1, Lk|1, C) or (N|1, S|1, C)
    mask: Optional[np.ndarray]  # bool or compute dtype, (*batch, Lq|1, Lk|1) or (N|1, S|1)
    mlp: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]  # C-contiguous
    groups: int
    relation: int
    sharing: int
    out_shape: Tuple[int, ...]  # (*batch, Lq, C) or (N, C)
    weights_shape: Tuple[int, ...]  # (*batch, Lq, Lk, G) or (N, S, G)
    dtype: np.dtype  # of the results: the inputs' common float dtype


def _name(value: Any, what: str, valid: Dict[str, int]) -> int:
    if not isinstance(value, str) or value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")
    return valid[value]


def _mlp_arrays(weight_mlp: Any) -> Tuple[np.ndarray, ...]:
    if isinstance(weight_mlp, (str, bytes, dict)) or not hasattr(weight_mlp, "__len__") or len(weight_mlp) != 4:
        raise ValueError(
            "weight_mlp must be None or a sequence (W1, b1, W2, b2) of shapes (Hd, C), (Hd,), (G, Hd), (G,)"
        )
    return tuple(np.asarray(a) for a in weight_mlp)


def _check_mlp(mlp: Tuple[np.ndarray, ...], c: int) -> Tuple[int, int]:
    """(hidden, groups) of a weight MLP whose shapes fit C channels, else ValueError."""
    w1, b1, w2, b2 = mlp
    if w1.ndim != 2 or w2.ndim != 2 or b1.ndim != 1 or b2.ndim != 1:
        raise ValueError(
            f"weight_mlp (W1, b1, W2, b2) must be 2-D, 1-D, 2-D, 1-D arrays; got shapes {w1.shape}, "
            f"{b1.shape}, {w2.shape}, {b2.shape}"
        )
    hidden, groups = w1.shape[0], w2.shape[0]
    expected = ((hidden, c), (hidden,), (groups, hidden), (groups,))
    for name, a, want in zip(("W1", "b1", "W2", "b2"), mlp, expected):
        if a.shape != want:
            raise ValueError(
                f"weight_mlp {name} must have shape {want} for C={c} channels, hidden width Hd={hidden} "
                f"and G={groups} groups; got {a.shape} (W1 {w1.shape}, b1 {b1.shape}, W2 {w2.shape}, "
                f"b2 {b2.shape})"
            )
    if hidden < 1 or groups < 1:
        raise ValueError(f"weight_mlp needs a hidden width and a group count >= 1, got W1 {w1.shape}, W2 {w2.shape}")
    return hidden, groups


def _groups(groups: Any, mlp_groups: Optional[int], c: int) -> int:
    if groups is None:
        g = c if mlp_groups is None else mlp_groups
    else:
        if isinstance(groups, bool):
            raise TypeError(f"groups must be an int, got {groups!r}")
        try:
            g = operator.index(groups)
        except TypeError:
            raise TypeError(f"groups must be an int, got {groups!r}") from None
        if mlp_groups is not None and g != mlp_groups:
            raise ValueError(f"groups={g} does not match the weight MLP's W2, which has {mlp_groups} rows (groups)")
    if g < 1 or c % g:
        raise ValueError(f"groups={g} must be >= 1 and divide the C={c} channels")
    return g


def _index(index: Any, n: int, m: int) -> np.ndarray:
    idx = np.asarray(index)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"index must be an integer array (-1 = no neighbour), got dtype {idx.dtype}")
    if idx.ndim != 2 or idx.shape[0] != n:
        raise ValueError(f"index must have shape (N, S) = ({n}, S) for a query of {n} rows, got {idx.shape}")
    if idx.size:
        low, high = idx.min(), idx.max()
        if low < -1 or high >= m:
            bad = tuple(int(x) for x in np.argwhere((idx < -1) | (idx >= m))[0])
            raise ValueError(
                f"index values must lie in [-1, M) = [-1, {m}) for key/value of {m} rows; "
                f"index{list(bad)} = {int(idx[bad])}"
            )
    return _dtypes.c_contiguous(idx, np.dtype(np.int64))


def _pos(pos: np.ndarray, full: Tuple[int, ...], cdt: np.dtype, form: str) -> np.ndarray:
    if pos.ndim < 3 or pos.ndim > len(full) or pos.shape[-1] != full[-1] or any(
        n != 1 and n != want for n, want in zip(pos.shape[::-1], full[::-1])
    ):
        raise ValueError(f"pos of shape {pos.shape} does not broadcast to {full} ({form})")
    return _with_leading_ones(_as_operand(pos, cdt), len(full))


def prepare(
    query: Any,
    key: Any,
    value: Any,
    index: Any,
    pos: Any,
    relation: Any,
    weight_mlp: Any,
    groups: Any,
    sharing: Any,
    attn_mask: Any,
) -> VectorCall:
    relation_code = _name(relation, "relation", RELATIONS)
    sharing_code = _name(sharing, "sharing", SHARINGS)
    q, k, v = np.asarray(query), np.asarray(key), np.asarray(value)
    p = None if pos is None else np.asarray(pos)
    mlp = None if weight_mlp is None else _mlp_arrays(weight_mlp)
    arrays, names = [q, k, v], ["query", "key", "value"]
    if p is not None:
        arrays.append(p)
        names.append("pos")
    if mlp is not None:
        arrays += list(mlp)
        names += ["weight_mlp W1", "weight_mlp b1", "weight_mlp W2", "weight_mlp b2"]
    dtype = _dtypes.common_float_dtype(arrays, names)
    cdt = _dtypes.compute_dtype(dtype)

    if index is None:
        for a, name in ((q, "query"), (k, "key"), (v, "value")):
            if a.ndim < 2:
                raise ValueError(f"{name} must have at least 2 dims (L, C), got shape {a.shape}")
        batch = broadcast_batch((q.shape[:-2], k.shape[:-2], v.shape[:-2]), ("query", "key", "value"))
        lq, lk = q.shape[-2], k.shape[-2]
        form = "dense form: (*batch, Lq, Lk, C)"
    else:
        for a, name, what in ((q, "query", "(N, C)"), (k, "key", "(M, C)"), (v, "value", "(M, C)")):
            if a.ndim != 2:
                raise ValueError(f"with index, {name} must be {what}, got shape {a.shape}")
        batch = ()
        lq = q.shape[0]
        form = "neighbour form: (N, S, C)"
    c = q.shape[-1]
    if k.shape[-1] != c or v.shape[-1] != c:
        raise ValueError(f"query, key and value must have the same channel count C: {q.shape}, {k.shape}, {v.shape}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"key {k.shape} and value {v.shape} must have the same number of rows")
    if c < 1:
        raise ValueError(f"vector attention needs C >= 1 channels, got query {q.shape}")
    idx = None
    if index is not None:
        idx = _index(index, lq, k.shape[0])
        lk = idx.shape[1]
    hidden_groups = None if mlp is None else _check_mlp(mlp, c)
    g = _groups(groups, None if hidden_groups is None else hidden_groups[1], c)

    ndim = len(batch) + 2
    q, k, v = (_with_leading_ones(_as_operand(a, cdt), ndim) for a in (q, k, v))
    p = None if p is None else _pos(p, batch + (lq, lk, c), cdt, form)
    mask = None if attn_mask is None else mask_operand(attn_mask, cdt, batch + (lq, lk))
    mlp4 = None
    if mlp is not None:
        w1, b1, w2, b2 = (_dtypes.c_contiguous(a, cdt) for a in mlp)
        mlp4 = (w1, b1, w2, b2)
    return VectorCall(q, k, v, idx, p, mask, mlp4, g, relation_code, sharing_code,
                      batch + (lq, c), batch + (lq, lk, g), dtype)


def prepare_knn(points: Any, k: Any, queries: Any) -> Tuple[np.ndarray, np.ndarray, int]:
    """(points, queries, k): C-contiguous float32/float64 arrays (n, d) and (nq, d), and k >= 0."""
    pts = np.asarray(points)
    qs = pts if queries is None else np.asarray(queries)
    names = ["points"] if queries is None else ["points", "queries"]
    dtype = _dtypes.common_float_dtype([pts, qs][: len(names)], names)
    cdt = _dtypes.compute_dtype(dtype)
    if isinstance(k, bool):
        raise TypeError(f"k must be an int, got {k!r}")
    try:
        k = operator.index(k)
    except TypeError:
        raise TypeError(f"k must be an int, got {k!r}") from None
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if pts.ndim != 2 or pts.shape[1] < 1:
        raise ValueError(f"points must have shape (N, D) with D >= 1, got {pts.shape}")
    if qs.ndim != 2 or qs.shape[1] != pts.shape[1]:
        raise ValueError(f"queries must have shape (Nq, D) with the points' D={pts.shape[1]}, got {qs.shape}")
    pts = _dtypes.c_contiguous(pts, cdt)
    qs = pts if queries is None else _dtypes.c_contiguous(qs, cdt)
    for a, name in ((pts, "points"), (qs, "queries")):
        if not np.isfinite(a).all():
            bad = tuple(int(x) for x in np.argwhere(~np.isfinite(a))[0])
            raise ValueError(f"{name} must be finite; {name}{list(bad)} = {a[bad]}")
    return pts, qs, k
