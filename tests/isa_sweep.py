"""A compact correctness sweep, run in a subprocess by test_isa.py with
FASTATTN_CPU_ISA set.  Usage: python -c "import isa_sweep; isa_sweep.main('avx2', seed)".

Sizes hit the SIMD tails: head dims and key lengths around multiples of 8 and 16.
Every call checks that last_kernel() names the forced ISA."""

import itertools
import sys

import numpy as np

import fastattn
from helpers import BF16, check_sdpa, make_mask, make_qkv

HEAD_DIMS = [1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 129]
KEY_LENGTHS = [1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 65, 130]
QUERY_LENGTHS = [1, 3, 8, 17, 64]
DTYPES = [np.float32, np.float64, np.float16] + ([BF16] if BF16 is not None else [])
CAUSAL = [False, True, "bottom_right"]
MASKS = ["none", "bool", "additive_inf", "none"]


def expect_isa(isa):
    name = fastattn.last_kernel()
    parts = name.split("/")
    assert len(parts) == 4 and parts[0] == "cpu" and parts[1] == isa, f"last_kernel() = {name!r}, forced {isa!r}"


def main(isa, seed):
    rng = np.random.default_rng(seed)
    assert fastattn.backends()["cpu"]["isa"] == isa, fastattn.backends()
    n = 0
    for i, (d, lk) in enumerate(itertools.product(HEAD_DIMS, KEY_LENGTHS)):
        lq = QUERY_LENGTHS[i % len(QUERY_LENGTHS)]
        dt = DTYPES[i % len(DTYPES)]
        causal = CAUSAL[(i // 2) % len(CAUSAL)]
        hq, hkv = [(2, 2), (4, 2), (3, 1)][i % 3]
        dv = [d, 5, 16, 33][(i // 3) % 4]
        q, k, v = make_qkv(rng, batch=(2,), hq=hq, hkv=hkv, lq=lq, lk=lk, d=d, dv=dv, dtype=dt,
                           scale=[1.0, 4.0][i % 2])
        mdt = np.float64 if dt == np.float64 else np.float32
        mask = make_mask(rng, MASKS[(i // 5) % len(MASKS)], (hq, lq, lk), mdt)
        kw = dict(attn_mask=mask, causal=causal)
        if i % 7 == 3:
            kw["kv_lengths"] = rng.integers(0, lk + 1, size=2)
        if i % 11 == 5:
            kw["window"] = (int(rng.integers(0, 9)), None if causal else int(rng.integers(0, 9)))
        try:
            check_sdpa(q, k, v, **kw)
            expect_isa(isa)
        except AssertionError as e:
            raise AssertionError(f"[{isa}] d={d} dv={dv} lq={lq} lk={lk} dtype={np.dtype(dt)} heads={hq},{hkv} "
                                 f"mask={MASKS[(i // 5) % len(MASKS)]} "
                                 f"{ {k2: v2 for k2, v2 in kw.items() if k2 != 'attn_mask'} }: {e}") from e
        n += 1
    # a few longer ones (several key/query blocks), non-contiguous, and the 2-D form
    for dt in DTYPES:
        q, k, v = make_qkv(rng, hq=2, lq=300, lk=517, d=80, dtype=dt)
        check_sdpa(q, k[:, ::-1], np.swapaxes(np.swapaxes(v, 0, 1).copy(), 0, 1), causal="bottom_right")
        expect_isa(isa)
        q2, k2, v2 = make_qkv(rng, lq=129, lk=129, d=24, dtype=dt, two_d=True)
        check_sdpa(q2, k2, v2, causal=True, window=(31, None))
        expect_isa(isa)
        n += 2
    # decoding shape: one query row against many keys
    q, k, v = make_qkv(rng, batch=(3,), hq=8, hkv=2, lq=1, lk=1500, d=64)
    check_sdpa(q, k, v, kv_lengths=np.array([1, 777, 1500]))
    expect_isa(isa)
    # NaN isolation in this path
    q, k, v = make_qkv(rng, hq=1, lq=20, lk=33, d=16)
    q[0, 4, 0] = np.nan
    out = fastattn.scaled_dot_product_attention(q, k, v)
    assert np.isnan(out[0, 4]).all() and np.isfinite(np.delete(out, 4, axis=1)).all()
    print(f"OK {isa} {n} configurations")


def attention_main(isa, seed):
    """fastattn.attention on the forced ISA: every score x alignment x {float32, float64}, masked
    and not, over the awkward configurations of test_attention, against the float64 reference;
    plus the linear kernel behind the score transforms on sizes around the SIMD widths."""
    from test_attention import ALIGN_NAMES, CONFIGS, SCORE_NAMES, check_attention, make_case

    rng = np.random.default_rng(seed)
    assert fastattn.backends()["cpu"]["isa"] == isa, fastattn.backends()
    n = 0
    for i, (score, align, dtype) in enumerate(itertools.product(SCORE_NAMES, ALIGN_NAMES, ["float32", "float64"])):
        for variant, cfg in enumerate(CONFIGS[i % 2::2]):
            mask_kind = ["none", "bool", "additive_inf"][(i + variant) % 3]
            q, k, v, params, mask = make_case(rng, cfg, score, dtype, mask_kind, variant)
            try:
                check_attention(q, k, v, score=score, align=align, params=params, attn_mask=mask)
                name = fastattn.last_kernel().split("/")
                assert name[0] == "cpu" and name[1] == isa, fastattn.last_kernel()
            except AssertionError as e:
                raise AssertionError(f"[{isa}] {score}/{align}/{dtype} config {cfg} mask {mask_kind}: {e}") from e
            n += 1
    from fastattn import _cpu
    for dt, tol in ((np.float32, 2e-6), (np.float64, 1e-13)):
        # few rows (m <= 8: W's rows split over the threads, 1-4 rows of x per pass, 2 or 4 W rows
        # at a time plus leftovers) and blocked rows (m > 8), threaded from 4M multiply-adds
        for m, k, n_out in ((1, 1, 1), (7, 3, 9), (25, 17, 5), (65, 257, 33), (130, 64, 65),
                            (2, 8, 64), (3, 9, 67), (4, 16, 130), (5, 31, 7), (8, 1, 3), (9, 33, 20),
                            (1, 4099, 1101), (6, 2053, 701)):
            x = rng.standard_normal((m, 2 * k + 1)).astype(dt)[:, :k]  # rows 2k + 1 apart
            w = rng.standard_normal((n_out, k)).astype(dt)
            b = rng.standard_normal(n_out).astype(dt)
            for bias in (None, b):
                out = np.empty((m, n_out), dt)
                kernel = _cpu.linear(x, w, bias, out)
                assert kernel.split("/")[1] == isa, kernel
                ref = x.astype(np.float64) @ w.T.astype(np.float64) + (0 if bias is None else bias)
                scale = np.abs(x).astype(np.float64) @ np.abs(w.T).astype(np.float64) + 1
                assert np.all(np.abs(out - ref) <= tol * scale), (dt, m, k, n_out, np.abs(out - ref).max())
                n += 1
    print(f"OK attention {isa} {n} configurations")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1], int(sys.argv[2]))
