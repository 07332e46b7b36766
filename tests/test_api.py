"""backends(), last_kernel(), threads, use_backend, GIL release, concurrency."""

import json
import os
import re
import threading
import time

import numpy as np
import pytest

import fastattn
from helpers import BF16, make_qkv, randn, run_python, sdpa
from reference import sdpa_reference

ISA_ORDER = ["scalar", "avx2", "avx512"]
KERNEL_RE = re.compile(r"^(?P<backend>[a-z]+)/(?P<isa>[a-z0-9]+)/(?P<kernel>[A-Za-z0-9_\-]+)/(?P<dtype>[a-z0-9]+)$")


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


# ----------------------------------------------------------------------------- backends()


def test_backends_structure():
    info = fastattn.backends()
    assert isinstance(info, dict)
    cpu = info["cpu"]
    compiled, available = cpu["compiled_isas"], cpu["available_isas"]
    assert isinstance(compiled, list) and isinstance(available, list)
    assert all(isinstance(x, str) for x in compiled + available)
    assert set(compiled) <= set(ISA_ORDER), compiled
    assert "scalar" in compiled and "scalar" in available
    assert set(available) <= set(compiled)
    assert len(set(compiled)) == len(compiled) and len(set(available)) == len(available)
    assert cpu["isa"] in available
    assert isinstance(cpu["num_threads"], int) and cpu["num_threads"] >= 1
    cuda = info["cuda"]
    assert isinstance(cuda["compiled"], bool)
    assert isinstance(cuda["devices"], list)
    if not cuda["compiled"]:
        assert cuda["devices"] == []
    # a fresh dict each time: mutating it does not change the library's state
    info["cpu"]["isa"] = "bogus"
    assert fastattn.backends()["cpu"]["isa"] != "bogus"


