"""``python -m fastattn bench``: time fastattn's scaled_dot_product_attention against NumPy and PyTorch.

How it measures, and why:

* Interleaved repetitions. Each repetition times fastattn, then NumPy, then torch, so slow drifts of the
  machine (clock boost, thermal throttling, a noisy neighbour) hit every contender alike. The reported
  figure is the median over repetitions, which ignores the odd sample hit by an interrupt.
* Warm-up and batching. Every contender is called once before timing (lazy initialisation, thread-pool
  start, page faults on fresh buffers), and calls too short for the timer are batched into samples of a
  few milliseconds; a sample's time is divided by its number of calls.
* Settling between contenders. BLAS and OpenMP thread pools keep spinning after a call returns
  (OpenBLAS for about 0.1 s), stealing cores from whatever runs next: on a 2-core machine that made torch
  look ~1.7x slower right after NumPy. So after each contender's sample the benchmark waits until no
  thread of the process burns CPU any more (see settle()). Then it calls the next contender once,
  untimed: a thread pool that fell asleep during the wait takes milliseconds to wake on a VM (2
  threads here: a 4 ms call took 12 ms after 0.2 s idle), which calls made back to back, as a
  model's layers make them, do not pay. The figures are steady-state ones.
* Adaptive repeat count. The number of repetitions is chosen from the warm-up timings to fit a per-shape
  time budget, with a floor (so every figure is a median of several samples) and a ceiling.
* Correctness. A benchmark of a wrong kernel is worthless: after timing, fastattn's output is compared
  with the NumPy one and the row is flagged MISMATCH when they disagree.

Runtime dependency is NumPy only; torch and matplotlib are imported lazily and skipped with a note.
``bench/bench_sdpa.py`` runs the same code with the full shape set and the hardware ceilings.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

# A fastattn output may differ from the float32 NumPy one by rounding only; the error is measured
# relative to the largest output magnitude, so the bound does not depend on the data's scale.
MISMATCH_REL_TOL = 1e-3

# NumPy's score matrices are computed in chunks of heads no larger than this, so the baseline does not
# fall out of cache and memory on long sequences (at least one kv-head group is always computed at once).
NUMPY_SCRATCH_BYTES = 64 << 20

# Query lengths up to this are "decode": the time is dominated by reading K and V, so GB/s is reported.
DECODE_MAX_QUERY_LEN = 8


# ----------------------------------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """One benchmark case: query (B, Hq, Lq, D), key/value (B, Hkv, Lk, D), float32."""

    batch: int
    q_heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    causal: bool = False

    @property
    def spec(self) -> str:
        """The command-line form, accepted back by parse_shape: '1,8,8,1024,1024,64,causal'."""
        dims = f"{self.batch},{self.q_heads},{self.kv_heads},{self.q_len},{self.kv_len},{self.head_dim}"
        return dims + (",causal" if self.causal else "")

    @property
    def label(self) -> str:
        return f"({self.spec})"

    @property
    def is_decode(self) -> bool:
        return self.q_len <= DECODE_MAX_QUERY_LEN

    @property
    def flops(self) -> float:
        """Two matmuls of 2*Lq*Lk*D flops per head; a causal mask skips about half of the pairs."""
        full = 4.0 * self.batch * self.q_heads * self.q_len * self.kv_len * self.head_dim
        return full / 2 if self.causal else full

    @property
    def kv_bytes(self) -> float:
        """Bytes of K and V, each read once: the floor of memory traffic, which bounds decoding."""
        return 2.0 * self.batch * self.kv_heads * self.kv_len * self.head_dim * 4


def parse_shape(text: str) -> Shape:
    """'B,Hq,Hkv,Lq,Lk,D[,causal]' -> Shape; the 7th field may be causal/yes/1/true or no/0/false."""
    fields = [f.strip() for f in text.split(",")]
    if len(fields) not in (6, 7):
        raise ValueError(f"shape {text!r}: expected B,Hq,Hkv,Lq,Lk,D[,causal]")
    try:
        dims = [int(f) for f in fields[:6]]
    except ValueError:
        raise ValueError(f"shape {text!r}: the first six fields must be integers") from None
    flag = fields[6].lower() if len(fields) == 7 else "no"
    if flag not in ("causal", "yes", "1", "true", "no", "0", "false", ""):
        raise ValueError(f"shape {text!r}: causal field must be causal/yes/no, got {fields[6]!r}")
    b, hq, hkv, lq, lk, d = dims
    shape = Shape(b, hq, hkv, lq, lk, d, causal=flag in ("causal", "yes", "1", "true"))
    if min(dims) < 1 or shape.q_heads % shape.kv_heads:
        raise ValueError(f"shape {text!r}: sizes must be >= 1 and Hq a multiple of Hkv")
    return shape


SHAPE_SETS: dict[str, list[Shape]] = {
    "quick": [
        Shape(1, 8, 8, 1024, 1024, 64),
        Shape(1, 8, 8, 1024, 1024, 64, causal=True),
        Shape(1, 32, 32, 1, 8192, 128),
        Shape(1, 1, 1, 16, 16, 16),
    ],
    "default": [
        Shape(1, 8, 8, 1024, 1024, 64),
        Shape(1, 8, 8, 1024, 1024, 64, causal=True),
        Shape(1, 32, 8, 1024, 1024, 128, causal=True),  # grouped-query attention
        Shape(4, 8, 8, 512, 512, 64),
        Shape(1, 32, 32, 1, 8192, 128),  # decode step
        Shape(1, 1, 1, 16, 16, 16),  # tiny: per-call overhead
    ],
    "full": [
        Shape(1, 8, 8, 1024, 1024, 64),
        Shape(1, 16, 16, 2048, 2048, 64),
        Shape(1, 8, 8, 4096, 4096, 128),
        Shape(1, 16, 16, 2048, 2048, 64, causal=True),
        Shape(4, 8, 8, 512, 512, 64),
        Shape(1, 32, 8, 1024, 1024, 128, causal=True),  # grouped-query attention
        Shape(1, 32, 32, 1, 8192, 128),  # decode step
        Shape(1, 32, 8, 1, 16384, 128),  # decode step, grouped-query attention
        Shape(1, 1, 1, 16, 16, 16),  # tiny: per-call overhead
    ],
}


def resolve_shapes(items: list[str]) -> list[Shape]:
    """Expand preset names (quick/default/full) and explicit specs, keeping order, dropping repeats."""
    shapes: list[Shape] = []
    for item in items:
        for shape in SHAPE_SETS.get(item) or [parse_shape(item)]:
            if shape not in shapes:
                shapes.append(shape)
    return shapes


# ----------------------------------------------------------------------------------------------------
# Contenders
# ----------------------------------------------------------------------------------------------------


def make_inputs(shape: Shape, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standard-normal float32 q, k, v, C-contiguous, as a model's projections would give."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((shape.batch, shape.q_heads, shape.q_len, shape.head_dim), dtype=np.float32)
    kv_shape = (shape.batch, shape.kv_heads, shape.kv_len, shape.head_dim)
    k = rng.standard_normal(kv_shape, dtype=np.float32)
    v = rng.standard_normal(kv_shape, dtype=np.float32)
    return q, k, v


def numpy_sdpa(q: np.ndarray, k: np.ndarray, v: np.ndarray, *, causal: bool = False) -> np.ndarray:
    """A good plain-NumPy SDPA: batched matmul, stable softmax, matmul; the baseline to beat.

    GQA: the query heads sharing a kv head are consecutive (h // group), so they are stacked into the
    rows of one matmul against that kv head, which is what repeating the kv heads computes, minus the
    copy. Causal (top-left): masked scores are set to -inf before the softmax. Heads are processed in
    chunks so the score matrix stays around NUMPY_SCRATCH_BYTES. The softmax is normalised after the
    second matmul, dividing Lq x Dv values instead of Lq x Lk.
    """
    batch, q_heads, q_len, head_dim = q.shape
    _, kv_heads, kv_len, v_dim = v.shape
    group = q_heads // kv_heads
    units = batch * kv_heads
    qf = np.ascontiguousarray(q).reshape(units, group * q_len, head_dim)
    kf = k.reshape(units, kv_len, head_dim)
    vf = v.reshape(units, kv_len, v_dim)
    out = np.empty((units, group * q_len, v_dim), dtype=q.dtype)
    masked = ~np.tri(q_len, kv_len, dtype=bool) if causal else None  # True where key j > query i
    scale = q.dtype.type(1.0 / math.sqrt(head_dim))
    step = max(1, NUMPY_SCRATCH_BYTES // (group * q_len * kv_len * q.itemsize))
    for start in range(0, units, step):
        part = slice(start, start + step)
        scores = np.matmul(qf[part] * scale, kf[part].transpose(0, 2, 1))
        if masked is not None:
            np.copyto(scores.reshape(-1, group, q_len, kv_len), -np.inf, where=masked)
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        denom = scores.sum(axis=-1, keepdims=True)
        np.matmul(scores, vf[part], out=out[part])
        out[part] /= denom
    return out.reshape(batch, q_heads, q_len, v_dim)


def fastattn_call(fastattn: Any, q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool) -> Callable[..., Any]:
    def run() -> np.ndarray:
        return fastattn.scaled_dot_product_attention(q, k, v, causal=causal)

    return run


def numpy_call(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool) -> Callable[..., Any]:
    def run() -> np.ndarray:
        return numpy_sdpa(q, k, v, causal=causal)

    return run


def torch_call(torch: Any, q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool) -> Callable[..., Any]:
    """torch's SDPA on zero-copy views of the same arrays; enable_gqa only where heads differ."""
    tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
    kwargs: dict[str, Any] = {"is_causal": causal}
    if q.shape[1] != k.shape[1]:
        kwargs["enable_gqa"] = True
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def run() -> Any:
        return sdpa(tq, tk, tv, **kwargs)

    return run


def check_output(out: Any, ref: np.ndarray) -> dict[str, Any]:
    """Compare a result with the NumPy one: max abs diff, relative to the largest |ref|."""
    out = np.asarray(out)
    if out.shape != ref.shape:
        return {"ok": False, "rel_err": None, "max_abs_diff": None,
                "reason": f"shape {out.shape} != {ref.shape}"}
    diff = float(np.max(np.abs(out.astype(np.float64) - ref)))
    peak = float(np.max(np.abs(ref))) or 1.0
    rel = diff / peak
    return {"ok": bool(math.isfinite(rel) and rel < MISMATCH_REL_TOL), "rel_err": rel,
            "max_abs_diff": diff, "reason": None if math.isfinite(rel) else "non-finite values"}


# ----------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimingPlan:
    min_sample_s: float  # shorter samples are dominated by timer resolution and loop overhead
    budget_s: float  # target wall time of one shape's timed repetitions, all contenders together
    min_reps: int
    max_reps: int
    fixed_reps: int | None = None  # --reps: skip the adaptive choice


DEFAULT_PLAN = TimingPlan(min_sample_s=0.005, budget_s=3.0, min_reps=5, max_reps=50)
QUICK_PLAN = TimingPlan(min_sample_s=0.002, budget_s=0.8, min_reps=3, max_reps=15)


def time_calls(fn: Callable[..., Any], calls: int) -> tuple[float, Any]:
    """Seconds per call over `calls` back-to-back calls, and the last result.

    The garbage collector is paused so a collection triggered by someone else's garbage does not land
    in this sample (timeit does the same).
    """
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        result = None
        start = time.perf_counter()
        for _ in range(calls):
            result = fn()
        elapsed = time.perf_counter() - start
    finally:
        if gc_was_enabled:
            gc.enable()
    return elapsed / calls, result


def calibrate(fn: Callable[..., Any], min_sample_s: float) -> tuple[int, float]:
    """Warm fn up; return (calls per sample, estimated seconds per call).

    Fast calls are batched so a sample lasts at least min_sample_s: the batch grows tenfold until it
    is measurable, then is scaled to the target.
    """
    fn()  # warm-up: lazy initialisation, thread-pool start, first-touch page faults
    calls = 1
    while True:
        per_call, _ = time_calls(fn, calls)
        if per_call * calls >= min_sample_s / 10 or calls >= 1_000_000:
            break
        calls *= 10
    if per_call >= min_sample_s:
        return 1, per_call
    return max(1, math.ceil(min_sample_s / max(per_call, 1e-9))), per_call


def settle(max_s: float = 0.5, slice_s: float = 0.005) -> float:
    """Sleep until this process's other threads stop burning CPU; return the seconds waited.

    Thread pools spin-wait after a parallel call (OpenBLAS about 0.1 s, OpenMP runtimes from
    microseconds to KMP_BLOCKTIME's 0.2 s) and would slow down the next contender. Process CPU time
    counts every thread, so it barely advances during a sleep once they have all gone idle.
    """
    start = time.perf_counter()
    while time.perf_counter() - start < max_s:
        cpu_before, wall_before = time.process_time(), time.perf_counter()
        time.sleep(slice_s)
        if time.process_time() - cpu_before < 0.25 * (time.perf_counter() - wall_before):
            break
    return time.perf_counter() - start


def choose_reps(seconds_per_rep: float, plan: TimingPlan) -> int:
    if plan.fixed_reps:
        return plan.fixed_reps
    fitting = int(plan.budget_s / max(seconds_per_rep, 1e-9))
    return max(plan.min_reps, min(plan.max_reps, fitting))


@dataclass
class Timing:
    median_s: float
    min_s: float
    samples_s: list[float]
    calls_per_sample: int

    @classmethod
    def from_samples(cls, samples: list[float], calls: int) -> "Timing":
        return cls(float(np.median(samples)), float(min(samples)), samples, calls)


def time_interleaved(contenders: dict[str, Callable[..., Any]], plan: TimingPlan,
                     on_rep: Callable[[int, int], None] | None = None,
                     ) -> tuple[dict[str, Timing], dict[str, Any], dict[str, str]]:
    """Time the contenders in turn within every repetition.

    Returns the timings, each contender's last result, and the error message of each contender that
    raised during warm-up (it is dropped, the others still run).
    """
    calls: dict[str, int] = {}
    errors: dict[str, str] = {}
    must_settle = len(contenders) > 1  # a contender slowed by its own spinning pool is its own cost
    seconds_per_rep = 0.0
    for name, fn in contenders.items():
        try:
            calls[name], per_call = calibrate(fn, plan.min_sample_s)
        except Exception as exc:  # a failing contender must not stop the benchmark
            errors[name] = f"{type(exc).__name__}: {exc}"
            continue
        seconds_per_rep += (calls[name] + must_settle) * per_call + (settle() if must_settle else 0.0)
    reps = choose_reps(seconds_per_rep, plan)
    samples: dict[str, list[float]] = {name: [] for name in calls}
    last: dict[str, Any] = {}
    for rep in range(reps):
        if on_rep:
            on_rep(rep, reps)
        for name in calls:
            if must_settle:
                contenders[name]()  # untimed: wakes the thread pool the settling let fall asleep
            per_call, last[name] = time_calls(contenders[name], calls[name])
            samples[name].append(per_call)
            if must_settle:
                settle()
    timings = {name: Timing.from_samples(samples[name], calls[name]) for name in calls}
    return timings, last, errors


# ----------------------------------------------------------------------------------------------------
# Progress (stderr)
# ----------------------------------------------------------------------------------------------------


class Progress:
    """One status line on stderr: rewritten in place on a terminal; plain lines otherwise (logs, CI)."""

    def __init__(self, quiet: bool = False, stream: Any = None):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def step(self, text: str) -> None:
        """A new stage: shown on both terminals and logs."""
        if self.quiet:
            return
        if self.tty:
            self._rewrite(text)
        else:
            print(text, file=self.stream, flush=True)

    def detail(self, text: str) -> None:
        """A frequent update within a stage: only where it can overwrite itself."""
        if self.tty and not self.quiet:
            self._rewrite(text)

    def clear(self) -> None:
        if self.tty and not self.quiet:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def _rewrite(self, text: str) -> None:
        width = shutil.get_terminal_size((100, 20)).columns - 1
        self.stream.write("\r" + text[:width] + "\x1b[K")
        self.stream.flush()


def progress_bar(done: int, total: int, width: int = 20) -> str:
    filled = round(width * done / max(total, 1))
    return "[" + "#" * filled + "." * (width - filled) + "]"


# ----------------------------------------------------------------------------------------------------
# Machine and software description
# ----------------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def package_version(module: Any, dist_name: str) -> str:
    version = getattr(module, "__version__", None)
    if version:
        return str(version)
    try:
        from importlib.metadata import version as dist_version

        return dist_version(dist_name)
    except Exception:
        return "unknown"


def import_torch(wanted: bool, notes: list[str]) -> Any:
    """torch, or None with a note saying why its columns are missing."""
    if not wanted:
        notes.append("torch columns skipped (--no-torch)")
        return None
    try:
        import torch
    except Exception as exc:  # ImportError, or a broken install raising OSError
        notes.append(f"torch columns skipped: torch not importable ({type(exc).__name__}: {exc})")
        return None
    return torch


class OtherLoad:
    """CPU time other processes used while the benchmark ran: a busy machine makes every figure suspect.

    Linux only (/proc/stat); elsewhere fraction() is None. The machine's busy time minus this process's
    (and its finished children's) CPU time is what others took.
    """

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat", encoding="ascii") as f:
                fields = [int(x) for x in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields + [0] * (8 - len(fields))
        machine_busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
        own = os.times()
        own_cpu = own.user + own.system + own.children_user + own.children_system
        return machine_busy, own_cpu, time.perf_counter()

    def fraction(self) -> float | None:
        """Others' share of the machine's CPU capacity since construction (0 = idle machine)."""
        end = self._sample()
        if self.start is None or end is None:
            return None
        busy, own, wall = (b - a for a, b in zip(self.start, end))
        return max(0.0, busy - own) / max(wall * (os.cpu_count() or 1), 1e-9)


def blas_thread_limit(threads: int, notes: list[str]) -> contextlib.AbstractContextManager[Any]:
    """Pin NumPy's BLAS pool to the thread count the others use, when threadpoolctl can.

    Without it BLAS uses its default, normally every core: the same as the others unless --threads or
    FASTATTN_NUM_THREADS asked for fewer, which is when the note matters.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        if threads != os.cpu_count():
            notes.append(f"NumPy's BLAS is not held to {threads} thread(s) (threadpoolctl not installed)")
        return contextlib.nullcontext()
    return threadpool_limits(limits=threads, user_api="blas")


# ----------------------------------------------------------------------------------------------------
# Hardware ceilings
# ----------------------------------------------------------------------------------------------------


def gemm_ceiling(torch: Any, n: int = 4096, reps: int = 3) -> dict[str, Any]:
    """float32 n x n x n matmul GFLOP/s: what a compute-bound kernel could hope to reach here.

    torch.matmul (MKL/oneDNN) at torch's thread count when torch is there, else NumPy's BLAS.
    """
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    if torch is not None:
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        fn, source = (lambda: torch.matmul(ta, tb)), f"torch.matmul, {torch.get_num_threads()} threads"
    else:
        fn, source = (lambda: a @ b), "numpy.matmul, BLAS's threads"
    fn()  # warm-up
    seconds = float(np.median([time_calls(fn, 1)[0] for _ in range(reps)]))
    return {"gflops": 2.0 * n**3 / seconds / 1e9, "n": n, "source": source, "seconds": seconds}


def copy_bandwidth(megabytes: int = 256, reps: int = 5) -> dict[str, Any]:
    """np.copyto of a buffer much larger than caches, counting bytes read plus written (STREAM copy).

    A single-threaded figure: several threads streaming K and V can exceed it on some machines.
    """
    src = np.ones(megabytes * (1 << 20) // 4, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # warm-up: first-touch page faults on dst
    seconds = float(np.median([time_calls(lambda: np.copyto(dst, src), 1)[0] for _ in range(reps)]))
    return {"gbs": 2.0 * src.nbytes / seconds / 1e9, "megabytes": megabytes,
            "source": "np.copyto, 1 thread", "seconds": seconds}


def measure_ceilings(torch: Any, quick: bool, progress: Progress) -> dict[str, Any]:
    progress.step("measuring ceilings: GEMM ...")
    gemm = gemm_ceiling(torch, n=2048 if quick else 4096)
    progress.step("measuring ceilings: memory copy ...")
    copy = copy_bandwidth()
    progress.clear()
    return {"gemm": gemm, "copy": copy}


def describe_ceilings(ceilings: dict[str, Any]) -> str:
    gemm, copy = ceilings["gemm"], ceilings["copy"]
    return (f"ceilings: GEMM {gemm['n']}^3 float32 ({gemm['source']}) "
            f"{gemm['gflops']:.1f} GFLOP/s | copy {copy['megabytes']} MB ({copy['source']}) "
            f"{copy['gbs']:.1f} GB/s")


# ----------------------------------------------------------------------------------------------------
# One shape
# ----------------------------------------------------------------------------------------------------


def bench_shape(shape: Shape, fastattn: Any, torch: Any, plan: TimingPlan,
                on_rep: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Time fastattn, NumPy and (if given) torch on one shape, then check fastattn against NumPy."""
    q, k, v = make_inputs(shape)
    contenders = {
        "fastattn": fastattn_call(fastattn, q, k, v, shape.causal),
        "numpy": numpy_call(q, k, v, shape.causal),
    }
    if torch is not None:
        contenders["torch"] = torch_call(torch, q, k, v, shape.causal)
    timings, last, errors = time_interleaved(contenders, plan, on_rep)
    row = new_row(shape, timings, errors)
    if "fastattn" in timings:
        row["kernel"] = fastattn.last_kernel()
        if "numpy" in last:
            row["check"] = check_output(last["fastattn"], last["numpy"])
    if "torch" in last and "numpy" in last:
        # Not a verdict on fastattn: it tells whether the NumPy reference itself is trustworthy.
        row["torch_check"] = check_output(last["torch"].numpy(), last["numpy"])
    return row


def new_row(shape: Shape, timings: dict[str, Timing], errors: dict[str, str]) -> dict[str, Any]:
    """A result row: the shape, its work, every contender's timing, and the derived rates."""
    row: dict[str, Any] = {
        "shape": asdict(shape), "label": shape.label, "flops": shape.flops, "kv_bytes": shape.kv_bytes,
        "decode": shape.is_decode, "times": {name: asdict(t) for name, t in timings.items()},
        "errors": errors, "kernel": None, "check": None, "isa_times": {},
    }
    fast = timings.get("fastattn")
    if fast:
        row["gflops"] = shape.flops / fast.median_s / 1e9
        row["gbs"] = shape.kv_bytes / fast.median_s / 1e9 if shape.is_decode else None
        for other in ("numpy", "torch"):
            if other in timings:
                row[f"speedup_vs_{other}"] = timings[other].median_s / fast.median_s
    return row


def run_shapes(shapes: list[Shape], fastattn: Any, torch: Any, plan: TimingPlan,
               progress: Progress) -> list[dict[str, Any]]:
    rows = []
    for i, shape in enumerate(shapes, 1):
        prefix = f"[{i}/{len(shapes)}] {shape.label}"
        progress.step(f"{prefix} warm-up ...")

        def on_rep(rep: int, reps: int, prefix: str = prefix) -> None:
            progress.detail(f"{prefix} {progress_bar(rep, reps)} rep {rep + 1}/{reps}")

        try:
            rows.append(bench_shape(shape, fastattn, torch, plan, on_rep))
        except Exception as exc:  # e.g. MemoryError on a big custom shape: report it, go on
            rows.append(new_row(shape, {}, {"shape": f"{type(exc).__name__}: {exc}"}))
        gc.collect()  # release this shape's arrays before the next one allocates
    progress.clear()
    return rows


# ----------------------------------------------------------------------------------------------------
# Per-ISA runs: the ISA is fixed per process, so each one runs in its own subprocess
# ----------------------------------------------------------------------------------------------------

WORKER_CODE = "import sys, fastattn._benchmark as b; sys.exit(b.main(sys.argv[1:]))"


def worker_main(shapes: list[Shape], fastattn: Any, plan: TimingPlan, progress: Progress) -> int:
    """--worker: time fastattn alone under this process's ISA; print one JSON line on stdout.

    Progress goes to the stderr it shares with the parent, so a slow ISA (scalar) shows it is alive.
    """
    isa = fastattn.backends()["cpu"]["isa"]
    rows = []
    for i, shape in enumerate(shapes, 1):
        progress.step(f"[isa {isa}] [{i}/{len(shapes)}] {shape.label} ...")
        q, k, v = make_inputs(shape)
        timings, last, errors = time_interleaved({"fastattn": fastattn_call(fastattn, q, k, v, shape.causal)},
                                                 plan)
        row: dict[str, Any] = {"spec": shape.spec, "errors": errors, "median_s": None}
        if "fastattn" in timings:
            row.update(median_s=timings["fastattn"].median_s, kernel=fastattn.last_kernel(),
                       check=check_output(last["fastattn"], numpy_sdpa(q, k, v, causal=shape.causal)))
        rows.append(row)
        gc.collect()
    progress.clear()
    print(json.dumps({"isa": isa, "threads": fastattn.get_num_threads(), "rows": rows}))
    return 0


def run_isa_worker(isa: str, shapes: list[Shape], threads: int, args: argparse.Namespace) -> dict[str, Any]:
    """Re-run this benchmark's fastattn column in a subprocess with FASTATTN_CPU_ISA=isa."""
    command = [sys.executable, "-c", WORKER_CODE, "--worker", "--threads", str(threads),
               "--shapes", *(s.spec for s in shapes)]
    if args.quick:
        command.append("--quick")
    if args.reps:
        command += ["--reps", str(args.reps)]
    if args.quiet:
        command.append("--quiet")
    env = dict(os.environ, FASTATTN_CPU_ISA=isa)
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True)  # stderr: the user's
    lines = done.stdout.strip().splitlines()
    failure = {"isa": isa, "rows": [], "error": f"worker exited with status {done.returncode} (stderr above)"}
    if done.returncode != 0 or not lines:
        return failure
    try:
        return json.loads(lines[-1])  # the last line: anything fastattn printed comes before it
    except ValueError:
        return {**failure, "error": f"worker printed no result line: {lines[-1][:200]!r}"}


def run_isas(shapes: list[Shape], rows: list[dict[str, Any]], isas: list[str], threads: int,
             args: argparse.Namespace, progress: Progress, notes: list[str]) -> None:
    """Add each ISA's fastattn timing and check to the rows (row['isa_times'][isa])."""
    for i, isa in enumerate(isas, 1):
        progress.step(f"[isa {i}/{len(isas)}] FASTATTN_CPU_ISA={isa}: timing fastattn in a subprocess ...")
        result = run_isa_worker(isa, shapes, threads, args)
        if result.get("error"):
            notes.append(f"ISA {isa}: {result['error']}")
        by_spec = {r["spec"]: r for r in result["rows"]}
        for shape, row in zip(shapes, rows):
            worker_row = by_spec.get(shape.spec)
            row["isa_times"][isa] = worker_row
            if worker_row:
                notes += isa_notes(isa, shape, worker_row)
    progress.clear()


def isa_notes(isa: str, shape: Shape, worker_row: dict[str, Any]) -> list[str]:
    """What went wrong with one shape under one forced ISA, if anything."""
    notes = [f"ISA {isa} {shape.label}: {message}" for message in worker_row["errors"].values()]
    check = worker_row.get("check")
    if check and not check["ok"]:
        detail = f"rel err {check['rel_err']:.1e}" if check["rel_err"] is not None else check["reason"]
        notes.append(f"ISA {isa} {shape.label}: MISMATCH vs NumPy, {detail}")
    kernel = worker_row.get("kernel")
    if kernel and f"/{isa}/" not in f"/{kernel}/":
        notes.append(f"ISA {isa} was forced, but {shape.label} was served by {kernel}")
    return notes


# ----------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------


def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.3g}"


