"""MultiHeadAttention against PyTorch's nn.MultiheadAttention (weights copied through state dicts)
and against the float64 reference (grouped-query heads, other dtypes); state dicts, the BERT
loader, and the errors."""

import numpy as np
import pytest

import fastattn
from helpers import BF16, torch
from reference_layers import mha_reference

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")

# (embed_dim, num_heads, kdim, vdim, bias): awkward head dims (12, 8, 5, 17) and both weight forms.
CONFIGS = [(36, 3, None, None, True), (40, 8, None, None, False), (40, 5, 7, 11, True),
           (34, 2, 3, 3, False), (64, 4, None, None, True)]
TOL = 2e-5  # the bound on |fastattn - torch|, outputs and weights


def _torch_layer(e, h, kdim, vdim, bias):
    layer = torch.nn.MultiheadAttention(e, h, kdim=kdim, vdim=vdim, bias=bias, batch_first=True)
    layer.eval()
    if bias:  # PyTorch starts its biases at zero; make them count
        with torch.no_grad():
            layer.in_proj_bias.normal_()
            layer.out_proj.bias.normal_()
    return layer


def _inputs(rng, b, lq, lk, e, kdim, vdim, cross):
    q = rng.standard_normal((b, lq, e)).astype(np.float32)
    if not cross:
        return q, q, q
    k = rng.standard_normal((b, lk, kdim or e)).astype(np.float32)
    v = rng.standard_normal((b, lk, vdim or e)).astype(np.float32)
    return q, k, v


def _padding(rng, b, lk, kind):
    """Bool key padding (True = pad), never a fully padded row (PyTorch gives NaN there)."""
    pad = np.zeros((b, lk), bool)
    if kind == "suffix":
        for i in range(b):
            pad[i, rng.integers(1, lk + 1):] = True
    elif kind == "scattered":
        pad = rng.random((b, lk)) < 0.3
        pad[:, rng.integers(0, lk)] = False
    return pad


@needs_torch
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("case", ["self", "cross", "suffix_padding", "scattered_padding",
                                  "bool_mask", "float_mask", "causal", "mask_and_padding",
                                  "float_padding", "per_batch_head_mask"])
@pytest.mark.parametrize("need_weights,average", [(False, True), (True, True), (True, False)])
def test_matches_torch(rng, config, case, need_weights, average):
    e, h, kdim, vdim, bias = config
    tl = _torch_layer(e, h, kdim, vdim, bias)
    layer = fastattn.MultiHeadAttention(e, h, kdim=kdim, vdim=vdim, bias=bias)
    layer.load_state_dict(tl.state_dict())
    cross = case != "self" and case != "causal" or kdim is not None
    b, lq = 3, int(rng.integers(1, 12))
    lk = int(rng.integers(1, 15)) if cross else lq
    q, k, v = _inputs(rng, b, lq, lk, e, kdim, vdim, cross)
    kw, tkw = {}, {}
    if case in ("suffix_padding", "scattered_padding", "mask_and_padding"):
        pad = _padding(rng, b, lk, "scattered" if case == "scattered_padding" else "suffix")
        kw["key_padding_mask"] = pad
        tkw["key_padding_mask"] = torch.from_numpy(pad)
    if case == "float_padding":
        fpad = rng.standard_normal((b, lk)).astype(np.float32)
        kw["key_padding_mask"] = fpad
        tkw["key_padding_mask"] = torch.from_numpy(fpad)
    if case in ("bool_mask", "mask_and_padding"):
        am = rng.random((lq, lk)) < 0.7
        am[:, 0] = True  # every query sees a key: PyTorch's layer gives NaN otherwise
        kw["attn_mask"] = am
        tkw["attn_mask"] = torch.from_numpy(~am)  # PyTorch: True = not allowed
    if case == "float_mask":
        fm = rng.standard_normal((lq, lk)).astype(np.float32)
        kw["attn_mask"] = fm
        tkw["attn_mask"] = torch.from_numpy(fm)
    if case == "per_batch_head_mask":
        am = rng.random((b, h, lq, lk)) < 0.7
        am[..., 0] = True
        kw["attn_mask"] = am
        tkw["attn_mask"] = torch.from_numpy(~am.reshape(b * h, lq, lk))  # PyTorch's 3-D form
    if case == "causal":
        kw["causal"] = True
        # PyTorch's is_causal is only a hint next to the explicit mask it needs.
        tkw["attn_mask"] = torch.from_numpy(~fastattn.causal_mask(lq, lk))
        tkw["is_causal"] = True
    out, weights = layer(q, k, v, need_weights=need_weights, average_attn_weights=average, **kw)
    with torch.no_grad():
        tout, tweights = tl(*(torch.from_numpy(a) for a in (q, k, v)), need_weights=need_weights,
                            average_attn_weights=average, **tkw)
    assert out.shape == (b, lq, e) and out.dtype == np.float32
    np.testing.assert_allclose(out, tout.numpy(), rtol=0, atol=TOL)
    if need_weights:
        assert weights.shape == tuple(tweights.shape) and weights.dtype == np.float32
        np.testing.assert_allclose(weights, tweights.numpy(), rtol=0, atol=TOL)
    else:
        assert weights is None and tweights is None


