"""Bad input, as one table over every public entry point (README, "Guarantees"): each case raises
ValueError or TypeError whose message names the offending shapes or values; none crashes, and a
rejected out= is left untouched (never a silent copy into it).

A row: (id, call, error type, words the message must contain). The id starts with the public
name it calls; a new entry point appends its rows here (test_guarantees.py's
test_every_entry_point_has_rows checks that every entry point has some). Categories per entry
point: dtypes (int, bool, complex, object), mismatched shapes, non-broadcastable batches, wrong
mask shapes, bad option values, out= (shape, dtype, read-only, layout, overlap), indices out of
range. Detailed variants of the SDPA cases are in test_errors.py, of attention's in
test_attention.py.
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
    (f"{SDPA}: scale a string", sdpa(scale="big"), TypeError, ["big"]),
    (f"{SDPA}: scale complex", sdpa(scale=1j), TypeError, ["1j"]),
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


# ----------------------------------------------------------------------------- backend control
CONTROL_CASES = [
    ("set_num_threads: 0", lambda: fastattn.set_num_threads(0), ValueError, [0]),
    ("set_num_threads: negative", lambda: fastattn.set_num_threads(-4), ValueError, [-4]),
    ("set_num_threads: a float", lambda: fastattn.set_num_threads(2.5), TypeError, ["float"]),
    ("set_num_threads: a string", lambda: fastattn.set_num_threads("2"), TypeError, ["str"]),
    ("use_backend: unknown name", lambda: fastattn.use_backend("bogus").__enter__(), ValueError, ["bogus", "cpu"]),
]

CASES = SDPA_CASES + ATTENTION_CASES + OUTPUT_LAYER_CASES + CONTROL_CASES


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
