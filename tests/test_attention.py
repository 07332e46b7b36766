"""Correctness of fastattn.attention (the general attention module: score -> alignment ->
context) and fastattn.output_layer against the float64 reference in
tests/reference_attention.py: every score x alignment x dtype, masks, broadcasting,
special cases, activation accuracy and bad input."""

import math
import re

import numpy as np
import pytest

import fastattn
from helpers import BF16, F16, F32, F64, expected_out_dtype, make_mask, randn, sdpa
from reference_attention import (
    attention_reference,
    attention_scores_reference,
    output_layer_reference,
    prepare,
)

SCORE_NAMES = ["dot", "scaled_dot", "cosine", "general", "biased_general", "activated_general", "additive"]
ALIGN_NAMES = ["softmax", "sigmoid", "sparsemax", "hard"]
ACT_NAMES = ["tanh", "relu", "sigmoid", "identity"]
DOT_FAMILY = ("dot", "scaled_dot", "cosine")
MASK_KINDS = ["none", "bool", "additive_inf"]

# (weights: absolute, context: relative to max(1, max|ref context|))
TOLERANCES = {"float32": (2e-4, 2e-4), "float64": (1e-10, 1e-10), "float16": (2e-3, 2e-3),
              "bfloat16": (1.6e-2, 1.6e-2)}
# "hard": a row is compared exactly only when the reference's best visible score beats every
# other visible score by more than this (rounding may flip near-ties between precisions)
HARD_GAP = {"float32": 1e-3, "float64": 1e-9, "float16": 5e-2, "bfloat16": 2e-1}


def dtype_name(dt):
    dt = np.dtype(dt)
    if BF16 is not None and dt == BF16:
        return "bfloat16"
    return dt.name


def attention(*args, **kw):
    return fastattn.attention(*args, **kw)


def all_of(*words):
    """A regex that matches when every word occurs (as a whole token) somewhere in the message."""
    return "(?s)" + "".join(rf"(?=.*(?<![\w.]){re.escape(str(w))}(?![\w]))" for w in words)


# ----------------------------------------------------------------------------- the check


def check_attention(query, keys, values=None, *, score="scaled_dot", align="softmax", params=None,
                    attn_mask=None, wtol=None, ctol=None):
    """Run fastattn.attention(return_weights=True) and compare with the float64 reference.

    Checks the result type, shapes and dtypes, finiteness, exact zeros for masked keys and
    for queries with no visible key, and the accuracy of weights and context.  For
    align="hard" a row is compared exactly where the reference's arg-max is clear; elsewhere
    the weights must be one-hot on a key within HARD_GAP of the best score.
    Returns ``(context, weights, ref_context, ref_weights)``.
    """
    query = np.asarray(query)
    keys = np.asarray(keys)
    res = attention(query, keys, values, score=score, align=align, params=params, attn_mask=attn_mask,
                    return_weights=True)
    assert isinstance(res, tuple) and len(res) == 2, type(res)
    ctx, w = res
    ref_ctx, ref_w = attention_reference(query, keys, values, score=score, align=align, params=params,
                                         attn_mask=attn_mask)
    s, visible = attention_scores_reference(query, keys, values, score=score, params=params,
                                            attn_mask=attn_mask)
    dts = [query.dtype, keys.dtype] + ([] if values is None else [np.asarray(values).dtype])
    out_dt = expected_out_dtype(*dts)
    name = dtype_name(out_dt)
    assert isinstance(ctx, np.ndarray) and isinstance(w, np.ndarray), (type(ctx), type(w))
    assert ctx.shape == ref_ctx.shape, (ctx.shape, ref_ctx.shape)
    assert w.shape == ref_w.shape, (w.shape, ref_w.shape)
    assert ctx.dtype == out_dt, (ctx.dtype, out_dt)
    assert w.dtype == out_dt, (w.dtype, out_dt)

    c64 = ctx.astype(np.float64)
    w64 = w.astype(np.float64)
    assert np.all(np.isfinite(w64)), f"non-finite weights: {w64[~np.isfinite(w64)][:5]}"
    assert np.all(np.isfinite(c64)), f"non-finite context: {c64[~np.isfinite(c64)][:5]}"
    hidden = w64[~visible]
    assert np.all(hidden == 0), f"masked keys must get weight exactly 0, got {hidden[hidden != 0][:5]}"
    empty = ~visible.any(axis=-1)
    if empty.any():
        assert np.all(w64[empty] == 0), "a query with no visible key must get all-zero weights"
        assert np.all(c64[empty] == 0), f"a query with no visible key must get a zero context, got " \
                                        f"{c64[empty][c64[empty] != 0][:5]}"

    dwtol, dctol = TOLERANCES[name]
    wtol = dwtol if wtol is None else wtol
    ctol = dctol if ctol is None else ctol
    cscale = max(1.0, float(np.max(np.abs(ref_ctx), initial=0.0)))
    if align == "hard":
        _, _, v, squeeze = prepare(query, keys, values)
        _check_hard(c64, w64, ref_w, s, visible, v, squeeze, HARD_GAP[name], ctol * cscale,
                    exact_ties=name == "float64")
    else:
        werr = float(np.max(np.abs(w64 - ref_w), initial=0.0))
        assert werr <= wtol, f"{name} {score}/{align}: weights abs error {werr:.3g} > {wtol:.3g}"
        cerr = float(np.max(np.abs(c64 - ref_ctx), initial=0.0))
        assert cerr <= ctol * cscale, \
            f"{name} {score}/{align}: context error {cerr:.3g} > {ctol:.3g} * {cscale:.3g}"

    # the default call (no weights asked for) may take another path: same context
    ctx_only = attention(query, keys, values, score=score, align=align, params=params, attn_mask=attn_mask)
    assert isinstance(ctx_only, np.ndarray), type(ctx_only)
    assert ctx_only.shape == ctx.shape and ctx_only.dtype == ctx.dtype, (ctx_only.shape, ctx_only.dtype)
    o64 = ctx_only.astype(np.float64)
    assert np.all(np.isfinite(o64)), "non-finite context (return_weights=False)"
    if empty.any():
        assert np.all(o64[empty] == 0), "a query with no visible key must get a zero context (return_weights=False)"
    target = c64 if align == "hard" else ref_ctx  # hard: near-ties may go either way vs the reference
    oerr = float(np.max(np.abs(o64 - target), initial=0.0))
    assert oerr <= ctol * cscale, \
        f"{name} {score}/{align} (return_weights=False): context error {oerr:.3g} > {ctol:.3g} * {cscale:.3g}"
    return ctx, w, ref_ctx, ref_w


def _check_hard(c64, w64, ref_w, s, visible, v, squeeze, gap, catol, exact_ties):
    any_vis = visible.any(axis=-1)
    smax = np.max(np.where(visible, s, -np.inf), axis=-1, keepdims=True, initial=-np.inf)
    near = visible & (s >= smax - gap)
    n_near = near.sum(axis=-1)
    wr = w64[any_vis]
    assert np.all((wr == 0) | (wr == 1)), f"hard weights must be 0 or 1, got {wr[(wr != 0) & (wr != 1)][:5]}"
    assert np.all(wr.sum(axis=-1) == 1), "hard weights must be one-hot on rows with a visible key"
    assert np.all(near[any_vis][wr == 1]), "hard picked a key whose score is clearly below the best"
    clear = any_vis & (n_near == 1)
    if exact_ties:  # several keys with exactly the best score: ties go to the lowest index
        s_near_min = np.min(np.where(near, s, np.inf), axis=-1, initial=np.inf)
        clear |= any_vis & (s_near_min == smax[..., 0])
    bad = clear & np.any(w64 != ref_w, axis=-1)
    assert not bad.any(), (f"hard: {int(bad.sum())} rows pick another key than the reference: "
                           f"{np.argmax(w64[bad], -1)[:5]} vs {np.argmax(ref_w[bad], -1)[:5]}")
    # the context is the value of the key picked
    if squeeze:
        picked = (w64[..., None, :] @ v)[..., 0, :]
    else:
        picked = w64 @ v
    cerr = float(np.max(np.abs(c64 - picked), initial=0.0))
    assert cerr <= catol, f"hard: context differs from the picked value by {cerr:.3g} > {catol:.3g}"


