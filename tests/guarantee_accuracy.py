"""The accuracy guarantee (README, "Guarantees"), measured: every entry point's error against the
float64 references, per dtype, as a multiple of what the guarantee allows.

test_guarantees.py runs ``main()`` in a fresh interpreter per CPU ISA (FASTATTN_CPU_ISA) and
checks that no ratio exceeds 1. Standalone: ``python tests/guarantee_accuracy.py [seed]`` prints
the ratios as JSON, the last line of its output.

The error of a result is ``max|got - ref| / max(1, max|ref|)`` over the entries whose reference is
finite; the entries the reference gives exactly (rows with no visible key: 0) must match exactly.
Errors grow with the size of the scores (a score s is rounded to about 2^-24 |s| in float32,
2^-53 |s| in float64, before it is exponentiated), so every bound is ``bound + per_score * S``,
S the largest |score| of the call (scaled, plus an additive mask; for vector_attention the
largest |w_ij|: the relation's group sum or the weight MLP's output, plus an additive mask; for
layer_norm the largest |mean| / std of a row, by which x - mean amplifies rounding). float32:
1e-6 + 1e-6 S, i.e. 1e-6 (1 + S); float64: 1e-12 + 1e-15 S; float16 and bfloat16 (computed in
float32): their own rounding of the result plus 1e-6 S. knn is exact: its bound is 0 (the
indices of the float64 brute force, ties to the lower index).

A new entry point adds a generator of Cases and a row in BOUNDS.
"""

import json
import sys
from typing import Callable, Dict, Iterator, NamedTuple

import numpy as np

import fastattn
from helpers import BF16, make_mask, randn
from reference import prepare as sdpa_prepare
from reference import sdpa_reference
from reference_attention import attention_reference, attention_scores_reference, output_layer_reference
from reference_layers import mha_reference
from reference_vector import knn_reference, vector_attention_reference, vector_logits_reference


class Case(NamedTuple):
    got: Dict[str, np.ndarray]  # quantity ("out", "lse", "weights", ...) -> fastattn's result
    want: Dict[str, np.ndarray]  # the same quantities from the float64 reference
    score_max: float  # S: the largest finite |score| the reference computed


# (entry point, storage dtype) -> bound: error <= bound + PER_SCORE[compute dtype] * S.
BOUNDS = {
    ("scaled_dot_product_attention", "float32"): 1e-6,
    ("scaled_dot_product_attention", "float64"): 1e-12,
    ("scaled_dot_product_attention", "float16"): 2e-3,
    ("scaled_dot_product_attention", "bfloat16"): 1.6e-2,
    ("attention", "float32"): 1e-6,  # softmax, sigmoid, sparsemax ("hard" is exact: see README)
    ("attention", "float64"): 1e-12,
    ("attention", "float16"): 2e-3,
    ("attention", "bfloat16"): 1.6e-2,
    ("output_layer", "float32"): 1e-6,
    ("output_layer", "float64"): 1e-12,
    ("output_layer", "float16"): 2e-3,
    ("output_layer", "bfloat16"): 1.6e-2,
    # out and weights; S is the largest |w_ij| (the weight MLP's output, plus an additive mask)
    ("vector_attention", "float32"): 1e-6,
    ("vector_attention", "float64"): 1e-12,
    ("vector_attention", "float16"): 2e-3,
    ("vector_attention", "bfloat16"): 1.6e-2,
    # exact: the indices of the float64 brute force (ties to the lower index); 0 allows no error
    ("knn", "float32"): 0.0,
    ("knn", "float64"): 0.0,
    ("knn", "float16"): 0.0,
    ("knn", "bfloat16"): 0.0,
    # layer_norm: S is the largest |mean| / std of a row (x - mean cancels that much)
    ("layer_norm", "float32"): 1e-6,
    ("layer_norm", "float64"): 1e-12,
    ("layer_norm", "float16"): 2e-3,
    ("layer_norm", "bfloat16"): 1.6e-2,
    # MultiHeadAttention: output and weights of the whole layer (projections included); S the
    # largest |score| of its attention
    ("MultiHeadAttention", "float32"): 1e-6,
    ("MultiHeadAttention", "float64"): 1e-12,
    ("MultiHeadAttention", "float16"): 2e-3,
    ("MultiHeadAttention", "bfloat16"): 1.6e-2,
    # float64 sin/cos rounded to the storage dtype
    ("sinusoidal_positional_encoding", "float32"): 1e-7,
    ("sinusoidal_positional_encoding", "float64"): 1e-12,
    ("sinusoidal_positional_encoding", "float16"): 1e-3,
    ("sinusoidal_positional_encoding", "bfloat16"): 8e-3,
}
# lse is returned in float32 for every storage dtype below float64: bounded as float32.
LSE_BOUND = {"float64": 1e-12}
# The score rounding's share per unit of S, by the dtype the scores are computed in (float16 and
# bfloat16 compute in float32).
PER_SCORE = {"float32": 1e-6, "float64": 1e-15, "float16": 1e-6, "bfloat16": 1e-6}


