"""The guarantees of README's "Guarantees" section, proved per entry point, in the README's order:
accuracy, masking, shapes, concurrency, determinism. (Bad input: test_bad_input.py; memory:
test_memory.py; each CPU ISA: the accuracy sweep below runs per ISA, and CI runs this whole suite
once per ISA the machine has.)

Each guarantee that holds for every entry point takes its cases from a table in this file, keyed
by the public name; an entry point added to fastattn adds its rows to each table (or a reason to
EXEMPT), and test_every_entry_point_has_rows fails until it does.

Classes: MultiHeadAttention is one entry point whose rows call a layer (``layer(query, ...)``, its
forward, with and without a KV cache) and, in the bad-input table, its constructor,
``load_state_dict`` and ``new_cache``; each row's id starts with "MultiHeadAttention". KVCache is
made by ``MultiHeadAttention.new_cache`` and used only through the layer's ``cache=``, so the
layer's rows cover it (STATE below). The layout helpers (split_heads, merge_heads, causal_mask,
sinusoidal_positional_encoding) are plain NumPy with no kernel, mask or state: they have shape and
bad-input rows, and EXEMPT says why the rest does not apply.
"""

import json
import os
import secrets
import sys
import threading
import time

import numpy as np
import pytest

import fastattn
import guarantee_accuracy
from helpers import randn, run_python
from reference import sdpa_reference
from reference_attention import attention_reference, output_layer_reference
from reference_vector import knn_reference, vector_attention_reference
from reference_layers import mha_reference

ALIGNS = ["softmax", "sigmoid", "sparsemax", "hard"]
# The public names that take arrays; the rest of fastattn.__all__ controls the backend.
ARRAY_ENTRY_POINTS = ["scaled_dot_product_attention", "attention", "output_layer", "vector_attention", "knn",
                      "layer_norm", "MultiHeadAttention", "split_heads", "merge_heads", "causal_mask",
                      "sinusoidal_positional_encoding"]
# Public classes whose guarantees are another entry point's rows.
STATE = {"KVCache": "made by MultiHeadAttention.new_cache, used through its cache=: the layer's rows"}
CONTROL = {"backends", "get_cuda_tf32", "get_num_threads", "last_kernel", "set_cuda_tf32", "set_num_threads",
           "use_backend"}
# Guarantees that do not apply to an entry point, with the reason (the README says the same).
EXEMPT = {
    ("masking", "output_layer"): "takes no mask: a softmax over all n_out outputs",
    ("masked_poison", "output_layer"): "takes no mask",
    ("gil", "output_layer"): "NumPy arithmetic, no fastattn kernel (NumPy's BLAS releases the GIL)",
    ("masking", "knn"): "takes no mask (its -1 columns past N are checked under shapes and accuracy)",
    ("masked_poison", "knn"): "takes no mask",
    ("nan_rows", "knn"): "refuses non-finite coordinates with ValueError (tests/test_bad_input.py)",
    ("masking", "layer_norm"): "takes no mask",
    ("masked_poison", "layer_norm"): "takes no mask",
}
_LAYOUT = {
    "split_heads": "a view: no arithmetic, no kernel",
    "merge_heads": "a view or one copy: no arithmetic, no kernel",
    "causal_mask": "a bool pattern from two ints: no arithmetic on data, no kernel",
    "sinusoidal_positional_encoding": "NumPy float64 sin/cos of two ints: no input data, no kernel",
}
for _name, _why in _LAYOUT.items():
    for _g in ("masking", "masked_poison", "nan_rows", "huge_logits", "concurrency", "determinism", "gil"):
        EXEMPT[(_g, _name)] = _why
EXEMPT[("accuracy", "split_heads")] = "exact (a view): checked element for element under shapes"
EXEMPT[("accuracy", "merge_heads")] = "exact (a view or a copy): checked element for element under shapes"
EXEMPT[("accuracy", "causal_mask")] = "exact (bool): checked against the definition under shapes"
# Every table below, by guarantee; each row's id starts with its entry point's public name.
TABLES = {}


def table(guarantee, rows):
    TABLES[guarantee] = rows
    return rows


def ids(rows):
    return [r[0] for r in rows]


def sdpa(*args, **kw):
    return fastattn.scaled_dot_product_attention(*args, **kw)


def additive_params(rng, dq, dk, da=8, dt=np.float32):
    return {"W_q": randn(rng, (da, dq), dt, dq ** -0.5), "W_k": randn(rng, (da, dk), dt, dk ** -0.5),
            "w": randn(rng, (da,), dt)}


# ============================================================================= accuracy
# Error bounds per entry point and dtype (guarantee_accuracy.BOUNDS, stated in the README), measured
# on every ISA this machine has, each forced through FASTATTN_CPU_ISA in a fresh interpreter.

table("accuracy", [(name, None) for name in guarantee_accuracy.ENTRY_POINTS])


