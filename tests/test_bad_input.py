"""Bad input, as one table over every public entry point (README, "Guarantees"): each case raises
ValueError or TypeError whose message names the offending shapes or values; none crashes, and a
rejected out= is left untouched (never a silent copy into it).

A row: (id, call, error type, words the message must contain). The id starts with the public
name it calls; a new entry point appends its rows here (test_guarantees.py's
test_every_entry_point_has_rows checks that every entry point has some). Categories per entry
point: dtypes (int, bool, complex, object), mismatched shapes, non-broadcastable batches, wrong
mask shapes, bad option values, out= (shape, dtype, read-only, layout, overlap), indices out of
range or of a float dtype; for vector_attention also groups that do not divide C and mis-shaped
pos or weight-MLP arrays, for knn bad k and non-finite points; for MultiHeadAttention its
constructor, forward call, new_cache and load_state_dict (a rejected state dict leaves the layer
as it was). Detailed variants of the SDPA cases
are in test_errors.py, of attention's in test_attention.py, of vector_attention's and knn's in
test_vector_attention.py.
"""

import re

import numpy as np
import pytest

import fastattn

F32 = np.float32


def all_of(*words):
    """A regex that matches when every word occurs (as a whole token) in the message."""
    return "(?s)" + "".join(rf"(?=.*(?<![\w.]){re.escape(str(w))}(?![\w]))" for w in words)


def ones(*shape, dtype=F32):
    return np.ones(shape, dtype)


# ----------------------------------------------------------------------------- scaled_dot_product_attention
# query (2, 4, 7, 16), key/value (2, 4, 9, 16) unless a case says otherwise.


def sdpa(q=None, k=None, v=None, **kw):
    q = ones(2, 4, 7, 16) if q is None else q
    k = ones(2, 4, 9, 16) if k is None else k
    v = ones(2, 4, 9, 16) if v is None else v
    return lambda: fastattn.scaled_dot_product_attention(q, k, v, **kw)


def sdpa_out(make_out, **kw):
    """A call with out=make_out(): it must fail and leave out as it was."""
    def call():
        out = make_out()
        before = np.array(out, copy=True)
        try:
            fastattn.scaled_dot_product_attention(ones(2, 4, 7, 16), ones(2, 4, 9, 16), ones(2, 4, 9, 16),
                                                  out=out, **kw)
        finally:
            assert np.array_equal(np.asarray(out), before, equal_nan=True), "a rejected out= was written"
    return call


def filled(shape, dtype=F32, order="C"):
    return np.full(shape, 7, dtype, order=order)


def read_only(shape):
    a = filled(shape)
    a.flags.writeable = False
    return a


def sdpa_overlap():
    """out= that is also the query: refused before anything is written."""
    def call():
        q = filled((2, 4, 7, 16))
        try:
            fastattn.scaled_dot_product_attention(q, ones(2, 4, 9, 16), ones(2, 4, 9, 16), out=q)
        finally:
            assert np.all(q == 7), "a rejected out= was written"
    return call


