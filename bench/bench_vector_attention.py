"""Benchmark of fastattn.vector_attention (and fastattn.knn), float32, CPU.

    python bench/bench_vector_attention.py [--quick] [--threads N] [--repeats R] [--json PATH] [--markdown PATH]
                                           [--order morton|random] [--no-torch] [--cpu-time]

Cases:

1. A Point Transformer v2 grouped-vector-attention layer, neighbour form: N=40000 points, S=16
   neighbours from fastattn.knn, C=64 channels, G=8 groups (blocked sharing), weight MLP 64->8->8,
   positional term delta (N, S, C), relation "subtract". fastattn vs the same layer in PyTorch eager
   ops on the same thread count: gather key/value rows with the index, relation + delta, Linear ->
   ReLU -> Linear, -inf for index -1, softmax over the neighbours, einsum aggregation of
   (v + delta) per group. Two torch variants are timed and the faster counts: "ptv2" (the layer as
   Point Transformer v2 writes it) and "factored" (W1 applied to q and k before the gather, so the
   (N, S, C) relation is never formed: W1 (q - k + delta) = W1 q - (W1 k)[index] + W1 delta).
   Targets of the issue: >= 8x faster than torch, and time <= 2x the memory-bandwidth floor.
2. The dense form: B=1, Lq=Lk=512, C=64, G=8, the same MLP, pos (Lq, Lk, C): fastattn vs NumPy
   (per block of queries: relation + pos, two BLAS matmuls for the MLP, softmax, einsum; the block
   size and a thread pool over blocks are tuned, the fastest candidate counts), with its floor.
3. knn at N=40000 and N=100000 (k=16, 3-D points), for information.

Bandwidth floor: the bytes of every input read once (query, key, value, pos, index, MLP weights)
divided by the rate of a large NumPy copy measured in the same run (np.copyto of 256 MB, one
thread), counting the copy's read AND write bytes (2 x 256 MB per copy): the rate at which this
machine moves bytes through memory when streaming.

Points are uniform in the unit cube, stored in Morton (Z-order) order by default, as Point
Transformer v2/v3 serialise point clouds, so a point's neighbours lie near it in memory;
--order random keeps them in random order (every gathered row is then a cache miss, for torch too).

Timing: fastattn._benchmark's interleaved loop (the one `python -m fastattn bench` uses), one call
per sample: a warm-up call each, then R rounds in which fastattn and its peers run INTERLEAVED;
the median (and min) over rounds is reported. Before each timed call the loop waits until the
previous contender's idle thread pools stop spinning (NumPy's OpenBLAS threads spin for about
0.1 s after a call and would take the cores from whoever runs next), then makes one untimed call
of the contender: on these VMs a thread pool that has gone to sleep takes up to ~10 ms to wake
(fastattn's dense case: 5 ms back to back, 16 ms after 0.2 s idle on 2 threads), which a layer
called in a loop does not pay. So the figures are steady-state ones.
fastattn.set_num_threads(N), torch.set_num_threads(N), OMP/OPENBLAS/MKL_NUM_THREADS=N set before
NumPy is imported. Correctness: fastattn's output is compared with the peer's (max |diff| / max |ref|), MISMATCH above 1e-4.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds and tuning candidates (same shapes)")
    p.add_argument("--threads", type=int, help="threads for everybody (default: all usable cores)")
    p.add_argument("--repeats", type=int, help="timed rounds per case (default 9, --quick 3)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--markdown", metavar="PATH", help="write the table as markdown")
    p.add_argument("--order", choices=("morton", "random"), default="morton", help="point order in memory")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    p.add_argument("--cpu-time", action="store_true",
                   help="with --threads 1: also report fastattn's thread CPU time (min of 7 calls), "
                        "which a loaded machine disturbs much less than wall time")
    return p.parse_args()


ARGS = parse_args()
try:
    THREADS = ARGS.threads or len(os.sched_getaffinity(0))
except AttributeError:
    THREADS = ARGS.threads or os.cpu_count() or 1
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(THREADS)

from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import numpy as np  # noqa: E402

import fastattn  # noqa: E402
from fastattn._benchmark import TimingPlan, copy_bandwidth, cpu_model, time_interleaved  # noqa: E402

torch = None
if not ARGS.no_torch:
    try:
        import torch  # noqa: E402
        import torch.nn.functional as torch_F  # noqa: E402
    except ImportError:
        torch = None

fastattn.set_num_threads(THREADS)
if torch is not None:
    torch.set_num_threads(THREADS)

F32 = np.float32
REPEATS = ARGS.repeats or (3 if ARGS.quick else 9)
MISMATCH_TOL = 1e-4
LAYER = dict(N=40000, S=16, C=64, G=8, Hd=8)
DENSE = dict(B=1, Lq=512, Lk=512, C=64, G=8, Hd=8)
ROWS = []


# ----------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------
def interleaved(fns: dict, repeats: int) -> dict:
    """Seconds of each of `repeats` interleaved calls per contender: fastattn._benchmark's loop
    (warm-up, settling and one untimed call between contenders), one call per sample."""
    plan = TimingPlan(min_sample_s=0.0, budget_s=0.0, min_reps=repeats, max_reps=repeats, fixed_reps=repeats)
    timings, _, errors = time_interleaved(fns, plan)
    if errors:
        raise RuntimeError(errors)
    return {name: timing.samples_s for name, timing in timings.items()}


def rel_err(got, ref) -> float:
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.abs(got - ref).max()) / max(float(np.abs(ref).max()), 1e-30)


def copy_rate() -> float:
    """Bytes per second of np.copyto on 256 MB (read + write bytes), median of 5 after a warm-up:
    the copy ceiling of `python -m fastattn bench --ceilings`."""
    return copy_bandwidth(megabytes=256, reps=5)["gbs"] * 1e9


def thread_cpu_ms(fn, repeats: int = 7) -> float:
    """Min over calls of time.thread_time() around fn(): the CPU time of the calling thread (all
    of the kernel's time when it runs on one thread)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t0)
    return best * 1e3


def cpu_note(fn) -> str:
    if not ARGS.cpu_time or THREADS != 1:
        return ""
    ms = thread_cpu_ms(fn)
    print(f"   fastattn thread CPU time (min of 7): {ms:.2f} ms", flush=True)
    return f"; thread CPU {ms:.2f} ms"


def add_row(case, impl, times, *, check=None, kernel=None, floor=None, note=""):
    med = float(np.median(times))
    ROWS.append(dict(case=case, impl=impl, median_ms=med * 1e3, min_ms=float(np.min(times)) * 1e3,
                     times_ms=[t * 1e3 for t in times], rel_err=check, kernel=kernel,
                     floor_ms=None if floor is None else floor * 1e3, note=note))


# ----------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------
def morton_order(points: np.ndarray, bits: int = 10) -> np.ndarray:
    """Indices that sort 3-D points in [0, 1) along the Z-order curve (interleaved coordinate bits)."""
    cells = np.clip((points * (1 << bits)).astype(np.int64), 0, (1 << bits) - 1)
    code = np.zeros(len(points), np.int64)
    for bit in range(bits):
        for axis in range(3):
            code |= ((cells[:, axis] >> bit) & 1) << (3 * bit + axis)
    return np.argsort(code, kind="stable")


def mlp_weights(rng, c, hd, g):
    return ((rng.standard_normal((hd, c)) / np.sqrt(c)).astype(F32), (0.1 * rng.standard_normal(hd)).astype(F32),
            (rng.standard_normal((g, hd)) / np.sqrt(hd)).astype(F32), (0.1 * rng.standard_normal(g)).astype(F32))


# ----------------------------------------------------------------------------------------------------
# PyTorch eager Point Transformer v2 grouped vector attention
# ----------------------------------------------------------------------------------------------------
class TorchPTv2:
    """The layer as Point Transformer v2 writes it (GroupedVectorAttention, after the q/k/v
    projections): gather, relation + pos, weight encoding Linear -> ReLU -> Linear, mask, softmax
    over the neighbours, einsum over (value + pos) grouped."""

    name = "torch ptv2"

    def __init__(self, q, k, v, index, pos, mlp, groups):
        self.q, self.k, self.v, self.pos = (torch.from_numpy(x) for x in (q, k, v, pos))
        self.index = torch.from_numpy(index)
        self.w1, self.b1, self.w2, self.b2 = (torch.from_numpy(x) for x in mlp)
        self.groups = groups

    def __call__(self):
        with torch.inference_mode():
            n, s = self.index.shape
            c = self.q.shape[1]
            valid = self.index >= 0
            safe = self.index.clamp(min=0).reshape(-1)
            key = self.k.index_select(0, safe).view(n, s, c)
            value = self.v.index_select(0, safe).view(n, s, c)
            relation = self.q.unsqueeze(1) - key + self.pos
            weight = torch_F.linear(torch.relu(torch_F.linear(relation, self.w1, self.b1)), self.w2, self.b2)
            weight = weight.masked_fill(~valid.unsqueeze(-1), float("-inf"))
            weight = torch.softmax(weight, dim=1)
            value = (value + self.pos).view(n, s, self.groups, c // self.groups)
            return torch.einsum("nsgi,nsg->ngi", value, weight).reshape(n, c).numpy()


class TorchFactored(TorchPTv2):
    """The same layer with W1 applied before the gather: W1 (q - k + pos) + b1 =
    (W1 q + b1) - (W1 k)[index] + W1 pos, so no (N, S, C) relation is formed."""

    name = "torch factored"

    def __call__(self):
        with torch.inference_mode():
            n, s = self.index.shape
            c = self.q.shape[1]
            valid = self.index >= 0
            safe = self.index.clamp(min=0).reshape(-1)
            hq = torch_F.linear(self.q, self.w1, self.b1)
            hk = torch_F.linear(self.k, self.w1).index_select(0, safe).view(n, s, -1)
            hidden = torch_F.linear(self.pos, self.w1).add_(hq.unsqueeze(1)).sub_(hk).relu_()
            weight = torch_F.linear(hidden, self.w2, self.b2)
            weight = weight.masked_fill(~valid.unsqueeze(-1), float("-inf"))
            weight = torch.softmax(weight, dim=1)
            value = self.v.index_select(0, safe).view(n, s, c).add_(self.pos).view(n, s, self.groups, c // self.groups)
            return torch.einsum("nsgi,nsg->ngi", value, weight).reshape(n, c).numpy()


def bench_layer(rate):
    sh = LAYER
    n, s, c, g, hd = sh["N"], sh["S"], sh["C"], sh["G"], sh["Hd"]
    rng = np.random.default_rng(0)
    points = rng.random((n, 3))
    if ARGS.order == "morton":
        points = points[morton_order(points)]
    points = points.astype(F32)
    index = fastattn.knn(points, s)
    q, k, v = (rng.standard_normal((n, c), dtype=F32) for _ in range(3))
    pos = rng.standard_normal((n, s, c), dtype=F32)
    mlp = mlp_weights(rng, c, hd, g)
    case = f"PTv2 layer N={n} S={s} C={c} G={g} MLP {c}->{hd}->{g} pos ({ARGS.order} order)"
    print(f"\n== {case} ==", flush=True)
    in_bytes = sum(x.nbytes for x in (q, k, v, pos, index, *mlp))
    floor = in_bytes / rate

    def fa():
        return fastattn.vector_attention(q, k, v, index=index, pos=pos, weight_mlp=mlp)

    fns = {"fastattn": fa}
    peers = []
    if torch is not None:
        peers = [TorchPTv2(q, k, v, index, pos, mlp, g), TorchFactored(q, k, v, index, pos, mlp, g)]
        fns.update((peer.name, peer) for peer in peers)
    times = interleaved(fns, REPEATS)
    out = fa()
    kernel = fastattn.last_kernel()
    ref = peers[0]() if peers else None
    add_row(case, "fastattn", times["fastattn"], kernel=kernel, floor=floor,
            check=None if ref is None else rel_err(out, ref), note=f"inputs {in_bytes / 1e6:.0f} MB" + cpu_note(fa))
    for peer in peers:
        add_row(case, peer.name, times[peer.name], check=rel_err(peer(), out) if peer is not peers[0] else None)


# ----------------------------------------------------------------------------------------------------
# Dense form: NumPy
# ----------------------------------------------------------------------------------------------------
class NumpyDense:
    """Dense vector attention in NumPy, a block of queries at a time (so the (block, Lk, C)
    temporaries stay in cache): relation + pos, MLP by two BLAS matmuls, softmax over the keys,
    einsum of the grouped (v + pos); pool_threads > 1 spreads the blocks over Python threads."""

    def __init__(self, q, k, v, pos, mlp, groups, chunk, pool_threads=1):
        self.q, self.k, self.v, self.pos, self.mlp, self.groups = q, k, v, pos, mlp, groups
        self.chunk, self.pool_threads = chunk, pool_threads
        self.pool = ThreadPoolExecutor(pool_threads) if pool_threads > 1 else None
        self.name = f"numpy (block {chunk}" + (f", {pool_threads} py threads)" if self.pool else ")")

    def __call__(self):
        q, k, v, pos, (w1, b1, w2, b2), g = self.q, self.k, self.v, self.pos, self.mlp, self.groups
        lq, c = q.shape
        lk = k.shape[0]
        out = np.empty((lq, c), F32)

        def run(i0):
            i1 = min(lq, i0 + self.chunk)
            p = pos[i0:i1]
            r = q[i0:i1, None, :] - k[None, :, :]
            r += p
            h = r.reshape(-1, c) @ w1.T
            h += b1
            np.maximum(h, 0, out=h)
            w = (h @ w2.T).reshape(i1 - i0, lk, g)
            w += b2
            w -= w.max(axis=1, keepdims=True)
            np.exp(w, out=w)
            w /= w.sum(axis=1, keepdims=True)
            vd = (v[None, :, :] + p).reshape(i1 - i0, lk, g, c // g)
            out[i0:i1] = np.einsum("ijg,ijgc->igc", w, vd, optimize=True).reshape(i1 - i0, c)

        starts = range(0, lq, self.chunk)
        if self.pool is None:
            for i0 in starts:
                run(i0)
        else:
            list(self.pool.map(run, starts))
        return out

    def close(self):
        if self.pool is not None:
            self.pool.shutdown()


def bench_dense(rate):
    sh = DENSE
    lq, lk, c, g, hd = sh["Lq"], sh["Lk"], sh["C"], sh["G"], sh["Hd"]
    rng = np.random.default_rng(1)
    q = rng.standard_normal((lq, c), dtype=F32)
    k = rng.standard_normal((lk, c), dtype=F32)
    v = rng.standard_normal((lk, c), dtype=F32)
    pos = rng.standard_normal((lq, lk, c), dtype=F32)
    mlp = mlp_weights(rng, c, hd, g)
    case = f"dense Lq={lq} Lk={lk} C={c} G={g} MLP {c}->{hd}->{g} pos"
    print(f"\n== {case} ==", flush=True)
    in_bytes = sum(x.nbytes for x in (q, k, v, pos, *mlp))
    floor = in_bytes / rate

    best = None
    for chunk in ([8, 32] if ARGS.quick else [4, 16, 64]):
        for threads in sorted({1, THREADS}):
            cand = NumpyDense(q, k, v, pos, mlp, g, chunk, threads)
            cand()
            t = min(interleaved({"x": cand}, 2)["x"])
            print(f"   tuning {cand.name:<32} {t * 1e3:8.1f} ms", flush=True)
            if best is None or t < best[0]:
                if best is not None:
                    best[1].close()
                best = (t, cand)
            else:
                cand.close()
    numpy_impl = best[1]

    def fa():
        return fastattn.vector_attention(q, k, v, pos=pos, weight_mlp=mlp)

    times = interleaved({"fastattn": fa, numpy_impl.name: numpy_impl}, REPEATS)
    out = fa()
    kernel = fastattn.last_kernel()
    add_row(case, "fastattn", times["fastattn"], kernel=kernel, floor=floor, check=rel_err(out, numpy_impl()),
            note=f"inputs {in_bytes / 1e6:.0f} MB" + cpu_note(fa))
    add_row(case, numpy_impl.name, times[numpy_impl.name])
    numpy_impl.close()


def bench_knn():
    rng = np.random.default_rng(2)
    for n in (40000, 100000):
        points = rng.random((n, 3)).astype(F32)
        times = interleaved({"knn": lambda: fastattn.knn(points, 16)}, max(3, REPEATS // 3))
        add_row(f"knn N={n} D=3 k=16", "fastattn.knn", times["knn"], note="k-d tree, exact")


# ----------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------
def table() -> str:
    lines = ["| case | impl | median ms | min ms | vs fastattn | floor ms | x floor | check | kernel |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    fa_ms = {r["case"]: r["median_ms"] for r in ROWS if r["impl"] == "fastattn"}
    for r in ROWS:
        ratio = ""
        if r["case"] in fa_ms and r["impl"] != "fastattn":
            ratio = f"{r['median_ms'] / fa_ms[r['case']]:.1f}x"
        floor = f"{r['floor_ms']:.2f}" if r["floor_ms"] else ""
        xfloor = f"{r['median_ms'] / r['floor_ms']:.2f}" if r["floor_ms"] else ""
        check = "" if r["rel_err"] is None else (
            f"ok {r['rel_err']:.0e}" if r["rel_err"] <= MISMATCH_TOL else f"MISMATCH {r['rel_err']:.1e}")
        lines.append(f"| {r['case']} | {r['impl']} | {r['median_ms']:.3g} | {r['min_ms']:.3g} | {ratio} | {floor} | "
                     f"{xfloor} | {check} | {r['kernel'] or ''} |")
    return "\n".join(lines)


def main():
    info = fastattn.backends()["cpu"]
    header = (f"fastattn {fastattn.__version__} | ISA {info['isa']} | threads {THREADS} | CPU {cpu_model()} | "
              f"numpy {np.__version__} | torch {torch.__version__ if torch else '-'} | python {platform.python_version()}")
    print(header, flush=True)
    rate = copy_rate()
    print(f"copy rate (np.copyto 256 MB, read + write bytes): {rate / 1e9:.1f} GB/s", flush=True)
    bench_layer(rate)
    rate_after = copy_rate()
    bench_dense(rate)
    bench_knn()
    print(f"copy rate again after the layer case: {rate_after / 1e9:.1f} GB/s")
    text = table()
    print()
    print(header)
    print(f"copy rate {rate / 1e9:.1f} GB/s (np.copyto 256 MB, 1 thread, read + write bytes); floor = input bytes / copy rate; "
          f"median of {REPEATS} interleaved rounds")
    print(text)
    for r in ROWS:
        if "thread CPU" in r["note"]:
            print(f"{r['case']}: fastattn {r['note']}")
    if ARGS.markdown:
        with open(ARGS.markdown, "w") as f:
            f.write(header + "  \n" + f"copy rate {rate / 1e9:.1f} GB/s\n\n" + text + "\n")
    if ARGS.json:
        with open(ARGS.json, "w") as f:
            json.dump(dict(header=header, copy_rate_gbs=rate / 1e9, threads=THREADS, order=ARGS.order, rows=ROWS),
                      f, indent=1)


if __name__ == "__main__":
    main()