@pytest.mark.parametrize("isa", fastattn.backends()["cpu"]["available_isas"])
def test_accuracy_bounds_on_every_isa(isa):
    seed = secrets.randbits(31)
    r = run_python(f"import guarantee_accuracy as g; g.main({seed})", timeout=600, FASTATTN_CPU_ISA=isa)
    assert r.returncode == 0, r.stderr[-4000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["isa"] == isa
    over = {k: v for k, v in report["worst"].items() if not v["ratio"] <= 1.0}
    assert not over, f"[{isa}, seed {seed}] errors over the stated bounds: {over}"
    # every entry point and dtype was measured
    for entry in guarantee_accuracy.ENTRY_POINTS:
        assert any(k.startswith(entry + "/float32/") for k in report["worst"]), entry


# ============================================================================= masking
# (a) A query with nothing visible gets exact zeros (and lse -inf), under every way of masking.
# Each row: (id, make(rng) -> (results, lse, empty)): results are arrays (..., Lq, n), lse
# (..., Lq) or None, and `empty` (..., Lq) marks the queries that see no key.


def _sdpa_empty(**opts):
    def make(rng):
        q, k, v = (randn(rng, (2, 3, lq, 8)) for lq in (6, 5, 5))
        out, lse = sdpa(q, k, v, return_lse=True, **opts)
        _, ref_lse = sdpa_reference(q, k, v, **opts)
        return [out], lse, ref_lse == -np.inf
    return make


def _rows_mask(lq, lk, rows, kind):
    m = np.ones((lq, lk), bool)
    m[rows] = False
    return m if kind == "bool" else np.where(m, 0.0, -np.inf).astype(np.float32)


def _attention_empty(align, kind, return_weights=True, score="additive"):
    def make(rng):
        q, k, v = randn(rng, (2, 6, 4)), randn(rng, (2, 9, 4)), randn(rng, (2, 9, 3))
        params = additive_params(rng, 4, 4) if score == "additive" else None
        mask = _rows_mask(6, 9, [1, 4], kind)
        res = fastattn.attention(q, k, v, score=score, align=align, params=params, attn_mask=mask,
                                 return_weights=return_weights)
        empty = np.zeros((2, 6), bool)
        empty[:, [1, 4]] = True
        return list(res) if return_weights else [res], None, empty
    return make


def _vector_pieces(rng, form, c=8, mlp=False, pos=False, lq=6, lk=9, m=7):
    """Operands and keyword arguments of a small vector_attention call (dense: batch 2)."""
    if form == "dense":
        q, k, v = randn(rng, (2, lq, c)), randn(rng, (2, lk, c)), randn(rng, (2, lk, c))
        kw = {}
        p_shape = (2, lq, lk, c)
    else:
        q, k, v = randn(rng, (lq, c)), randn(rng, (m, c)), randn(rng, (m, c))
        kw = {"index": rng.integers(0, m, (lq, lk))}
        p_shape = (lq, lk, c)
    if pos:
        kw["pos"] = randn(rng, p_shape)
    if mlp:
        kw["weight_mlp"] = (randn(rng, (5, c), scale=c ** -0.5), randn(rng, (5,)), randn(rng, (4, 5)), randn(rng, (4,)))
    else:
        kw["groups"] = 4
    return q, k, v, kw


def _vector_empty(form, how, mlp=False):
    def make(rng):
        q, k, v, kw = _vector_pieces(rng, form, mlp=mlp, pos=True)
        lead = q.shape[:-2] if form == "dense" else ()
        empty = np.zeros(lead + (6,), bool)
        empty[..., [1, 4]] = True
        if how == "index -1":
            kw["index"][[1, 4]] = -1
        else:
            kw["attn_mask"] = _rows_mask(6, 9, [1, 4], how)
        out, w = fastattn.vector_attention(q, k, v, return_weights=True, **kw)
        return [out, w.reshape(w.shape[:-2] + (-1,))], None, empty
    return make


def _mha(rng, e=16, h=4, hkv=None, dt=np.float32, zero_out_bias=False, **kw):
    layer = fastattn.MultiHeadAttention(e, h, num_kv_heads=hkv, dtype=dt, seed=int(rng.integers(2 ** 31)), **kw)
    state = {k: randn(rng, v.shape, dt, 0.5) for k, v in layer.state_dict().items()}
    if zero_out_bias and "out_proj.bias" in state:
        state["out_proj.bias"][:] = 0  # a query that sees no key then gives exactly 0
    layer.load_state_dict(state)
    return layer, state


def _mha_empty(how):
    def make(rng):
        layer, _ = _mha(rng, hkv=2, zero_out_bias=True)
        x, mem = randn(rng, (2, 6, 16)), randn(rng, (2, 9, 16))
        empty = np.zeros((2, 6), bool)
        kw = {}
        if how == "padding":  # batch 1: every key is padding
            kw["key_padding_mask"] = np.zeros((2, 9), bool)
            kw["key_padding_mask"][1] = True
            empty[1] = True
        elif how == "causal bottom_right":  # Lq > Lk: the first queries see nothing
            x, mem = randn(rng, (2, 9, 16)), randn(rng, (2, 6, 16))
            kw["causal"] = "bottom_right"
            empty = np.zeros((2, 9), bool)
            empty[:, :3] = True
        else:
            kw["attn_mask"] = _rows_mask(6, 9, [1, 4], how)
            empty[:, [1, 4]] = True
        out, w = layer(x, mem, need_weights=True, average_attn_weights=False, **kw)
        return [out, w.transpose(0, 2, 1, 3).reshape(w.shape[0], w.shape[2], -1)], None, empty
    return make


FULLY_MASKED = table("masking", [
    ("scaled_dot_product_attention: bool mask", _sdpa_empty(attn_mask=_rows_mask(6, 5, [0, 3], "bool"))),
    ("scaled_dot_product_attention: -inf mask", _sdpa_empty(attn_mask=_rows_mask(6, 5, [2, 5], "float"))),
    ("scaled_dot_product_attention: causal bottom_right, Lq > Lk", _sdpa_empty(causal="bottom_right")),
    ("scaled_dot_product_attention: window", _sdpa_empty(causal="bottom_right", window=(0, 0))),
    ("scaled_dot_product_attention: kv_lengths 0", _sdpa_empty(kv_lengths=np.array([0, 3]))),
    ("scaled_dot_product_attention: kv_lengths and causal", _sdpa_empty(kv_lengths=0, causal=True)),
] + [
    (f"attention: {align}, {kind} mask", _attention_empty(align, kind))
    for align in ALIGNS for kind in ("bool", "float")
] + [
    ("attention: dot softmax, context only (SDPA path)", _attention_empty("softmax", "bool", False, "dot")),
] + [
    (f"vector_attention: {form}, {how} mask{', weight MLP' if mlp else ''}", _vector_empty(form, how, mlp))
    for form in ("dense", "neighbour") for how in ("bool", "float") for mlp in (False, True)
] + [
    ("vector_attention: neighbour, index -1", _vector_empty("neighbour", "index -1")),
    ("vector_attention: neighbour, index -1, weight MLP", _vector_empty("neighbour", "index -1", True)),
] + [
    (f"MultiHeadAttention: {how} (out_proj bias 0)", _mha_empty(how))
    for how in ("bool", "float", "padding", "causal bottom_right")
])


@pytest.mark.parametrize("case", FULLY_MASKED, ids=ids(FULLY_MASKED))
def test_fully_masked_rows_are_exact_zeros(rng, case):
    results, lse, empty = case[1](rng)
    assert empty.any()
    for r in results:
        r = np.asarray(r, np.float64)
        rows = r[empty]
        assert np.all(rows == 0), f"rows with no visible key must be exactly 0, got {rows[rows != 0][:5]}"
        assert np.all(np.isfinite(r[~empty])), "rows that see keys must be finite"
    if lse is not None:
        np.testing.assert_array_equal(lse == -np.inf, empty, err_msg="lse must be -inf exactly where no key is seen")
        assert np.all(np.isfinite(lse[~empty]))


# (b) NaN or Inf at masked positions never reaches the output: the same call with those positions
# set to 0 gives the same result. Each row: (id, make(poison) -> list of results), the
# inputs drawn from a fixed seed with `poison` written where every query is masked off.


def _sdpa_poisoned(where, lq=7, **opts):
    # lq = 7 takes the blocked path, lq = 1 (decode) the row-wise one
    def make(poison):
        rng = np.random.default_rng(1234)
        q, k, v = randn(rng, (2, 2, lq, 8)), randn(rng, (2, 2, 9, 8)), randn(rng, (2, 2, 9, 5))
        # Lq = 7, Lk = 9: the keys no query sees under each option
        masked_keys = {"mask": [3, 8], "causal": [7, 8], "kv_lengths": [6, 7, 8], "window": [8]}[where]
        for a in (k, v):
            a[..., masked_keys, :] = poison
        return list(sdpa(q, k, v, return_lse=True, **opts))
    return make


def _sdpa_masked_keys(kind):
    mask = np.ones((7, 9), bool)
    mask[:, [3, 8]] = False
    return mask if kind == "bool" else np.where(mask, np.float32(0.5), np.float32(-np.inf))


def _attention_poisoned(align, kind):
    def make(poison):
        rng = np.random.default_rng(99)
        q, k, v = randn(rng, (2, 6, 4)), randn(rng, (2, 9, 4)), randn(rng, (2, 9, 3))
        params = additive_params(rng, 4, 4)
        mask = np.ones((6, 9), bool)
        mask[:, [2, 7]] = False
        k[:, [2, 7]] = poison
        v[:, [2, 7]] = poison
        if kind == "float":
            mask = np.where(mask, np.float32(0.25), np.float32(-np.inf))
        return list(fastattn.attention(q, k, v, score="additive", align=align, params=params,
                                       attn_mask=mask, return_weights=True))
    return make


def _vector_poisoned(form, kind, mlp=False):
    # keys 2 and 7 (dense) or neighbour slots 2 and 7 are masked for every query; with index the
    # key rows 0 and 3 are referenced only there, with pos its entries at those slots are poisoned
    def make(poison):
        rng = np.random.default_rng(77)
        q, k, v, kw = _vector_pieces(rng, form, mlp=mlp, pos=True)
        mask = np.ones((6, 9), bool)
        mask[:, [2, 7]] = False
        if form == "dense":
            for a in (k, v):
                a[:, [2, 7]] = poison
        else:
            idx = rng.integers(4, 7, (6, 9))
            idx[:, 2], idx[:, 7] = 0, 3
            kw["index"] = idx
            for a in (k, v):
                a[[0, 3]] = poison
        kw["pos"][..., [2, 7], :] = poison
        kw["attn_mask"] = mask if kind == "bool" else np.where(mask, np.float32(0.5), np.float32(-np.inf))
        return list(fastattn.vector_attention(q, k, v, return_weights=True, **kw))
    return make


def _mha_poisoned(how):
    # keys 3 and 8 are padding (or masked) for every query; their key and value inputs poisoned
    def make(poison):
        rng = np.random.default_rng(5)
        layer, _ = _mha(rng, hkv=2)
        x, mem = randn(rng, (2, 6, 16)), randn(rng, (2, 9, 16))
        mem[:, [3, 8]] = poison
        if how == "padding":
            kpm = np.zeros((2, 9), bool)
            kpm[:, [3, 8]] = True
            kw = {"key_padding_mask": kpm}
        else:
            kw = {"attn_mask": _sdpa_masked_keys(how)[:6]}
        out, w = layer(x, mem, need_weights=True, **kw)
        return [out, w]
    return make


MASKED_POISON = table("masked_poison", [
    ("scaled_dot_product_attention: bool mask", _sdpa_poisoned("mask", attn_mask=_sdpa_masked_keys("bool"))),
    ("scaled_dot_product_attention: -inf mask", _sdpa_poisoned("mask", attn_mask=_sdpa_masked_keys("float"))),
    ("scaled_dot_product_attention: kv_lengths", _sdpa_poisoned("kv_lengths", kv_lengths=6)),
    ("scaled_dot_product_attention: window", _sdpa_poisoned("window", window=(None, 1))),
    ("scaled_dot_product_attention: causal", _sdpa_poisoned("causal", causal=True)),
    ("scaled_dot_product_attention: bool mask, decode",
     _sdpa_poisoned("mask", lq=1, attn_mask=_sdpa_masked_keys("bool")[:1])),
    ("scaled_dot_product_attention: -inf mask, decode",
     _sdpa_poisoned("mask", lq=1, attn_mask=_sdpa_masked_keys("float")[:1])),
    ("scaled_dot_product_attention: kv_lengths, decode", _sdpa_poisoned("kv_lengths", lq=1, kv_lengths=6)),
] + [
    (f"attention: {align}, {kind} mask", _attention_poisoned(align, kind))
    for align in ALIGNS for kind in ("bool", "float")
] + [
    (f"vector_attention: {form}, {kind} mask{', weight MLP' if mlp else ''}", _vector_poisoned(form, kind, mlp))
    for form in ("dense", "neighbour") for kind in ("bool", "float") for mlp in (False, True)
] + [
    (f"MultiHeadAttention: {how}", _mha_poisoned(how)) for how in ("padding", "bool", "float")
])


@pytest.mark.parametrize("case", MASKED_POISON, ids=ids(MASKED_POISON))
@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf])
def test_masked_nan_and_inf_never_leak(case, poison):
    clean = case[1](0.0)
    dirty = case[1](poison)
    for c, d in zip(clean, dirty):
        assert not np.isnan(d).any(), f"{poison} at masked positions leaked into the output"
        assert np.array_equal(np.isfinite(d), np.isfinite(c)), f"{poison} at masked positions leaked"
        # the same answer up to rounding (a non-finite value in a tile takes a path that skips
        # zero weights explicitly, which sums in another order)
        np.testing.assert_allclose(d, c, rtol=1e-5, atol=1e-6)


