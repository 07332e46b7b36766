"""KV-cache decoding: feeding a sequence in pieces equals feeding it whole (bottom-right causal),
padding is remembered with the cached positions, and a full or foreign cache is an error."""

import numpy as np
import pytest

import fastattn
from reference_layers import mha_reference


def _pieces(rng, length):
    """Random cut points: a prefill chunk, then single tokens and small chunks."""
    cuts = [0, int(rng.integers(1, length))]
    while cuts[-1] < length:
        cuts.append(min(length, cuts[-1] + int(rng.choice([1, 1, 1, 2, 3]))))
    return list(zip(cuts[:-1], cuts[1:]))


def _layer(rng, e, h, hkv, dtype=np.float32):
    layer = fastattn.MultiHeadAttention(e, h, num_kv_heads=hkv, dtype=dtype,
                                        seed=int(rng.integers(1 << 30)))
    state = layer.state_dict()
    state["in_proj_bias"] = rng.standard_normal(state["in_proj_bias"].shape).astype(dtype)
    layer.load_state_dict(state)
    return layer


@pytest.mark.parametrize("e,h,hkv", [(64, 8, 8), (64, 8, 2), (48, 6, 1), (40, 5, 5)])
@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_pieces_equal_whole(rng, e, h, hkv, dtype, tol):
    layer = _layer(rng, e, h, hkv, dtype)
    b, length = 3, 37
    x = rng.standard_normal((b, length, e)).astype(dtype)
    whole, whole_w = layer(x, causal=True, need_weights=True, average_attn_weights=False)
    ref, _ = mha_reference(layer.state_dict(), h, hkv, x, causal=True)
    np.testing.assert_allclose(whole, ref, rtol=0, atol=tol)
    cache = layer.new_cache(b, 40)
    for start, end in _pieces(rng, length):
        out, w = layer(x[:, start:end], cache=cache, causal=True, need_weights=True,
                       average_attn_weights=False)
        assert cache.length == end
        np.testing.assert_allclose(out, whole[:, start:end], rtol=0, atol=tol)
        np.testing.assert_allclose(w, whole_w[:, :, start:end, :end], rtol=0, atol=tol)


def test_token_by_token_equals_whole_unbatched(rng):
    layer = _layer(rng, 32, 4, 2)
    x = rng.standard_normal((12, 32)).astype(np.float32)
    whole, _ = layer(x, causal=True)
    cache = layer.new_cache(1, 12)
    steps = [layer(x[t:t + 1], cache=cache, causal=True)[0] for t in range(12)]
    np.testing.assert_allclose(np.concatenate(steps), whole, rtol=0, atol=1e-5)


def test_left_padded_batch(rng):
    # Batched generation with prompts of different lengths, padded on the left: the padding is
    # cached with its positions and stays invisible to every later step.
    layer = _layer(rng, 32, 4, 4)
    b, prompt, steps = 3, 6, 4
    x = rng.standard_normal((b, prompt + steps, 32)).astype(np.float32)
    pad = np.zeros((b, prompt + steps), bool)
    pad[1, :2] = True
    pad[2, :5] = True
    whole, _ = layer(x, causal=True, key_padding_mask=pad)
    ref, _ = mha_reference(layer.state_dict(), 4, 4, x, causal=True, key_padding_mask=pad)
    np.testing.assert_allclose(whole, ref, rtol=0, atol=1e-5)
    cache = layer.new_cache(b, prompt + steps)
    out, _ = layer(x[:, :prompt], cache=cache, causal=True, key_padding_mask=pad[:, :prompt])
    np.testing.assert_allclose(out, whole[:, :prompt], rtol=0, atol=1e-5)
    assert np.array_equal(cache.padding[:, :prompt], pad[:, :prompt])
    for t in range(prompt, prompt + steps):
        out, _ = layer(x[:, t:t + 1], cache=cache, causal=True)
        np.testing.assert_allclose(out, whole[:, t:t + 1], rtol=0, atol=1e-5)