@needs_torch
def test_unbatched_matches_torch(rng):
    tl = _torch_layer(24, 3, None, None, True)
    layer = fastattn.MultiHeadAttention(24, 3)
    layer.load_state_dict(tl.state_dict())
    x = rng.standard_normal((6, 24)).astype(np.float32)
    pad = np.array([False, False, True, False, True, False])
    out, w = layer(x, key_padding_mask=pad, need_weights=True, average_attn_weights=False)
    with torch.no_grad():
        tx = torch.from_numpy(x)
        tout, tw = tl(tx, tx, tx, key_padding_mask=torch.from_numpy(pad), average_attn_weights=False)
    assert out.shape == (6, 24) and w.shape == (3, 6, 6)
    np.testing.assert_allclose(out, tout.numpy(), rtol=0, atol=TOL)
    np.testing.assert_allclose(w, tw.numpy(), rtol=0, atol=TOL)


@needs_torch
@pytest.mark.parametrize("config", CONFIGS)
def test_state_dict_round_trips_exactly(config):
    e, h, kdim, vdim, bias = config
    tl = _torch_layer(e, h, kdim, vdim, bias)
    tstate = tl.state_dict()
    layer = fastattn.MultiHeadAttention(e, h, kdim=kdim, vdim=vdim, bias=bias)
    layer.load_state_dict(tstate)
    state = layer.state_dict()
    assert list(state) == list(tstate)  # PyTorch's names, in PyTorch's order
    for name, a in state.items():
        assert a.dtype == np.float32 and np.array_equal(a, tstate[name].numpy()), name
    # back into a fresh PyTorch layer: identical tensors
    other = torch.nn.MultiheadAttention(e, h, kdim=kdim, vdim=vdim, bias=bias, batch_first=True)
    other.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    for name, t in other.state_dict().items():
        assert torch.equal(t, tstate[name]), name


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_state_dict_round_trip_own_layers(dtype):
    if dtype == "bfloat16" and BF16 is None:
        pytest.skip("ml_dtypes not installed")
    dt = BF16 if dtype == "bfloat16" else np.dtype(dtype)
    a = fastattn.MultiHeadAttention(48, 6, num_kv_heads=2, kdim=5, vdim=9, dtype=dt, seed=1)
    b = fastattn.MultiHeadAttention(48, 6, num_kv_heads=2, kdim=5, vdim=9, dtype=dt, seed=2)
    sa = a.state_dict()
    assert {k: v.shape for k, v in sa.items()} == {
        "q_proj_weight": (48, 48), "k_proj_weight": (16, 5), "v_proj_weight": (16, 9),
        "in_proj_bias": (80,), "out_proj.weight": (48, 48), "out_proj.bias": (48,)}
    assert not np.array_equal(b.state_dict()["q_proj_weight"], sa["q_proj_weight"])
    b.load_state_dict(sa)
    for name, x in b.state_dict().items():
        assert x.dtype == dt and np.array_equal(x, sa[name]), name
    sa["out_proj.bias"][:] = 7  # state_dict() hands out copies
    assert not np.any(a.state_dict()["out_proj.bias"] == 7)