# ----------------------------------------------------------------------------- inputs


def in_scale(d):
    """Query/key entries scaled so dot products have a standard deviation of about 2."""
    return 1.5 * d ** -0.25


def make_params(rng, score, dq, dk, da, dtype, variant=0):
    """Random params for ``score`` with moderate scores; ``variant`` varies act and the optional params."""
    dt = np.dtype(dtype)

    def r(shape, scale):
        return randn(rng, shape, dt, scale)

    if score in DOT_FAMILY:
        return None
    if score in ("general", "biased_general", "activated_general"):
        p = {"W": r((dk, dq), (dk * dq) ** -0.25)}
        if score == "biased_general":
            p["b"] = r((dk,), dk ** -0.25)
        elif score == "activated_general":
            act = [None, "relu", "sigmoid", "identity", "tanh", "relu"][variant % 6]
            if act is not None:
                p["act"] = act
            b = np.asarray(0.5 * rng.standard_normal()).astype(dt)  # exact in dt
            if variant % 3 == 1:
                p["b"] = b[()]  # a NumPy scalar
            elif variant % 3 == 2:
                p["b"] = b  # a 0-d array (a Python float: test_python_float_bias_keeps_the_dtype)
        return p
    # additive / concat
    p = {"W_q": r((da, dq), dq ** -0.25 / 1.5), "W_k": r((da, dk), dk ** -0.25 / 1.5),
         "w": r((da,), 2.0 / math.sqrt(da))}
    act = ["tanh", None, "relu", "sigmoid", "identity", None][variant % 6]
    if act is not None:
        p["act"] = act
    if variant % 2 == 0:
        p["b"] = r((da,), 0.5)
    return p


# bq/bk/bv: batch dims of query/keys/values; dk: key dim for the non-dot scores (dot scores
# use dk = dq); mask: "full" (the whole broadcast shape), "2d" (Lq, Lk), or an explicit shape
CONFIGS = [
    dict(bq=(2,), bk=(2,), bv=(2,), lq=7, lk=65, dq=17, dk=3, dv=3, da=64, mask="full"),
    dict(bq=(2, 1), bk=(3,), bv=(3,), lq=65, lk=7, dq=64, dk=17, dv=17, da=3, mask="2d"),
    dict(bq=(), bk=(2,), bv=(1,), lq=1, lk=65, dq=3, dk=64, dv=64, da=17, mask=(2, 1, 65)),
    dict(bq=(3,), bk=(), bv=(), lq=65, lk=1, dq=1, dk=3, dv=1, da=1, mask="full"),
    dict(bq=(), bk=(), bv=(), lq=65, lk=65, dq=64, dk=1, dv=64, da=64, mask="2d"),
    dict(bq=(1,), bk=(2,), bv=(2,), lq=7, lk=7, dq=1, dk=17, dv=17, da=17, mask=(1, 7)),
]


def make_case(rng, cfg, score, dtype, mask_kind, variant):
    dt = np.dtype(dtype)
    dq = cfg["dq"]
    dk = dq if score in DOT_FAMILY else cfg["dk"]
    q = randn(rng, cfg["bq"] + (cfg["lq"], dq), dt, in_scale(dq))
    k = randn(rng, cfg["bk"] + (cfg["lk"], dk), dt, in_scale(dk))
    v = randn(rng, cfg["bv"] + (cfg["lk"], cfg["dv"]), dt)
    params = make_params(rng, score, dq, dk, cfg["da"], dt, variant)
    batch = np.broadcast_shapes(cfg["bq"], cfg["bk"], cfg["bv"])
    if cfg["mask"] == "full":
        mshape = batch + (cfg["lq"], cfg["lk"])
    elif cfg["mask"] == "2d":
        mshape = (cfg["lq"], cfg["lk"])
    else:
        mshape = cfg["mask"]
    mask = make_mask(rng, mask_kind, mshape, dt)
    return q, k, v, params, mask


# ----------------------------------------------------------------------------- the matrix


@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("align", ALIGN_NAMES)
@pytest.mark.parametrize("score", SCORE_NAMES)
def test_score_align_matrix(rng, score, align, dtype, mask_kind):
    for variant, cfg in enumerate(CONFIGS):
        q, k, v, params, mask = make_case(rng, cfg, score, dtype, mask_kind, variant)
        ctx, w, _, _ = check_attention(q, k, v, score=score, align=align, params=params, attn_mask=mask)
        batch = np.broadcast_shapes(cfg["bq"], cfg["bk"], cfg["bv"])
        assert ctx.shape == batch + (cfg["lq"], cfg["dv"])
        assert w.shape == batch + (cfg["lq"], cfg["lk"])


@pytest.mark.parametrize("align", ALIGN_NAMES)
def test_return_weights_false_gives_the_context(rng, align):
    q, k, v, params, mask = make_case(rng, CONFIGS[0], "additive", "float32", "bool", 0)
    ctx = attention(q, k, v, score="additive", align=align, params=params, attn_mask=mask)
    assert isinstance(ctx, np.ndarray), type(ctx)
    ctx2, _ = attention(q, k, v, score="additive", align=align, params=params, attn_mask=mask,
                        return_weights=True)
    assert ctx.shape == ctx2.shape and ctx.dtype == ctx2.dtype
    np.testing.assert_allclose(ctx, ctx2, rtol=0, atol=2e-5 * max(1.0, float(np.max(np.abs(ctx2)))))


def test_batch_broadcast_shapes(rng):
    q = randn(rng, (2, 1, 7, 5))
    k = randn(rng, (3, 9, 5))
    v = randn(rng, (1, 9, 4))
    for score in ("scaled_dot", "general"):
        params = {"W": randn(rng, (5, 5), scale=0.4)} if score == "general" else None
        ctx, w, _, _ = check_attention(q, k, v, score=score, align="softmax", params=params)
        assert ctx.shape == (2, 3, 7, 4) and w.shape == (2, 3, 7, 9)
    # a mask broadcast over the batch and the queries
    mask = make_mask(rng, "bool", (1, 9))
    ctx, w, _, _ = check_attention(q, k, v, align="sparsemax", attn_mask=mask)
    assert np.all(w[..., ~mask[0]] == 0)