def _dtypes():
    return ["float32", "float64", "float16"] + (["bfloat16"] if BF16 is not None else [])


def _dt(name):
    return BF16 if name == "bfloat16" else np.dtype(name)


# ----------------------------------------------------------------------------- the entry points


def sdpa_cases(rng: np.random.Generator, dtype: str) -> Iterator[Case]:
    dt = _dt(dtype)
    mdt = np.float64 if dtype == "float64" else np.float32
    configs = [  # (batch, hq, hkv, lq, lk, d, dv, input scale, mask kind, causal)
        ((2,), 4, 2, 77, 91, 40, 24, 1.0, "none", "bottom_right"),
        ((), 2, 2, 1, 3000, 64, 64, 1.0, "none", False),  # decoding (split-KV with threads)
        ((), 2, 1, 130, 257, 128, 32, 2.0, "bool", True),
        ((), 1, 1, 200, 150, 256, 17, 0.5, "additive_inf", False),
        ((3,), 3, 3, 17, 33, 1, 9, 3.0, "additive", "bottom_right"),
        ((), 4, 1, 40, 600, 96, 96, 1.5, "none", True),
    ]
    for batch, hq, hkv, lq, lk, d, dv, sc, mask_kind, causal in configs:
        q = randn(rng, batch + (hq, lq, d), dt, sc)
        k = randn(rng, batch + (hkv, lk, d), dt, sc)
        v = randn(rng, batch + (hkv, lk, dv), dt)
        mask = make_mask(rng, mask_kind, (hq, lq, lk), mdt)
        out, lse = fastattn.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, causal=causal, return_lse=True)
        ref, ref_lse = sdpa_reference(q, k, v, attn_mask=mask, causal=causal)
        q64, k64, _, visible, additive, _ = sdpa_prepare(q, k, v, attn_mask=mask, causal=causal)
        s = q64.astype(np.float64) @ np.swapaxes(k64.astype(np.float64), -1, -2) / np.sqrt(d)
        if additive is not None:
            s = s + np.where(visible, additive, 0.0)
        yield Case({"out": out, "lse": lse}, {"out": ref, "lse": ref_lse},
                   float(np.max(np.abs(s[visible]), initial=0.0)))


def _attention_params(rng, score, dq, dk, da, dt):
    def r(shape, scale):
        return randn(rng, shape, dt, scale)

    if score in ("general", "biased_general", "activated_general"):
        p = {"W": r((dk, dq), (dk * dq) ** -0.25)}
        if score == "biased_general":
            p["b"] = r((dk,), dk ** -0.25)
        if score == "activated_general":
            p["act"] = "tanh"
        return p
    if score == "additive":
        return {"W_q": r((da, dq), dq ** -0.25), "W_k": r((da, dk), dk ** -0.25),
                "w": r((da,), 2.0 / np.sqrt(da)), "b": r((da,), 0.5)}
    return None