def test_seed_reproducible_and_init_scale():
    a = fastattn.MultiHeadAttention(64, 4, seed=5).state_dict()
    b = fastattn.MultiHeadAttention(64, 4, seed=5).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    bound = np.sqrt(6 / (64 + 3 * 64))  # Xavier-uniform of the packed (3E, E) weight, as PyTorch
    w = a["in_proj_weight"]
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert not a["in_proj_bias"].any() and not a["out_proj.bias"].any()


@pytest.mark.parametrize("h,hkv", [(8, 2), (6, 1), (4, 4), (6, 3)])
@pytest.mark.parametrize("kind", ["self", "cross_padded", "causal_masked", "kdim"])
def test_grouped_query_against_reference(rng, h, hkv, kind):
    e = 8 * h  # D = 8
    kdim = vdim = 13 if kind == "kdim" else None
    layer = fastattn.MultiHeadAttention(e, h, num_kv_heads=hkv, kdim=kdim, vdim=vdim,
                                        seed=int(rng.integers(1 << 30)))
    state = layer.state_dict()
    state["in_proj_bias"] = rng.standard_normal(state["in_proj_bias"].shape).astype(np.float32)
    state["out_proj.bias"] = rng.standard_normal(e).astype(np.float32)
    layer.load_state_dict(state)
    b, lq = 2, 9
    lk = 9 if kind in ("self", "causal_masked") else 14
    q = rng.standard_normal((b, lq, e)).astype(np.float32)
    k = q if lk == lq and kind != "kdim" else rng.standard_normal((b, lk, kdim or e)).astype(np.float32)
    kw = {}
    if kind == "cross_padded":
        kw["key_padding_mask"] = _padding(rng, b, lk, "scattered")
    if kind == "causal_masked":
        kw["causal"] = True
        kw["attn_mask"] = rng.random((b, 1, lq, lk)) < 0.8
    out, w = layer(q, k, k, need_weights=True, average_attn_weights=False, **kw)
    ref, ref_w = mha_reference(state, h, hkv, q, k, k, **kw)
    np.testing.assert_allclose(out, ref, rtol=0, atol=TOL)
    np.testing.assert_allclose(w, ref_w, rtol=0, atol=TOL)
    avg = layer(q, k, k, need_weights=True, **kw)[1]
    np.testing.assert_allclose(avg, ref_w.mean(axis=1), rtol=0, atol=TOL)


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float16", 2e-2), ("bfloat16", 1.5e-1)])
def test_other_dtypes_against_reference(rng, dtype, tol):
    if dtype == "bfloat16" and BF16 is None:
        pytest.skip("ml_dtypes not installed")
    dt = BF16 if dtype == "bfloat16" else np.dtype(dtype)
    layer = fastattn.MultiHeadAttention(32, 4, num_kv_heads=2, dtype=dt, seed=3)
    x = rng.standard_normal((2, 11, 32)).astype(dt)
    pad = _padding(rng, 2, 11, "suffix")
    out, w = layer(x, key_padding_mask=pad, causal=True, need_weights=True)
    ref, ref_w = mha_reference(layer.state_dict(), 4, 2, x, key_padding_mask=pad, causal=True)
    assert out.dtype == dt and w.dtype == dt
    np.testing.assert_allclose(out.astype(np.float64), ref, rtol=0, atol=tol * np.abs(ref).max())
    np.testing.assert_allclose(w.astype(np.float64), ref_w.mean(axis=1), rtol=0, atol=tol)


def test_unseen_rows_are_zero_not_nan(rng):
    layer = fastattn.MultiHeadAttention(16, 2, bias=False, seed=0)
    x = rng.standard_normal((2, 5, 16)).astype(np.float32)
    am = np.ones((5, 5), bool)
    am[2] = False  # query 2 sees nothing
    pad = np.zeros((2, 5), bool)
    pad[1] = True  # batch 1: every key is padding
    out, w = layer(x, attn_mask=am, key_padding_mask=pad, need_weights=True,
                   average_attn_weights=False)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(w))
    assert np.all(out[0, 2] == 0) and np.all(out[1] == 0)  # no bias: zero attention, zero output
    assert np.all(w[0, :, 2] == 0) and np.all(w[1] == 0)
    np.testing.assert_allclose(w[0, :, [0, 1, 3, 4]].sum(-1), 1, atol=1e-6)


