#!/usr/bin/env bash
# Everything issue 8 needs from a GPU machine, in as few device calls as possible. Run from the
# repository root on an H100/H200 machine of this workplace (python3 there has torch and CuPy; no
# network, so the build uses the installed scikit-build-core/pybind11):
#
#   bash bench/gpu_session.sh test    # build + install, GPU tests, SASS summary  (~5 min)
#   bash bench/gpu_session.sh bench   # bench/bench_cuda.py (the issue's benchmark) (~3 min)
#
# Logs and results go to $OUT (the device tool's output folder; default /tmp/fastattn_gpu), at most
# 8 files: nvidia-smi.txt build.log test_cuda.log sass.txt | bench.log bench.json bench.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/fastattn_gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
stage=${1:-test}

build() {
  # --no-build-isolation: no network on the device machines. Incremental: build/ stays between calls.
  $PY -m pip install --no-build-isolation --no-deps . > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
  $PY -c "import fastattn, json; print(json.dumps(fastattn.backends()['cuda'], indent=1))" | tee -a "$OUT/build.log"
}

if [ "$stage" = test ]; then
  nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
  build
  # -p no:cacheprovider: the working tree may be read-only there.
  $PY -m pytest tests/test_cuda.py tests/test_cuda_plumbing.py -q -rs -p no:cacheprovider \
      > "$OUT/test_cuda.log" 2>&1
  tail -25 "$OUT/test_cuda.log"
  # Which instructions each kernel uses: HMMA = tensor cores; LDL/STL = local memory (spills or
  # run-time-indexed register arrays, both slow); LDGSTS = cp.async; LDSM = ldmatrix.
  so=$($PY -c "import fastattn._cuda as m; print(m.__file__)")
  cuobjdump -sass "$so" | $PY bench/sass_summary.py > "$OUT/sass.txt" 2>&1
  cat "$OUT/sass.txt"
elif [ "$stage" = bench ]; then
  build
  $PY bench/bench_cuda.py --out "$OUT/bench" 2>&1 | tee "$OUT/bench.log" | tail -40
else
  echo "usage: $0 test|bench" >&2
  exit 2
fi