# (c) NaN in an input stays in the rows that read it, and does reach them (never a finite answer
# computed as if it were not there). Each row: (id, make(rng) -> (results, reads)): `reads`
# (..., Lq) marks the queries that read the NaN.


def _sdpa_nan(where):
    def make(rng):
        q, k, v = randn(rng, (2, 2, 12, 8)), randn(rng, (2, 2, 12, 8)), randn(rng, (2, 2, 12, 5))
        reads = np.zeros((2, 2, 12), bool)
        if where == "query":
            q[1, 0, 4, 2] = np.nan
            reads[1, 0, 4] = True
        else:
            (k if where == "key" else v)[0, 1, 7, 3 if where == "key" else 1] = np.nan
            reads[0, 1, 7:] = True  # causal: queries i >= 7 see key 7
        out, lse = sdpa(q, k, v, causal=True, return_lse=True)
        return [out] + ([lse[..., None]] if where != "value" else []), reads
    return make


def _attention_nan(align, where):
    def make(rng):
        q, k, v = randn(rng, (2, 6, 4)), randn(rng, (2, 9, 4)), randn(rng, (2, 9, 3))
        params = additive_params(rng, 4, 4)
        mask = np.ones((6, 9), bool)
        mask[:3, 5] = False  # key 5 is seen by queries 3..5 only
        reads = np.zeros((2, 6), bool)
        if where == "query":
            q[1, 2, 0] = np.nan
            reads[1, 2] = True
        else:
            k[0, 5, 1] = np.nan
            reads[0, 3:] = True
        return list(fastattn.attention(q, k, v, score="additive", align=align, params=params,
                                       attn_mask=mask, return_weights=True)), reads
    return make


def _output_layer_nan(rng):
    c = randn(rng, (3, 4, 6))
    c[2, 1, 5] = np.nan
    reads = np.zeros((3, 4), bool)
    reads[2, 1] = True
    return [fastattn.output_layer(c, randn(rng, (5, 6)), randn(rng, (5,)))], reads


def _vector_nan(form, where, mlp=False):
    # groups: 4 of 2 channels (or the MLP's 4 outputs); queries 3..5 see key 5 (dense) or the
    # neighbour slot that holds key row 5 (neighbour form: rows 0 and 4 of the index)
    def make(rng):
        q, k, v, kw = _vector_pieces(rng, form, mlp=mlp, pos=True)
        lead = q.shape[:-2] if form == "dense" else ()
        reads = np.zeros(lead + (6,), bool)
        if form == "dense":
            mask = np.ones((6, 9), bool)
            mask[:3, 5] = False
            kw["attn_mask"] = mask
        else:
            idx = rng.integers(0, 5, (6, 9))
            idx[[0, 4], 3] = 5
            kw["index"] = idx
        if where == "query":
            q[..., 2, 3] = np.nan
            reads[..., 2] = True
        elif where == "pos":
            kw["pos"][..., 1, 4, 0] = np.nan
            reads[..., 1] = True
        else:
            a = k if where == "key" else v
            if form == "dense":
                a[0, 5, 1] = np.nan
                reads[0, 3:] = True
            else:
                a[5, 1] = np.nan
                reads[[0, 4]] = True
        out, w = fastattn.vector_attention(q, k, v, return_weights=True, **kw)
        results = [out] + ([w.reshape(w.shape[:-2] + (-1,))] if where != "value" else [])
        return results, reads
    return make


def _layer_norm_nan(where):
    def make(rng):
        x, w, b = randn(rng, (3, 5, 12)), randn(rng, (12,)), randn(rng, (12,))
        reads = np.zeros((3, 5), bool)
        if where == "x":
            x[1, 3, 7] = np.nan
            reads[1, 3] = True
        else:  # a NaN weight or bias entry: every row reads it
            (w if where == "weight" else b)[4] = np.nan
            reads[:] = True
        return [fastattn.layer_norm(x, w, b)], reads
    return make