@pytest.mark.parametrize("average", [True, False])
def test_no_keys_gives_bias_output_and_empty_weights(rng, average):
    layer = fastattn.MultiHeadAttention(16, 4, seed=0)
    x = rng.standard_normal((2, 5, 16)).astype(np.float32)
    out, w = layer(x, x[:, :0], x[:, :0], need_weights=True, average_attn_weights=average)
    assert w.shape == ((2, 5, 0) if average else (2, 4, 5, 0))
    np.testing.assert_array_equal(out, np.broadcast_to(layer.state_dict()["out_proj.bias"], out.shape))


def test_input_dtype_and_layout_do_not_matter(rng):
    layer = fastattn.MultiHeadAttention(24, 4, seed=0)
    x = rng.standard_normal((3, 7, 24))
    ref, _ = layer(x.astype(np.float32))
    big = np.zeros((3, 14, 48))
    big[:, ::2, 10:34] = x  # strided view, float64
    out, _ = layer(big[:, ::2, 10:34])
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)


def test_self_and_cross_paths_agree(rng):
    # self-attention takes one packed GEMM; passing copies takes three: same numbers
    layer = fastattn.MultiHeadAttention(40, 5, seed=0)
    x = rng.standard_normal((2, 6, 40)).astype(np.float32)
    a, _ = layer(x)
    b, _ = layer(x, x.copy(), x.copy())
    c, _ = layer(x, x.copy())  # key is value: one GEMM for both
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    np.testing.assert_allclose(a, c, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------ BERT-style weights
def _bert_weights(rng, e, prefix, bias=True):
    w = {}
    for name in ("self.query", "self.key", "self.value", "output.dense"):
        w[f"{prefix}{name}.weight"] = rng.standard_normal((e, e)).astype(np.float32) / np.sqrt(e)
        if bias:
            w[f"{prefix}{name}.bias"] = rng.standard_normal(e).astype(np.float32)
    w[f"{prefix}output.LayerNorm.weight"] = np.ones(e, np.float32)  # not the layer's: ignored
    return w


@pytest.mark.parametrize("bias", [True, False])
def test_hf_bert_loader(rng, bias):
    e, h, prefix = 48, 6, "encoder.layer.3.attention."
    weights = _bert_weights(rng, e, prefix, bias)
    layer = fastattn.MultiHeadAttention.from_hf_bert(weights, h, prefix=prefix)
    assert layer.embed_dim == e and layer.num_heads == h and layer.bias == bias
    x = rng.standard_normal((2, 10, e)).astype(np.float32)
    pad = _padding(rng, 2, 10, "suffix")
    out, _ = layer(x, key_padding_mask=pad)
    # BERT by hand: q, k, v per nn.Linear, softmax(q k^T / sqrt(d) + padding), output dense
    lin = {n: (weights[f"{prefix}{n}.weight"].astype(np.float64),
               weights.get(f"{prefix}{n}.bias", np.zeros(e)).astype(np.float64))
           for n in ("self.query", "self.key", "self.value", "output.dense")}
    x64 = x.astype(np.float64)
    q, k, v = (x64 @ lin[n][0].T + lin[n][1] for n in ("self.query", "self.key", "self.value"))
    split = lambda a: a.reshape(2, 10, h, e // h).transpose(0, 2, 1, 3)
    s = split(q) @ split(k).transpose(0, 1, 3, 2) / np.sqrt(e // h) + np.where(pad, -1e9, 0)[:, None, None]
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ctx = (p @ split(v)).transpose(0, 2, 1, 3).reshape(2, 10, e)
    np.testing.assert_allclose(out, ctx @ lin["output.dense"][0].T + lin["output.dense"][1],
                               rtol=0, atol=TOL)
    other = fastattn.MultiHeadAttention(e, h, bias=bias)
    other.load_hf_bert(weights, prefix)
    assert all(np.array_equal(other.state_dict()[k], v) for k, v in layer.state_dict().items())


def test_hf_bert_loader_errors(rng):
    weights = _bert_weights(rng, 16, "")
    del weights["self.key.weight"]
    with pytest.raises(ValueError, match="self.key.weight"):
        fastattn.MultiHeadAttention.from_hf_bert(weights, 2)
    weights = _bert_weights(rng, 16, "")
    del weights["output.dense.bias"]
    with pytest.raises(ValueError, match="output.dense.bias"):
        fastattn.MultiHeadAttention.from_hf_bert(weights, 2)
    with pytest.raises(ValueError, match="self.query.weight"):
        fastattn.MultiHeadAttention.from_hf_bert(_bert_weights(rng, 16, "a."), 2, prefix="b.")
    # Biases of wrong lengths whose total is right loaded shifted into the wrong heads.
    weights = _bert_weights(rng, 16, "")
    weights["self.query.bias"], weights["self.key.bias"] = weights["self.query.bias"][:15], np.zeros(17, np.float32)
    with pytest.raises(ValueError, match=r"self.query.bias has shape \(15,\), expected \(16,\)"):
        fastattn.MultiHeadAttention.from_hf_bert(weights, 2)
    weights = _bert_weights(rng, 16, "")
    weights["output.dense.weight"] = weights["output.dense.weight"][:, :15]
    with pytest.raises(ValueError, match=r"output \(16, 15\)"):
        fastattn.hf.bert_attention_state_dict(weights)


# ------------------------------------------------------------------------ errors
def test_constructor_errors():
    with pytest.raises(ValueError, match=r"embed_dim \(10\).*num_heads \(3\)"):
        fastattn.MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match=r"num_heads \(6\).*num_kv_heads \(4\)"):
        fastattn.MultiHeadAttention(12, 6, num_kv_heads=4)
    with pytest.raises(ValueError, match="embed_dim must be >= 1"):
        fastattn.MultiHeadAttention(0, 1)
    with pytest.raises(TypeError, match="num_heads must be an int"):
        fastattn.MultiHeadAttention(8, 2.0)
    with pytest.raises(TypeError, match="int32"):
        fastattn.MultiHeadAttention(8, 2, dtype=np.int32)


def test_call_errors(rng):
    layer = fastattn.MultiHeadAttention(16, 2, kdim=5, vdim=6)
    q = rng.standard_normal((2, 4, 16)).astype(np.float32)
    k = rng.standard_normal((2, 7, 5)).astype(np.float32)
    v = rng.standard_normal((2, 7, 6)).astype(np.float32)
    with pytest.raises(ValueError, match=r"key must be \(B, L, 5\)"):
        layer(q)  # key defaults to query, of the wrong width
    with pytest.raises(ValueError, match=r"query must be \(B, L, 16\).*\(2, 4, 15\)"):
        layer(q[..., :15], k, v)
    with pytest.raises(ValueError, match="agree in batch"):
        layer(q, k, v[:, :6])
    with pytest.raises(ValueError, match="agree in batch"):
        layer(q[:1], k, v)
    with pytest.raises(ValueError, match="all be batched"):
        layer(q[0], k, v)
    with pytest.raises(TypeError, match="int64"):
        layer(q, k.astype(np.int64), v)
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(2, 7\)"):
        layer(q, k, v, key_padding_mask=np.zeros((2, 4), bool))
    with pytest.raises(TypeError, match="key_padding_mask"):
        layer(q, k, v, key_padding_mask=np.zeros((2, 7), np.int32))
    with pytest.raises(ValueError, match=r"attn_mask of shape \(3, 7\) does not broadcast to \(2, 2, 4, 7\)"):
        layer(q, k, v, attn_mask=np.ones((3, 7), bool))
    with pytest.raises(ValueError, match="causal must be"):
        layer(q, k, v, causal="diagonal")


def test_load_state_dict_errors():
    layer = fastattn.MultiHeadAttention(8, 2)
    good = layer.state_dict()
    bad = dict(good, bias_k=np.zeros((1, 1, 8), np.float32))
    with pytest.raises(ValueError, match=r"unexpected \['bias_k'\]"):
        layer.load_state_dict(bad)
    bad = {k: v for k, v in good.items() if k != "in_proj_bias"}
    with pytest.raises(ValueError, match=r"missing \['in_proj_bias'\]"):
        layer.load_state_dict(bad)
    bad = dict(good, **{"out_proj.weight": np.zeros((8, 7), np.float32), "out_proj.bias": np.ones(8)})
    with pytest.raises(ValueError, match=r"'out_proj.weight' has shape \(8, 7\), expected \(8, 8\)"):
        layer.load_state_dict(bad)
    assert np.array_equal(layer.state_dict()["out_proj.bias"], good["out_proj.bias"])  # unchanged
    with pytest.raises(TypeError, match="in_proj_bias"):
        layer.load_state_dict(dict(good, in_proj_bias=np.zeros(24, np.int64)))
    with pytest.raises(TypeError, match="must be a mapping.*got list"):
        layer.load_state_dict(list(good.items()))
    separate = fastattn.MultiHeadAttention(8, 2, kdim=3)
    with pytest.raises(ValueError, match="missing.*q_proj_weight"):
        separate.load_state_dict(good)


@pytest.mark.parametrize("pad_kind,mask_kind", [("float", "bool"), ("bool", "float"),
                                                ("float", "float"), ("bool", "bool")])
def test_padding_and_mask_combinations(rng, pad_kind, mask_kind):
    layer = fastattn.MultiHeadAttention(24, 4, num_kv_heads=2, seed=int(rng.integers(1 << 30)))
    b, lq, lk = 3, 5, 8
    q = rng.standard_normal((b, lq, 24)).astype(np.float32)
    k = rng.standard_normal((b, lk, 24)).astype(np.float32)
    if pad_kind == "bool":
        pad = _padding(rng, b, lk, "scattered")
    else:
        pad = rng.standard_normal((b, lk)).astype(np.float32)
        pad[0, 3] = -np.inf
    if mask_kind == "bool":
        am = rng.random((b, 1, lq, lk)) < 0.7
    else:
        am = rng.standard_normal((lq, lk)).astype(np.float32)
        am[1, :] = -np.inf  # query 1 sees nothing: zeros
    out, w = layer(q, k, k, key_padding_mask=pad, attn_mask=am, need_weights=True,
                   average_attn_weights=False)
    ref, ref_w = mha_reference(layer.state_dict(), 4, 2, q, k, k, key_padding_mask=pad,
                               attn_mask=am)
    np.testing.assert_allclose(out, ref, rtol=0, atol=TOL)
    np.testing.assert_allclose(w, ref_w, rtol=0, atol=TOL)


_ISA_CHECK = """
import numpy as np, fastattn
from reference_layers import mha_reference
rng = np.random.default_rng(%d)
for e, h, hkv in ((48, 6, 2), (40, 5, 5), (36, 3, 1)):
    layer = fastattn.MultiHeadAttention(e, h, num_kv_heads=hkv, seed=int(rng.integers(1 << 30)))
    x = rng.standard_normal((2, 19, e)).astype(np.float32)
    pad = np.zeros((2, 19), bool); pad[1, 13:] = True; pad[0, 2] = True
    out, w = layer(x, key_padding_mask=pad, causal=True, need_weights=True, average_attn_weights=False)
    ref, ref_w = mha_reference(layer.state_dict(), h, hkv, x, key_padding_mask=pad, causal=True)
    assert np.abs(out - ref).max() <= 2e-5 and np.abs(w - ref_w).max() <= 2e-5
    cache = layer.new_cache(2, 19)
    steps = [layer(x[:, t:t + 1], cache=cache, causal=True)[0] for t in range(19)]
    assert np.abs(np.concatenate(steps, 1) - layer(x, causal=True)[0]).max() <= 1e-5
    assert fastattn.last_kernel().startswith("cpu/%s/"), fastattn.last_kernel()
print("OK")
"""


@pytest.mark.parametrize("isa", fastattn.backends()["cpu"]["available_isas"])
def test_every_isa(isa, rng):
    from helpers import run_python

    r = run_python(_ISA_CHECK % (int(rng.integers(1 << 31)), isa), timeout=120,
                   FASTATTN_CPU_ISA=isa)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]