def fmt_rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def fmt_percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def fmt_check(row: dict[str, Any]) -> str:
    if row["errors"].get("fastattn") or row["errors"].get("shape"):
        return "ERROR"
    check = row["check"]
    if check is None:
        return "unchecked"
    detail = f"{check['rel_err']:.0e}" if check["rel_err"] is not None else check["reason"]
    return ("ok " if check["ok"] else "MISMATCH ") + detail


def fmt_isa_cell(worker_row: dict[str, Any] | None) -> str:
    """A forced ISA's time, or why there is none; a wrong result shows instead of its time."""
    if not worker_row or worker_row["errors"]:
        return "ERROR" if worker_row else "-"
    if worker_row.get("check") and not worker_row["check"]["ok"]:
        return "MISMATCH"
    return fmt_ms(worker_row["median_s"])


def row_failed(row: dict[str, Any]) -> bool:
    """fastattn raised or disagreed with NumPy, under the default ISA or a forced one."""
    default_bad = fmt_check(row) == "ERROR" or (row["check"] is not None and not row["check"]["ok"])
    return default_bad or any(fmt_isa_cell(w) in ("ERROR", "MISMATCH") for w in row["isa_times"].values() if w)


def median_of(row: dict[str, Any], name: str) -> float | None:
    timing = row["times"].get(name)
    return timing["median_s"] if timing else None