def _mha_nan(where):
    def make(rng):
        layer, _ = _mha(rng, hkv=2)
        x, mem = randn(rng, (2, 6, 16)), randn(rng, (2, 9, 16))
        mask = np.ones((6, 9), bool)
        mask[:3, 5] = False  # key 5 is seen by queries 3..5 only
        reads = np.zeros((2, 6), bool)
        if where == "query":
            x[1, 2, 0] = np.nan
            reads[1, 2] = True
        else:
            mem[0, 5, 1] = np.nan
            reads[0, 3:] = True
        out, w = layer(x, mem, attn_mask=mask, need_weights=True)
        return [out] + ([w] if where == "query" else []), reads
    return make


NAN_ROWS = table("nan_rows", [
    (f"scaled_dot_product_attention: NaN in {w}", _sdpa_nan(w)) for w in ("query", "key", "value")
] + [
    (f"attention: {align}, NaN in {w}", _attention_nan(align, w)) for align in ALIGNS for w in ("query", "key")
] + [
    ("output_layer: NaN in context", _output_layer_nan),
] + [
    (f"vector_attention: {form}, NaN in {w}{', weight MLP' if mlp else ''}", _vector_nan(form, w, mlp))
    for form in ("dense", "neighbour") for w in ("query", "key", "value", "pos") for mlp in (False, True)
] + [
    (f"layer_norm: NaN in {w}", _layer_norm_nan(w)) for w in ("x", "weight", "bias")
] + [
    (f"MultiHeadAttention: NaN in {w}", _mha_nan(w)) for w in ("query", "key and value")
])


@pytest.mark.parametrize("case", NAN_ROWS, ids=ids(NAN_ROWS))
def test_nan_stays_in_the_rows_that_read_it(rng, case):
    results, reads = case[1](rng)
    for r in results:
        nan_rows = np.isnan(np.asarray(r, np.float64)).any(axis=-1)
        np.testing.assert_array_equal(nan_rows, reads, err_msg="rows with NaN differ from the rows that read it")


# (d) Huge logits (1e30) never overflow to NaN: the answer is the one-hot of the largest score,
# as the float64 reference says. Each row: (id, make(rng) -> (results, references)).


def _huge_inputs(rng, lq=5, lk=11, d=4):
    # unit rows times 1e15: scores up to 1e30, and the top two of a row far apart
    q = rng.standard_normal((2, lq, d))
    k = rng.standard_normal((2, lk, d))
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    return (1e15 * q).astype(np.float32), (1e15 * k).astype(np.float32), randn(rng, (2, lk, 3))


def _sdpa_huge(rng):
    q, k, v = _huge_inputs(rng)
    mask = np.zeros((5, 11), np.float32)
    mask[:, 3] = 1e30  # an additive mask as large as the scores
    ref, _ = sdpa_reference(q, k, v, scale=1.0, attn_mask=mask)
    return [sdpa(q, k, v, scale=1.0, attn_mask=mask)], [ref]


def _attention_huge(align):
    def make(rng):
        q, k, v = _huge_inputs(rng)
        return (list(fastattn.attention(q, k, v, score="dot", align=align, return_weights=True)),
                list(attention_reference(q, k, v, score="dot", align=align)))
    return make


def _output_layer_huge(rng):
    c, w, _ = _huge_inputs(rng)
    return [fastattn.output_layer(c, w[0])], [output_layer_reference(c, w[0])]


def _vector_huge(form, relation, mlp=False, mask=False):
    # unit rows times 1e15: q_i * k_j up to 1e30 per channel ("multiply"), or an MLP output of
    # order 1e15 ("subtract"); the top two weights of a group far apart
    def make(rng):
        q, k, _ = _huge_inputs(rng, lq=5, lk=11, d=8)
        v = randn(rng, (2, 11, 8))
        kw = {"relation": relation}
        if form == "neighbour":
            q, k, v = q[0], k[0], v[0]
            kw["index"] = rng.integers(0, 11, (5, 6))
        if mlp:
            kw["weight_mlp"] = (randn(rng, (5, 8)), randn(rng, (5,)), randn(rng, (4, 5)), randn(rng, (4,)))
        else:
            kw["groups"] = 8
        if mask:
            m = np.zeros(kw["index"].shape if form == "neighbour" else (5, 11), np.float32)
            m[:, 3] = 1e30
            kw["attn_mask"] = m
        return list(fastattn.vector_attention(q, k, v, return_weights=True, **kw)), \
            list(vector_attention_reference(q, k, v, **kw))
    return make


def _knn_huge(rng):
    pts = (1e30 * rng.standard_normal((300, 3))).astype(np.float32)  # squared distances ~1e60
    return [fastattn.knn(pts, 8)], [knn_reference(pts, 8)]


def _layer_norm_huge(rng):
    # float32 rows of 1e30: their squared deviations (1e60) overflow float32
    x = (1e30 * rng.standard_normal((4, 33))).astype(np.float32)
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
    return [fastattn.layer_norm(x)], [ref]


def _mha_huge(rng):
    # identity projections, one head of 8: q = k = x, unit rows times 1e15, scores 1e30 / sqrt(8)
    layer = fastattn.MultiHeadAttention(8, 1, bias=False)
    eye = np.eye(8, dtype=np.float32)
    state = {"in_proj_weight": np.concatenate([eye, eye, randn(rng, (8, 8))]), "out_proj.weight": randn(rng, (8, 8))}
    layer.load_state_dict(state)
    q, k, _ = _huge_inputs(rng, d=8)
    v = randn(rng, k.shape, scale=0.05)  # small values: the output is compared at atol 1e-6
    out, w = layer(q, k, v, need_weights=True)
    ref, ref_w = mha_reference(state, 1, 1, q, k, v)
    return [out, w], [ref, ref_w[:, 0]]


def _lowest_mask(rng, lq, lk, dtype=np.float32):
    """An additive mask with every extreme a row can have: all keys at the dtype's lowest finite
    value (Hugging Face's padding value; the row averages its values), one such key among -inf
    (the row reads that key alone), and the lowest value against -1e38 and 0."""
    low = np.finfo(dtype).min
    m = np.zeros((lq, lk), dtype)
    m[0] = low
    m[1] = -np.inf
    m[1, 2] = low
    m[2, ::2] = low
    m[3, ::2], m[3, 1::2] = low, -1e38
    m[4:] = np.where(rng.random((lq - 4, lk)) < 0.5, low, 0)
    return m


def _sdpa_lowest_mask(lq, mask_dtype=np.float32, low=None):
    def make(rng):
        q, k, v = randn(rng, (2, lq, 8)), randn(rng, (2, 11, 8)), randn(rng, (2, 11, 3))
        mask = _lowest_mask(rng, lq, 11, mask_dtype)
        if low is not None:
            mask[mask == np.finfo(mask_dtype).min] = low
        return [sdpa(q, k, v, attn_mask=mask)], [sdpa_reference(q, k, v, attn_mask=mask)[0]]
    return make


def _vector_lowest_mask(form, mlp):
    def make(rng):
        q, k, v = randn(rng, (6, 8)), randn(rng, (11, 8)), randn(rng, (11, 8))
        kw = {"weight_mlp": (randn(rng, (8, 8)), randn(rng, (8,)), randn(rng, (8, 8)), randn(rng, (8,)))} \
            if mlp else {"groups": 4}
        if form == "neighbour":
            kw["index"] = rng.integers(0, 11, (6, 5))
        kw["attn_mask"] = _lowest_mask(rng, 6, 5 if form == "neighbour" else 11)
        return list(fastattn.vector_attention(q, k, v, return_weights=True, **kw)), \
            list(vector_attention_reference(q, k, v, **kw))
    return make