def sdpa_out_overlapping_mask():
    """out= whose rows overlap the additive mask's later rows: refused (the kernel would write
    mask rows before other queries read them)."""
    def call():
        n_out, n_mask = 2 * 4 * 7 * 16, 2 * 4 * 7 * 9
        buf = np.zeros(n_out // 2 + n_mask, F32)  # the mask starts halfway through out
        out, mask = buf[:n_out].reshape(2, 4, 7, 16), buf[n_out // 2:].reshape(2, 4, 7, 9)
        try:
            fastattn.scaled_dot_product_attention(ones(2, 4, 7, 16), ones(2, 4, 9, 16), ones(2, 4, 9, 16),
                                                  attn_mask=mask, out=out)
        finally:
            assert np.all(buf == 0), "a rejected out= was written"
    return call


def misaligned_out():
    raw = np.zeros(2 * 4 * 7 * 16 * 4 + 1, np.uint8)
    return np.frombuffer(raw.data, F32, count=2 * 4 * 7 * 16, offset=1).reshape(2, 4, 7, 16)


SDPA = "scaled_dot_product_attention"
SDPA_CASES = [
    (f"{SDPA}: int32 query", sdpa(q=ones(2, 4, 7, 16, dtype=np.int32)), TypeError, ["query", "int32"]),
    (f"{SDPA}: bool key", sdpa(k=ones(2, 4, 9, 16, dtype=bool)), TypeError, ["key", "bool"]),
    (f"{SDPA}: complex64 value", sdpa(v=ones(2, 4, 9, 16, dtype=np.complex64)), TypeError, ["value", "complex64"]),
    (f"{SDPA}: object query", sdpa(q=ones(2, 4, 7, 16, dtype=object)), TypeError, ["query", "object"]),
    (f"{SDPA}: complex mask", sdpa(attn_mask=ones(7, 9, dtype=np.complex64)), TypeError, ["attn_mask", "complex64"]),
    (f"{SDPA}: float kv_lengths", sdpa(kv_lengths=np.array([1.0, 2.0])), TypeError, ["kv_lengths", "float64"]),
    (f"{SDPA}: head dims differ", sdpa(q=ones(2, 4, 7, 17)), ValueError, [17, 16]),
    (f"{SDPA}: key and value lengths differ", sdpa(v=ones(2, 4, 10, 16)), ValueError, ["(2, 4, 9, 16)", "(2, 4, 10, 16)"]),
    (f"{SDPA}: 1-D query", sdpa(q=ones(16)), ValueError, ["query", "(16,)"]),
    (f"{SDPA}: query heads not a multiple", sdpa(q=ones(2, 6, 7, 16)), ValueError, [6, 4]),
    (f"{SDPA}: batch dims do not broadcast", sdpa(k=ones(3, 4, 9, 16), v=ones(3, 4, 9, 16)), ValueError,
     ["query", "(2,)", "key", "(3,)"]),
    (f"{SDPA}: bool mask shape", sdpa(attn_mask=ones(7, 8, dtype=bool)), ValueError, ["(7, 8)", "(2, 4, 7, 9)"]),
    (f"{SDPA}: float mask shape", sdpa(attn_mask=ones(3, 1, 9)), ValueError, ["(3, 1, 9)", "(2, 4, 7, 9)"]),
    (f"{SDPA}: mask adds batch dims", sdpa(attn_mask=ones(5, 2, 4, 7, 9, dtype=bool)), ValueError, ["(5, 2, 4, 7, 9)"]),
    (f"{SDPA}: kv_lengths shape", sdpa(kv_lengths=np.array([1, 2, 3])), ValueError, ["(3,)", "(2,)"]),
    (f"{SDPA}: causal name", sdpa(causal="bottom-left"), ValueError, ["bottom-left"]),
    (f"{SDPA}: negative window", sdpa(window=(-3, 0)), ValueError, [-3]),
    (f"{SDPA}: window not a pair", sdpa(window=5), ValueError, [5]),
    (f"{SDPA}: window of floats", sdpa(window=(2.5, 1)), ValueError, [2.5]),
    (f"{SDPA}: window a dict", sdpa(window={0: 5, 1: 5}), ValueError, ["pair", "{0: 5, 1: 5}"]),
    (f"{SDPA}: scale a string", sdpa(scale="big"), TypeError, ["big"]),
    (f"{SDPA}: scale complex", sdpa(scale=1j), TypeError, ["1j"]),
    (f"{SDPA}: scale beyond float64", sdpa(scale=10**400), ValueError, ["beyond float64"]),
    (f"{SDPA}: backend name", sdpa(backend="tpu"), ValueError, ["tpu", "cpu"]),
    (f"{SDPA}: kv_lengths past Lk", sdpa(kv_lengths=np.array([3, 12])), ValueError, [12, 9]),
    (f"{SDPA}: kv_lengths negative", sdpa(kv_lengths=-1), ValueError, [-1]),
    (f"{SDPA}: out shape", sdpa_out(lambda: filled((2, 4, 7, 15))), ValueError, ["(2, 4, 7, 15)", "(2, 4, 7, 16)"]),
    (f"{SDPA}: out dtype", sdpa_out(lambda: filled((2, 4, 7, 16), np.float64)), ValueError, ["float64", "float32"]),
    (f"{SDPA}: out read-only", sdpa_out(lambda: read_only((2, 4, 7, 16))), ValueError, ["read-only"]),
    (f"{SDPA}: out not C-contiguous", sdpa_out(lambda: filled((2, 4, 7, 16), order="F")), ValueError,
     ["C-contiguous"]),
    (f"{SDPA}: out strided", sdpa_out(lambda: filled((2, 4, 7, 32))[..., ::2]), ValueError, ["C-contiguous"]),
    (f"{SDPA}: out overlaps the query", sdpa_overlap(), ValueError, ["overlaps"]),
    (f"{SDPA}: out overlaps the mask", sdpa_out_overlapping_mask(), ValueError, ["overlaps", "attn_mask"]),
    (f"{SDPA}: out misaligned", sdpa_out(misaligned_out), ValueError, ["not aligned", "pass an aligned array"]),
    (f"{SDPA}: out a list", sdpa(out=[[0.0] * 16] * 7, q=ones(7, 16), k=ones(9, 16), v=ones(9, 16)), ValueError,
     ["list"]),
]


# ----------------------------------------------------------------------------- attention
# query (2, 5), keys (7, 3), values (7, 11); score "general" with W (3, 5) unless a case says otherwise.
_W = ones(3, 5)
_ADDITIVE = {"W_q": ones(12, 5), "W_k": ones(12, 3), "w": ones(12)}


def attention(q=None, k=None, v=None, **kw):
    q = ones(2, 5) if q is None else q
    k = ones(7, 3) if k is None else k
    v = ones(7, 11) if v is None else v
    kw.setdefault("score", "general")
    if kw["score"] == "general":
        kw.setdefault("params", {"W": _W})
    return lambda: fastattn.attention(q, k, v, **kw)


ATT = "attention"
ATTENTION_CASES = [
    (f"{ATT}: int32 query", attention(q=ones(2, 5, dtype=np.int32)), TypeError, ["query", "int32"]),
    (f"{ATT}: complex64 keys", attention(k=ones(7, 3, dtype=np.complex64)), TypeError, ["keys", "complex64"]),
    (f"{ATT}: object values", attention(v=ones(7, 11, dtype=object)), TypeError, ["values", "object"]),
    (f"{ATT}: bool query", attention(q=ones(2, 5, dtype=bool)), TypeError, ["query", "bool"]),
    (f"{ATT}: int64 param W", attention(params={"W": ones(3, 5, dtype=np.int64)}), TypeError, ["W", "int64"]),
    (f"{ATT}: complex mask", attention(attn_mask=ones(2, 7, dtype=np.complex128)), TypeError, ["complex128"]),
    (f"{ATT}: dot needs one width", attention(score="dot", q=ones(2, 11), k=ones(7, 13)), ValueError, [11, 13]),
    (f"{ATT}: W shape", attention(params={"W": ones(9, 5)}), ValueError, ["(9, 5)", "(3, 5)"]),
    (f"{ATT}: additive da mismatch", attention(score="additive", params=dict(_ADDITIVE, W_k=ones(14, 3))),
     ValueError, [12, 14]),
    (f"{ATT}: keys and values lengths", attention(v=ones(8, 11)), ValueError, ["(7, 3)", "(8, 11)"]),
    (f"{ATT}: 0-d query", attention(q=np.float32(1.0)), ValueError, ["query"]),
    (f"{ATT}: batch dims do not broadcast", attention(q=ones(4, 2, 5), k=ones(6, 7, 3), v=ones(6, 7, 11)),
     ValueError, ["query", "(4,)", "keys", "(6,)"]),
    (f"{ATT}: mask shape", attention(attn_mask=ones(2, 9, dtype=bool)), ValueError, ["(2, 9)", "(2, 7)"]),
    (f"{ATT}: unknown score", attention(score="bogus_score"), ValueError, ["bogus_score", "additive"]),
    (f"{ATT}: unknown align", attention(align="bogus_align"), ValueError, ["bogus_align", "sparsemax"]),
    (f"{ATT}: unknown act", attention(score="additive", params=dict(_ADDITIVE, act="bogus_act")), ValueError,
     ["bogus_act", "tanh"]),
    (f"{ATT}: missing param", attention(params={}), ValueError, ["W"]),
    (f"{ATT}: unexpected param", attention(params={"W": _W, "extra_param": _W}), ValueError, ["extra_param"]),
    (f"{ATT}: params not a dict", attention(params=[_W]), TypeError, ["list"]),
    (f"{ATT}: backend name", attention(backend="tpu"), ValueError, ["tpu", "cpu"]),
]


# ----------------------------------------------------------------------------- output_layer
# context (3, 4), weight (5, 4), bias (5,) unless a case says otherwise.


def output_layer(c=None, w=None, b=None):
    c = ones(3, 4) if c is None else c
    w = ones(5, 4) if w is None else w
    return lambda: fastattn.output_layer(c, w, b)


OUT = "output_layer"
OUTPUT_LAYER_CASES = [
    (f"{OUT}: int64 context", output_layer(c=ones(3, 4, dtype=np.int64)), TypeError, ["context", "int64"]),
    (f"{OUT}: complex64 weight", output_layer(w=ones(5, 4, dtype=np.complex64)), TypeError, ["weight", "complex64"]),
    (f"{OUT}: object bias", output_layer(b=ones(5, dtype=object)), TypeError, ["bias", "object"]),
    (f"{OUT}: weight width", output_layer(w=ones(5, 6)), ValueError, ["(3, 4)", "(5, 6)"]),
    (f"{OUT}: weight 1-D", output_layer(w=ones(4)), ValueError, ["(4,)"]),
    (f"{OUT}: bias shape", output_layer(b=ones(6)), ValueError, ["(5,)", "(6,)"]),
    (f"{OUT}: 0-d context", output_layer(c=np.float32(2.0)), ValueError, ["()"]),
]


# ----------------------------------------------------------------------------- vector_attention
# query (5, 8), key/value (6, 8) (dense form), or with index (5, 3) into the 6 rows (neighbour
# form); weight MLP 8 -> 4 -> 2 where a case says so.
_C = 8
_IDX = np.zeros((5, 3), np.int64)
_MLP = (ones(4, _C), ones(4), ones(2, 4), ones(2))


def vector(q=None, k=None, v=None, **kw):
    q = ones(5, _C) if q is None else q
    k = ones(6, _C) if k is None else k
    v = ones(6, _C) if v is None else v
    return lambda: fastattn.vector_attention(q, k, v, **kw)


def _mlp(i, a):
    return _MLP[:i] + (a,) + _MLP[i + 1:]


VEC = "vector_attention"
VECTOR_CASES = [
    (f"{VEC}: int32 query", vector(q=ones(5, _C, dtype=np.int32)), TypeError, ["query", "int32"]),
    (f"{VEC}: bool key", vector(k=ones(6, _C, dtype=bool)), TypeError, ["key", "bool"]),
    (f"{VEC}: complex64 value", vector(v=ones(6, _C, dtype=np.complex64)), TypeError, ["value", "complex64"]),
    (f"{VEC}: object query", vector(q=ones(5, _C, dtype=object)), TypeError, ["query", "object"]),
    (f"{VEC}: int32 pos", vector(pos=ones(5, 6, _C, dtype=np.int32)), TypeError, ["pos", "int32"]),
    (f"{VEC}: int64 weight MLP W1", vector(weight_mlp=_mlp(0, ones(4, _C, dtype=np.int64))), TypeError,
     ["W1", "int64"]),
    (f"{VEC}: complex mask", vector(attn_mask=ones(5, 6, dtype=np.complex64)), TypeError,
     ["attn_mask", "complex64"]),
    (f"{VEC}: int mask", vector(attn_mask=ones(5, 6, dtype=np.int64)), TypeError, ["attn_mask", "int64"]),
    (f"{VEC}: float index", vector(index=np.zeros((5, 3), np.float32)), TypeError, ["index", "float32"]),
    (f"{VEC}: bool index", vector(index=np.zeros((5, 3), bool)), TypeError, ["index", "bool"]),
    (f"{VEC}: channel counts differ", vector(k=ones(6, _C + 1), v=ones(6, _C + 1)), ValueError,
     ["(5, 8)", "(6, 9)"]),
    (f"{VEC}: key and value rows differ", vector(v=ones(7, _C)), ValueError, ["(6, 8)", "(7, 8)"]),
    (f"{VEC}: 1-D query", vector(q=ones(_C)), ValueError, ["query", "(8,)"]),
    (f"{VEC}: zero channels", vector(q=ones(5, 0), k=ones(6, 0), v=ones(6, 0)), ValueError, ["C", "(5, 0)"]),
    (f"{VEC}: batch dims do not broadcast", vector(q=ones(2, 5, _C), k=ones(3, 6, _C), v=ones(3, 6, _C)),
     ValueError, ["query", "(2,)", "key", "(3,)"]),
    (f"{VEC}: batched query with index", vector(q=ones(2, 5, _C), index=_IDX), ValueError, ["query", "(2, 5, 8)"]),
    (f"{VEC}: index rows differ from query", vector(index=np.zeros((4, 3), np.int64)), ValueError,
     ["index", "(4, 3)", "(5, S)"]),
    (f"{VEC}: 1-D index", vector(index=np.zeros(5, np.int64)), ValueError, ["index", "(5,)"]),
    (f"{VEC}: index past M", vector(index=np.full((5, 3), 6)), ValueError, ["index", "[-1, 6)", 6]),
    (f"{VEC}: index below -1", vector(index=np.full((5, 3), -2)), ValueError, ["index", -2]),
    (f"{VEC}: index huge (uint64)", vector(index=np.full((5, 3), 2 ** 63 + 5, np.uint64)), ValueError,
     ["index", 2 ** 63 + 5]),
    (f"{VEC}: groups not dividing C", vector(groups=3), ValueError, ["groups=3", "C=8"]),
    (f"{VEC}: groups 0", vector(groups=0), ValueError, ["groups=0"]),
    (f"{VEC}: groups a float", vector(groups=2.0), TypeError, ["groups", "2.0"]),
    (f"{VEC}: groups a bool", vector(groups=True), TypeError, ["groups", "True"]),
    (f"{VEC}: groups differ from W2", vector(weight_mlp=_MLP, groups=4), ValueError, ["groups=4", 2]),
    (f"{VEC}: unknown relation", vector(relation="divide"), ValueError, ["relation", "divide", "subtract"]),
    (f"{VEC}: unknown sharing", vector(sharing="tiled"), ValueError, ["sharing", "tiled", "blocked"]),
    (f"{VEC}: relation not a string", vector(relation=1), ValueError, ["relation", 1]),
    (f"{VEC}: pos channels", vector(pos=ones(5, 6, _C - 1)), ValueError, ["pos", "(5, 6, 7)", "(5, 6, 8)"]),
    (f"{VEC}: pos slots (neighbour)", vector(index=_IDX, pos=ones(5, 4, _C)), ValueError,
     ["pos", "(5, 4, 8)", "(5, 3, 8)"]),
    (f"{VEC}: pos 2-D", vector(pos=ones(6, _C)), ValueError, ["pos", "(6, 8)"]),
    (f"{VEC}: pos adds batch dims", vector(pos=ones(2, 5, 6, _C)), ValueError, ["pos", "(2, 5, 6, 8)"]),
    (f"{VEC}: weight MLP W1 width", vector(weight_mlp=_mlp(0, ones(4, _C + 1))), ValueError,
     ["W1", "(4, 8)", "(4, 9)"]),
    (f"{VEC}: weight MLP b1 shape", vector(weight_mlp=_mlp(1, ones(5))), ValueError, ["b1", "(4,)", "(5,)"]),
    (f"{VEC}: weight MLP W2 shape", vector(weight_mlp=_mlp(2, ones(2, 3))), ValueError, ["W2", "(2, 4)", "(2, 3)"]),
    (f"{VEC}: weight MLP b2 shape", vector(weight_mlp=_mlp(3, ones(3))), ValueError, ["b2", "(2,)", "(3,)"]),
    (f"{VEC}: weight MLP W1 1-D", vector(weight_mlp=_mlp(0, ones(_C))), ValueError, ["weight_mlp", "(8,)"]),
    (f"{VEC}: weight MLP of 3", vector(weight_mlp=_MLP[:3]), ValueError, ["weight_mlp", "W1, b1, W2, b2"]),
    (f"{VEC}: weight MLP a dict", vector(weight_mlp={"W1": _MLP[0]}), ValueError, ["weight_mlp"]),
    (f"{VEC}: weight MLP hidden 0", vector(weight_mlp=(ones(0, _C), ones(0), ones(2, 0), ones(2))), ValueError,
     ["weight_mlp", "(0, 8)"]),
    (f"{VEC}: mask shape", vector(attn_mask=ones(5, 7, dtype=bool)), ValueError, ["attn_mask", "(5, 7)", "(5, 6)"]),
    (f"{VEC}: mask shape (neighbour)", vector(index=_IDX, attn_mask=ones(5, 6, dtype=bool)), ValueError,
     ["(5, 6)", "(5, 3)"]),
    (f"{VEC}: backend name", vector(backend="tpu"), ValueError, ["tpu", "cpu"]),
]


# ----------------------------------------------------------------------------- knn
# points (10, 3) unless a case says otherwise.
_PTS = np.random.default_rng(0).random((10, 3))


def knn(points=None, k=2, **kw):
    points = _PTS if points is None else points
    return lambda: fastattn.knn(points, k, **kw)


def _with_bad(value):
    a = _PTS.copy()
    a[3, 1] = value
    return a


KNN_CASES = [
    ("knn: int64 points", knn(np.zeros((4, 3), np.int64)), TypeError, ["points", "int64"]),
    ("knn: complex points", knn(np.zeros((4, 3), np.complex64)), TypeError, ["points", "complex64"]),
    ("knn: object queries", knn(queries=np.zeros((4, 3), object)), TypeError, ["queries", "object"]),
    ("knn: k negative", knn(k=-1), ValueError, ["k", ">= 0", -1]),
    ("knn: k a float", knn(k=2.5), TypeError, ["k", 2.5]),
    ("knn: k a bool", knn(k=True), TypeError, ["k", "True"]),
    ("knn: k a string", knn(k="4"), TypeError, ["k", "'4'"]),
    ("knn: 1-D points", knn(_PTS[:, 0]), ValueError, ["points", "(10,)"]),
    ("knn: 3-D points", knn(np.zeros((2, 5, 3))), ValueError, ["points", "(2, 5, 3)"]),
    ("knn: zero-width points", knn(np.zeros((10, 0))), ValueError, ["points", "(10, 0)"]),
    ("knn: queries of another D", knn(queries=np.zeros((4, 2))), ValueError, ["queries", "D=3", "(4, 2)"]),
    ("knn: 1-D queries", knn(queries=np.zeros(3)), ValueError, ["queries", "(3,)"]),
    ("knn: NaN point", knn(_with_bad(np.nan)), ValueError, ["points", "finite", "3, 1", "nan"]),
    ("knn: Inf point", knn(_with_bad(np.inf)), ValueError, ["points", "finite", "3, 1", "inf"]),
    ("knn: -Inf query", knn(queries=_with_bad(-np.inf)), ValueError, ["queries", "finite", "3, 1", "-inf"]),
]


# ----------------------------------------------------------------------------- layer_norm
# x (3, 4) unless a case says otherwise.


def layer_norm(x=None, weight=None, bias=None, **kw):
    x = ones(3, 4) if x is None else x
    return lambda: fastattn.layer_norm(x, weight, bias, **kw)


LN = "layer_norm"
LAYER_NORM_CASES = [
    (f"{LN}: int32 x", layer_norm(ones(3, 4, dtype=np.int32)), TypeError, ["x", "int32"]),
    (f"{LN}: complex64 weight", layer_norm(weight=ones(4, dtype=np.complex64)), TypeError, ["weight", "complex64"]),
    (f"{LN}: object bias", layer_norm(bias=ones(4, dtype=object)), TypeError, ["bias", "object"]),
    (f"{LN}: bool x", layer_norm(ones(3, 4, dtype=bool)), TypeError, ["x", "bool"]),
    (f"{LN}: 0-d x", layer_norm(np.float32(1.0)), ValueError, ["x", "()"]),
    (f"{LN}: weight shape", layer_norm(weight=ones(5)), ValueError, ["weight", "(4,)", "(5,)"]),
    (f"{LN}: bias 2-D", layer_norm(bias=ones(1, 4)), ValueError, ["bias", "(1, 4)"]),
    (f"{LN}: eps negative", layer_norm(eps=-1.0), ValueError, ["eps", "-1.0"]),
    (f"{LN}: eps NaN", layer_norm(eps=float("nan")), ValueError, ["eps", "nan"]),
    (f"{LN}: eps a string", layer_norm(eps="small"), TypeError, ["eps", "'small'"]),
]


# ----------------------------------------------------------------------------- MultiHeadAttention
# A layer of embed_dim 8, 2 heads; query (2, 5, 8) unless a case says otherwise. Rows cover the
# constructor, the forward call, load_state_dict and new_cache.
MHA = "MultiHeadAttention"


def _layer(**kw):
    return fastattn.MultiHeadAttention(8, 2, **kw)


def mha(q=None, k=None, v=None, **kw):
    def call():
        layer = _layer()
        query = ones(2, 5, 8) if q is None else q
        return layer(query, k, v, **kw)
    return call


def mha_load(change):
    """load_state_dict with a changed copy of the layer's own state: refused, the layer unchanged."""
    def call():
        layer = _layer(seed=0)
        before = layer.state_dict()
        state = layer.state_dict()
        change(state)
        try:
            layer.load_state_dict(state)
        finally:
            after = layer.state_dict()
            assert all(np.array_equal(before[n], after[n]) for n in before), "a rejected state dict was loaded"
    return call


def _set(name, value):
    def change(state):
        state[name] = value
    return change


def _drop(name):
    def change(state):
        del state[name]
    return change


def mha_cache(make_cache, **kw):
    def call():
        layer = _layer()
        layer(ones(2, 5, 8), cache=make_cache(layer), **kw)
    return call


MHA_CASES = [
    (f"{MHA}: embed_dim not a multiple of num_heads", lambda: fastattn.MultiHeadAttention(10, 4), ValueError,
     [10, 4]),
    (f"{MHA}: num_heads 0", lambda: fastattn.MultiHeadAttention(8, 0), ValueError, ["num_heads", 0]),
    (f"{MHA}: num_heads a float", lambda: fastattn.MultiHeadAttention(8, 2.0), TypeError, ["num_heads", "2.0"]),
    (f"{MHA}: num_kv_heads not dividing", lambda: fastattn.MultiHeadAttention(12, 6, num_kv_heads=4), ValueError,
     [6, 4]),
    (f"{MHA}: int dtype", lambda: fastattn.MultiHeadAttention(8, 2, dtype=np.int32), TypeError, ["int32"]),
    (f"{MHA}: int64 query", mha(ones(2, 5, 8, dtype=np.int64)), TypeError, ["query", "int64"]),
    (f"{MHA}: complex key", mha(k=ones(2, 6, 8, dtype=np.complex64)), TypeError, ["key", "complex64"]),
    (f"{MHA}: query features", mha(ones(2, 5, 7)), ValueError, ["query", "(2, 5, 7)", 8]),
    (f"{MHA}: 4-D query", mha(ones(1, 2, 5, 8)), ValueError, ["query", "(1, 2, 5, 8)"]),
    (f"{MHA}: batched query, unbatched key", mha(k=ones(6, 8)), ValueError, ["(2, 5, 8)", "(6, 8)"]),
    (f"{MHA}: key and value lengths", mha(k=ones(2, 6, 8), v=ones(2, 7, 8)), ValueError, ["(2, 6, 8)", "(2, 7, 8)"]),
    (f"{MHA}: batch sizes", mha(k=ones(3, 6, 8)), ValueError, ["(2, 5, 8)", "(3, 6, 8)"]),
    (f"{MHA}: key_padding_mask shape", mha(key_padding_mask=np.zeros((2, 4), bool)), ValueError,
     ["key_padding_mask", "(2, 5)", "(2, 4)"]),
    (f"{MHA}: int key_padding_mask", mha(key_padding_mask=np.zeros((2, 5), np.int64)), TypeError,
     ["key_padding_mask", "int64"]),
    (f"{MHA}: attn_mask shape", mha(attn_mask=np.ones((5, 6), bool)), ValueError, ["(5, 6)", "(2, 2, 5, 5)"]),
    (f"{MHA}: complex attn_mask", mha(attn_mask=ones(5, 5, dtype=np.complex64)), TypeError,
     ["attn_mask", "complex64"]),
    (f"{MHA}: causal name", mha(causal="bottom-left"), ValueError, ["bottom-left"]),
    (f"{MHA}: cache of another layer", mha_cache(lambda layer: _layer().new_cache(2, 10)), ValueError,
     ["cache", "new_cache"]),
    (f"{MHA}: cache not a KVCache", mha_cache(lambda layer: {}), ValueError, ["cache", "KVCache"]),
    (f"{MHA}: cache full", mha_cache(lambda layer: layer.new_cache(2, 4)), ValueError, [4, 5]),
    (f"{MHA}: cache batch size", mha_cache(lambda layer: layer.new_cache(3, 10)), ValueError, [3, 2]),
    (f"{MHA}: new_cache max_length 0", lambda: _layer().new_cache(2, 0), ValueError, ["max_length", 0]),
    (f"{MHA}: load_state_dict missing name", mha_load(_drop("out_proj.bias")), ValueError,
     ["missing", "out_proj.bias"]),
    (f"{MHA}: load_state_dict unexpected name", mha_load(_set("extra_weight", ones(8))), ValueError,
     ["unexpected", "extra_weight"]),
    (f"{MHA}: load_state_dict wrong shape", mha_load(_set("out_proj.weight", ones(8, 9))), ValueError,
     ["out_proj.weight", "(8, 9)", "(8, 8)"]),
    (f"{MHA}: load_state_dict int values", mha_load(_set("in_proj_bias", np.zeros(24, np.int64))), TypeError,
     ["in_proj_bias", "int64"]),
]


# ----------------------------------------------------------------------------- layout helpers
LAYOUT_CASES = [
    ("split_heads: not a multiple", lambda: fastattn.split_heads(ones(2, 5, 12), 5), ValueError, [12, 5]),
    ("split_heads: 1-D", lambda: fastattn.split_heads(ones(12), 3), ValueError, ["(12,)"]),
    ("split_heads: num_heads 0", lambda: fastattn.split_heads(ones(2, 12), 0), ValueError, ["num_heads", 0]),
    ("split_heads: num_heads a float", lambda: fastattn.split_heads(ones(2, 12), 2.0), TypeError,
     ["num_heads", "2.0"]),
    ("merge_heads: 2-D", lambda: fastattn.merge_heads(ones(5, 4)), ValueError, ["(5, 4)"]),
    ("causal_mask: negative length", lambda: fastattn.causal_mask(-1, 3), ValueError, ["lq", -1]),
    ("causal_mask: float length", lambda: fastattn.causal_mask(3, 2.5), TypeError, ["lk", "2.5"]),
    ("causal_mask: alignment name", lambda: fastattn.causal_mask(3, 3, "bottom-left"), ValueError,
     ["bottom-left", "top_left"]),
    ("sinusoidal_positional_encoding: negative dim", lambda: fastattn.sinusoidal_positional_encoding(4, -2),
     ValueError, ["dim", -2]),
    ("sinusoidal_positional_encoding: float length", lambda: fastattn.sinusoidal_positional_encoding(4.0, 2),
     TypeError, ["length", "4.0"]),
    ("sinusoidal_positional_encoding: base 0", lambda: fastattn.sinusoidal_positional_encoding(4, 2, base=0),
     ValueError, ["base", 0]),
    ("sinusoidal_positional_encoding: int dtype",
     lambda: fastattn.sinusoidal_positional_encoding(4, 2, dtype=np.int32), TypeError, ["int32"]),
]


# ----------------------------------------------------------------------------- backend control
CONTROL_CASES = [
    ("set_num_threads: 0", lambda: fastattn.set_num_threads(0), ValueError, [0]),
    ("set_num_threads: negative", lambda: fastattn.set_num_threads(-4), ValueError, [-4]),
    ("set_num_threads: a float", lambda: fastattn.set_num_threads(2.5), TypeError, ["float"]),
    ("set_num_threads: a string", lambda: fastattn.set_num_threads("2"), TypeError, ["str"]),
    ("set_cuda_tf32: a string", lambda: fastattn.set_cuda_tf32("false"), TypeError, ["'false'"]),
    ("set_cuda_tf32: an int", lambda: fastattn.set_cuda_tf32(1), TypeError, [1]),
    ("use_backend: unknown name", lambda: fastattn.use_backend("bogus").__enter__(), ValueError, ["bogus", "cpu"]),
]

CASES = (SDPA_CASES + ATTENTION_CASES + OUTPUT_LAYER_CASES + VECTOR_CASES + KNN_CASES + LAYER_NORM_CASES
         + MHA_CASES + LAYOUT_CASES + CONTROL_CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, restore_threads):
    _, call, error, words = case
    with pytest.raises(error, match=all_of(*words)) as info:
        call()
    assert type(info.value) in (ValueError, TypeError)  # not a subclass from deep inside NumPy


def test_library_usable_after_every_bad_call():
    for _, call, error, _ in CASES:
        with pytest.raises(error):
            call()
    q = np.ones((2, 3, 4), F32)
    np.testing.assert_array_equal(fastattn.scaled_dot_product_attention(q, q, q), q)
