"""The memory guarantee (README, "Guarantees"): no buffer grows with Lq x Lk. One causal call
with Lq = Lk = 32768, D = 64 (a float32 score matrix would be 4 GiB) raises the peak RSS by less
than 64 MB, output included, and by less than 32 MB with out= given; the general attention
kernel (4096 queries x 32768 keys: 512 MiB of scores) stays under 64 MB too, and so does additive
attention with keys broadcast over 256 batches (its e^2k buffer is per distinct key set). Runs in a fresh
interpreter so the peak-RSS measurement is not polluted by the rest of the suite."""

import json
import secrets

import pytest

from helpers import run_python

LIMIT = 64 * 2**20  # the guarantee: peak RSS growth of one call, output included
LIMIT_WITH_OUT = 32 * 2**20  # with out= given: the kernel's own scratch only

CODE = r"""
import json, resource, time
import numpy as np
import fastattn

def status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None

L, D = 32768, 64
rng = np.random.default_rng(SEED)
q = rng.standard_normal((1, L, D), dtype=np.float32)
k = rng.standard_normal((1, L, D), dtype=np.float32)
v = rng.standard_normal((1, L, D), dtype=np.float32)
out = np.empty((1, L, D), np.float32)
out.fill(1.0)  # touch every page now (np.zeros pages would only be mapped on first write)
# warm up the thread pool and any lazy initialisation on a small problem
fastattn.scaled_dot_product_attention(q[:, :256], k[:, :256], v[:, :256], causal=True)

try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    reset = True
except OSError:
    reset = False
base_rss = status_kb("VmRSS")
base_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
res = fastattn.scaled_dot_product_attention(q, k, v, causal=True, out=out)
seconds = time.perf_counter() - t0
peak_hwm = status_kb("VmHWM")
peak_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if reset and peak_hwm is not None:
    growth = (peak_hwm - base_rss) * 1024
else:  # ru_maxrss never resets: growth of the process-wide peak (a lower bound), or HWM vs RSS
    growth = max((peak_maxrss - base_maxrss) * 1024, ((peak_hwm or 0) - base_rss) * 1024)

# the call did the work: spot-check a few rows against float64
errs = []
for i in (0, 1, 777, 12345, L - 1):
    s = (k[0, : i + 1].astype(np.float64) @ q[0, i].astype(np.float64)) / np.sqrt(D)
    p = np.exp(s - s.max())
    ref = (p @ v[0, : i + 1].astype(np.float64)) / p.sum()
    errs.append(float(np.max(np.abs(out[0, i] - ref)) / np.max(np.abs(ref))))

def peak_growth(call):
    # peak RSS growth (bytes) during call(), and its result
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = status_kb("VmRSS")
    result = call()
    return (status_kb("VmHWM") - base) * 1024, result

extra = {}
if reset:
    extra["growth_no_out"], res2 = peak_growth(lambda: fastattn.scaled_dot_product_attention(q, k, v, causal=True))
    assert np.array_equal(res2, out)
    del res2
    extra["growth_attention"], ctx = peak_growth(
        lambda: fastattn.attention(q[0, :4096], k[0], v[0], score="dot", align="sigmoid"))
    extra["attention_kernel"] = fastattn.last_kernel()
    s = q[0, 4000].astype(np.float64) @ k[0].T.astype(np.float64)
    ref = (1 / (1 + np.exp(-s))) @ v[0].astype(np.float64)
    errs.append(float(np.max(np.abs(ctx[4000] - ref)) / np.max(np.abs(ref))))
    # additive tanh in product form, keys broadcast over 256 batches: e^2k is kept once per key
    # set (0.5 MB here), not once per batch (134 MB)
    params = {"W_q": np.eye(64, dtype=np.float32), "W_k": np.eye(64, dtype=np.float32),
              "w": np.full(64, 0.1, np.float32)}
    extra["growth_additive"], _ = peak_growth(
        lambda: fastattn.attention(q[0, :4096].reshape(256, 16, 64), k[0, :2048], v[0, :2048],
                                   score="additive", params=params))
print(json.dumps(dict(growth=growth, out_nbytes=out.nbytes, same=res is out, reset=reset, seconds=seconds,
                      errs=errs, kernel=fastattn.last_kernel(), **extra)))
"""


@pytest.mark.no_sanitizer  # ASan's shadow memory and quarantine make peak RSS meaningless
def test_no_score_matrix_materialised():
    r = run_python(CODE.replace("SEED", str(secrets.randbits(63))), timeout=500)
    assert r.returncode == 0, r.stderr[-4000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    print(info)
    assert info["same"], "out= must be returned"
    assert max(info["errs"]) < 1e-4, info
    assert info["growth"] < LIMIT_WITH_OUT, (
        f"peak RSS grew by {info['growth'] / 2**20:.1f} MiB during one 32768x32768 causal call with out= "
        f"(limit {LIMIT_WITH_OUT / 2**20:.0f} MiB); {info}")
    if info["reset"]:  # the per-call measurements need /proc/self/clear_refs
        assert info["growth_no_out"] < LIMIT, info
        assert info["attention_kernel"].split("/")[2] == "attention", info  # the general kernel ran
        assert info["growth_attention"] < LIMIT, info
        assert info["growth_additive"] < LIMIT, info


def test_sizes_past_any_allocation_raise_memory_error():
    # Keys broadcast from one row (stride 0) make Lk as large as 2^59 without memory behind it.
    # The general kernel's score row and the vector kernel's per-row projections grow with Lk;
    # their sizes in int64 used to wrap to a small buffer that the kernels then overran (SIGSEGV).
    # In a fresh interpreter, so a crash fails this test rather than the session.
    code = r"""
import numpy as np
import fastattn
q = np.ones((1, 2), np.float32)
for call in (
    lambda: fastattn.attention(q, np.broadcast_to(q, (1 << 59, 2)), score="dot", align="sigmoid"),
    lambda: fastattn.vector_attention(
        q, np.broadcast_to(q, (1 << 55, 2)), np.broadcast_to(q, (1 << 55, 2)),
        weight_mlp=(np.zeros((512, 2), np.float32), np.zeros(512, np.float32),
                    np.zeros((1, 512), np.float32), np.zeros(1, np.float32))),
):
    try:
        call()
    except MemoryError:
        print("MemoryError")
"""
    r = run_python(code, timeout=120)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stderr}"
    assert r.stdout.split() == ["MemoryError", "MemoryError"], r.stdout