Column = tuple[str, str, Callable[[dict[str, Any]], str]]  # title, "<" or ">", cell text


def isa_cell(isa: str) -> Callable[[dict[str, Any]], str]:
    """The cell text of one ISA's column (a function per column: a lambda in a loop would see the
    loop's last ISA)."""
    return lambda r: fmt_isa_cell(r["isa_times"].get(isa))


def table_columns(has_torch: bool, isas: list[str], ceilings: dict[str, Any] | None) -> list[Column]:
    columns: list[Column] = [
        ("shape (B,Hq,Hkv,Lq,Lk,D)", "<", lambda r: r["label"]),
        ("fastattn ms", ">", lambda r: fmt_ms(median_of(r, "fastattn"))),
    ]
    for isa in isas:
        columns.append((f"{isa} ms", ">", isa_cell(isa)))
    columns += [
        ("GFLOP/s", ">", lambda r: fmt_rate(r.get("gflops"))),
        ("GB/s", ">", lambda r: fmt_rate(r.get("gbs"))),
    ]
    if ceilings:
        gemm, copy = ceilings["gemm"]["gflops"], ceilings["copy"]["gbs"]
        columns += [
            ("%GEMM", ">", lambda r: fmt_percent(r["gflops"] / gemm if r.get("gflops") else None)),
            ("%copy", ">", lambda r: fmt_percent(r["gbs"] / copy if r.get("gbs") else None)),
        ]
    columns += [
        ("NumPy ms", ">", lambda r: fmt_ms(median_of(r, "numpy"))),
        ("vs NumPy", ">", lambda r: fmt_ratio(r.get("speedup_vs_numpy"))),
    ]
    if has_torch:
        columns += [
            ("torch ms", ">", lambda r: fmt_ms(median_of(r, "torch"))),
            ("vs torch", ">", lambda r: fmt_ratio(r.get("speedup_vs_torch"))),
        ]
    columns += [
        ("check", "<", fmt_check),
        ("kernel", "<", lambda r: r["kernel"] or "-"),
    ]
    return columns


