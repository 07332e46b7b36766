"""Every CPU path: each available ISA forced through FASTATTN_CPU_ISA in a fresh
interpreter runs a compact sweep; forcing an ISA the CPU lacks (or a bogus name)
is a clean RuntimeError, never a crash (SIGILL)."""

import secrets
import subprocess
import sys

import numpy as np
import pytest

import fastattn
from helpers import TESTS_DIR, run_python, subprocess_env

ALL_ISAS = ["scalar", "avx2", "avx512"]
_info = fastattn.backends()["cpu"]
AVAILABLE = list(_info["available_isas"])
UNAVAILABLE = sorted(set(ALL_ISAS) - set(AVAILABLE)) + ["sse9"]


def _explain(r):
    return f"returncode={r.returncode}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-6000:]}"


@pytest.mark.parametrize("isa", AVAILABLE)
def test_forced_isa_sweep(isa):
    seed = secrets.randbits(63)
    print(f"seed {seed}")
    # FASTATTN_CPU_HANDOVER=0: the forced ISA's own kernels on every shape, tiny ones included
    r = run_python(f"import isa_sweep; isa_sweep.main({isa!r}, {seed})", timeout=400, FASTATTN_CPU_ISA=isa,
                   FASTATTN_CPU_HANDOVER="0")
    assert r.returncode == 0, _explain(r)
    assert f"OK {isa}" in r.stdout, _explain(r)


@pytest.mark.parametrize("isa", AVAILABLE)
def test_forced_isa_attention_sweep(isa):
    seed = secrets.randbits(63)
    print(f"seed {seed}")
    r = run_python(f"import isa_sweep; isa_sweep.attention_main({isa!r}, {seed})", timeout=400,
                   FASTATTN_CPU_ISA=isa, FASTATTN_CPU_HANDOVER="0")
    assert r.returncode == 0, _explain(r)
    assert f"OK attention {isa}" in r.stdout, _explain(r)