@pytest.mark.skipif(cpu_flags() is None, reason="no /proc/cpuinfo")
def test_isa_detection_matches_cpu():
    flags = cpu_flags()
    cpu = fastattn.backends()["cpu"]
    if "avx2" in cpu["compiled_isas"]:
        assert ("avx2" in cpu["available_isas"]) == ({"avx2", "fma"} <= flags), (cpu, sorted(flags & {"avx2", "fma"}))
    if "avx512f" not in flags:
        assert "avx512" not in cpu["available_isas"]
    elif "avx512" in cpu["compiled_isas"] and {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        assert "avx512" in cpu["available_isas"]


def test_default_isa_is_the_best_available():
    # in a clean environment (no FASTATTN_CPU_ISA) the best available ISA is chosen
    code = "import fastattn, json; print(json.dumps(fastattn.backends()['cpu']))"
    r = run_python(code, timeout=120)
    assert r.returncode == 0, r.stderr
    cpu = json.loads(r.stdout.strip().splitlines()[-1])
    best = max(cpu["available_isas"], key=ISA_ORDER.index)
    assert cpu["isa"] == best


# ----------------------------------------------------------------------------- last_kernel()


def test_last_kernel_none_in_fresh_thread():
    seen = []
    t = threading.Thread(target=lambda: seen.append(fastattn.last_kernel()))
    t.start()
    t.join()
    assert seen == [None]


def test_last_kernel_none_in_fresh_process():
    r = run_python("import fastattn; print(repr(fastattn.last_kernel()))", timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "None"


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_last_kernel_names_the_path(rng, dtype):
    # The last part names the kernel's storage dtype (float16/bfloat16 kernels accumulate in float32).
    if dtype == "bfloat16":
        if BF16 is None:
            pytest.skip("ml_dtypes not installed")
        dt = BF16
    else:
        dt = np.dtype(dtype)
    # Over 65536 flops: on AVX-512 CPUs smaller calls run on the AVX2 kernel (test_isa.py).
    q, k, v = make_qkv(rng, hq=2, lq=64, lk=70, d=8, dtype=dt)
    sdpa(q, k, v)
    name = fastattn.last_kernel()
    assert isinstance(name, str)
    m = KERNEL_RE.match(name)
    assert m, name
    assert m["backend"] == "cpu"
    assert m["isa"] == fastattn.backends()["cpu"]["isa"]
    assert m["dtype"] == dtype, name


def test_last_kernel_after_knn(rng):
    sdpa(*make_qkv(rng, hq=2, lq=5, lk=7, d=8, dtype=np.float32))
    fastattn.knn(randn(rng, (20, 3)), 4)
    assert fastattn.last_kernel() == "cpu/scalar/knn/float64"  # one portable kernel, in float64


def test_last_kernel_is_per_thread(rng):
    q, k, v = make_qkv(rng, hq=2, lq=5, lk=7, d=8, dtype=np.float32)
    sdpa(q, k, v)
    mine = fastattn.last_kernel()
    other = []

    def work():
        other.append(fastattn.last_kernel())
        sdpa(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64))
        other.append(fastattn.last_kernel())

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert other[0] is None
    assert other[1].endswith("/float64")
    assert fastattn.last_kernel() == mine and mine.endswith("/float32")


# ----------------------------------------------------------------------------- threads


def test_set_get_num_threads(restore_threads):
    for n in (1, 2, 3):
        fastattn.set_num_threads(n)
        assert fastattn.get_num_threads() == n
        assert fastattn.backends()["cpu"]["num_threads"] == n


@pytest.mark.parametrize("bad", [0, -1, -8, 1025, 100_000, 2**31])
def test_set_num_threads_invalid(restore_threads, bad):
    before = fastattn.get_num_threads()
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        fastattn.set_num_threads(bad)
    assert fastattn.get_num_threads() == before


def test_num_threads_from_environment():
    code = "import fastattn; print(fastattn.get_num_threads(), fastattn.backends()['cpu']['num_threads'])"
    r = run_python(code, timeout=120, FASTATTN_NUM_THREADS=3)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["3", "3"]
    r = run_python(code, timeout=120, OMP_NUM_THREADS=1)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", "1"]
    # Past the 1024-thread limit (libgomp crashed creating 65535): counts as unset.
    r = run_python(code, timeout=120, FASTATTN_NUM_THREADS=65535, OMP_NUM_THREADS=2)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["2", "2"]
    if "OMP_NUM_THREADS" not in os.environ:  # default: all cores
        r = run_python(code, timeout=120)
        assert r.returncode == 0, r.stderr
        n = int(r.stdout.split()[0])
        assert 1 <= n <= (os.cpu_count() or 1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_results_independent_of_thread_count(rng, restore_threads, dtype):
    dt = np.dtype(dtype)
    q, k, v = make_qkv(rng, batch=(3,), hq=4, hkv=2, lq=300, lk=257, d=40, dtype=dt)
    q1 = randn(rng, (3, 4, 1, 40), dt)  # decoding shape: one query, many keys
    results = []
    for n in (1, 2, 3):
        fastattn.set_num_threads(n)
        results.append((sdpa(q, k, v, causal="bottom_right", return_lse=True),
                        sdpa(q1, k, v, return_lse=True)))
    tol = dict(rtol=1e-6, atol=1e-7) if dt == np.float32 else dict(rtol=1e-13, atol=1e-14)
    for (a, b) in results[1:]:
        for x, y in zip(a + b, results[0][0] + results[0][1]):
            np.testing.assert_allclose(x, y, **tol)


# ----------------------------------------------------------------------------- backend choice


def _cuda_usable():
    info = fastattn.backends()
    return bool(info["cuda"]["compiled"] and info["cuda"]["devices"])


def test_explicit_cpu_backend(rng):
    q, k, v = make_qkv(rng, hq=2, lq=5, lk=7, d=8)
    a = sdpa(q, k, v, backend="cpu")
    assert fastattn.last_kernel().startswith("cpu/")
    b = sdpa(q, k, v, backend="auto")
    assert fastattn.last_kernel().startswith("cpu/")  # NumPy inputs: auto picks the CPU
    np.testing.assert_array_equal(a, b)


def test_use_backend_cpu(rng):
    q, k, v = make_qkv(rng, hq=2, lq=5, lk=7, d=8)
    with fastattn.use_backend("cpu"):
        out = sdpa(q, k, v)
        assert fastattn.last_kernel().startswith("cpu/")
    ref, _ = sdpa_reference(q, k, v)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_use_backend_bad_name():
    with pytest.raises(ValueError, match="bogus"):
        with fastattn.use_backend("bogus"):
            pass


@pytest.mark.skipif(_cuda_usable(), reason="a CUDA device is available")
def test_use_backend_cuda_unavailable_and_restored(rng):
    q, k, v = make_qkv(rng, hq=2, lq=5, lk=7, d=8)
    entered = False
    with pytest.raises(RuntimeError, match=r"(?i)cpu"):
        with fastattn.use_backend("cuda"):
            entered = True
            sdpa(q, k, v)
    # the default is restored afterwards
    sdpa(q, k, v)
    assert fastattn.last_kernel().startswith("cpu/")
    if entered:
        # an explicit per-call backend is not overridden by the context
        with fastattn.use_backend("cuda"):
            sdpa(q, k, v, backend="cpu")
            # nesting restores the outer default on exit
            with fastattn.use_backend("cpu"):
                sdpa(q, k, v)
            with pytest.raises(RuntimeError):
                sdpa(q, k, v)
        # restored after an exception inside the block
        with pytest.raises(KeyError):
            with fastattn.use_backend("cuda"):
                raise KeyError("x")
        sdpa(q, k, v)


def test_backend_environment_variable():
    code = ("import numpy as np, fastattn\n"
            "q = np.random.default_rng().standard_normal((2, 5, 8)).astype(np.float32)\n"
            "fastattn.scaled_dot_product_attention(q, q, q)\n"
            "print(fastattn.last_kernel())\n")
    r = run_python(code, timeout=120, FASTATTN_BACKEND="cpu")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("cpu/")
    if not _cuda_usable():
        r = run_python(code, timeout=120, FASTATTN_BACKEND="cuda")
        assert r.returncode == 1, (r.returncode, r.stderr)
        assert "RuntimeError" in r.stderr and "cpu" in r.stderr.lower(), r.stderr
    r = run_python(code, timeout=120, FASTATTN_BACKEND="gpu0")
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "ValueError: FASTATTN_BACKEND (environment) must be one of" in r.stderr, r.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_runs_its_kernels(rng):
    # GNU OpenMP's thread pool does not survive fork(): a child forked after a parallel kernel
    # used to hang in its first parallel region. It now runs its kernels on one thread.
    code = (
        "import os, numpy as np, fastattn\n"
        "fastattn.set_num_threads(2)\n"
        "x = np.random.default_rng(0).standard_normal((2, 8, 300, 64)).astype(np.float32)\n"
        "want = fastattn.scaled_dot_product_attention(x, x, x)\n"
        "pts = np.random.default_rng(1).random((20000, 3))\n"
        "nn = fastattn.knn(pts, 8)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    fastattn.set_num_threads(2)\n"
        "    ok = (np.array_equal(fastattn.scaled_dot_product_attention(x, x, x), want)\n"
        "          and np.array_equal(fastattn.knn(pts, 8), nn) and fastattn.get_num_threads() == 1)\n"
        "    os._exit(0 if ok else 3)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print('child', os.waitstatus_to_exitcode(status), 'parent threads', fastattn.get_num_threads())\n"
    )
    r = run_python(code, timeout=120)  # a hang shows as a timeout
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["child", "0", "parent", "threads", "2"], r.stdout


# ----------------------------------------------------------------------------- GIL and concurrency


def test_gil_released_during_kernel(rng):
    q, k, v = (randn(rng, (8, 4096, 64)) for _ in range(3))
    times = {}

    def worker():
        t0 = time.perf_counter()
        times["out"] = sdpa(q, k, v)
        times["span"] = (t0, time.perf_counter())

    th = threading.Thread(target=worker)
    last = time.perf_counter()
    max_gap, count = 0.0, 0
    th.start()
    while th.is_alive():
        now = time.perf_counter()
        max_gap = max(max_gap, now - last)
        last = now
        count += 1
    th.join()
    t0, t1 = times["span"]
    duration = t1 - t0
    assert times["out"].shape == (8, 4096, 64)
    assert np.all(np.isfinite(times["out"]))
    # With the GIL held for the whole kernel, this thread would stall for ~duration.
    assert max_gap < 0.5 * duration, f"main thread stalled {max_gap:.3f}s during a {duration:.3f}s call"
    assert count > 1000


def test_concurrent_calls_match_serial(rng):
    dts = [np.float32, np.float64, np.float16] + ([BF16] if BF16 is not None else [])
    jobs = []
    for i in range(8):
        dt = dts[i % len(dts)]
        q, k, v = make_qkv(rng, batch=(2,), hq=4, hkv=2, lq=100 + 7 * i, lk=150 + 11 * i, d=32 + i, dtype=dt)
        opts = [dict(), dict(causal=True), dict(causal="bottom_right", window=(20, 0)),
                dict(kv_lengths=np.array([3, 150 + 11 * i]))][i % 4]
        jobs.append((q, k, v, opts))
    serial, serial_kernels = [], []
    for q, k, v, o in jobs:
        serial.append(sdpa(q, k, v, return_lse=True, **o))
        serial_kernels.append(fastattn.last_kernel())
    results = [None] * len(jobs)
    kernels = [None] * len(jobs)
    errors = []
    barrier = threading.Barrier(len(jobs))

    def work(i):
        try:
            q, k, v, o = jobs[i]
            barrier.wait()
            for _ in range(3):
                results[i] = sdpa(q, k, v, return_lse=True, **o)
            kernels[i] = fastattn.last_kernel()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, ((o, l), (so, sl)) in enumerate(zip(results, serial)):
        np.testing.assert_allclose(o.astype(np.float64), so.astype(np.float64), rtol=1e-6, atol=1e-7,
                                   err_msg=f"job {i}")
        np.testing.assert_allclose(l, sl, rtol=1e-6, atol=1e-7, err_msg=f"job {i}")
        # last_kernel() is per thread: each thread sees its own last call, not another thread's
        assert kernels[i] == serial_kernels[i], (i, kernels[i], serial_kernels[i])
    assert len(set(serial_kernels)) > 1  # the jobs really use different kernels


def test_repeated_calls_deterministic(rng):
    q, k, v = make_qkv(rng, batch=(2,), hq=4, lq=77, lk=99, d=48)
    a = sdpa(q, k, v, causal=True, return_lse=True)
    for _ in range(3):
        b = sdpa(q, k, v, causal=True, return_lse=True)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("option", [["--json", "/nonexistent-dir/x.json"], ["--markdown", "."],
                                    ["--png", "chart.txt"]])
def test_bench_rejects_output_paths_before_running(option, capsys):
    # The outputs are written after the whole timing run: a bad path used to fail only then,
    # with a traceback (and a bad --png lost the JSON too).
    from fastattn._benchmark import parse_args
    with pytest.raises(SystemExit) as info:
        parse_args(["--shapes", "1,1,1,4,4,8", "--reps", "1"] + option)
    assert info.value.code == 2
    assert option[1] in capsys.readouterr().err