def render_table(rows: list[dict[str, Any]], columns: list[Column]) -> str:
    """Plain aligned text: titles, a rule, one line per row."""
    cells = [[text(row) for _, _, text in columns] for row in rows]
    widths = [max([len(title)] + [len(line[i]) for line in cells]) for i, (title, _, _) in enumerate(columns)]

    def line(values: list[str]) -> str:
        parts = [v.ljust(w) if align == "<" else v.rjust(w)
                 for v, w, (_, align, _) in zip(values, widths, columns)]
        return "  ".join(parts).rstrip()

    header = line([title for title, _, _ in columns])
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([header, rule] + [line(c) for c in cells])


def render_markdown(rows: list[dict[str, Any]], columns: list[Column]) -> str:
    """The same table as GitHub markdown, for bench/RESULTS.md."""
    titles = [title for title, _, _ in columns]
    aligns = ["---" if align == "<" else "---:" for _, align, _ in columns]
    lines = ["| " + " | ".join(titles) + " |", "| " + " | ".join(aligns) + " |"]
    lines += ["| " + " | ".join(text(row) for _, _, text in columns) + " |" for row in rows]
    return "\n".join(lines)


def header_line(meta: dict[str, Any]) -> str:
    return (f"fastattn {meta['versions']['fastattn']} | ISA {meta['isa']} "
            f"(available: {', '.join(meta['available_isas'])}) | threads {meta['threads']} | "
            f"CPU {meta['cpu']} ({os.cpu_count()} logical) | numpy {meta['versions']['numpy']} | "
            f"torch {meta['versions']['torch']} | python {meta['versions']['python']}")