# ----------------------------------------------------------------------------- masking


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("align", ALIGN_NAMES)
@pytest.mark.parametrize("score", ["scaled_dot", "cosine", "additive"])
def test_no_visible_key_gives_zeros(rng, score, align, dtype):
    dt = np.dtype(dtype)
    q = randn(rng, (2, 5, 8), dt)
    k = randn(rng, (2, 6, 8), dt)
    v = randn(rng, (2, 6, 3), dt)
    params = make_params(rng, score, 8, 8, 4, dt)
    bool_mask = np.ones((2, 5, 6), bool)
    bool_mask[0, 1] = False
    bool_mask[1, :] = False
    float_mask = np.where(bool_mask, dt.type(0), dt.type(-np.inf)).astype(dt)
    for mask in (bool_mask, float_mask):
        ctx, w, _, _ = check_attention(q, k, v, score=score, align=align, params=params, attn_mask=mask)
        assert np.all(ctx[0, 1] == 0) and np.all(ctx[1] == 0)
        assert np.all(w[0, 1] == 0) and np.all(w[1] == 0)
        assert np.all(w[~bool_mask] == 0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("align", ALIGN_NAMES)
def test_bool_and_float_masks_agree(rng, align, dtype):
    dt = np.dtype(dtype)
    q = randn(rng, (3, 7, 17), dt)
    k = randn(rng, (3, 65, 17), dt)
    v = randn(rng, (3, 65, 3), dt)
    bmask = make_mask(rng, "bool", (3, 7, 65))
    fmask = np.where(bmask, 0.0, -np.inf).astype(dt)
    c1, w1 = attention(q, k, v, align=align, attn_mask=bmask, return_weights=True)
    c2, w2 = attention(q, k, v, align=align, attn_mask=fmask, return_weights=True)
    tol = 1e-6 if dt == F32 else 1e-13
    np.testing.assert_allclose(w1, w2, rtol=0, atol=tol)
    np.testing.assert_allclose(c1, c2, rtol=0, atol=tol * max(1.0, float(np.max(np.abs(c1)))))


# ----------------------------------------------------------------------------- alignments


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sparsemax_properties(rng, dtype):
    dt = np.dtype(dtype)
    # spread-out scores (std ~ 36): most rows have a sparse support
    q = randn(rng, (3, 9, 16), dt, 3.0)
    k = randn(rng, (3, 65, 16), dt, 3.0)
    v = randn(rng, (3, 65, 5), dt)
    mask = make_mask(rng, "bool", (3, 9, 65))
    ctx, w, _, ref_w = check_attention(q, k, v, score="dot", align="sparsemax", attn_mask=mask)
    w64 = w.astype(np.float64)
    rows = mask.any(axis=-1)
    tol = 1e-5 if dt == F32 else 1e-12
    sums = w64.sum(axis=-1)
    assert np.all(np.abs(sums[rows] - 1) <= tol), sums[rows]
    assert np.all(sums[~rows] == 0)
    assert np.all(w64 >= 0)
    assert np.all(w64[~mask] == 0)
    zeros_among_visible = (w64 == 0) & mask
    assert zeros_among_visible.any(axis=-1)[mask.sum(axis=-1) >= 3].mean() > 0.5, \
        "sparsemax of spread-out scores must give exact zeros to visible keys"
    # the zeros are where the reference has zeros (the support is the same)
    assert np.array_equal(w64 == 0, ref_w == 0) or dt == F32


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sparsemax_known_values(dtype):
    dt = np.dtype(dtype)
    q = np.ones((1, 1), dt)
    k = np.array([[0.5], [0.3], [0.1], [-1.0]], dt)  # scores are exactly k
    _, w = attention(q, k, score="dot", align="sparsemax", return_weights=True)
    # support {0, 1, 2}, tau = (0.9 - 1) / 3
    np.testing.assert_allclose(w[0], [0.5 + 1 / 30, 0.3 + 1 / 30, 0.1 + 1 / 30, 0.0], rtol=0,
                               atol=1e-6 if dt == F32 else 1e-14)
    assert w[0, 3] == 0
    k = np.array([[3.0], [1.0], [0.5], [-2.0]], dt)
    _, w = attention(q, k, score="dot", align="sparsemax", return_weights=True)
    assert np.array_equal(w[0], np.array([1, 0, 0, 0], dt))
    # equal scores: uniform over the visible keys
    k = np.zeros((5, 1), dt)
    mask = np.array([[True, False, True, True, False]])
    _, w = attention(q, k, score="dot", align="sparsemax", attn_mask=mask, return_weights=True)
    np.testing.assert_allclose(w[0], [1 / 3, 0, 1 / 3, 1 / 3, 0], rtol=0, atol=1e-6 if dt == F32 else 1e-14)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sparsemax_large_scores(rng, dtype):
    """sparsemax(z + c) = sparsemax(z): large scores (or a large row offset) must not break the
    projection (the 1 of the simplex constraint is absorbed by scores >= 2^24 in float32 unless
    the row maximum is taken out first)."""
    dt = np.dtype(dtype)
    big = 2.0 ** 20 if dt == F32 else 2.0 ** 48
    q = np.ones((1, 1), dt)
    # exact scores: the result is exactly sparsemax of the exact scores
    for c in (3e7, 1e9, 1e30) if dt == F32 else (1e17, 1e30, 1e200):
        k = np.array([[c], [0.0], [-c]], dt)
        _, w, _, _ = check_attention(q, k, score="dot", align="sparsemax")
        assert np.array_equal(w[0], np.array([1, 0, 0], dt)), w
    # dyadic scores (multiples of 1/4 in [-16, 16]) plus a row offset +-big: exact in dt, so the
    # weights must equal sparsemax of the unshifted scores
    k = (rng.integers(-64, 65, (65, 1)) / 4).astype(dt)
    v = randn(rng, (65, 3), dt)
    qs = np.ones((3, 1), dt)
    offsets = np.array([[0.0], [-big], [big]], dt)
    mask = np.broadcast_to(offsets, (3, 65)).astype(dt)
    _, w, _, _ = check_attention(qs, k, v, score="dot", align="sparsemax", attn_mask=mask)
    w64 = w.astype(np.float64)
    np.testing.assert_allclose(w64[1:], np.broadcast_to(w64[0], (2, 65)), rtol=0,
                               atol=1e-6 if dt == F32 else 1e-14)
    # random large scores: whatever the rounding of the scores, the weights are a distribution
    qb = randn(rng, (2, 9, 16), dt, 3000.0)
    kb = randn(rng, (2, 65, 16), dt, 3000.0)
    for mask in (None, np.where(make_mask(rng, "bool", (2, 9, 65)), dt.type(0), dt.type(-1e9)).astype(dt)):
        _, w = attention(qb, kb, score="dot", align="sparsemax", attn_mask=mask, return_weights=True)
        w64 = w.astype(np.float64)
        assert np.all((w64 >= 0) & (w64 <= 1)), f"sparsemax weights outside [0, 1]: {w64.max():.3g}"
        np.testing.assert_allclose(w64.sum(axis=-1), 1.0, rtol=0, atol=1e-5 if dt == F32 else 1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sigmoid_alignment(rng, dtype):
    dt = np.dtype(dtype)
    q = randn(rng, (2, 9, 16), dt, 0.5)
    k = randn(rng, (2, 65, 16), dt, 0.5)
    v = randn(rng, (2, 65, 5), dt)
    for kind in ("bool", "additive_inf"):
        mask = make_mask(rng, kind, (2, 9, 65), dt)
        visible = mask if kind == "bool" else mask != -np.inf
        ctx, w, _, _ = check_attention(q, k, v, score="dot", align="sigmoid", attn_mask=mask)
        w64 = w.astype(np.float64)
        assert np.all((w64[visible] > 0) & (w64[visible] < 1)), "sigmoid weights must lie in (0, 1)"
        assert np.all(w64[~visible] == 0), "masked keys must get weight 0 under sigmoid"
        sums = w64.sum(axis=-1)[visible.sum(axis=-1) >= 20]
        assert np.all(sums > 2), "sigmoid weights are not normalised over the keys"
    # unmasked: sigmoid of each score, elementwise
    _, w = attention(q, k, v, score="dot", align="sigmoid", return_weights=True)
    s = q.astype(np.float64) @ np.swapaxes(k.astype(np.float64), -1, -2)
    np.testing.assert_allclose(w, 1 / (1 + np.exp(-s)), rtol=0, atol=2e-6 if dt == F32 else 1e-13)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_hard_ties_go_to_the_lowest_visible_index(dtype):
    dt = np.dtype(dtype)
    q = np.array([[1.0, 0.0], [0.0, 0.0]], dt)
    k = np.array([[1, 0], [3, 0], [3, 0], [2, 0], [3, 0]], dt)  # integer scores: exact in any precision
    v = np.arange(15, dtype=dt).reshape(5, 3)
    ctx, w = attention(q, k, v, score="dot", align="hard", return_weights=True)
    assert np.array_equal(w[0], np.array([0, 1, 0, 0, 0], dt)), w[0]
    assert np.array_equal(w[1], np.array([1, 0, 0, 0, 0], dt)), w[1]  # all scores 0
    assert np.array_equal(ctx, v[[1, 0]])
    mask = np.array([False, False, True, True, True])
    ctx, w = attention(q, k, v, score="dot", align="hard", attn_mask=mask, return_weights=True)
    assert np.array_equal(w[0], np.array([0, 0, 1, 0, 0], dt)), w[0]
    assert np.array_equal(w[1], np.array([0, 0, 1, 0, 0], dt)), w[1]
    fmask = np.where(mask, 0.0, -np.inf).astype(dt)
    _, w2 = attention(q, k, v, score="dot", align="hard", attn_mask=fmask, return_weights=True)
    assert np.array_equal(w, w2)
    # ties from relu: every pre-activation negative -> all scores exactly 0
    params = {"W": np.ones((1, 1), dt), "act": "relu"}
    qa = np.ones((1, 1), dt)
    ka = -np.arange(1, 8, dtype=dt).reshape(7, 1)
    _, w = attention(qa, ka, score="activated_general", align="hard", params=params, return_weights=True)
    assert np.array_equal(w[0], np.eye(7, dtype=dt)[0]), w
    m = np.ones(7, bool)
    m[:3] = False
    _, w = attention(qa, ka, score="activated_general", align="hard", params=params, attn_mask=m,
                     return_weights=True)
    assert np.array_equal(w[0], np.eye(7, dtype=dt)[3]), w


@pytest.mark.parametrize("score", SCORE_NAMES)
def test_hard_float32_with_clear_winners(rng, score):
    # scores with a clearly separated maximum: the float32 arg-max must be the reference's on every row
    q, k, v, params, mask = make_case(rng, CONFIGS[0], score, "float32", "bool", 3)
    s, visible = attention_scores_reference(q, k, v, score=score, params=params, attn_mask=mask)
    # move each row's best key further up: add 1 to the best visible score through the mask
    best = np.argmax(np.where(visible, s, -np.inf), axis=-1)
    fmask = np.where(mask, 0.0, -np.inf).astype(np.float32)
    np.put_along_axis(fmask, best[..., None], np.where(np.take_along_axis(mask, best[..., None], -1),
                                                       1.0, -np.inf).astype(np.float32), axis=-1)
    _, w, _, ref_w = check_attention(q, k, v, score=score, align="hard", params=params, attn_mask=fmask)
    assert np.array_equal(w.astype(np.float64), ref_w)


# ----------------------------------------------------------------------------- scores


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("align", ALIGN_NAMES)
def test_cosine_zero_vectors(rng, align, dtype):
    dt = np.dtype(dtype)
    q = randn(rng, (5, 8), dt)
    k = randn(rng, (7, 8), dt)
    q[1] = 0
    k[3] = 0
    v = randn(rng, (7, 3), dt)
    with np.errstate(all="ignore"):
        ctx, w, _, _ = check_attention(q, k, v, score="cosine", align=align)
    assert np.all(np.isfinite(ctx)) and np.all(np.isfinite(w))
    _, w = attention(q, k, v, score="cosine", align="sigmoid", return_weights=True)
    tol = 1e-6 if dt == F32 else 1e-14
    np.testing.assert_allclose(w[1], 0.5, rtol=0, atol=tol)  # sigmoid(0): score 0 for the zero query
    np.testing.assert_allclose(w[:, 3], 0.5, rtol=0, atol=tol)  # and for the zero key
    # softmax over all-zero scores: uniform
    _, w = attention(q, k, v, score="cosine", align="softmax", return_weights=True)
    np.testing.assert_allclose(w[1], 1 / 7, rtol=0, atol=tol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cosine_is_scale_invariant(rng, dtype):
    dt = np.dtype(dtype)
    q = randn(rng, (2, 7, 17), dt)
    k = randn(rng, (2, 9, 17), dt)
    v = randn(rng, (2, 9, 4), dt)
    _, w = attention(q, k, v, score="cosine", align="sigmoid", return_weights=True)
    _, w2 = attention(q * dt.type(8), k * dt.type(0.25), v, score="cosine", align="sigmoid",
                      return_weights=True)
    np.testing.assert_allclose(w, w2, rtol=0, atol=1e-6 if dt == F32 else 1e-14)
    # |cos| <= 1: sigmoid weights within [sigmoid(-1), sigmoid(1)]
    assert np.all(w >= 1 / (1 + math.e) - 1e-6) and np.all(w <= 1 / (1 + 1 / math.e) + 1e-6)


@pytest.mark.parametrize("dtype,scale", [("float32", 1e-22), ("float32", 1e-25), ("float32", 1e-40),
                                         ("float32", 1e25), ("float64", 1e-160), ("float64", 1e170)])
@pytest.mark.parametrize("align", ALIGN_NAMES)
def test_cosine_tiny_and_huge_vectors(rng, align, dtype, scale):
    # |q|^2 under- or overflows (to 0, a denormal, or Inf) for these vectors, yet the cosine is
    # well defined: the weights and context match the reference's, which squares in float64 or
    # exactly (float64 inputs near its limits: cosine is scale-invariant, the reference gets them
    # rescaled to 1)
    dt = np.dtype(dtype)
    q = randn(rng, (4, 8), dt)
    k = randn(rng, (5, 8), dt)
    v = randn(rng, (5, 3), dt)
    q[0, 1:] = 0  # one element only: its square is all there is
    with np.errstate(all="ignore"):
        ctx, w = attention(q * dt.type(scale), k * dt.type(scale), v, score="cosine", align=align,
                           return_weights=True)
    ref_ctx, ref_w = attention_reference(q, k, v, score="cosine", align=align)
    tol = 2e-6 if dt == F32 else 1e-12
    if dtype == "float32" and scale == 1e-40:
        tol = 1e-3  # denormal inputs: the small elements keep a few bits only
    if align == "hard":  # one-hot on a key whose true score is within tol of the best
        s, _ = attention_scores_reference(q, k, v, score="cosine")
        assert np.all(np.sum(w == 1, axis=-1) == 1) and np.all((w == 0) | (w == 1)), w
        picked = s[np.arange(len(s)), np.argmax(w, axis=-1)]
        assert np.all(picked >= s.max(axis=-1) - 10 * tol), (picked, s.max(axis=-1))
        return
    np.testing.assert_allclose(w, ref_w, rtol=0, atol=tol)
    np.testing.assert_allclose(ctx, ref_ctx, rtol=0, atol=tol * 10)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("align", ALIGN_NAMES)
def test_concat_is_additive(rng, align, dtype):
    q, k, v, params, mask = make_case(rng, CONFIGS[1], "additive", dtype, "bool", 0)
    a = attention(q, k, v, score="additive", align=align, params=params, attn_mask=mask, return_weights=True)
    c = attention(q, k, v, score="concat", align=align, params=params, attn_mask=mask, return_weights=True)
    assert np.array_equal(a[0], c[0]) and np.array_equal(a[1], c[1])
    check_attention(q, k, v, score="concat", align=align, params=params, attn_mask=mask)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("score", ["general", "biased_general", "activated_general", "additive"])
def test_default_params(rng, score, dtype):
    """Optional params left out equal their documented defaults (b = 0, act = "tanh")."""
    dt = np.dtype(dtype)
    q = randn(rng, (7, 5), dt)
    k = randn(rng, (9, 3), dt)
    v = randn(rng, (9, 4), dt)
    params = make_params(rng, score, 5, 3, 6, dt, variant=4)
    params.pop("act", None)
    params.pop("b", None) if score != "biased_general" else None
    c1, w1, _, _ = check_attention(q, k, v, score=score, align="softmax", params=params)
    full = dict(params)
    if score == "activated_general":
        full.update(b=dt.type(0), act="tanh")
    elif score == "additive":
        full.update(b=np.zeros(6, dt), act="tanh")
    c2, w2 = attention(q, k, v, score=score, align="softmax", params=full, return_weights=True)
    tol = 1e-6 if dt == F32 else 1e-14
    np.testing.assert_allclose(w1, w2, rtol=0, atol=tol)
    np.testing.assert_allclose(c1, c2, rtol=0, atol=tol * max(1.0, float(np.max(np.abs(c1)))))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_python_float_bias_keeps_the_dtype(rng, dtype):
    """params are "NumPy arrays / values": a Python float b is a weak scalar (NEP 50,
    np.result_type(np.float32, 0.5) is float32) and must not turn a float32 call into float64."""
    dt = np.dtype(dtype)
    q = randn(rng, (7, 5), dt)
    k = randn(rng, (9, 3), dt)
    params = {"W": randn(rng, (3, 5), dt, 0.5), "b": 0.25, "act": "tanh"}
    ctx, w = attention(q, k, score="activated_general", params=params, return_weights=True)
    assert ctx.dtype == dt and w.dtype == dt, (ctx.dtype, w.dtype)
    check_attention(q, k, score="activated_general", params=params)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_general_with_identity_is_dot(rng, dtype):
    dt = np.dtype(dtype)
    q = randn(rng, (2, 7, 16), dt, 0.5)
    k = randn(rng, (2, 9, 16), dt, 0.5)
    v = randn(rng, (2, 9, 3), dt)
    tol = 1e-5 if dt == F32 else 1e-13
    c1, w1 = attention(q, k, v, score="dot", align="softmax", return_weights=True)
    c2, w2 = attention(q, k, v, score="general", align="softmax", params={"W": np.eye(16, dtype=dt)},
                       return_weights=True)
    np.testing.assert_allclose(w1, w2, rtol=0, atol=tol)
    np.testing.assert_allclose(c1, c2, rtol=0, atol=tol * max(1.0, float(np.max(np.abs(c1)))))
    c3, w3 = attention(q, k, v, score="biased_general", align="softmax",
                       params={"W": np.eye(16, dtype=dt), "b": np.zeros(16, dt)}, return_weights=True)
    np.testing.assert_allclose(w1, w3, rtol=0, atol=tol)
    c4, w4 = attention(q, k, v, score="activated_general", align="softmax",
                       params={"W": np.eye(16, dtype=dt), "act": "identity"}, return_weights=True)
    np.testing.assert_allclose(w1, w4, rtol=0, atol=tol)


# ----------------------------------------------------------------------------- activation accuracy


def _activation_probe(dt):
    """Scalar queries x (exact in dt), one key k=1 and one key k=0: with W = [[1]] and b = 0 the
    scores of "activated_general" are exactly act(x) and act(0)."""
    xs = np.concatenate([np.linspace(-20, 20, 801), np.linspace(-40, 40, 161), np.logspace(-5, -3, 25),
                         -np.logspace(-5, -3, 25), np.linspace(-1.5, 1.5, 301)])
    q = xs.astype(dt)[:, None]
    k = np.array([[1.0], [0.0]], dt)
    v = np.array([[1.0], [0.0]], dt)  # the context is the first key's weight
    return q, k, v


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("align", ["sigmoid", "softmax"])
@pytest.mark.parametrize("act", ACT_NAMES)
def test_activation_accuracy(act, align, dtype):
    """Weights sigmoid(act(x)) (align="sigmoid") and 1 / (1 + exp(act(0) - act(x))) (softmax),
    x in [-40, 40] and near 0, to a relative error of 1e-6 in float32 for moderate exponent
    arguments z (z = act(x) for sigmoid, act(x) - act(0) for softmax), growing by 1.2e-7 * |z| (two
    float32 roundings of z: exp's sensitivity to its argument, 3.4e-6 at |z| = 20).  An activation,
    sigmoid or exp with a relative error of 1e-4 fails here."""
    dt = np.dtype(dtype)
    q, k, v = _activation_probe(dt)
    params = {"W": np.ones((1, 1), dt), "act": act}
    ctx, w = attention(q, k, v, score="activated_general", align=align, params=params, return_weights=True)
    ref_ctx, ref_w = attention_reference(q, k, v, score="activated_general", align=align, params=params)
    s, _ = attention_scores_reference(q, k, v, score="activated_general", params=params)
    assert w.dtype == dt and ctx.dtype == dt
    z = np.abs(s) if align == "sigmoid" else np.abs(s[:, :1] - s[:, 1:])
    rtol = 1e-6 + 1.2e-7 * z if dt == F32 else 1e-12 + 1e-15 * z
    w64 = w.astype(np.float64)
    relerr = np.abs(w64 - ref_w) / np.abs(ref_w)
    ratio = relerr / rtol
    worst = int(np.argmax(ratio))
    assert ratio.max() <= 1, (f"{act}/{align}: weight relative error {relerr.flat[worst]:.3g} > "
                              f"{np.broadcast_to(rtol, relerr.shape).flat[worst]:.3g} at x = "
                              f"{float(q[worst // 2, 0])!r}: got {w64.flat[worst]!r}, want {ref_w.flat[worst]!r}")
    c64 = ctx.astype(np.float64)
    crel = np.abs(c64 - ref_ctx) / np.abs(ref_ctx)
    assert np.all(crel <= np.broadcast_to(rtol, relerr.shape)[:, :1]), crel.max()


@pytest.mark.parametrize("act", ["tanh", "sigmoid"])
def test_additive_broadcast_keys_are_one_key_set(rng, act):
    """Keys broadcast over batch dims are exponentiated once per distinct key set (the product
    form's key buffer is no larger than the keys): the same answers, bit for bit, as with the keys
    copied out per batch, including a key set out of range (one key of 60) that takes the
    per-term path while the others do not."""
    q = randn(rng, (3, 4, 33, 16), F32)
    k = randn(rng, (4, 50, 16), F32)  # broadcast over the first batch dim
    k[2, 7, 3] = 60
    v = randn(rng, (4, 50, 5), F32)
    params = {"W_q": randn(rng, (24, 16), F32, 0.25), "W_k": randn(rng, (24, 16), F32, 0.25),
              "w": randn(rng, (24,), F32, 0.2), "act": act}
    params["W_k"][0, 3] = 1  # the large key value reaches projected key 0
    got, gw = attention(q, k, v, score="additive", align="softmax", params=params, return_weights=True)
    kc, vc = np.ascontiguousarray(np.broadcast_to(k, (3,) + k.shape)), np.ascontiguousarray(np.broadcast_to(v, (3,) + v.shape))
    want, ww = attention(q, kc, vc, score="additive", align="softmax", params=params, return_weights=True)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(gw, ww)
    check_attention(q, k, v, score="additive", align="softmax", params=params)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("align", ["softmax", "sigmoid", "sparsemax"])
@pytest.mark.parametrize("act", ACT_NAMES)
def test_activation_wide_range(rng, act, align, dtype):
    """Random pre-activations spanning about [-20, 20] and near 0 (|x| ~ 1e-4)."""
    dt = np.dtype(dtype)
    q = randn(rng, (2, 33, 17), dt, 17 ** -0.25)
    k = randn(rng, (2, 65, 9), dt, 9 ** -0.25)
    v = randn(rng, (2, 65, 5), dt)
    for wscale, b in ((8.0, 0.0), (1e-4, 0.0), (1.0, -3.0)):
        params = {"W": randn(rng, (9, 17), dt, wscale * (9 * 17) ** -0.25), "b": dt.type(b), "act": act}
        check_attention(q, k, v, score="activated_general", align=align, params=params)
    # and the additive score, whose activation is taken on (Lq, Lk, da) pre-activations
    for wscale in (6.0, 1e-4):
        params = {"W_q": randn(rng, (17, 17), dt, wscale * 17 ** -0.25),
                  "W_k": randn(rng, (17, 9), dt, wscale * 9 ** -0.25),
                  "w": randn(rng, (17,), dt, 2 / math.sqrt(17)), "act": act}
        check_attention(q, k, v, score="additive", align=align, params=params)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("d", [1, 64])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 20.0, 60.0])
@pytest.mark.parametrize("act", ["tanh", "sigmoid"])
def test_additive_score_accuracy(rng, act, scale, d, dtype):
    """Additive tanh / sigmoid scores s = sum_a w[a] act(q[a] + k[a]) within 1e-6 * sum|w| of the
    exact sum in float32 (the product form's terms are within 4e-7 each; summing adds the rest),
    1e-14 in float64, one term (d = 1) and many. Pre-activations run from near 0 to the edge of
    the product form's range (scale 20, clipped to +-39.5: q = -k large, where e^2q e^2k must be
    accurate) and past it, where act is evaluated per term: in every block at scale 60, and below
    that in the first query block (one query element of 45) and all of batch 1 (one key element of
    -50). The projections are identities, so the kernel sees q and k exactly; the scores come back
    through align="sigmoid" as logits of weights in [0.2, 0.8], which their own rounding moves by
    < 2e-7."""
    dt = np.dtype(dtype)
    lq, lk = (700, 1001) if d == 1 else (70, 101)  # d = 1: many pairs q = -k at scale 20
    q = randn(rng, (2, lq, d), dt, scale)
    k = randn(rng, (2, lk, d), dt, scale)
    if scale == 20.0:
        q, k = np.clip(q, -39.5, 39.5), np.clip(k, -39.5, 39.5)
    w = np.sign(randn(rng, (1,), dt)) if d == 1 else randn(rng, (d,), dt, 0.5 / math.sqrt(d))
    q[0, 3, -1], k[1, 7, 0] = 45, -50
    eye = np.eye(d, dtype=dt)
    params = {"W_q": eye, "W_k": eye, "w": w, "act": act}
    _, weights = attention(q, k, k, score="additive", align="sigmoid", params=params, return_weights=True)
    x = q.astype(np.float64)[:, :, None, :] + k.astype(np.float64)[:, None, :, :]
    f = np.tanh(x) if act == "tanh" else 0.5 * (1 + np.tanh(x / 2))
    exact = f @ w.astype(np.float64)
    w64 = weights.astype(np.float64)
    got = np.log(w64) - np.log1p(-w64)
    read = (w64 > 0.2) & (w64 < 0.8)
    assert read.mean() > 0.3
    l1 = float(np.abs(w.astype(np.float64)).sum())
    tol = 1e-6 * l1 + 4e-7 if dt == F32 else 1e-14 * l1 + 1e-15
    err = np.abs(got - exact)[read]
    assert err.max() <= tol, f"{act} at scale {scale}: score error {err.max():.3g} > {tol:.3g} (sum|w| = {l1:.3g})"


# ----------------------------------------------------------------------------- shapes and defaults


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("align", ALIGN_NAMES)
def test_values_default_to_keys(rng, align, dtype):
    dt = np.dtype(dtype)
    q = randn(rng, (2, 7, 17), dt, in_scale(17))
    k = randn(rng, (2, 9, 17), dt, in_scale(17))
    ctx, w, _, _ = check_attention(q, k, None, align=align)
    assert ctx.shape == (2, 7, 17)
    ctx2, w2 = attention(q, k, k, align=align, return_weights=True)
    np.testing.assert_allclose(w, w2, rtol=0, atol=1e-6 if dt == F32 else 1e-14)
    np.testing.assert_allclose(ctx, ctx2, rtol=0, atol=1e-6 if dt == F32 else 1e-14)
    # keyword form and the general score with dk != dq
    params = {"W": randn(rng, (5, 17), dt, 0.3)}
    k5 = randn(rng, (2, 9, 5), dt)
    ctx, _, _, _ = check_attention(q, k5, score="general", align=align, params=params)
    assert ctx.shape == (2, 7, 5)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("align", ALIGN_NAMES)
@pytest.mark.parametrize("score", ["scaled_dot", "additive"])
def test_one_dim_query(rng, score, align, dtype):
    dt = np.dtype(dtype)
    q = randn(rng, (17,), dt, in_scale(17))
    k = randn(rng, (9, 17), dt, in_scale(17))
    v = randn(rng, (9, 5), dt)
    params = make_params(rng, score, 17, 17, 6, dt)
    ctx, w, _, _ = check_attention(q, k, v, score=score, align=align, params=params)
    assert ctx.shape == (5,) and w.shape == (9,)
    ctx2, w2 = attention(q[None], k, v, score=score, align=align, params=params, return_weights=True)
    tol = 1e-6 if dt == F32 else 1e-14
    np.testing.assert_allclose(w, w2[0], rtol=0, atol=tol)
    np.testing.assert_allclose(ctx, ctx2[0], rtol=0, atol=tol * max(1.0, float(np.max(np.abs(ctx)))))
    mask = np.array([True, False, True, True, False, True, True, True, False])
    ctx, w, _, _ = check_attention(q, k, v, score=score, align=align, params=params, attn_mask=mask)
    assert np.all(w[~mask] == 0)
    # a 1-D query against batched keys: one query per batch element
    kb = randn(rng, (3, 9, 17), dt, in_scale(17))
    vb = randn(rng, (3, 9, 5), dt)
    ctx, w, _, _ = check_attention(q, kb, vb, score=score, align=align, params=params)
    assert ctx.shape == (3, 5) and w.shape == (3, 9)


def test_backend_cpu(rng):
    q = randn(rng, (7, 16))
    k = randn(rng, (9, 16))
    c1 = attention(q, k, backend="cpu")
    c2 = attention(q, k)
    np.testing.assert_array_equal(c1, c2)


# ----------------------------------------------------------------------------- dtypes


HALF_CASES = [("scaled_dot", "softmax"), ("scaled_dot", "sparsemax"), ("cosine", "sigmoid"),
              ("additive", "softmax"), ("general", "sparsemax"), ("activated_general", "sigmoid")]


@pytest.mark.parametrize("score,align", HALF_CASES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_round_trip(rng, dtype, score, align):
    if dtype == "bfloat16" and BF16 is None:
        pytest.skip("ml_dtypes not installed")
    dt = F16 if dtype == "float16" else BF16
    for mask_kind in ("none", "bool"):
        q, k, v, params, mask = make_case(rng, CONFIGS[0], score, dt, mask_kind, 1)
        ctx, w, _, _ = check_attention(q, k, v, score=score, align=align, params=params, attn_mask=mask)
        assert ctx.dtype == dt and w.dtype == dt


def test_mixed_dtypes_promote(rng):
    q = randn(rng, (2, 7, 16), np.float32)
    k = randn(rng, (2, 9, 16), np.float64)
    v = randn(rng, (2, 9, 4), np.float64)
    ctx, w, _, _ = check_attention(q, k, v, align="softmax", wtol=2e-4, ctol=2e-4)
    assert ctx.dtype == F64 and w.dtype == F64
    ctx, w, _, _ = check_attention(q.astype(np.float16), k.astype(np.float32), v.astype(np.float32),
                                   align="sparsemax", wtol=2e-4, ctol=2e-4)
    assert ctx.dtype == F32 and w.dtype == F32


# ----------------------------------------------------------------------------- bad input

_Q = np.zeros((2, 5), np.float32) + 0.5  # Lq=2, dq=5
_K = np.zeros((7, 3), np.float32) + 0.25  # Lk=7, dk=3
_V = np.zeros((7, 11), np.float32) + 1.0  # dv=11
_W = np.ones((3, 5), np.float32)  # (dk, dq)
_ADD = {"W_q": np.ones((12, 5), np.float32), "W_k": np.ones((12, 3), np.float32), "w": np.ones(12, np.float32)}


def _with(d, **kw):
    d = dict(d)
    for key, val in kw.items():
        if val is None:
            d.pop(key)
        else:
            d[key] = val
    return d


BAD_INPUT = [
    # (id, kwargs for attention(query, keys, values, **kw) with query/keys/values defaulted, error, words)
    ("unknown score", dict(score="bogus_score"), ValueError, ["bogus_score", "scaled_dot", "additive"]),
    ("unknown align", dict(align="bogus_align", q=np.ones((2, 3), np.float32)), ValueError, ["bogus_align", "softmax", "sparsemax", "hard"]),
    ("unknown act activated", dict(score="activated_general", params={"W": _W, "act": "bogus_act"}),
     ValueError, ["bogus_act", "tanh", "relu", "identity"]),
    ("unknown act additive", dict(score="additive", params=_with(_ADD, act="bogus_act")),
     ValueError, ["bogus_act", "tanh", "relu", "identity"]),
    ("general without W", dict(score="general"), ValueError, ["W"]),
    ("general empty params", dict(score="general", params={}), ValueError, ["W"]),
    ("biased_general without b", dict(score="biased_general", params={"W": _W}), ValueError, ["b"]),
    ("activated_general without W", dict(score="activated_general", params={"act": "tanh"}), ValueError, ["W"]),
    ("additive without W_q", dict(score="additive", params=_with(_ADD, W_q=None)), ValueError, ["W_q"]),
    ("additive without W_k", dict(score="additive", params=_with(_ADD, W_k=None)), ValueError, ["W_k"]),
    ("additive without w", dict(score="additive", params=_with(_ADD, w=None)), ValueError, ["w"]),
    ("general extra key", dict(score="general", params={"W": _W, "foo_key": _W}), ValueError, ["foo_key"]),
    ("dot with W", dict(score="dot", q=np.ones((2, 3), np.float32), params={"W": _W}), ValueError, ["W"]),
    ("additive extra key", dict(score="additive", params=_with(_ADD, W=_W)), ValueError, ["W"]),
    ("general W shape", dict(score="general", params={"W": np.ones((9, 5), np.float32)}), ValueError, [9]),
    ("general W transposed", dict(score="general", params={"W": np.ones((5, 3), np.float32)}), ValueError,
     [5, 3]),
    ("biased_general b length", dict(score="biased_general", params={"W": _W, "b": np.ones(8, np.float32)}),
     ValueError, [8]),
    ("activated_general b not scalar",
     dict(score="activated_general", params={"W": _W, "b": np.ones(16, np.float32)}), ValueError, [16]),
    ("additive da mismatch", dict(score="additive", params=_with(_ADD, W_k=np.ones((14, 3), np.float32))),
     ValueError, [12, 14]),
    ("additive w length", dict(score="additive", params=_with(_ADD, w=np.ones(13, np.float32))),
     ValueError, [13]),
    ("additive b length", dict(score="additive", params=_with(_ADD, b=np.ones(15, np.float32))),
     ValueError, [15]),
    ("additive W_q columns", dict(score="additive", params=_with(_ADD, W_q=np.ones((12, 6), np.float32))),
     ValueError, [6]),
    ("dot dq != dk", dict(score="dot", q=np.ones((2, 11), np.float32), k=np.ones((7, 13), np.float32)),
     ValueError, [11, 13]),
    ("scaled_dot dq != dk", dict(score="scaled_dot", q=np.ones((2, 11), np.float32),
                                 k=np.ones((7, 13), np.float32)), ValueError, [11, 13]),
    ("cosine dq != dk", dict(score="cosine", q=np.ones((2, 11), np.float32), k=np.ones((7, 13), np.float32)),
     ValueError, [11, 13]),
    ("keys/values length", dict(score="general", params={"W": _W}, v=np.ones((8, 11), np.float32)),
     ValueError, [7, 8]),
    ("batch not broadcastable", dict(q=np.ones((4, 2, 3), np.float32), k=np.ones((6, 7, 3), np.float32),
                                     v=np.ones((6, 7, 11), np.float32)), ValueError, [4, 6]),
    ("bool mask not broadcastable", dict(score="general", params={"W": _W}, attn_mask=np.ones((2, 9), bool)),
     ValueError, [9]),
    ("float mask not broadcastable", dict(score="general", params={"W": _W},
                                          attn_mask=np.zeros((2, 9), np.float32)), ValueError, [9]),
    ("int query", dict(score="general", params={"W": _W}, q=np.ones((2, 5), np.int32)), TypeError, []),
    ("complex keys", dict(score="general", params={"W": _W}, k=np.ones((7, 3), np.complex64)), TypeError, []),
    ("object values", dict(score="general", params={"W": _W}, v=np.ones((7, 11), object)), TypeError, []),
    ("int W", dict(score="general", params={"W": np.ones((3, 5), np.int64)}), TypeError, []),
    ("int additive w", dict(score="additive", params=_with(_ADD, w=np.ones(12, np.int32))), TypeError, []),
]


@pytest.mark.parametrize("case", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input(case):
    _, kw, exc, words = case
    kw = dict(kw)
    q = kw.pop("q", _Q)
    k = kw.pop("k", _K)
    v = kw.pop("v", _V)
    with pytest.raises(exc, match=all_of(*words) if words else None):
        attention(q, k, v, **kw)


# ----------------------------------------------------------------------------- output_layer


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_output_layer(rng, dtype):
    dt = np.dtype(dtype)
    ctx = randn(rng, (2, 7, 17), dt)
    weight = randn(rng, (5, 17), dt, 0.5)
    bias = randn(rng, (5,), dt)
    tol = 1e-5 if dt == F32 else 1e-12
    for b in (bias, None):
        y = fastattn.output_layer(ctx, weight, b)
        ref = output_layer_reference(ctx, weight, b)
        assert isinstance(y, np.ndarray) and y.dtype == dt and y.shape == (2, 7, 5)
        np.testing.assert_allclose(y, ref, rtol=0, atol=tol)
        np.testing.assert_allclose(y.astype(np.float64).sum(axis=-1), 1.0, rtol=0, atol=tol)
        assert np.all(y >= 0)
    assert fastattn.output_layer(ctx, weight[:0], bias[:0]).shape == (2, 7, 0)  # no outputs
    y = fastattn.output_layer(ctx[0, 0], weight, bias)  # one context vector
    assert y.shape == (5,)
    np.testing.assert_allclose(y, output_layer_reference(ctx[0, 0], weight, bias), rtol=0, atol=tol)
    # large logits do not overflow
    y = fastattn.output_layer(ctx * dt.type(100), weight, bias)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y, output_layer_reference(ctx * dt.type(100), weight, bias), rtol=0,
                               atol=1e-4 if dt == F32 else 1e-10)


def test_output_layer_after_attention(rng):
    q = randn(rng, (3, 7, 16))
    k = randn(rng, (3, 9, 16))
    v = randn(rng, (3, 9, 8))
    ctx = attention(q, k, v)
    weight = randn(rng, (4, 8))
    y = fastattn.output_layer(ctx, weight)
    ref_ctx, _ = attention_reference(q, k, v, score="scaled_dot", align="softmax")
    np.testing.assert_allclose(y, output_layer_reference(ref_ctx, weight), rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------- consistency


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [((7, 16), (9, 16), (9, 5)), ((3, 7, 16), (3, 65, 16), (3, 65, 17)),
                                   ((1, 16), (1, 16), (1, 3)), ((2, 65, 64), (2, 7, 64), (2, 7, 64))])
def test_matches_scaled_dot_product_attention(rng, shape, dtype):
    dt = np.dtype(dtype)
    q = randn(rng, shape[0], dt)
    k = randn(rng, shape[1], dt)
    v = randn(rng, shape[2], dt)
    tol = 2e-4 if dt == F32 else 1e-10
    for mask in (None, make_mask(rng, "bool", shape[0][:-1] + (shape[1][-2],))):
        a = attention(q, k, v, score="scaled_dot", align="softmax", attn_mask=mask)
        b = sdpa(q, k, v, attn_mask=mask)
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=0, atol=tol * max(1.0, float(np.max(np.abs(b)))))


# ----------------------------------------------------------------------------- the reference itself


def test_reference_sparsemax_is_the_simplex_projection(rng):
    """KKT conditions of argmin |p - z|^2 over the simplex: p = max(z - tau, 0), sum p = 1."""
    from reference_attention import sparsemax

    z = 3 * rng.standard_normal((50, 13))
    visible = rng.random((50, 13)) < 0.7
    visible[0] = False
    p = sparsemax(z, visible)
    assert np.all(p[0] == 0)
    for i in range(1, 50):
        if not visible[i].any():
            assert np.all(p[i] == 0)
            continue
        zi, pi = z[i][visible[i]], p[i][visible[i]]
        assert np.all(p[i][~visible[i]] == 0)
        assert abs(pi.sum() - 1) < 1e-12 and np.all(pi >= 0)
        tau = np.mean(zi[pi > 0] - pi[pi > 0])
        np.testing.assert_allclose(zi[pi > 0] - pi[pi > 0], tau, atol=1e-12)
        assert np.all(zi[pi == 0] <= tau + 1e-12)


def test_reference_special_cases():
    q = np.array([[1.0]])
    k = np.array([[1.0], [3.0], [3.0], [2.0]])
    _, w = attention_reference(q, k, score="dot", align="hard")
    assert np.array_equal(w, [[0, 1, 0, 0]])
    _, w = attention_reference(q, k, score="dot", align="hard", attn_mask=np.array([1, 0, 1, 1], bool))
    assert np.array_equal(w, [[0, 0, 1, 0]])
    ctx, w = attention_reference(q, k, score="dot", align="softmax", attn_mask=np.zeros(4, bool))
    assert np.all(w == 0) and np.all(ctx == 0)
    _, w = attention_reference(np.zeros((1, 2)), np.array([[0.0, 0.0], [1.0, 2.0]]), score="cosine",
                               align="sigmoid")
    assert np.array_equal(w, [[0.5, 0.5]])


def test_single_query_mask_is_shaped_like_its_weights(rng):
    # A 1-D query's weights are (..., Lk); its mask takes that shape too.
    q = rng.standard_normal(5)
    k = rng.standard_normal((3, 6, 5))
    mask = rng.random((3, 6)) < 0.6
    mask[:, 0] = True
    ctx, w = fastattn.attention(q, k, attn_mask=mask, return_weights=True)
    assert ctx.shape == (3, 5) and w.shape == (3, 6)
    assert np.all(w[~mask] == 0)
    for b in range(3):
        ref_ctx, ref_w = fastattn.attention(q[None], k[b], attn_mask=mask[b][None], return_weights=True)
        np.testing.assert_allclose(w[b], ref_w[0], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(ctx[b], ref_ctx[0], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("mask", [True, np.True_, np.float32(0)])
def test_single_query_takes_a_0d_mask(rng, mask):
    q, k = rng.standard_normal(4), rng.standard_normal((5, 4))
    np.testing.assert_array_equal(fastattn.attention(q, k, attn_mask=mask), fastattn.attention(q, k))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("score", ["scaled_dot", "general", "biased_general"])
def test_sdpa_path_scales_and_projects_the_queries(rng, restore_threads, score, dtype, threads):
    # Without weights, these scores run on the SDPA kernel, which scales or projects (W q + b)
    # the queries itself as it packs them: on its row-wise (1-3 queries), narrow and blocked
    # paths, with split-KV (one long row, 2 threads), over several work items, and with head
    # dims that are not multiples of its register blocks.
    fastattn.set_num_threads(threads)
    dt = np.dtype(dtype)
    for lq, lk, dq, dk, dv in [(1, 1000, 129, 65, 3), (3, 300, 17, 63, 17), (7, 65, 65, 257, 1),
                               (200, 130, 63, 17, 65), (97, 7, 1, 3, 64)]:
        if score == "scaled_dot":
            dq = dk
        q = randn(rng, (2, lq, dq), dt, in_scale(dq))
        k = randn(rng, (2, lk, dk), dt, in_scale(dk))
        v = randn(rng, (2, lk, dv), dt)
        params = make_params(rng, score, dq, dk, 8, dt, 0) if score != "scaled_dot" else None
        ctx = attention(q, k, v, score=score, params=params)
        assert "sdpa" in fastattn.last_kernel(), fastattn.last_kernel()
        ref, _ = attention_reference(q, k, v, score=score, align="softmax", params=params)
        ctol = TOLERANCES[dtype_name(ctx.dtype)][1]
        err = float(np.max(np.abs(ctx.astype(np.float64) - ref)))
        assert err <= ctol * max(1.0, float(np.max(np.abs(ref)))), (lq, lk, dq, dk, dv, err)


@pytest.mark.parametrize("score", ["scaled_dot", "cosine", "general", "biased_general", "additive"])
def test_results_outlive_the_next_call(rng, score):
    # The scaled, normalised or projected queries and keys live in this thread's reusable scratch
    # buffers: a result must not share them, nor change when the next call reuses them.
    params = {"general": lambda: {"W": randn(rng, (16, 16))},
              "biased_general": lambda: {"W": randn(rng, (16, 16)), "b": randn(rng, (16,))},
              "additive": lambda: {"W_q": randn(rng, (8, 16)), "W_k": randn(rng, (8, 16)),
                                   "w": randn(rng, (8,))}}.get(score, lambda: None)
    first = [randn(rng, (3, 40, 16)), randn(rng, (3, 50, 16)), randn(rng, (3, 50, 8)), params()]
    out = fastattn.attention(*first[:3], score=score, params=first[3])
    kept = out.copy()
    second = [randn(rng, (3, 40, 16)), randn(rng, (3, 50, 16)), randn(rng, (3, 50, 8)), params()]
    out2 = fastattn.attention(*second[:3], score=score, params=second[3])
    assert np.array_equal(out, kept)
    assert not np.shares_memory(out, out2)
    assert np.array_equal(out, fastattn.attention(*first[:3], score=score, params=first[3]))


def test_sparsemax_threshold_over_a_large_support(rng):
    # Near-equal scores put thousands of keys in the support; the threshold tau comes from their
    # sum, which a plain float32 running sum left 1e-5 off (weights summing to 1 +- 1e-5).
    lk = 20000
    q = rng.standard_normal((2, 3, 16))
    q = (3e-4 * q / np.linalg.norm(q, axis=-1, keepdims=True)).astype(np.float32)
    k = rng.standard_normal((2, lk, 16)).astype(np.float32)
    v = (10 + rng.standard_normal((2, lk, 4))).astype(np.float32)
    out, w = fastattn.attention(q, k, v, score="dot", align="sparsemax", return_weights=True)
    ref, ref_w = attention_reference(q, k, v, score="dot", align="sparsemax")
    assert (w > 0).sum(-1).min() > 1000
    assert np.abs(w.astype(np.float64).sum(-1) - 1).max() < 1e-6
    np.testing.assert_allclose(w, ref_w, rtol=0, atol=1e-8)
    # The context sums thousands of weighted values near 10: float32 summation alone leaves about
    # 1e-6 of it (README's limits of the accuracy bounds); before the fix it was 1e-5.
    np.testing.assert_allclose(out, ref, rtol=3e-6, atol=0)
