"""Command line: ``python -m fastattn info`` and ``python -m fastattn bench [options]``."""

from __future__ import annotations

import platform
import sys
from typing import List, Optional

import numpy as np


_OPENMP_RELEASES = {201107: "3.1", 201307: "4.0", 201511: "4.5", 201811: "5.0", 202011: "5.1",
                    202111: "5.2"}


def _version_of(dist: str) -> str:
    """An installed distribution's version without importing it (torch takes seconds to import)."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def info() -> int:
    """What a bug report needs: versions, how the extension was built, what this machine offers and
    uses (ISA, threads, OpenMP runtime), and the settings in the environment."""
    import os

    import fastattn
    from fastattn import _cpu
    from fastattn._benchmark import cpu_model

    build = _cpu.build_info()
    print(f"fastattn {fastattn.__version__}  (numpy {np.__version__}, python {platform.python_version()}, "
          f"pybind11 {build['pybind11']})")
    print(f"optional:       ml_dtypes {_version_of('ml_dtypes')}, torch {_version_of('torch')}")
    print(f"platform:       {platform.platform()}")
    print(f"cpu:            {cpu_model()}, {platform.machine()}")
    print(f"compiled ISAs:  {', '.join(_cpu.compiled_isas())}")
    print(f"usable here:    {', '.join(_cpu.available_isas())}")
    try:
        isa = _cpu.isa()
    except RuntimeError as exc:
        isa = f"ERROR: {exc}"
    print(f"ISA in use:     {isa}")
    print(f"threads:        {fastattn.get_num_threads()} (OpenMP {'on' if build['openmp'] else 'off'})")
    if build["openmp"]:
        spec = _OPENMP_RELEASES.get(build["openmp_version"], "?")
        print(f"OpenMP:         spec {spec} (_OPENMP {build['openmp_version']}), runtime {build['openmp_runtime']}")
    print(f"compiler:       {build['compiler']}")
    print(f"build:          {build['build_type'] or 'default'}; flags: {build['cxx_flags'].strip() or '(none)'}; "
          f"sanitizers: {build['sanitize'] or 'none'}")
    print(f"extension:      {_cpu.__file__}")
    cuda = fastattn._backend._cuda_module()
    print(f"cuda:           {'compiled' if cuda[0] is not None else 'not available: ' + str(cuda[1])}")
    settings = {k: v for k, v in sorted(os.environ.items())
                if k.startswith("FASTATTN_") or k in ("OMP_NUM_THREADS", "OMP_PROC_BIND", "OMP_PLACES")}
    print(f"environment:    {', '.join(f'{k}={v}' for k, v in settings.items()) or '(no FASTATTN_* or OMP_* settings)'}")
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
