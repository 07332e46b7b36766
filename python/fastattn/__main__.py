"""Command line: ``python -m fastattn info`` and ``python -m fastattn bench [options]``."""

from __future__ import annotations

import platform
import sys
from typing import List, Optional

import numpy as np


def info() -> int:
    import fastattn
    from fastattn import _cpu
    from fastattn._benchmark import cpu_model

    build = _cpu.build_info()
    print(f"fastattn {fastattn.__version__}  (numpy {np.__version__}, python {platform.python_version()})")
    print(f"cpu:            {cpu_model()}, {platform.machine()}")
    print(f"compiled ISAs:  {', '.join(_cpu.compiled_isas())}")
    print(f"usable here:    {', '.join(_cpu.available_isas())}")
    try:
        isa = _cpu.isa()
    except RuntimeError as exc:
        isa = f"ERROR: {exc}"
    print(f"ISA in use:     {isa}")
    print(f"threads:        {fastattn.get_num_threads()} (OpenMP {'on' if build['openmp'] else 'off'})")
    print(f"compiler:       {build['compiler']}")
    cuda = fastattn._backend._cuda_module()
    print(f"cuda:           {'compiled' if cuda[0] is not None else 'not available: ' + cuda[1]}")
    return 0 if not isa.startswith("ERROR") else 1


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m fastattn {info,bench} [options]\n"
              "  info   what is compiled, what this CPU offers, which ISA and threads are used\n"
              "  bench  fastattn vs NumPy (and PyTorch when installed); bench --help for options")
        return 0 if argv else 2
    if argv[0] == "info":
        return info()
    if argv[0] == "bench":
        from fastattn import _benchmark

        return _benchmark.main(argv[1:])
    print(f"unknown command {argv[0]!r}; try: python -m fastattn --help", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
