"""The kernel never materialises the Lq x Lk score matrix: one causal call with
Lq = Lk = 32768 (a float32 score matrix would be 4 GiB) must raise the peak RSS
by less than the output size + 32 MB.  Runs in a fresh interpreter so the
peak-RSS measurement is not polluted by the rest of the suite."""

import json
import secrets

from helpers import run_python

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
print(json.dumps(dict(growth=growth, out_nbytes=out.nbytes, same=res is out, reset=reset, seconds=seconds,
                      errs=errs, kernel=fastattn.last_kernel())))
"""


def test_no_score_matrix_materialised():
    r = run_python(CODE.replace("SEED", str(secrets.randbits(63))), timeout=500)
    assert r.returncode == 0, r.stderr[-4000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    print(info)
    assert info["same"], "out= must be returned"
    assert max(info["errs"]) < 1e-4, info
    limit = info["out_nbytes"] + 32 * 2**20
    assert info["growth"] < limit, (
        f"peak RSS grew by {info['growth'] / 2**20:.1f} MiB during one 32768x32768 causal call "
        f"(limit {limit / 2**20:.1f} MiB); {info}")