def attention_cases(rng: np.random.Generator, dtype: str) -> Iterator[Case]:
    dt = _dt(dtype)
    scores = ["dot", "scaled_dot", "cosine", "general", "biased_general", "activated_general", "additive"]
    for i, score in enumerate(scores):
        for align in ("softmax", "sigmoid", "sparsemax"):
            lq, lk, dq = [(7, 65, 17), (65, 7, 64), (1, 300, 3), (33, 129, 1)][(i + len(align)) % 4]
            dk = dq if score in ("dot", "scaled_dot", "cosine") else 9
            q = randn(rng, (2, lq, dq), dt, 1.5 * dq ** -0.25)
            k = randn(rng, (2, lk, dk), dt, 1.5 * dk ** -0.25)
            v = randn(rng, (2, lk, 5), dt)
            params = _attention_params(rng, score, dq, dk, 16, dt)
            mask = make_mask(rng, ["none", "bool", "additive_inf"][i % 3], (lq, lk),
                             np.float64 if dtype == "float64" else np.float32)
            ctx, w = fastattn.attention(q, k, v, score=score, align=align, params=params, attn_mask=mask,
                                        return_weights=True)
            ctx_only = fastattn.attention(q, k, v, score=score, align=align, params=params, attn_mask=mask)
            ref_ctx, ref_w = attention_reference(q, k, v, score=score, align=align, params=params,
                                                 attn_mask=mask)
            s, visible = attention_scores_reference(q, k, v, score=score, params=params, attn_mask=mask)
            yield Case({"context": ctx, "weights": w, "context (no weights)": ctx_only},
                       {"context": ref_ctx, "weights": ref_w, "context (no weights)": ref_ctx},
                       float(np.max(np.abs(s[visible]), initial=0.0)))


def output_layer_cases(rng: np.random.Generator, dtype: str) -> Iterator[Case]:
    dt = _dt(dtype)
    for n, dv, n_out in [(5, 33, 17), (1, 1, 3), (64, 256, 1000)]:
        c = randn(rng, (2, n, dv), dt)
        w = randn(rng, (n_out, dv), dt, 2.0 / np.sqrt(dv))
        b = randn(rng, (n_out,), dt)
        y = fastattn.output_layer(c, w, b)
        logits = c.astype(np.float64) @ w.astype(np.float64).T + b.astype(np.float64)
        yield Case({"probabilities": y}, {"probabilities": output_layer_reference(c, w, b)},
                   float(np.max(np.abs(logits))))


def vector_attention_cases(rng: np.random.Generator, dtype: str) -> Iterator[Case]:
    dt = _dt(dtype)
    mdt = np.float64 if dtype == "float64" else np.float32
    configs = [  # (form, C, G, relation, sharing, pos, MLP hidden (0: none), mask kind)
        ("dense", 64, 8, "subtract", "blocked", True, 8, "none"),
        ("dense", 24, 6, "multiply", "strided", False, 0, "bool"),
        ("dense", 3, 3, "add", "blocked", True, 0, "additive_inf"),
        ("dense", 67, 1, "subtract", "strided", False, 5, "additive"),
        ("neighbour", 64, 8, "subtract", "blocked", True, 8, "none"),  # the PTv2 layer (tiled path)
        ("neighbour", 16, 16, "add", "strided", True, 0, "bool"),
        ("neighbour", 32, 4, "multiply", "blocked", False, 16, "none"),
        ("neighbour", 5, 5, "subtract", "blocked", False, 0, "additive_inf"),
    ]
    for form, c, g, relation, sharing, pos, hidden, mask_kind in configs:
        if form == "dense":
            lq, lk, batch = 9, 150, (2,)
            q, k, v = randn(rng, batch + (lq, c), dt), randn(rng, batch + (lk, c), dt), randn(rng, batch + (lk, c), dt)
            kw = {}
            p_shape = batch + (lq, lk, c)
        else:
            n, m, s = 40, 60, 16
            q, k, v = randn(rng, (n, c), dt), randn(rng, (m, c), dt), randn(rng, (m, c), dt)
            index = rng.integers(-1, m, (n, s))
            index[3] = -1  # a query with no neighbour
            kw = {"index": index}
            lq, lk, p_shape = n, s, (n, s, c)
        if pos:
            kw["pos"] = randn(rng, p_shape, dt, 0.5)
        if hidden:
            kw["weight_mlp"] = (randn(rng, (hidden, c), dt, 2.0 / np.sqrt(c)), randn(rng, (hidden,), dt, 0.5),
                                randn(rng, (g, hidden), dt, 2.0 / np.sqrt(hidden)), randn(rng, (g,), dt, 0.5))
        else:
            kw["groups"] = g
        mask = make_mask(rng, mask_kind, (lq, lk), mdt)
        if mask is not None:
            kw["attn_mask"] = mask
        out, w = fastattn.vector_attention(q, k, v, relation=relation, sharing=sharing, return_weights=True, **kw)
        out_only = fastattn.vector_attention(q, k, v, relation=relation, sharing=sharing, **kw)
        ref, ref_w = vector_attention_reference(q, k, v, relation=relation, sharing=sharing, **kw)
        logits, visible = vector_logits_reference(q, k, v, relation=relation, sharing=sharing, **kw)
        s_max = float(np.max(np.abs(logits[np.broadcast_to(visible, logits.shape[:-1])]), initial=0.0))
        yield Case({"out": out, "weights": w, "out (no weights)": out_only},
                   {"out": ref, "weights": ref_w, "out (no weights)": ref}, s_max)


