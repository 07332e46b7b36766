"""Full benchmark of fastattn.scaled_dot_product_attention: ``python bench/bench_sdpa.py [options]``.

The same benchmark as ``python -m fastattn bench``, with the full shape set (long prefill, causal, GQA,
decode with a 16k KV cache, a tiny shape for per-call overhead) and the hardware ceilings (float32 GEMM
GFLOP/s and memory-copy GB/s, with each shape's fraction of them) switched on. Every option of
``python -m fastattn bench --help`` is accepted and wins over these defaults, e.g. ``--shapes default``,
``--no-ceilings``, ``--isas``, ``--threads 1``, ``--json out.json``, ``--markdown out.md``.
Figures worth keeping go in bench/RESULTS.md, with the header line that names the machine and ISA.
"""

import sys

DEFAULTS = ["--full", "--ceilings"]


def main() -> int:
    try:
        from fastattn._benchmark import main as bench_main
    except ImportError as exc:  # the compiled package is needed, not this source tree
        print(f"bench_sdpa: cannot import fastattn ({exc}); build and install it first (pip install .)",
              file=sys.stderr)
        return 2
    return bench_main(DEFAULTS + sys.argv[1:])  # later options win, so the user's choices override


if __name__ == "__main__":
    sys.exit(main())