def method_lines(plan: TimingPlan, rows: list[dict[str, Any]], has_torch: bool) -> list[str]:
    """How the figures were obtained, so a pasted table carries its own caveats."""
    reps = sorted({len(t["samples_s"]) for r in rows for t in r["times"].values()}) or [0]
    span = f"{reps[0]}-{reps[-1]}" if len(reps) > 1 else f"{reps[0]}"
    order = "fastattn, NumPy, torch" if has_torch else "fastattn, NumPy"
    return [
        f"timing: median of {span} interleaved repetitions per shape ({order} in turn), after warm-up; "
        "idle thread pools awaited between contenders, then one untimed call each; "
        f"short calls batched into >= {plan.min_sample_s * 1e3:g} ms",
        "rates:  GFLOP/s = 4*B*Hq*Lq*Lk*D / time (halved if causal); GB/s (decode) = K+V bytes / time; "
        "vs X = X's time / fastattn's (> 1: fastattn faster)",
        "check:  fastattn's output vs the NumPy float32 one, max abs diff / max |out|, MISMATCH above "
        f"{MISMATCH_REL_TOL:g}",
    ]


def write_png(path: str, rows: list[dict[str, Any]], meta: dict[str, Any], notes: list[str]) -> None:
    """Bar chart of fastattn's speedup over NumPy and torch per shape.

    Log scale, with bars drawn from 1x, so a 2x win and a 2x loss look the same size in opposite ways.
    """
    try:
        from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
        from matplotlib.ticker import FuncFormatter
    except Exception as exc:
        notes.append(f"--png skipped: matplotlib not importable ({type(exc).__name__})")
        return
    series = [(title, np.array([r.get(f"speedup_vs_{name}") or np.nan for r in rows]))
              for name, title in (("numpy", "vs NumPy"), ("torch", "vs torch"))
              if any(r.get(f"speedup_vs_{name}") for r in rows)]
    fig = Figure(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.5), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    width = 0.8 / max(len(series), 1)
    for i, (title, values) in enumerate(series):
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, values - 1, width, bottom=1, label=title)
        ax.bar_label(bars, labels=["" if np.isnan(v) else f"{v:.3g}x" for v in values], fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    ax.set_yticks([t for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100) if low <= t <= high])
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}x"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: ""))
    ax.set_ylabel("fastattn speedup (higher is better)")
    ax.set_xticks(x)
    ax.set_xticklabels([r["label"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_title(f"fastattn SDPA float32, ISA {meta['isa']}, {meta['threads']} threads, {meta['cpu']}",
                 fontsize=9)
    ax.legend()
    fig.savefig(path, dpi=120)


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fastattn bench",
        description="Time fastattn.scaled_dot_product_attention (float32, CPU) against NumPy and PyTorch.")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and a smaller shape set")
    parser.add_argument("--full", action="store_true", help="the full shape set (bench/bench_sdpa.py default)")
    parser.add_argument("--shapes", nargs="+", metavar="SHAPE",
                        help="shape sets (quick, default, full) and/or shapes 'B,Hq,Hkv,Lq,Lk,D[,causal]'")
    parser.add_argument("--threads", type=int, metavar="N", help="threads for fastattn, torch (and BLAS)")
    parser.add_argument("--reps", type=int, metavar="N", help="fixed repetitions per shape (default: adaptive)")
    parser.add_argument("--json", metavar="PATH", help="write all results and the setup as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="write the table as GitHub markdown")
    parser.add_argument("--png", metavar="PATH", help="bar chart of speedups (needs matplotlib)")
    parser.add_argument("--isas", action="store_true",
                        help="also time fastattn under every available ISA (one subprocess each)")
    parser.add_argument("--no-torch", dest="torch", action="store_false", help="leave torch out")
    parser.add_argument("--ceilings", action=argparse.BooleanOptionalAction, default=False,
                        help="measure GEMM and memory-copy ceilings and show each shape's fraction")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # run_isa_worker's child
    args = parser.parse_args(argv)
    try:
        preset = "full" if args.full else "quick" if args.quick else "default"
        args.shape_list = resolve_shapes(args.shapes or [preset])
    except ValueError as exc:
        parser.error(str(exc))
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.reps is not None and args.reps < 1:
        parser.error("--reps must be >= 1")
    # The outputs are written after the whole run: a path that cannot take them fails now, not then.
    for option in ("json", "markdown", "png"):
        path = getattr(args, option)
        if path is None:
            continue
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            parser.error(f"--{option} {path}: not a file in a writable folder")
        if option == "png" and not path.lower().endswith(".png"):
            parser.error(f"--png {path}: the chart is a PNG; give a path ending in .png")
    return args


def timing_plan(args: argparse.Namespace) -> TimingPlan:
    plan = QUICK_PLAN if args.quick else DEFAULT_PLAN
    return TimingPlan(**{**asdict(plan), "fixed_reps": args.reps})


def collect_meta(fastattn: Any, torch: Any, threads: int, plan: TimingPlan) -> dict[str, Any]:
    cpu = fastattn.backends()["cpu"]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv, "isa": cpu["isa"], "available_isas": list(cpu["available_isas"]),
        "threads": threads, "cpu": cpu_model(), "logical_cpus": os.cpu_count(),
        "platform": platform.platform(), "plan": asdict(plan),
        "versions": {
            "fastattn": package_version(fastattn, "fastattn"), "numpy": np.__version__,
            "torch": package_version(torch, "torch") if torch is not None else "not used",
            "python": platform.python_version(),
        },
    }


def result_notes(rows: list[dict[str, Any]], other_load: float | None) -> list[str]:
    """What a reader of the table must know: failures, a doubtful reference, a busy machine."""
    notes = []
    for row in rows:
        notes += [f"{row['label']} {name}: {message}" for name, message in row["errors"].items()]
        if row.get("torch_check") and not row["torch_check"]["ok"]:
            notes.append(f"{row['label']}: torch disagrees with the NumPy reference too: suspect the reference")
    if other_load is not None and other_load > 0.05:
        notes.append(f"other processes used {100 * other_load:.0f}% of the machine's CPU time during the run: "
                     "the timings are disturbed; rerun on an idle machine")
    return notes


def write_outputs(args: argparse.Namespace, rows: list[dict[str, Any]], columns: list[Column],
                  meta: dict[str, Any], preamble: list[str], notes: list[str]) -> None:
    """The optional files: chart first, so a note it adds reaches the JSON and markdown too."""
    if args.png:
        write_png(args.png, rows, meta, notes)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"meta": {**meta, "notes": notes}, "rows": rows}, f, indent=1)
    if args.markdown:
        parts = ["  \n".join(preamble), render_markdown(rows, columns)]  # "  \n": a markdown line break
        if notes:
            parts.append("\n".join(f"- note: {n}" for n in notes))
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write("\n\n".join(parts) + "\n")


