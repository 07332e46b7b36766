"""GFLOP/s of fastattn's float32 SDPA on two prefill shapes, for A/B comparisons of two builds.

Run it alternately against two installs, several times, and compare the medians:

    for i in 1 2 3; do PYTHONPATH=/path/to/build_a python bench/ab_sdpa.py A; python bench/ab_sdpa.py B; done

where /path/to/build_a holds a `fastattn` package with its own `_cpu` module. Alternating whole
processes spreads this shared machine's noise over both builds.
"""

import sys
import time

import numpy as np

import fastattn

SHAPES = [(1, 8, 1024, 64), (1, 8, 2048, 128)]  # (batch, heads, length, head dim)


def main():
    label = sys.argv[1] if len(sys.argv) > 1 else ""
    rng = np.random.default_rng(0)
    rates = []
    for b, h, length, d in SHAPES:
        q, k, v = (rng.standard_normal((b, h, length, d), dtype=np.float32) for _ in range(3))
        fastattn.scaled_dot_product_attention(q, k, v)
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            fastattn.scaled_dot_product_attention(q, k, v)
            times.append(time.perf_counter() - t0)
        rates.append(f"{4 * b * h * length * length * d / np.median(times) / 1e9:.1f}")
    print(label, fastattn.__file__, "GFLOP/s", rates)


if __name__ == "__main__":
    main()
