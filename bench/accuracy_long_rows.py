"""Float32 error of two long-row sums against the float64 references (tests/reference*.py):
sparsemax over a support of thousands of keys (its threshold and the weights' sum), and vector
attention over 20000 dense keys of values near 100. The two cases of bench/RESULTS.md's
seventh-session accuracy note.

    python bench/accuracy_long_rows.py
"""

import os
import sys

import numpy as np

import fastattn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from reference_attention import attention_reference  # noqa: E402
from reference_vector import vector_attention_reference  # noqa: E402


def error(got, ref):
    return float(np.abs(got - ref).max() / max(1.0, np.abs(ref).max()))


def main():
    rng = np.random.default_rng(2)
    lk = 50000
    q = rng.standard_normal((1, 4, 16))
    q = (3e-4 * q / np.linalg.norm(q, axis=-1, keepdims=True)).astype(np.float32)
    k = rng.standard_normal((1, lk, 16)).astype(np.float32)
    v = (10 + rng.standard_normal((1, lk, 4))).astype(np.float32)
    out, w = fastattn.attention(q, k, v, score="dot", align="sparsemax", return_weights=True)
    ref, _ = attention_reference(q, k, v, score="dot", align="sparsemax")
    print(f"sparsemax, support {int((w > 0).sum(-1).min())}+ keys: context error {error(out, ref):.2g}, "
          f"max |sum of weights - 1| {np.abs(w.astype(np.float64).sum(-1) - 1).max():.2g}")

    rng = np.random.default_rng(0)
    q = (0.01 * rng.standard_normal((3, 64))).astype(np.float32)
    k = rng.standard_normal((20000, 64)).astype(np.float32)
    v = (100 + rng.standard_normal((20000, 64))).astype(np.float32)
    out = fastattn.vector_attention(q, k, v, relation="multiply", groups=32)
    ref, _ = vector_attention_reference(q, k, v, relation="multiply", groups=32)
    print(f"vector_attention, 20000 dense keys, 32 groups: error {error(out, ref):.2g}")


if __name__ == "__main__":
    main()