def knn_cases(rng: np.random.Generator, dtype: str) -> Iterator[Case]:
    dt = _dt(dtype)
    for n, d, k, nq in [(2000, 3, 16, None), (300, 7, 9, 50), (5, 2, 8, None), (500, 1, 4, 20)]:
        pts = randn(rng, (n, d), dt)
        qs = None if nq is None else randn(rng, (nq, d), dt)
        grid = rng.integers(0, 5, (400, 2)).astype(dt)  # many equal distances: ties to the lower index
        yield Case({"index": fastattn.knn(pts, k, queries=qs), "index (ties)": fastattn.knn(grid, 12)},
                   {"index": knn_reference(pts, k, qs), "index (ties)": knn_reference(grid, 12)}, 0.0)


def layer_norm_cases(rng: np.random.Generator, dtype: str) -> Iterator[Case]:
    dt = _dt(dtype)
    for shape, affine, offset in [((4, 7, 384), True, 0.0), ((33, 1024), False, 50.0), ((5, 3), True, 0.0),
                                  ((2, 64), True, -1e3)]:
        x = randn(rng, shape, dt) + np.asarray(offset).astype(dt)  # an offset: the mean matters
        w, b = (randn(rng, shape[-1:], dt), randn(rng, shape[-1:], dt)) if affine else (None, None)
        x64 = x.astype(np.float64)
        ref = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
        if affine:
            ref = ref * w.astype(np.float64) + b.astype(np.float64)
        # S: the row's |mean| / std, by which float32's rounding of x - mean is amplified
        cond = np.abs(x64.mean(-1)) / np.sqrt(x64.var(-1) + 1e-5)
        yield Case({"out": fastattn.layer_norm(x, w, b)}, {"out": ref}, float(cond.max()))


def mha_cases(rng: np.random.Generator, dtype: str) -> Iterator[Case]:
    dt = _dt(dtype)
    for e, h, hkv, b, lq, lk, how in [(64, 8, 8, 2, 17, 17, "self causal"), (48, 6, 2, 3, 9, 40, "cross padding"),
                                      (32, 4, 1, 1, 33, 33, "self mask"), (64, 8, 4, 2, 6, 6, "cache")]:
        layer = fastattn.MultiHeadAttention(e, h, num_kv_heads=hkv, dtype=dt)
        state = {k: randn(rng, v.shape, dt, 1.2 / np.sqrt(e) if v.ndim == 2 else 0.3)
                 for k, v in layer.state_dict().items()}
        layer.load_state_dict(state)
        x = randn(rng, (b, lq, e), dt)
        mem = x if how.startswith("self") or how == "cache" else randn(rng, (b, lk, e), dt)
        kw: dict = {}
        if how == "self causal":
            kw["causal"] = True
        elif how == "cross padding":
            kw["key_padding_mask"] = rng.random((b, lk)) < 0.3
        elif how == "self mask":
            kw["attn_mask"] = make_mask(rng, "additive_inf", (lq, lk), np.float64 if dtype == "float64" else np.float32)
        ref, ref_w = mha_reference(state, h, hkv, x, mem, causal=kw.get("causal", False),
                                   key_padding_mask=kw.get("key_padding_mask"), attn_mask=kw.get("attn_mask"))
        if how == "cache":  # the same causal self-attention, fed in 3 pieces through a KV cache
            cache = layer.new_cache(b, lq)
            out = np.concatenate([layer(x[:, i:i + 2], cache=cache, causal=True)[0] for i in range(0, lq, 2)], 1)
            ref, ref_w = mha_reference(state, h, hkv, x, causal=True)
            got = {"out": out}
        else:
            out, w = layer(x, None if mem is x else mem, need_weights=True, average_attn_weights=False, **kw)
            got = {"out": out, "weights": w}
        # the scores the reference computed: log of its weights is s - lse, so bound S by the raw q.k
        s_max = _mha_score_max(state, h, hkv, x, mem, kw.get("attn_mask"))
        want = {"out": ref, "weights": ref_w}
        yield Case(got, {k: want[k] for k in got}, s_max)


