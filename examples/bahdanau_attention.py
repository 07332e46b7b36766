"""Additive (Bahdanau) attention over encoder states, on a small English -> French corpus.

    python examples/bahdanau_attention.py [--out bahdanau_weights.png] [--pair N] [--data PATH]

What it does, in the order of the code below:

1. Reads a tiny hand-written parallel corpus (examples/data/en_fr_sentences.tsv, one pre-tokenised
   English <TAB> French pair a line).
2. Embeds every token WITHOUT any training and without downloading anything: the token's character
   n-grams (n = 2, 3, 4 of "<token>", accents removed, lower case) are hashed into 2**20 buckets, and the
   embedding is the sum of the rows of a fixed, seeded random projection matrix (2**20 x 96) picked by
   those buckets, normalised to unit length. Rows are generated on demand from the bucket number, so the
   matrix never exists in memory. Words that share n-grams ("committee" / "comite", "budget" / "budget")
   get nearby embeddings; unrelated words get nearly orthogonal ones.
3. Encodes the English sentence with a deterministic "bidirectional running-average encoder": each
   source position gets a little sinusoidal position signal, and its encoder state is mostly its own
   embedding plus a summary of its left context (forward exponential running average) and of its right
   context (backward running average). These states are the attention keys and values.
4. Builds one "decoder" query per French output step from the French token emitted at that step (as a
   teacher-forced decoder would see it) plus a position signal at the same *relative* position of the
   source sentence, a weak preference for the diagonal.
5. Scores every (decoder step, source token) pair with fastattn.attention(score="additive"):
   score(q, k) = w^T tanh(W_q q + W_k k + b), the Bahdanau et al. (2015) form, with fixed seeded random
   parameters built so that similar q and k score high (see `additive_parameters` for why that works),
   and aligns the scores three ways in one fused call each: "softmax" (Bahdanau), "sparsemax" (Martins &
   Astudillo 2016: a projection onto the simplex that gives exact zeros) and "hard" (one-hot arg-max).
   All sentence pairs go through one batched call; shorter source sentences are padded and the padding
   masked out with attn_mask (masked keys get weight 0 under every alignment).
6. Prints the alignment of each decoder step, checks fastattn's weights against a plain NumPy version of
   the same formulas, reads every context vector out through fastattn.output_layer over the French
   vocabulary, and saves a three-panel heat map (softmax | sparsemax | hard) to --out.

IMPORTANT: the parameters are random, not trained. The heat map shows *lexical (character n-gram)
similarity* between the French word being produced and the English encoder states, nudged towards the
diagonal; it is not a learned translation alignment. Cognates ("international", "budget") and
identical tokens ("mozart", ".") align well; function words ("le" / "the", "a" / "has") align only by
accident of spelling. A trained model would learn W_q, W_k, w (and a real encoder/decoder) from data.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
import unicodedata

import numpy as np

import fastattn

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.join(HERE, "data", "en_fr_sentences.tsv")

EMBED_DIM = 96          # d: embedding / encoder-state / query dimension
NGRAM_SIZES = (2, 3, 4)  # character n-grams of "<token>"
HASH_BUCKETS = 2 ** 20   # rows of the (virtual) random projection matrix
POSITION_WEIGHT = 0.25   # norm of the sinusoidal position signal added to a unit-norm embedding
CONTEXT_WEIGHT = 0.3     # share of the encoder state that comes from the left/right running averages
RUNNING_DECAY = 0.5      # decay of the running averages (0: previous token only, ->1: whole sentence)
ATTN_PAIRS = 64          # the additive scorer has 2 * ATTN_PAIRS tanh units (d_a = 128)
PROJ_STD = 1.0          # std of the scorer's random directions: unrelated words land |p.(q-k)| ~ 1.4
SCORE_SCALE = 7.0        # sum of the scorer's output weights: the score gap identical vs unrelated ~ 5
SEED = 2015              # Bahdanau, Cho & Bengio, ICLR 2015


# ----------------------------------------------------------------------------------------------------
# 1. Data
# ----------------------------------------------------------------------------------------------------
def load_pairs(path: str) -> list[tuple[list[str], list[str]]]:
    """(English tokens, French tokens) for every non-comment line of the TSV file."""
    pairs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip() or line.startswith("#"):
                continue
            src, tgt = line.split("\t")
            pairs.append((src.split(), tgt.split()))
    return pairs


# ----------------------------------------------------------------------------------------------------
# 2. Token embeddings from hashed character n-grams (a fixed random projection; no training)
# ----------------------------------------------------------------------------------------------------
def normalise(token: str) -> str:
    """Lower case without accents: 'Comité' -> 'comite', so that cognates share n-grams."""
    decomposed = unicodedata.normalize("NFKD", token.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def char_ngrams(token: str) -> list[str]:
    padded = "<" + normalise(token) + ">"
    grams = [padded[i:i + n] for n in NGRAM_SIZES for i in range(len(padded) - n + 1)]
    return grams or [padded]


def stable_hash(text: str) -> int:
    """A hash that does not change between runs (Python's hash() of a str is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


_projection_rows: dict[int, np.ndarray] = {}


def projection_row(bucket: int) -> np.ndarray:
    """Row `bucket` of a fixed (HASH_BUCKETS, EMBED_DIM) Gaussian matrix, generated from its index."""
    row = _projection_rows.get(bucket)
    if row is None:
        row = np.random.default_rng([SEED, bucket]).standard_normal(EMBED_DIM)
        _projection_rows[bucket] = row
    return row


def embed_token(token: str) -> np.ndarray:
    """Unit-norm embedding: sum of the projection rows of the token's hashed character n-grams."""
    v = sum(projection_row(stable_hash(g) % HASH_BUCKETS) for g in char_ngrams(token))
    return v / np.linalg.norm(v)


def sinusoidal_positions(positions: np.ndarray, dim: int, base: float = 10000.0) -> np.ndarray:
    """Transformer positional encoding PE[p, 2i] = sin(p / base^(2i/dim)), PE[p, 2i+1] = cos(...).

    Positions may be fractional (the decoder uses source-relative positions). Rows have norm
    sqrt(dim / 2); we rescale them to POSITION_WEIGHT.
    """
    freqs = base ** (-np.arange(0, dim, 2) / dim)
    angles = np.asarray(positions, dtype=np.float64)[:, None] * freqs[None, :]
    pe = np.empty((len(angles), dim))
    pe[:, 0::2], pe[:, 1::2] = np.sin(angles), np.cos(angles)
    return pe * (POSITION_WEIGHT / np.sqrt(dim / 2))


# ----------------------------------------------------------------------------------------------------
# 3. Encoder and decoder queries
# ----------------------------------------------------------------------------------------------------
def encode(tokens: list[str]) -> np.ndarray:
    """Bidirectional running-average encoder: (L, d) states for the source tokens.

    x_t       = embed(token_t) + PE(t)
    fwd_t     = decay * fwd_{t-1} + (1 - decay) * x_t          (left-to-right summary)
    bwd_t     = decay * bwd_{t+1} + (1 - decay) * x_t          (right-to-left summary)
    h_t       = (1 - c) * x_t + c * (fwd_{t-1} + bwd_{t+1}) / 2 (own token + its left and right context)
    """
    x = np.stack([embed_token(t) for t in tokens]) + sinusoidal_positions(np.arange(len(tokens)), EMBED_DIM)
    fwd, bwd = np.zeros_like(x), np.zeros_like(x)
    for t in range(len(x)):
        fwd[t] = RUNNING_DECAY * (fwd[t - 1] if t > 0 else 0.0) + (1 - RUNNING_DECAY) * x[t]
    for t in reversed(range(len(x))):
        bwd[t] = RUNNING_DECAY * (bwd[t + 1] if t + 1 < len(x) else 0.0) + (1 - RUNNING_DECAY) * x[t]
    left = np.vstack([np.zeros((1, EMBED_DIM)), fwd[:-1]])    # fwd_{t-1}
    right = np.vstack([bwd[1:], np.zeros((1, EMBED_DIM))])    # bwd_{t+1}
    return (1 - CONTEXT_WEIGHT) * x + CONTEXT_WEIGHT * (left + right) / 2


def decoder_queries(target: list[str], source_length: int) -> np.ndarray:
    """One query per output step: the emitted French token's embedding + a source-relative position.

    A trained decoder's query would be its hidden state s_{i-1}; here the query is built from the token
    the decoder emits at step i (teacher forcing), so that "what the decoder needs now" is explicit.
    Step i of a target of length T gets the position signal of source position i * (S - 1) / (T - 1).
    """
    relative = np.arange(len(target)) * (source_length - 1) / max(len(target) - 1, 1)
    return np.stack([embed_token(t) for t in target]) + sinusoidal_positions(relative, EMBED_DIM)


# ----------------------------------------------------------------------------------------------------
# 4. Additive scorer parameters (fixed, seeded, random, untrained)
# ----------------------------------------------------------------------------------------------------
def additive_parameters(dim: int, pairs: int, seed: int = SEED) -> dict:
    """W_q, W_k (d_a = 2 * pairs, d), w (d_a,), b (d_a,) for score = w^T tanh(W_q q + W_k k + b).

    The tanh units come in pairs that share a random direction p (and a random positive weight):
        unit 1: tanh(c + p.(q - k)),  unit 2: tanh(c - p.(q - k)),  i.e. W_q = [P; -P], W_k = [-P; P].
    For a bias c > 0, g(x) = tanh(c + x) + tanh(c - x) is largest at x = 0 and falls to 0 as |x| grows,
    so each pair is a "bump" detector that fires when q and k agree along p, and the score (a positive
    combination of the pairs) is highest when the query and the key are close. This is still exactly the
    Bahdanau form w^T tanh(W_q q + W_k k + b); only its random parameters are arranged so that an
    untrained scorer means something. Random W_q, W_k, w with no such structure would score noise.
    """
    rng = np.random.default_rng(seed)
    p = rng.standard_normal((pairs, dim)) * PROJ_STD           # p.(q - k) ~ N(0, PROJ_STD^2 |q - k|^2)
    pair_weight = rng.uniform(0.5, 1.5, pairs) * (SCORE_SCALE / pairs)   # positive; sets the score range
    return {
        "W_q": np.vstack([p, -p]).astype(np.float32),
        "W_k": np.vstack([-p, p]).astype(np.float32),
        "w": np.concatenate([pair_weight, pair_weight]).astype(np.float32),
        "b": np.full(2 * pairs, 1.0, dtype=np.float32),
        # "act" defaults to "tanh"
    }


# ----------------------------------------------------------------------------------------------------
# NumPy version of the same formulas, to check fastattn's fused kernel (float64, one pair at a time)
# ----------------------------------------------------------------------------------------------------
def numpy_additive_scores(q, k, params):
    hidden = np.tanh((q @ params["W_q"].T.astype(np.float64))[:, None, :]
                     + (k @ params["W_k"].T.astype(np.float64))[None, :, :] + params["b"])
    return hidden @ params["w"].astype(np.float64)          # (Lq, Lk)


def numpy_align(scores, align):
    if align == "softmax":
        e = np.exp(scores - scores.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    if align == "sparsemax":                                  # Martins & Astudillo (2016), Algorithm 1
        z = np.sort(scores, axis=-1)[:, ::-1]
        k = np.arange(1, scores.shape[-1] + 1)
        cumsum = np.cumsum(z, axis=-1)
        support = 1 + k * z > cumsum
        k_max = support.sum(axis=-1, keepdims=True)
        tau = (np.take_along_axis(cumsum, k_max - 1, axis=-1) - 1) / k_max
        return np.maximum(scores - tau, 0.0)
    if align == "hard":
        onehot = np.zeros_like(scores)
        onehot[np.arange(len(scores)), scores.argmax(axis=-1)] = 1.0   # ties: lowest index
        return onehot
    raise ValueError(align)


# ----------------------------------------------------------------------------------------------------
# 5./6. Run, print, check, plot
# ----------------------------------------------------------------------------------------------------
ALIGNS = ("softmax", "sparsemax", "hard")


def describe_row(weights_row, source, top=3, floor=0.05):
    """'word 0.62, word 0.21' for the largest weights of one decoder step."""
    order = np.argsort(-weights_row, kind="stable")[:top]
    parts = [f"{source[j]} {weights_row[j]:.2f}" for j in order if weights_row[j] >= floor]
    return ", ".join(parts) if parts else "-"


def plot(weights_by_align, source, target, out_path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_src, n_tgt = len(source), len(target)
    fig, axes = plt.subplots(1, 3, figsize=(5.2 * 3 * max(1.0, n_src / 10), 0.48 * n_tgt + 3.2),
                             constrained_layout=True)
    for ax, align in zip(axes, ALIGNS):
        w = weights_by_align[align]
        image = ax.imshow(w, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(n_src), source, rotation=55, ha="right", rotation_mode="anchor", fontsize=10)
        ax.set_yticks(range(n_tgt), target, fontsize=10)
        ax.set_xticks(np.arange(n_src + 1) - 0.5, minor=True)
        ax.set_yticks(np.arange(n_tgt + 1) - 0.5, minor=True)
        ax.grid(which="minor", color="#d0d0d0", linewidth=0.5)
        ax.tick_params(which="minor", length=0)
        for i in range(n_tgt):
            for j in range(n_src):
                if w[i, j] >= 0.1:
                    ax.text(j, i, f"{w[i, j]:.2f}".lstrip("0"), ha="center", va="center", fontsize=7.5,
                            color="white" if w[i, j] > 0.55 else "black")
        nonzero = int((w > 0).sum())
        ax.set_title(f'align="{align}"  ({nonzero} of {w.size} weights non-zero)', fontsize=11)
        ax.set_xlabel("source (English encoder states = keys)")
    axes[0].set_ylabel("decoder step (French token emitted)")
    fig.colorbar(image, ax=axes, shrink=0.8, label="attention weight")
    fig.suptitle(title, fontsize=12)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bahdanau_weights.png", help="heat map PNG path")
    parser.add_argument("--data", default=DEFAULT_DATA, help="TSV of 'English<TAB>French' pairs")
    parser.add_argument("--pair", type=int, default=10, help="which sentence pair to plot and detail")
    args = parser.parse_args()

    t_start = time.perf_counter()
    pairs = load_pairs(args.data)
    if not 0 <= args.pair < len(pairs):
        parser.error(f"--pair must be in [0, {len(pairs) - 1}]")

    # Encode every pair and pad into one batch: keys (B, S, d), queries (B, T, d), mask (B, T, S).
    batch, s_max, t_max = len(pairs), max(len(s) for s, _ in pairs), max(len(t) for _, t in pairs)
    keys = np.zeros((batch, s_max, EMBED_DIM), dtype=np.float32)
    queries = np.zeros((batch, t_max, EMBED_DIM), dtype=np.float32)
    mask = np.zeros((batch, t_max, s_max), dtype=bool)           # True = attend (fastattn's rule)
    for i, (src, tgt) in enumerate(pairs):
        keys[i, :len(src)] = encode(src)
        queries[i, :len(tgt)] = decoder_queries(tgt, len(src))
        mask[i, :, :len(src)] = True                              # padding keys are never attended
    params = additive_parameters(EMBED_DIM, ATTN_PAIRS)

    # One fused call per alignment over the whole batch; values default to the keys (encoder states).
    contexts, weights = {}, {}
    for align in ALIGNS:
        contexts[align], weights[align] = fastattn.attention(
            queries, keys, score="additive", align=align, params=params, attn_mask=mask,
            return_weights=True)
    kernel = fastattn.last_kernel()

    # Check against the NumPy formulas, on the real (unpadded) part of every pair.
    worst = {a: 0.0 for a in ALIGNS}
    for i, (src, tgt) in enumerate(pairs):
        s = numpy_additive_scores(queries[i, :len(tgt)].astype(np.float64),
                                  keys[i, :len(src)].astype(np.float64), params)
        for align in ALIGNS:
            ref = numpy_align(s, align)
            got = weights[align][i, :len(tgt)]
            worst[align] = max(worst[align], float(np.abs(got[:, :len(src)] - ref).max()),
                               float(np.abs(got[:, len(src):]).max(initial=0.0)))   # padding: 0
            ctx_ref = ref @ keys[i, :len(src)].astype(np.float64)
            worst[align] = max(worst[align], float(np.abs(contexts[align][i, :len(tgt)] - ctx_ref).max()))

    # Output layer: softmax over the French vocabulary of (context . embedding(word)) / temperature.
    # If attention picked the English word that looks like the French one, the context vector (a mix of
    # encoder states) reads back out as that French word.
    vocab = sorted({t for _, tgt in pairs for t in tgt})
    readout_weight = (np.stack([embed_token(t) for t in vocab]) / 0.1).astype(np.float32)   # (V, d)
    probs = fastattn.output_layer(contexts["softmax"], readout_weight)                        # (B, T, V)
    steps = sum(len(t) for _, t in pairs)
    recovered = sum(vocab[int(probs[i, j].argmax())] == tok
                    for i, (_, tgt) in enumerate(pairs) for j, tok in enumerate(tgt))

    # Print: one line per decoder step of the chosen pair, then the hard alignment of every pair.
    src, tgt = pairs[args.pair]
    print(f"fastattn {fastattn.__version__}, kernel: {kernel}, threads: {fastattn.get_num_threads()}")
    print(f"{batch} sentence pairs, keys {keys.shape}, queries {queries.shape}, "
          f"additive scorer d_a={params['w'].shape[0]} (random, untrained: lexical similarity, "
          f"not a learned alignment)")
    print(f"\npair {args.pair}:  EN: {' '.join(src)}\n         FR: {' '.join(tgt)}\n")
    print(f"{'step':>4}  {'FR token':<14} {'hard':<14} {'softmax (top 3, >= .05)':<48} sparsemax (all non-zero)")
    for j, tok in enumerate(tgt):
        hard = src[int(weights["hard"][args.pair, j].argmax())]
        sm = describe_row(weights["softmax"][args.pair, j, :len(src)], src)
        sp = describe_row(weights["sparsemax"][args.pair, j, :len(src)], src, top=len(src), floor=1e-6)
        print(f"{j:>4}  {tok:<14} {hard:<14} {sm:<48} {sp}")

    print("\nhard alignment of every pair (French token -> English token):")
    for i, (s_toks, t_toks) in enumerate(pairs):
        links = [f"{tok}->{s_toks[int(weights['hard'][i, j].argmax())]}" for j, tok in enumerate(t_toks)]
        print(f"  {i:>2}: " + "  ".join(links))

    support = np.mean([(weights["sparsemax"][i, :len(t)] > 0).sum(axis=-1).mean() for i, (_, t) in
                       enumerate(pairs)])
    print(f"\nsparsemax keeps {support:.1f} source tokens per step on average (softmax keeps all)")
    print(f"output_layer readout: {recovered}/{steps} decoder steps read back out as their own French token")
    print("max |fastattn - NumPy| (weights and contexts): "
          + ", ".join(f"{a} {worst[a]:.1e}" for a in ALIGNS))
    ok = all(v < 1e-4 for v in worst.values())

    plot({a: weights[a][args.pair, :len(tgt), :len(src)] for a in ALIGNS}, src, tgt, args.out,
         "Additive (Bahdanau) attention, random untrained scorer: what the heat map shows is character "
         "n-gram similarity, not a learned alignment")
    print(f"heat map: {os.path.abspath(args.out)}   ({time.perf_counter() - t_start:.2f} s)")
    if not ok:
        print("MISMATCH between fastattn and the NumPy formulas")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
