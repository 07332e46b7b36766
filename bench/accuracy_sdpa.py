"""float32 error of fastattn and of PyTorch's SDPA against the float64 reference, on the same inputs.

    python bench/accuracy_sdpa.py [--seeds N]

Prints max |out - ref| / max |ref| for each (D, L) and seed, in units of 1e-7. Needs torch.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import fastattn  # noqa: E402
from reference import sdpa_reference  # noqa: E402


def rel_err(out, ref):
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(fastattn.get_num_threads())
    print(f"ISA {fastattn.backends()['cpu']['isa']}; error in units of 1e-7, shape (1, 2, L, D)")
    print(f"{'D, L':>10}  {'fastattn':<28}  torch")
    for d, length in [(257, 1000), (64, 1000), (17, 1000), (129, 65)]:
        ours, theirs = [], []
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed)
            q, k, v = (rng.standard_normal((1, 2, length, d)).astype(np.float32) for _ in range(3))
            ref, _ = sdpa_reference(q, k, v)
            ours.append(rel_err(fastattn.scaled_dot_product_attention(q, k, v), ref))
            tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
            theirs.append(rel_err(torch.nn.functional.scaled_dot_product_attention(tq, tk, tv).numpy(), ref))
        fmt = lambda errs: " ".join(f"{e * 1e7:5.1f}" for e in errs)  # noqa: E731
        print(f"{d:>5}, {length:<4}  {fmt(ours):<28}  {fmt(theirs)}")


if __name__ == "__main__":
    main()