def test_forced_isas_agree():
    # the same inputs through every available path give (nearly) the same answer
    code = (
        "import sys, numpy as np, fastattn\n"
        "rng = np.random.default_rng(%d)\n"
        "q = rng.standard_normal((2, 4, 77, 40)).astype(np.float32)\n"
        "k = rng.standard_normal((2, 2, 91, 40)).astype(np.float32)\n"
        "v = rng.standard_normal((2, 2, 91, 24)).astype(np.float32)\n"
        "o, l = fastattn.scaled_dot_product_attention(q, k, v, causal='bottom_right', return_lse=True)\n"
        "sys.stdout.buffer.write(np.concatenate([o.ravel(), l.ravel()]).astype(np.float64).tobytes())\n"
    ) % secrets.randbits(31)
    outs = {}
    for isa in AVAILABLE:
        r = subprocess.run([sys.executable, "-c", code], cwd=TESTS_DIR, env=subprocess_env(FASTATTN_CPU_ISA=isa),
                           capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr.decode(errors="replace")
        outs[isa] = np.frombuffer(r.stdout, dtype=np.float64)
    base = outs["scalar"]
    assert base.size == 2 * 4 * 77 * 24 + 2 * 4 * 77
    for isa, o in outs.items():
        np.testing.assert_allclose(o, base, rtol=2e-5, atol=2e-6, err_msg=isa)


def _error_message(stderr):
    i = stderr.rfind("RuntimeError")
    return stderr[i:] if i >= 0 else ""


# One call per kind of kernel (knn has one portable implementation, yet fails alike).
KERNEL_CALLS = {
    "sdpa": "fastattn.scaled_dot_product_attention(q, q, q)",
    "attention": "fastattn.attention(q, q, q, score='cosine')",
    "vector_attention": "fastattn.vector_attention(q[0], q[0], q[0])",
    "knn": "fastattn.knn(q[0], 2)",
    "layer_norm": "fastattn.layer_norm(q)",
}


@pytest.mark.parametrize("call", list(KERNEL_CALLS))
@pytest.mark.parametrize("isa", UNAVAILABLE)
def test_unavailable_isa_kernel_call_raises(isa, call):
    code = (
        "import numpy as np\n"
        "import fastattn\n"
        "print('IMPORTED', flush=True)\n"
        "q = np.ones((2, 5, 8), np.float32)\n"
        f"{KERNEL_CALLS[call]}\n"
        "print('NO ERROR', flush=True)\n"
    )
    r = run_python(code, timeout=120, FASTATTN_CPU_ISA=isa)
    assert r.returncode >= 0, f"killed by signal {-r.returncode} (SIGILL is 4)\n" + _explain(r)
    assert r.returncode == 1, _explain(r)
    assert "IMPORTED" in r.stdout, "importing fastattn must not fail\n" + _explain(r)
    assert "NO ERROR" not in r.stdout
    last = _error_message(r.stderr)
    assert last.startswith("RuntimeError"), _explain(r)
    assert isa in last, f"message must name the requested ISA {isa!r}: {last}"
    for avail in AVAILABLE:
        assert avail in last, f"message must name the available ISA {avail!r}: {last}"


@pytest.mark.parametrize("isa", UNAVAILABLE)
def test_unavailable_isa_backends_raises(isa):
    code = "import fastattn\nprint('IMPORTED', flush=True)\nfastattn.backends()\nprint('NO ERROR', flush=True)\n"
    r = run_python(code, timeout=120, FASTATTN_CPU_ISA=isa)
    assert r.returncode >= 0, f"killed by signal {-r.returncode}\n" + _explain(r)
    assert r.returncode == 1, _explain(r)
    assert "IMPORTED" in r.stdout and "NO ERROR" not in r.stdout, _explain(r)
    last = _error_message(r.stderr)
    assert last.startswith("RuntimeError") and isa in last, _explain(r)
    for avail in AVAILABLE:
        assert avail in last, f"message must name the available ISA {avail!r}: {last}"


@pytest.mark.skipif("avx512" not in AVAILABLE, reason="needs a CPU with AVX-512")
def test_avx512_hands_narrow_calls_to_avx2():
    # On AVX-512, SDPA calls of at most 65536 flops and vector attention whose weight MLP fits 256
    # bits run on the AVX2 kernels, and last_kernel() says so; FASTATTN_CPU_HANDOVER=0 keeps them
    # on the AVX-512 kernels. The answers agree either way.
    code = (
        "import numpy as np, fastattn\n"
        "rng = np.random.default_rng(0)\n"
        "names, outs = [], []\n"
        "for shape in [(1, 1, 16, 16), (1, 1, 32, 32)]:\n"
        "    q, k, v = (rng.standard_normal(shape, dtype=np.float32) for _ in range(3))\n"
        "    outs.append(fastattn.scaled_dot_product_attention(q, k, v).ravel())\n"
        "    names.append(fastattn.last_kernel())\n"
        "q, k, v = (rng.standard_normal((50, 64), dtype=np.float32) for _ in range(3))\n"
        "index = rng.integers(0, 50, (50, 16))\n"
        "for hidden in (8, 16):\n"
        "    mlp = (rng.standard_normal((hidden, 64), dtype=np.float32), rng.standard_normal(hidden, dtype=np.float32),\n"
        "           rng.standard_normal((8, hidden), dtype=np.float32), rng.standard_normal(8, dtype=np.float32))\n"
        "    outs.append(fastattn.vector_attention(q, k, v, index=index, weight_mlp=mlp).ravel())\n"
        "    names.append(fastattn.last_kernel())\n"
        "print(' '.join(names))\n"
        "print(np.concatenate(outs).astype(np.float64).tobytes().hex())\n"
    )
    runs = {}
    for handover in ("1", "0"):
        r = run_python(code, timeout=120, FASTATTN_CPU_ISA="avx512", FASTATTN_CPU_HANDOVER=handover)
        assert r.returncode == 0, _explain(r)
        names, data = r.stdout.split("\n")[:2]
        runs[handover] = names.split(), np.frombuffer(bytes.fromhex(data), dtype=np.float64)
    assert runs["1"][0] == ["cpu/avx2/sdpa/float32", "cpu/avx512/sdpa/float32",
                            "cpu/avx2/vector_attention/float32", "cpu/avx512/vector_attention/float32"], runs["1"][0]
    assert runs["0"][0] == ["cpu/avx512/sdpa/float32"] * 2 + ["cpu/avx512/vector_attention/float32"] * 2, runs["0"][0]
    a, b = runs["1"][1], runs["0"][1]  # two kernels, two summation orders: float32 rounding apart
    assert np.abs(a - b).max() <= 3e-5 * np.abs(b).max(), np.abs(a - b).max()