def run_benchmark(args: argparse.Namespace, fastattn: Any, threads: int, plan: TimingPlan,
                  progress: Progress) -> int:
    """The main process: time every shape, optionally every ISA, print the table, write the files."""
    notes: list[str] = []
    other_load = OtherLoad()
    torch = import_torch(args.torch, notes)
    if torch is not None:
        torch.set_num_threads(threads)  # same cores for both, or the comparison means nothing
    with blas_thread_limit(threads, notes):
        meta = collect_meta(fastattn, torch, threads, plan)
        preamble = [header_line(meta)]
        print(preamble[0], flush=True)
        ceilings = measure_ceilings(torch, args.quick, progress) if args.ceilings else None
        if ceilings:
            meta["ceilings"] = ceilings
            preamble.append(describe_ceilings(ceilings))
            print(preamble[-1], flush=True)
        rows = run_shapes(args.shape_list, fastattn, torch, plan, progress)
    isas = meta["available_isas"] if args.isas else []
    if isas:
        run_isas(args.shape_list, rows, isas, threads, args, progress, notes)
        notes.append("per-ISA columns come from separate processes, timed after the main run "
                     "(not interleaved with the others)")
    meta["other_load"] = other_load.fraction()
    notes += result_notes(rows, meta["other_load"])

    columns = table_columns(torch is not None, isas, ceilings)
    method = method_lines(plan, rows, torch is not None)
    preamble += method
    print("\n".join(method) + "\n\n" + render_table(rows, columns))
    write_outputs(args, rows, columns, meta, preamble, notes)
    if notes:
        print("\n" + "\n".join(f"note: {n}" for n in notes))
    return 1 if any(row_failed(row) for row in rows) else 0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every fastattn result matched NumPy, 1 otherwise, 2 if unusable."""
    args = parse_args(argv)
    try:
        import fastattn
    except ImportError as exc:
        print(f"fastattn bench: cannot import fastattn ({exc}); build and install it first", file=sys.stderr)
        return 2
    if args.threads:
        fastattn.set_num_threads(args.threads)
    threads = fastattn.get_num_threads()
    plan = timing_plan(args)
    progress = Progress(quiet=args.quiet)
    if args.worker:
        return worker_main(args.shape_list, fastattn, plan, progress)
    return run_benchmark(args, fastattn, threads, plan, progress)


if __name__ == "__main__":
    sys.exit(main())