def _mha_lowest_padding(low, with_mask=False):
    # a float key_padding_mask as Hugging Face builds it: a very low value on padded keys, every
    # key of the second sequence padded; optionally an attn_mask of -1e38 on some of the same keys
    # (the two add up to -2e38, past what float32 can scale to base 2)
    def make(rng):
        layer = fastattn.MultiHeadAttention(8, 2, seed=int(rng.integers(1 << 30)))
        x = randn(rng, (2, 5, 8))
        pad = np.zeros((2, 5), np.asarray(low).dtype)
        pad[0, 3:] = pad[1] = low
        mask = None
        if with_mask:
            mask = np.zeros((5, 5), np.float32)
            mask[:, 3:] = -1e38
        out, w = layer(x, x, x, key_padding_mask=pad, attn_mask=mask, need_weights=True)
        ref, ref_w = mha_reference(layer.state_dict(), 2, 2, x, x, x, key_padding_mask=pad, attn_mask=mask)
        return [out, w], [ref, ref_w.mean(axis=1)]
    return make


HUGE_LOGITS = table("huge_logits", [
    ("scaled_dot_product_attention: scores and mask 1e30", _sdpa_huge),
] + [(f"attention: {align}", _attention_huge(align)) for align in ALIGNS] + [
    ("output_layer: logits 1e30", _output_layer_huge),
    ("vector_attention: dense, multiply, weights 1e30", _vector_huge("dense", "multiply")),
    ("vector_attention: dense, subtract, weight MLP, mask 1e30", _vector_huge("dense", "subtract", True, True)),
    ("vector_attention: neighbour, multiply, mask 1e30", _vector_huge("neighbour", "multiply", mask=True)),
    ("vector_attention: neighbour, add, weight MLP", _vector_huge("neighbour", "add", True)),
    ("knn: coordinates 1e30 (float32)", _knn_huge),
    ("layer_norm: x 1e30 (float32)", _layer_norm_huge),
    ("MultiHeadAttention: scores 1e30", _mha_huge),
    # Finite additive masks as low as the dtype goes keep their keys visible (in base 2 they
    # would overflow to -inf unless kept finite): row-wise and blocked paths, float64 masks
    # on float32 inputs included.
    ("scaled_dot_product_attention: mask at finfo(float32).min, 4 query rows (row-wise)", _sdpa_lowest_mask(4)),
    ("scaled_dot_product_attention: mask at finfo(float32).min, 40 query rows", _sdpa_lowest_mask(40)),
    ("scaled_dot_product_attention: float64 mask of -1e300 on float32 inputs",
     _sdpa_lowest_mask(40, np.float64, -1e300)),
    ("vector_attention: dense, mask at finfo(float32).min", _vector_lowest_mask("dense", False)),
    ("vector_attention: neighbour, weight MLP, mask at finfo(float32).min", _vector_lowest_mask("neighbour", True)),
    ("MultiHeadAttention: key_padding_mask at finfo(float32).min", _mha_lowest_padding(np.finfo(np.float32).min)),
    ("MultiHeadAttention: float64 key_padding_mask of -1e300", _mha_lowest_padding(np.float64(-1e300))),
    ("MultiHeadAttention: key_padding_mask and attn_mask at -1e38 each",
     _mha_lowest_padding(np.float32(-1e38), with_mask=True)),
])


@pytest.mark.parametrize("case", HUGE_LOGITS, ids=ids(HUGE_LOGITS))
def test_huge_logits_never_overflow(rng, case):
    results, refs = case[1](rng)
    for r, ref in zip(results, refs):
        assert np.all(np.isfinite(r)), "huge logits made NaN or Inf"
        np.testing.assert_allclose(r, ref, rtol=1e-6, atol=1e-6)


# ============================================================================= shapes
# Empty batches, Lq = 0, Lk = 0 and size-1 dims give the reference's shapes and values (exact
# zeros where nothing is visible). Each row: (id, make(rng) -> (results, references)).


def _sdpa_shape(qs, ks, vs):
    def make(rng):
        q, k, v = randn(rng, qs), randn(rng, ks), randn(rng, vs)
        out, lse = sdpa(q, k, v, return_lse=True, causal="bottom_right")
        return [out, lse], list(sdpa_reference(q, k, v, causal="bottom_right"))
    return make


def _attention_shape(qs, ks, vs, align):
    def make(rng):
        q, k, v = randn(rng, qs), randn(rng, ks), randn(rng, vs)
        params = additive_params(rng, qs[-1], ks[-1])
        return (list(fastattn.attention(q, k, v, score="additive", align=align, params=params,
                                        return_weights=True)),
                list(attention_reference(q, k, v, score="additive", align=align, params=params)))
    return make


def _output_layer_shape(cs, n_out):
    def make(rng):
        c, w, b = randn(rng, cs), randn(rng, (n_out, cs[-1])), randn(rng, (n_out,))
        return [fastattn.output_layer(c, w, b)], [output_layer_reference(c, w, b)]
    return make


def _vector_shape(form, qs, ks, s=None, mlp=False):
    def make(rng):
        q, k, v = randn(rng, qs), randn(rng, ks), randn(rng, ks)
        c = qs[-1]
        kw = {"pos": randn(rng, (qs[-2], s if s is not None else ks[-2], c))}
        if s is not None:
            kw["index"] = rng.integers(-1, ks[0], (qs[0], s)) if ks[0] else np.full((qs[0], s), -1)
        if mlp:
            kw["weight_mlp"] = (randn(rng, (3, c)), randn(rng, (3,)), randn(rng, (1, 3)), randn(rng, (1,)))
        return (list(fastattn.vector_attention(q, k, v, return_weights=True, **kw)),
                list(vector_attention_reference(q, k, v, **kw)))
    return make


def _knn_shape(n, nq, d, k):
    def make(rng):
        pts = randn(rng, (n, d))
        qs = None if nq is None else randn(rng, (nq, d))
        return [fastattn.knn(pts, k, queries=qs)], [knn_reference(pts, k, qs)]
    return make


def _layer_norm_shape(xs, affine=True):
    def make(rng):
        x = randn(rng, xs)
        w, b = (randn(rng, xs[-1:]), randn(rng, xs[-1:])) if affine else (None, None)
        x64 = x.astype(np.float64)
        ref = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5) if x.size else x64
        if affine:
            ref = ref * w + b
        return [fastattn.layer_norm(x, w, b)], [ref]
    return make


def _mha_shape(b, lq, lk, unbatched=False):
    def make(rng):  # float64: the shapes and exact zeros are checked here, float32 error under accuracy
        layer, state = _mha(rng, hkv=2, dt=np.float64)
        x, mem = randn(rng, (b, lq, 16), np.float64), randn(rng, (b, lk, 16), np.float64)
        if b * lq * lk:
            ref = mha_reference(state, 4, 2, x, mem)[0]
        else:  # no key: 0 @ Wo + bo
            ref = np.broadcast_to(state["out_proj.bias"].astype(np.float64), (b, lq, 16))
        if unbatched:
            x, mem, ref = x[0], mem[0], ref[0]
        return [layer(x, mem)[0]], [ref]
    return make