def test_non_causal_cache_and_mask(rng):
    # Without causal the new queries see every cached and every new key; attn_mask spans them all.
    layer = _layer(rng, 24, 3, 3)
    x = rng.standard_normal((2, 10, 24)).astype(np.float32)
    cache = layer.new_cache(2, 10)
    layer(x[:, :6], cache=cache)
    am = rng.random((4, 10)) < 0.7
    am[:, 0] = True
    out, _ = layer(x[:, 6:], cache=cache, attn_mask=am)
    full_mask = np.ones((10, 10), bool)
    full_mask[6:] = am
    ref, _ = mha_reference(layer.state_dict(), 3, 3, x, attn_mask=full_mask)
    np.testing.assert_allclose(out, ref[:, 6:], rtol=0, atol=1e-5)


def test_cache_holds_projected_heads_and_reset(rng):
    layer = _layer(rng, 16, 4, 2)
    x = rng.standard_normal((2, 5, 16)).astype(np.float32)
    cache = layer.new_cache(2, 8)
    assert cache.key.shape == (2, 2, 8, 4) and cache.key.dtype == np.float32
    layer(x, cache=cache, causal=True)
    state = layer.state_dict()
    k = x @ state["in_proj_weight"][16:24].T + state["in_proj_bias"][16:24]
    np.testing.assert_allclose(cache.key[:, :, :5], k.reshape(2, 5, 2, 4).transpose(0, 2, 1, 3),
                               rtol=0, atol=1e-5)
    cache.reset()
    assert cache.length == 0 and not cache.padding.any()
    out, _ = layer(x, cache=cache, causal=True)
    np.testing.assert_allclose(out, layer(x, causal=True)[0], rtol=0, atol=1e-6)


def test_cache_errors(rng):
    layer = _layer(rng, 16, 2, 2)
    x = rng.standard_normal((2, 5, 16)).astype(np.float32)
    cache = layer.new_cache(2, 8)
    layer(x, cache=cache, causal=True)
    with pytest.raises(ValueError, match=r"cache is full: 5 positions cached \+ 5 new > max_length 8"):
        layer(x, cache=cache, causal=True)
    assert cache.length == 5  # unchanged
    with pytest.raises(ValueError, match=r"attn_mask of shape \(3, 3\) does not broadcast to \(2, 2, 3, 8\)"):
        layer(x[:, :3], cache=cache, attn_mask=np.ones((3, 3), bool))
    assert cache.length == 5  # nothing was cached by the failed call
    with pytest.raises(ValueError, match="batch of 2, the inputs have batch 1"):
        layer(x[:1, :1], cache=cache)
    with pytest.raises(ValueError, match="made by this layer"):
        _layer(rng, 16, 2, 2)(x[:, :1], cache=cache)
    with pytest.raises(ValueError, match="made by this layer"):
        layer(x[:, :1], cache="cache")
    with pytest.raises(TypeError, match="must be bool"):
        layer(x[:, :1], cache=cache, key_padding_mask=np.zeros((2, 1), np.float32))
    with pytest.raises(ValueError, match="max_length must be >= 1"):
        layer.new_cache(2, 0)
    out, _ = layer(x[:, :3], cache=cache, causal=True)  # still usable: exactly full now
    assert cache.length == 8


def test_decoder_example_cached_equals_uncached():
    import os
    import sys

    examples = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
    sys.path.insert(0, examples)
    try:
        import kv_cache_decoder as example
    finally:
        sys.path.remove(examples)
    model = example.TinyDecoder(dim=64, heads=4, kv_heads=2, max_length=40, seed=3)
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, len(example.ALPHABET), (2, 7))
    noise = rng.gumbel(size=(2, 30, len(example.ALPHABET))).astype(np.float32)
    tokens, logits, _ = example.generate(model, prompt, noise, use_cache=True)
    full_tokens, full_logits, _ = example.generate(model, prompt, noise, use_cache=False)
    assert np.array_equal(tokens, full_tokens)
    np.testing.assert_allclose(logits, full_logits, rtol=0, atol=1e-5 * np.abs(full_logits).max())
