"""What a KV-cache decode step of fastattn.MultiHeadAttention costs, against its parts.

One step, ``layer(x_t, cache=cache, causal=True)`` with x_t (1, 1, E), does: the q/k/v projection
of the new token (one GEMV over the packed (3E, E) weight), the append of its key and value to the
cache, attention of one query per head over the whole cache (the fused kernel's decode path, one
read of K and V), and the output projection (one GEMV over (E, E)). The claim to check: that is
all it costs. So, per cached length n, interleaved:

  step        the layer's decode step
  proj        the two GEMVs alone, on the same weights, as the layer runs them (fastattn's linear
              kernel: fastattn._linear.project)
  blas        the same two GEMVs by NumPy's BLAS, for reference
  sdpa        scaled_dot_product_attention of the step's queries over the n + 1 cached positions

and a least-squares line step(n) = a + b n. b turned into bytes/s of the cache read
(2 * num_kv_heads * head_dim * itemsize bytes per position) is comparable to the SDPA decode rate of
the CPU speed issue (shape (1,32,32,1,8192,128), E = 4096 with 32 heads of 128: the default here);
a is comparable to proj. step - proj - sdpa is what the layer adds (Python, the append, the merge).

    python bench/bench_mha.py [--embed-dim 4096 --heads 32 --kv-heads 32]
        [--lengths 512 1024 2048 4096 8192] [--json out.json] [--markdown]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys

import numpy as np

import fastattn
from fastattn._benchmark import OtherLoad, TimingPlan, cpu_model, time_interleaved
from fastattn._linear import project


def time_length(n, layer, cache, x, w_in, b_in, w_out, b_out, q, e, bytes_per_position, plan):
    """Interleaved timings of a decode step at n cached positions, its projections, its SDPA."""
    def step(n=n):
        cache.length = n  # n positions cached; the step appends the (n + 1)-th
        return layer(x, cache=cache, causal=True)[0]

    def proj():
        qkv = project(x, w_in, b_in)
        return project(qkv[:, :, :e], w_out, b_out)  # a stand-in of the merged heads: same GEMV

    def blas():
        qkv = x[0] @ w_in.T + b_in
        return qkv[:, :e] @ w_out.T + b_out

    def sdpa(n=n):
        return fastattn.scaled_dot_product_attention(
            q, cache.key[:, :, :n + 1], cache.value[:, :, :n + 1], causal="bottom_right")

    timings, _, errors = time_interleaved({"step": step, "proj": proj, "blas": blas, "sdpa": sdpa}, plan)
    if errors:
        raise RuntimeError(errors)
    med = {k: t.median_s for k, t in timings.items()}
    row = {"cached": n, **{f"{k}_ms": v * 1e3 for k, v in med.items()},
           "sdpa_GBps": (n + 1) * bytes_per_position / med["sdpa"] / 1e9,
           "rest_ms": (med["step"] - med["proj"] - med["sdpa"]) * 1e3,
           "reps": len(timings["step"].samples_s)}
    print(f"cached {n:6d}: step {row['step_ms']:.3f} ms, proj {row['proj_ms']:.3f} ms "
          f"(BLAS {row['blas_ms']:.3f}), "
          f"sdpa {row['sdpa_ms']:.3f} ms ({row['sdpa_GBps']:.1f} GB/s), "
          f"rest {row['rest_ms']:+.3f} ms", file=sys.stderr, flush=True)
    return row


def blas_limit(threads: int):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext(), "NumPy's BLAS pool not limited: threadpoolctl missing"
    return threadpool_limits(limits=threads, user_api="blas"), f"NumPy's BLAS {threads} threads"


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        fastattn.set_num_threads(args.threads)
    threads = fastattn.get_num_threads()
    e, h, hkv = args.embed_dim, args.heads, args.kv_heads
    layer = fastattn.MultiHeadAttention(e, h, num_kv_heads=hkv, seed=0)
    d = layer.head_dim
    rng = np.random.default_rng(0)
    max_len = max(args.lengths) + 1
    cache = layer.new_cache(1, max_len)
    # Cached keys and values: what a prefill would have left there (random is as good to read).
    cache.key[...] = rng.standard_normal(cache.key.shape, dtype=np.float32)
    cache.value[...] = rng.standard_normal(cache.value.shape, dtype=np.float32)
    x = rng.standard_normal((1, 1, e), dtype=np.float32)
    state = layer.state_dict()
    w_in, b_in = state["in_proj_weight"], state["in_proj_bias"]
    w_out, b_out = state["out_proj.weight"], state["out_proj.bias"]
    q = rng.standard_normal((1, h, 1, d), dtype=np.float32)
    bytes_per_position = 2 * hkv * d * 4
    plan = TimingPlan(min_sample_s=0.02, budget_s=args.budget, min_reps=args.min_reps,
                      max_reps=60)

    rows = []
    load = OtherLoad()
    limit, blas_note = blas_limit(threads)
    with limit:
        for n in args.lengths:
            rows.append(time_length(n, layer, cache, x, w_in, b_in, w_out, b_out, q, e,
                                    bytes_per_position, plan))

    n = np.array([r["cached"] for r in rows], np.float64)
    t = np.array([r["step_ms"] for r in rows]) / 1e3
    slope, intercept = np.polyfit(n, t, 1)
    fit = {
        "intercept_ms": intercept * 1e3,
        "slope_us_per_position": slope * 1e6,
        "cache_read_GBps": bytes_per_position / slope / 1e9,
        "residual_max_ms": float(np.max(np.abs(t - (intercept + slope * n)))) * 1e3,
        "proj_median_ms": float(np.median([r["proj_ms"] for r in rows])),
    }
    return {
        "other_load": load.fraction(), "blas": blas_note,
        "config": {"embed_dim": e, "num_heads": h, "num_kv_heads": hkv, "head_dim": d,
                   "dtype": "float32", "batch": 1, "bytes_per_cached_position": bytes_per_position,
                   "threads": threads, "isa": fastattn.backends()["cpu"]["isa"],
                   "cpu": cpu_model(), "numpy": np.__version__, "python": platform.python_version(),
                   "fastattn": fastattn.__version__},
        "rows": rows, "fit": fit,
    }


def markdown(res: dict) -> str:
    c, f = res["config"], res["fit"]
    lines = [
        f"MultiHeadAttention({c['embed_dim']}, {c['num_heads']}, num_kv_heads={c['num_kv_heads']}), "
        f"float32, batch 1, one new token per step | ISA {c['isa']} | threads {c['threads']} "
        f"({res['blas']}) | "
        f"{c['cpu']} | numpy {c['numpy']}",
        "",
        "| cached positions | step ms | proj ms | (BLAS proj ms) | sdpa ms | sdpa GB/s | step - proj - sdpa ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in res["rows"]:
        lines.append(f"| {r['cached']} | {r['step_ms']:.3f} | {r['proj_ms']:.3f} | {r['blas_ms']:.3f} | "
                     f"{r['sdpa_ms']:.3f} | {r['sdpa_GBps']:.1f} | {r['rest_ms']:+.3f} |")
    lines += [
        "",
        f"Least-squares fit step(n) = {f['intercept_ms']:.3f} ms + n x "
        f"{f['slope_us_per_position']:.3f} us (largest residual {f['residual_max_ms']:.3f} ms): "
        f"the slope is {c['bytes_per_cached_position']} bytes of K+V per position read at "
        f"{f['cache_read_GBps']:.1f} GB/s; the intercept compares with the projections' "
        f"{f['proj_median_ms']:.3f} ms (median).",
    ]
    if res.get("other_load") is not None:
        lines += ["", f"other processes used {100 * res['other_load']:.0f}% of the machine's CPU "
                  "time during the run"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--embed-dim", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=32)
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--budget", type=float, default=4.0, help="seconds per length (default 4)")
    ap.add_argument("--min-reps", type=int, default=9)
    ap.add_argument("--json")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    res = run(args)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