def _split_merge_shape(shape, h):
    def make(rng):
        x = randn(rng, shape)
        heads = fastattn.split_heads(x, h)
        ref = x.reshape(shape[:-1] + (h, shape[-1] // h)).swapaxes(-2, -3)
        return [heads, fastattn.merge_heads(heads), fastattn.merge_heads(np.ascontiguousarray(heads))], [ref, x, x]
    return make


def _causal_mask_shape(lq, lk):
    def make(rng):
        i, j = np.arange(lq)[:, None], np.arange(lk)[None, :]
        return ([fastattn.causal_mask(lq, lk), fastattn.causal_mask(lq, lk, "bottom_right")],
                [j <= i, j <= i + lk - lq])
    return make


def _pe_shape(length, dim):
    def make(rng):
        pos = np.arange(length, dtype=np.float64)[:, None]
        ref = np.zeros((length, dim))
        for c in range(dim):
            angle = pos[:, 0] / 10000.0 ** ((c - c % 2) / dim)
            ref[:, c] = np.sin(angle) if c % 2 == 0 else np.cos(angle)
        return [fastattn.sinusoidal_positional_encoding(length, dim, dtype=np.float64)], [ref]
    return make


_ATTENTION_SHAPES = [("batch 0", (0, 3, 4), (0, 5, 4), (0, 5, 2)), ("Lq 0", (2, 0, 4), (2, 5, 4), (2, 5, 2)),
                     ("Lk 0", (2, 3, 4), (2, 0, 4), (2, 0, 2)), ("d 1", (2, 3, 1), (2, 5, 1), (2, 5, 1))]
SHAPES = table("shapes", [
    ("scaled_dot_product_attention: batch 0", _sdpa_shape((0, 2, 3, 8), (0, 2, 5, 8), (0, 2, 5, 4))),
    ("scaled_dot_product_attention: Lq 0", _sdpa_shape((2, 2, 0, 8), (2, 2, 5, 8), (2, 2, 5, 4))),
    ("scaled_dot_product_attention: Lk 0", _sdpa_shape((2, 2, 3, 8), (2, 2, 0, 8), (2, 2, 0, 4))),
    ("scaled_dot_product_attention: D 1, Dv 1", _sdpa_shape((2, 2, 9, 1), (2, 2, 7, 1), (2, 2, 7, 1))),
    ("scaled_dot_product_attention: Dv 0", _sdpa_shape((2, 1, 3, 8), (2, 1, 5, 8), (2, 1, 5, 0))),
] + [
    (f"attention: {name}, {align}", _attention_shape(qs, ks, vs, align))
    for name, qs, ks, vs in _ATTENTION_SHAPES for align in ALIGNS
] + [
    ("output_layer: batch 0", _output_layer_shape((0, 4), 3)),
    ("output_layer: dv 1, n_out 1", _output_layer_shape((3, 1), 1)),
    ("vector_attention: dense, batch 0", _vector_shape("dense", (0, 3, 4), (0, 5, 4))),
    ("vector_attention: dense, Lq 0", _vector_shape("dense", (2, 0, 4), (2, 5, 4))),
    ("vector_attention: dense, Lk 0", _vector_shape("dense", (2, 3, 4), (2, 0, 4), mlp=True)),
    ("vector_attention: dense, C 1", _vector_shape("dense", (2, 3, 1), (2, 5, 1), mlp=True)),
    ("vector_attention: neighbour, N 0", _vector_shape("neighbour", (0, 4), (5, 4), s=3)),
    ("vector_attention: neighbour, S 0", _vector_shape("neighbour", (3, 4), (5, 4), s=0, mlp=True)),
    ("vector_attention: neighbour, M 0 (every index -1)", _vector_shape("neighbour", (3, 4), (0, 4), s=2)),
    ("vector_attention: neighbour, S 1, C 1", _vector_shape("neighbour", (3, 1), (5, 1), s=1)),
    ("knn: N 0", _knn_shape(0, 4, 3, 2)),
    ("knn: Nq 0", _knn_shape(10, 0, 3, 2)),
    ("knn: k 0", _knn_shape(10, None, 3, 0)),
    ("knn: k > N", _knn_shape(3, None, 2, 5)),
    ("knn: N 1, D 1", _knn_shape(1, None, 1, 1)),
    ("layer_norm: no rows", _layer_norm_shape((0, 5))),
    ("layer_norm: d 0", _layer_norm_shape((3, 0))),
    ("layer_norm: d 1 (zero variance)", _layer_norm_shape((4, 1))),
    ("layer_norm: 1-D x, no weight or bias", _layer_norm_shape((7,), affine=False)),
    ("MultiHeadAttention: batch 0", _mha_shape(0, 3, 5)),
    ("MultiHeadAttention: Lq 0", _mha_shape(2, 0, 5)),
    ("MultiHeadAttention: Lk 0", _mha_shape(2, 3, 0)),
    ("MultiHeadAttention: Lq 1, Lk 1", _mha_shape(2, 1, 1)),
    ("MultiHeadAttention: unbatched", _mha_shape(1, 4, 6, unbatched=True)),
    ("split_heads: (2, 5, 12) into 3, and merge_heads back", _split_merge_shape((2, 5, 12), 3)),
    ("split_heads: L 0", _split_merge_shape((2, 0, 8), 2)),
    ("merge_heads: one head of D 1", _split_merge_shape((4, 1), 1)),
    ("causal_mask: (5, 8)", _causal_mask_shape(5, 8)),
    ("causal_mask: (8, 5)", _causal_mask_shape(8, 5)),
    ("causal_mask: (0, 4)", _causal_mask_shape(0, 4)),
    ("sinusoidal_positional_encoding: (50, 9)", _pe_shape(50, 9)),
    ("sinusoidal_positional_encoding: length 0", _pe_shape(0, 4)),
    ("sinusoidal_positional_encoding: dim 0", _pe_shape(3, 0)),
    ("sinusoidal_positional_encoding: dim 1", _pe_shape(3, 1)),
])


@pytest.mark.parametrize("case", SHAPES, ids=ids(SHAPES))
def test_empty_and_size_one_shapes(rng, case):
    results, refs = case[1](rng)
    for r, ref in zip(results, refs):
        assert r.shape == ref.shape, (r.shape, ref.shape)
        np.testing.assert_allclose(r, ref, rtol=1e-5, atol=1e-6)


def misaligned(a):
    """A copy of `a` whose data starts one byte past an aligned address (as from a packed file)."""
    raw = np.zeros(a.nbytes + 1, np.uint8)
    b = np.frombuffer(raw.data, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
    b[...] = a
    assert not b.flags.aligned or a.itemsize == 1
    return b


def test_misaligned_operands_are_copied_not_read_misaligned(rng):
    # Loading a float through a misaligned pointer is undefined behaviour (UBSan flags it, some
    # CPUs fault): the binding refuses such operands, so the Python layer must copy them.
    q, k, v = randn(rng, (2, 5, 8)), randn(rng, (2, 7, 8)), randn(rng, (2, 7, 3))
    mask = randn(rng, (5, 7))
    params = additive_params(rng, 8, 8)
    want = sdpa(q, k, v, attn_mask=mask)
    np.testing.assert_array_equal(sdpa(*map(misaligned, (q, k, v)), attn_mask=misaligned(mask)), want)
    for score, p in (("additive", params), ("dot", None)):
        for align in ("softmax", "sparsemax"):
            want = fastattn.attention(q, k, v, score=score, align=align, params=p, attn_mask=mask)
            mp = None if p is None else {name: misaligned(x) for name, x in p.items()}
            got = fastattn.attention(*map(misaligned, (q, k, v)), score=score, align=align, params=mp,
                                     attn_mask=misaligned(mask))
            np.testing.assert_array_equal(got, want)
    c, w = misaligned(randn(rng, (4, 8))), misaligned(randn(rng, (6, 8)))
    np.testing.assert_array_equal(fastattn.output_layer(c, w), fastattn.output_layer(c.copy(), w.copy()))
    x, g = randn(rng, (4, 8)), randn(rng, (8,))
    np.testing.assert_array_equal(fastattn.layer_norm(misaligned(x), misaligned(g)), fastattn.layer_norm(x, g))
    idx = rng.integers(-1, 7, (5, 3))
    mlp = (randn(rng, (4, 8)), randn(rng, (4,)), randn(rng, (2, 4)), randn(rng, (2,)))
    pos = randn(rng, (5, 3, 8))
    want = fastattn.vector_attention(q[0], k[0], k[1], index=idx, pos=pos, weight_mlp=mlp)
    got = fastattn.vector_attention(*map(misaligned, (q[0], k[0], k[1])), index=misaligned(idx),
                                    pos=misaligned(pos), weight_mlp=tuple(map(misaligned, mlp)))
    np.testing.assert_array_equal(got, want)
    pts = randn(rng, (50, 3))
    np.testing.assert_array_equal(fastattn.knn(misaligned(pts), 4, queries=misaligned(pts[:7])),
                                  fastattn.knn(pts, 4, queries=pts[:7]))


@pytest.mark.no_sanitizer  # ~2.5e9 score pairs: seconds here, many minutes under ASan
def test_70000_squared_causal():
    # Lq = Lk = 70000: 4.9e9 (query, key) pairs, past 2^32, so 32-bit index arithmetic would wrap.
    # With zero queries every visible score is 0, so query i's output is the mean of the values
    # 0..i (causal), its lse log(i + 1). Values are small integers: every running sum is exact in
    # float32, so the answer is known to rounding, and a wrong row or a wrapped index shows.
    n, d = 70000, 2
    rng = np.random.default_rng(7)
    q = np.zeros((1, n, d), np.float32)
    k = randn(rng, (1, n, d))
    v = rng.integers(-4, 5, size=(1, n, 3)).astype(np.float32)
    out, lse = sdpa(q, k, v, causal=True, return_lse=True)
    expected = np.cumsum(v[0].astype(np.float64), axis=0) / np.arange(1, n + 1)[:, None]
    np.testing.assert_allclose(out[0], expected, rtol=0, atol=2e-6 * 4)
    np.testing.assert_allclose(lse[0], np.log(np.arange(1, n + 1)), rtol=1e-6)
    # the last query sees every key: the plain mean, and bottom_right with Lq = 1 agrees
    last = sdpa(q[:, -1:], k, v, causal="bottom_right")
    np.testing.assert_allclose(last[0, 0], v[0].astype(np.float64).mean(axis=0), atol=8e-6)


# ============================================================================= concurrency
# Each row: (id, make(rng) -> call), `call()` returning a list of arrays: a call of moderate size.


def _sdpa_call(rng, **opts):
    q, k, v = randn(rng, (2, 4, 150, 40)), randn(rng, (2, 2, 170, 40)), randn(rng, (2, 2, 170, 24))
    return lambda: list(sdpa(q, k, v, return_lse=True, **opts))


def _sdpa_decode_call(rng):
    q, k, v = randn(rng, (1, 2, 1, 64)), randn(rng, (1, 1, 6000, 64)), randn(rng, (1, 1, 6000, 64))
    return lambda: [sdpa(q, k, v)]


def _attention_call(rng, align, score="additive"):
    q, k, v = randn(rng, (2, 90, 16)), randn(rng, (2, 130, 16)), randn(rng, (2, 130, 8))
    params = additive_params(rng, 16, 16) if score == "additive" else None
    return lambda: list(fastattn.attention(q, k, v, score=score, align=align, params=params,
                                           return_weights=True))


def _attention_sdpa_call(rng, score):
    # The dot-type scores run on SDPA; their scaled, normalised or projected queries and keys live
    # in per-thread scratch buffers (fastattn._scratch).
    q, k, v = randn(rng, (2, 90, 16)), randn(rng, (2, 130, 16)), randn(rng, (2, 130, 8))
    params = {"W": randn(rng, (16, 16))} if score == "general" else None
    return lambda: [fastattn.attention(q, k, v, score=score, params=params)]


def _output_layer_call(rng):
    c, w, b = randn(rng, (200, 64)), randn(rng, (300, 64)), randn(rng, (300,))
    return lambda: [fastattn.output_layer(c, w, b)]


def _vector_call(rng, form, mlp):
    c, n = 64, 700
    if form == "dense":
        q, k, v = randn(rng, (2, 60, c)), randn(rng, (2, 200, c)), randn(rng, (2, 200, c))
        kw = {"attn_mask": rng.random((60, 200)) < 0.9}
    else:
        q, k, v = randn(rng, (n, c)), randn(rng, (n, c)), randn(rng, (n, c))
        kw = {"index": fastattn.knn(randn(rng, (n, 3)), 16), "pos": randn(rng, (n, 16, c))}
    if mlp:  # 64 -> 8 -> 8: the tiled path with per-thread projections
        kw["weight_mlp"] = (randn(rng, (8, c), scale=0.125), randn(rng, (8,)), randn(rng, (8, 8)), randn(rng, (8,)))
    else:
        kw["groups"] = 8
    return lambda: list(fastattn.vector_attention(q, k, v, return_weights=True, **kw))


def _knn_call(rng):
    pts, qs = randn(rng, (6000, 3)), randn(rng, (3000, 3))
    return lambda: [fastattn.knn(pts, 16), fastattn.knn(pts, 5, queries=qs)]


def _layer_norm_call(rng):
    x, w, b = randn(rng, (300, 384)), randn(rng, (384,)), randn(rng, (384,))
    return lambda: [fastattn.layer_norm(x, w, b)]


def _mha_call(rng, cached):
    layer, _ = _mha(rng, e=64, h=8, hkv=2)
    x = randn(rng, (2, 40, 64))
    if not cached:
        return lambda: list(layer(x, causal=True, need_weights=True))

    def decode():  # a cache per call: prefill 30 positions, then 10 one-token steps
        cache = layer.new_cache(2, 40)
        outs = [layer(x[:, :30], cache=cache, causal=True)[0]]
        outs += [layer(x[:, t:t + 1], cache=cache)[0] for t in range(30, 40)]
        return outs
    return decode


CALLS = table("concurrency", [
    ("scaled_dot_product_attention: causal", lambda rng: _sdpa_call(rng, causal=True)),
    ("scaled_dot_product_attention: window and kv_lengths",
     lambda rng: _sdpa_call(rng, window=(30, 5), kv_lengths=np.array([170, 77]))),
    ("scaled_dot_product_attention: decoding (split-KV)", _sdpa_decode_call),
] + [(f"attention: additive {align}", lambda rng, a=align: _attention_call(rng, a)) for align in ALIGNS] + [
    ("attention: dot softmax", lambda rng: _attention_call(rng, "softmax", "dot")),
    ("attention: general (SDPA path)", lambda rng: _attention_sdpa_call(rng, "general")),
    ("attention: cosine (SDPA path)", lambda rng: _attention_sdpa_call(rng, "cosine")),
    ("attention: scaled_dot (SDPA path)", lambda rng: _attention_sdpa_call(rng, "scaled_dot")),
    ("output_layer", _output_layer_call),
    ("vector_attention: dense, groups", lambda rng: _vector_call(rng, "dense", False)),
    ("vector_attention: dense, weight MLP", lambda rng: _vector_call(rng, "dense", True)),
    ("vector_attention: neighbour, groups", lambda rng: _vector_call(rng, "neighbour", False)),
    ("vector_attention: neighbour, weight MLP (tiled path)", lambda rng: _vector_call(rng, "neighbour", True)),
    ("knn", _knn_call),
    ("layer_norm", _layer_norm_call),
    ("MultiHeadAttention: causal, weights", lambda rng: _mha_call(rng, False)),
    ("MultiHeadAttention: KV cache decoding", lambda rng: _mha_call(rng, True)),
])


def test_concurrent_calls_match_serial(rng):
    calls = [make(rng) for _, make in CALLS]
    serial = [call() for call in calls]
    errors, results = [], {}
    barrier = threading.Barrier(6)

    def work(t):
        try:
            order = np.random.default_rng(t).permutation(len(calls))
            barrier.wait()
            for _ in range(2):
                for i in order:
                    results[(t, i)] = calls[i]()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    for (t, i), res in results.items():
        for got, want in zip(res, serial[i]):
            np.testing.assert_array_equal(got, want, err_msg=f"{CALLS[i][0]}, thread {t}")


def _gil_sdpa(rng):
    q, k, v = (randn(rng, (8, 3000, 64)) for _ in range(3))
    return lambda: sdpa(q, k, v)


def _gil_attention(rng):
    # about 0.15 s (AVX2, 2 threads); additive tanh in product form runs 10 G terms/s there
    q, k, v = randn(rng, (4000, 32)), randn(rng, (4000, 32)), randn(rng, (4000, 16))
    params = additive_params(rng, 32, 32, da=96)
    return lambda: fastattn.attention(q, k, v, score="additive", align="sparsemax", params=params)


def _gil_vector(rng):
    n, c = 100000, 64  # about 0.1 s on the tiled path (AVX2, 2 threads)
    q, k, v = randn(rng, (n, c)), randn(rng, (n, c)), randn(rng, (n, c))
    index = rng.integers(0, n, (n, 48))
    mlp = (randn(rng, (8, c), scale=0.125), randn(rng, (8,)), randn(rng, (8, 8)), randn(rng, (8,)))
    return lambda: fastattn.vector_attention(q, k, v, index=index, weight_mlp=mlp)


def _gil_knn(rng):
    pts = randn(rng, (200000, 3))
    return lambda: fastattn.knn(pts, 16)


def _gil_layer_norm(rng):
    x = randn(rng, (20000, 768))  # ~10 ms a call (memory-bound): ten calls to tell
    return lambda: [fastattn.layer_norm(x) for _ in range(10)]


def _gil_mha(rng):
    layer, _ = _mha(rng, e=256, h=4)
    x = randn(rng, (2, 2000, 256))
    return lambda: layer(x)


GIL = table("gil", [
    ("scaled_dot_product_attention", _gil_sdpa),
    ("attention: additive sparsemax (general kernel)", _gil_attention),
    ("vector_attention: neighbour, weight MLP", _gil_vector),
    ("knn: tree build and search", _gil_knn),
    ("layer_norm", _gil_layer_norm),
    ("MultiHeadAttention: projections (BLAS) and the SDPA kernel", _gil_mha),
])


@pytest.mark.parametrize("case", GIL, ids=ids(GIL))
def test_gil_released_while_kernels_run(rng, case):
    call = case[1](rng)
    span = {}

    def worker():
        t0 = time.perf_counter()
        call()
        span["t"] = (t0, time.perf_counter())

    th = threading.Thread(target=worker)
    last = time.perf_counter()
    max_gap, ticks = 0.0, 0
    th.start()
    while th.is_alive():  # this thread keeps running only if the worker let go of the GIL
        now = time.perf_counter()
        max_gap, last, ticks = max(max_gap, now - last), now, ticks + 1
    th.join()
    duration = span["t"][1] - span["t"][0]
    assert duration > 0.05, "the call is too short to tell"
    assert max_gap < 0.5 * duration, f"this thread stalled {max_gap:.3f} s during a {duration:.3f} s call"
    assert ticks > 1000


THREADS_CODE = r"""
import os, numpy as np, fastattn
def os_threads():
    return len(os.listdir("/proc/self/task"))
rng = np.random.default_rng(0)
q, k, v = (rng.standard_normal((4, 2, 600, 64)).astype(np.float32) for _ in range(3))
fastattn.set_num_threads(1)
base = os_threads()
fastattn.scaled_dot_product_attention(q, k, v)
one = os_threads()
fastattn.set_num_threads(3)
fastattn.scaled_dot_product_attention(q, k, v)
three = os_threads()
print(base, one, three, fastattn.get_num_threads())
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc/self/task (Linux)")
def test_thread_count_changes_take_effect():
    # A kernel told 1 thread starts no worker; told 3, the OpenMP runtime has 2 more threads.
    # BLAS is held to one thread so NumPy's own pool does not blur the count.
    if not fastattn.backends()["cpu"]["openmp"]:
        pytest.skip("built without OpenMP: one thread always")
    r = run_python(THREADS_CODE, timeout=300, OPENBLAS_NUM_THREADS=1, MKL_NUM_THREADS=1, OMP_NUM_THREADS=1)
    assert r.returncode == 0, r.stderr[-3000:]
    base, one, three, n = map(int, r.stdout.split())
    assert n == 3
    assert one == base, f"with 1 thread the kernel started workers: {base} -> {one} OS threads"
    assert three == base + 2, f"with 3 threads: {base} -> {three} OS threads, expected {base + 2}"


# ============================================================================= determinism
# Same inputs and thread count: bitwise identical results. Across thread counts: bitwise identical
# too, except where the work split depends on the thread count (split-KV decoding): there the
# results agree to ACROSS_THREADS_RTOL. (Across ISAs results differ in rounding; each is within
# the accuracy bound of the reference, checked per ISA above.)
ACROSS_THREADS_RTOL = 1e-6
SPLIT_BY_THREADS = {"scaled_dot_product_attention: decoding (split-KV)", "MultiHeadAttention: KV cache decoding"}
table("determinism", CALLS)


def test_deterministic_for_a_thread_count(rng, restore_threads):
    calls = [make(rng) for _, make in CALLS]
    by_threads = {}
    for n in (1, 2, 3):
        fastattn.set_num_threads(n)
        first = [call() for call in calls]
        for _ in range(2):
            for (name, _), call, want in zip(CALLS, calls, first):
                for got, w in zip(call(), want):
                    np.testing.assert_array_equal(got, w, err_msg=f"{name}, {n} threads, repeated")
        by_threads[n] = first
    for n in (2, 3):
        for (name, _), got_all, want_all in zip(CALLS, by_threads[n], by_threads[1]):
            for got, want in zip(got_all, want_all):
                if name in SPLIT_BY_THREADS:
                    np.testing.assert_allclose(got, want, rtol=ACROSS_THREADS_RTOL, atol=ACROSS_THREADS_RTOL)
                else:
                    np.testing.assert_array_equal(got, want, err_msg=f"{name}: {n} threads vs 1")


# ============================================================================= coverage of the tables


def test_every_entry_point_has_rows():
    public = set(fastattn.__all__)
    unknown = public - set(ARRAY_ENTRY_POINTS) - CONTROL - set(STATE)
    assert not unknown, (f"new public names {sorted(unknown)}: add them to ARRAY_ENTRY_POINTS (and rows to "
                         f"every table in tests/test_guarantees.py and tests/test_bad_input.py) or to CONTROL")
    import test_bad_input

    tables = dict(TABLES, bad_input=test_bad_input.CASES)
    for guarantee, rows in tables.items():
        covered = {row[0].split(":")[0] for row in rows}
        for entry in ARRAY_ENTRY_POINTS:
            if (guarantee, entry) not in EXEMPT:
                assert entry in covered, f"{entry} has no rows in the {guarantee!r} table"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
