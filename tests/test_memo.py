"""The memoised argument checks: a repeated call skips the checks, and must behave exactly as if
it had run them (same results, same errors, same copies of awkward operands)."""

import numpy as np
import pytest

import fastattn
from helpers import check_sdpa, make_qkv, sdpa


def test_repeated_calls_give_fresh_results(rng):
    # Same shapes and options, new data each time: the memo holds decisions, never data.
    for _ in range(3):
        q, k, v = make_qkv(rng, batch=(2,), hq=4, hkv=2, lq=9, lk=13, d=17, dv=5)
        check_sdpa(q, k, v, causal="bottom_right")
        check_sdpa(q, k, v, window=(3, 1))


@pytest.mark.parametrize(
    "good, bad, error",
    [
        ({"causal": True}, {"causal": 1}, ValueError),  # 1 == True and hash(1) == hash(True)
        ({"causal": False}, {"causal": 0}, ValueError),
        ({"scale": 1}, {"scale": 1 + 0j}, TypeError),  # 1 == 1+0j
        ({"window": (2, 1)}, {"window": (2.0, 1)}, ValueError),  # (2, 1) == (2.0, 1)
        ({"window": (2, 1)}, {"window": [2, 1]}, None),  # a list is a fine pair: same result
        ({"window": (0, 1)}, {"window": {0: 5, 1: 5}}, ValueError),  # tuple(dict) is (0, 1): its keys
    ],
)
def test_equal_but_different_options_are_checked(rng, good, bad, error):
    q, k, v = make_qkv(rng, hq=2, lq=6, lk=6, d=8)
    expected = sdpa(q, k, v, **good)
    sdpa(q, k, v, **good)  # now memoised
    if error is None:
        np.testing.assert_array_equal(sdpa(q, k, v, **bad), expected)
    else:
        with pytest.raises(error):
            sdpa(q, k, v, **bad)


def test_misaligned_operand_with_memoised_layout(rng):
    q, k, v = make_qkv(rng, hq=1, lq=5, lk=7, d=8)
    sdpa(q, k, v)  # memoise the aligned layout
    # Same shape, strides and dtype, but the data starts one byte past an aligned address.
    raw = np.zeros(q.nbytes + 1, np.uint8)
    shifted = np.frombuffer(raw.data, dtype=np.float32, count=q.size, offset=1).reshape(q.shape)
    assert not shifted.flags.aligned
    shifted[...] = q
    np.testing.assert_array_equal(sdpa(shifted, k, v), sdpa(q, k, v))


def test_memoised_call_keeps_return_lse_and_2d_layout(rng):
    q, k, v = (rng.standard_normal((7, 16), dtype=np.float32) for _ in range(3))
    for _ in range(2):
        out, lse = sdpa(q, k, v, return_lse=True)
        assert out.shape == (7, 16) and lse.shape == (7,)
        assert fastattn.last_kernel().endswith("/float32")
    check_sdpa(q, k, v)
