"""A tiny autoregressive decoder on fastattn, to show what the KV cache does.

A decoder-only transformer (token embedding + sinusoidal positions, pre-LayerNorm blocks of
grouped-query causal self-attention and a ReLU MLP, output projection) samples a continuation of
a prompt twice, with the same random draws (Gumbel-max sampling, noise drawn up front):

  - with a KV cache: the prompt is fed once, then each step feeds one token; every attention layer
    projects only that token and attends over its cache (fastattn.MultiHeadAttention(...,
    cache=cache, causal=True));
  - without: each step feeds the whole sequence so far again.

Both must produce the same tokens and the same logits (to float32 rounding); the cached steps cost
about the same at every length, the uncached ones grow with it. The weights are random (seeded):
the point is the mechanics, not the text.

    python examples/kv_cache_decoder.py [--steps 192] [--prompt-length 16]
"""

from __future__ import annotations

import argparse
import os
import time

# The MLP and output projections run on NumPy's OpenBLAS, the attention on fastattn's OpenMP
# threads: after each matmul OpenBLAS's idle threads spin for a while and take the cores from the
# kernel that follows, so the uncached steps looked flat (16 ms at every length on 2 cores). Ask
# them to sleep sooner; OpenBLAS reads this when NumPy is first imported, so it must come first.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402

import fastattn  # noqa: E402

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,;:!?-'ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789()[]{}<>/\\|@#$%^"


class TinyDecoder:
    def __init__(self, vocab: int = len(ALPHABET), dim: int = 128, heads: int = 8,
                 kv_heads: int = 2, layers: int = 2, max_length: int = 1024, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.embed = rng.standard_normal((vocab, dim)).astype(np.float32)
        self.positions = fastattn.sinusoidal_positional_encoding(max_length, dim)
        self.max_length = max_length
        ones, zeros = np.ones(dim, np.float32), np.zeros(dim, np.float32)
        self.blocks = [{
            "attention": fastattn.MultiHeadAttention(dim, heads, num_kv_heads=kv_heads,
                                                     seed=seed + 1 + i),
            "norm1": (ones, zeros), "norm2": (ones, zeros),
            "up": (rng.standard_normal((4 * dim, dim)) / np.sqrt(dim)).astype(np.float32),
            "down": (rng.standard_normal((dim, 4 * dim)) / np.sqrt(4 * dim)).astype(np.float32),
        } for i in range(layers)]
        self.unembed = (rng.standard_normal((vocab, dim)) / np.sqrt(dim)).astype(np.float32)

    def new_caches(self, batch: int) -> list:
        return [b["attention"].new_cache(batch, self.max_length) for b in self.blocks]

    def __call__(self, tokens: np.ndarray, start: int, caches=None) -> np.ndarray:
        """Logits (B, T, vocab) of tokens (B, T) at positions start .. start + T - 1. With caches,
        positions before `start` come from them (and these T are appended); without, start = 0."""
        x = self.embed[tokens] + self.positions[start:start + tokens.shape[1]]
        for i, block in enumerate(self.blocks):
            h = fastattn.layer_norm(x, *block["norm1"])
            attended, _ = block["attention"](h, causal=True,
                                             cache=None if caches is None else caches[i])
            x = x + attended
            h = fastattn.layer_norm(x, *block["norm2"])
            x = x + np.maximum(h @ block["up"].T, 0) @ block["down"].T
        return fastattn.layer_norm(x) @ self.unembed.T


def generate(model: TinyDecoder, prompt: np.ndarray, noise: np.ndarray, use_cache: bool):
    """A sampled continuation, token t = argmax(logits + noise[:, t]) (Gumbel noise: a draw from
    softmax(logits)): (tokens (B, steps), logits of each step (B, steps, vocab), seconds per step)."""
    steps = noise.shape[1]
    tokens = prompt
    caches = model.new_caches(prompt.shape[0]) if use_cache else None
    chosen, logits_seen, seconds = [], [], []
    logits = None
    for step in range(steps):
        t0 = time.perf_counter()
        if step == 0 or not use_cache:
            logits = model(tokens, 0, caches)[:, -1]  # the prompt (with a cache: fed once)
        else:
            logits = model(tokens[:, -1:], tokens.shape[1] - 1, caches)[:, -1]
        seconds.append(time.perf_counter() - t0)
        nxt = (logits + noise[:, step]).argmax(axis=-1)
        chosen.append(nxt)
        logits_seen.append(logits)
        tokens = np.concatenate([tokens, nxt[:, None]], axis=1)
    return np.stack(chosen, 1), np.stack(logits_seen, 1), np.array(seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=192)
    ap.add_argument("--prompt-length", type=int, default=16)
    ap.add_argument("--batch", type=int, default=2)
    args = ap.parse_args()
    model = TinyDecoder(max_length=args.prompt_length + args.steps)
    rng = np.random.default_rng(1)
    prompt = rng.integers(0, len(ALPHABET), (args.batch, args.prompt_length))

    noise = rng.gumbel(size=(args.batch, args.steps, len(ALPHABET))).astype(np.float32)
    cached_tokens, cached_logits, cached_s = generate(model, prompt, noise, use_cache=True)
    full_tokens, full_logits, full_s = generate(model, prompt, noise, use_cache=False)

    text = lambda row: "".join(ALPHABET[t] for t in row)
    for b in range(args.batch):
        print(f"prompt {b}: {text(prompt[b])!r}\n  continues: {text(cached_tokens[b])!r}")
    same = np.array_equal(cached_tokens, full_tokens)
    diff = float(np.abs(cached_logits - full_logits).max() / np.abs(full_logits).max())
    print(f"\nwith and without the KV cache: same tokens: {same}; largest logit difference "
          f"{diff:.1e} (relative to the largest logit)")
    print(f"per layer ({len(model.blocks)} layers): {model.new_caches(args.batch)[0]!r}")
    print("\nms per step (median of the steps around each length)")
    print("  length   with cache   without cache")
    lengths = args.prompt_length + np.arange(args.steps)
    for at in sorted({args.prompt_length + 1, *(lengths[len(lengths) * k // 4] for k in (1, 2, 3)),
                      lengths[-1]}):
        near = np.abs(lengths - at) <= 4
        print(f"  {at:6d}   {1e3 * np.median(cached_s[near]):10.3f}   "
              f"{1e3 * np.median(full_s[near]):13.3f}")
    if not same or diff > 1e-5:
        raise SystemExit("cached and uncached decoding disagree")


if __name__ == "__main__":
    main()