def _mha_score_max(state, h, hkv, x, mem, attn_mask):
    e = x.shape[-1]
    d, kv = e // h, hkv * (e // h)
    s64 = {k: np.asarray(v, np.float64) for k, v in state.items()}
    w, bias = s64["in_proj_weight"], s64["in_proj_bias"]
    q = (x.astype(np.float64) @ w[:e].T + bias[:e]).reshape(x.shape[0], x.shape[1], h, d)
    k = (mem.astype(np.float64) @ w[e:e + kv].T + bias[e:e + kv]).reshape(mem.shape[0], mem.shape[1], hkv, d)
    k = np.repeat(k, h // hkv, axis=2)
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d)
    if attn_mask is not None:
        m = np.asarray(attn_mask, np.float64)
        s = s + np.where(np.isfinite(m), m, 0.0)
    return float(np.abs(s).max(initial=0.0))


def pe_cases(rng: np.random.Generator, dtype: str) -> Iterator[Case]:
    for length, dim in [(512, 384), (7, 5), (2048, 64)]:
        got = fastattn.sinusoidal_positional_encoding(length, dim, dtype=_dt(dtype))
        pos = np.arange(length, dtype=np.float64)[:, None]
        pair = np.arange(dim) - np.arange(dim) % 2
        angle = pos / 10000.0 ** (pair / dim)
        ref = np.where(np.arange(dim) % 2 == 0, np.sin(angle), np.cos(angle))
        yield Case({"encoding": got}, {"encoding": ref}, 0.0)


ENTRY_POINTS: Dict[str, Callable[[np.random.Generator, str], Iterator[Case]]] = {
    "scaled_dot_product_attention": sdpa_cases,
    "attention": attention_cases,
    "output_layer": output_layer_cases,
    "vector_attention": vector_attention_cases,
    "knn": knn_cases,
    "layer_norm": layer_norm_cases,
    "MultiHeadAttention": mha_cases,
    "sinusoidal_positional_encoding": pe_cases,
}


# ----------------------------------------------------------------------------- the measure


def error(got: np.ndarray, want: np.ndarray) -> float:
    """max|got - want| / max(1, max|want|) over finite reference entries; inf if an exact entry
    (the reference's zeros of empty rows, its -inf lse) is missed or a finite one is not finite."""
    got = np.asarray(got).astype(np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    finite = np.isfinite(want)
    if not np.array_equal(got[~finite], want[~finite]):
        return float("inf")
    if not finite.any():
        return 0.0
    diff = np.abs(got[finite] - want[finite])
    if not np.all(np.isfinite(diff)):
        return float("inf")
    return float(np.max(diff) / max(1.0, np.max(np.abs(want[finite]))))


def measure(seed: int) -> Dict[str, Dict[str, float]]:
    """``{"entry/dtype/quantity": {"error", "allowed", "ratio"}}``, worst over the cases."""
    rng = np.random.default_rng(seed)
    worst: Dict[str, Dict[str, float]] = {}
    for entry, cases in ENTRY_POINTS.items():
        for dtype in _dtypes():
            bound = BOUNDS[(entry, dtype)]
            for case in cases(rng, dtype):
                for quantity, got in case.got.items():
                    b = LSE_BOUND.get(dtype, BOUNDS[(entry, "float32")]) if quantity == "lse" else bound
                    per_score = 0.0 if entry == "knn" else PER_SCORE[dtype]
                    allowed = b + per_score * case.score_max
                    err = error(got, case.want[quantity])
                    ratio = err / allowed if allowed > 0 else (0.0 if err == 0 else float("inf"))
                    key = f"{entry}/{dtype}/{quantity}"
                    if key not in worst or ratio > worst[key]["ratio"]:
                        worst[key] = {"error": err, "allowed": allowed, "ratio": ratio}
    return worst


def main(seed: int) -> None:
    print(json.dumps({"isa": fastattn.backends()["cpu"]["isa"], "seed": seed, "worst": measure(seed)}))


if __name__ == "__main__":  # pragma: no cover
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
