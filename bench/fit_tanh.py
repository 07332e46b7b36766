"""How the float32 tanh in csrc/cpu/simd_activation.h was made: a rational fit x P(x^2) / Q(x^2),
P and Q of degree 4 in x^2, weighted least squares on the relative error (linearised as
x P - tanh(x) Q, divided by the previous Q) with Lawson reweighting towards minimax, on [0, 9].
Prints the coefficients and the relative error of the float32 evaluation (Horner, one division,
x clamped to +-7.95) against float64 tanh. Usage: python bench/fit_tanh.py"""

import numpy as np

CLAMP = 7.95


def fit(deg_p=4, deg_q=4, iters=60, top=9.0):
    x = np.concatenate([np.linspace(1e-4, top, 40000), np.geomspace(1e-6, 1e-4, 200)])
    f, t = np.tanh(x), x * x
    w = np.ones_like(x)
    q = np.zeros(deg_q + 1)
    q[0] = 1
    for _ in range(iters):
        q_prev = np.polyval(q[::-1], t)
        a = np.hstack([x[:, None] * t[:, None] ** np.arange(deg_p + 1),
                       -(f[:, None] * t[:, None] ** np.arange(1, deg_q + 1))])
        s = np.sqrt(w) / (f * q_prev)
        sol, *_ = np.linalg.lstsq(a * s[:, None], f * s, rcond=None)
        p, q = sol[:deg_p + 1], np.concatenate([[1.0], sol[deg_p + 1:]])
        r = (x * np.polyval(p[::-1], t) / np.polyval(q[::-1], t) - f) / f
        w = w * np.abs(r)
        w /= w.max()
    return np.float32(p), np.float32(q)


def tanh32(p, q, x):
    x = np.clip(x.astype(np.float32), -CLAMP, CLAMP)
    t = x * x
    num, den = p[-1], q[-1]
    for c in p[-2::-1]:
        num = num * t + c
    for c in q[-2::-1]:
        den = den * t + c
    return x * num / den


if __name__ == "__main__":
    p, q = fit()
    print("P (x^0, x^2, ...):", [float(c) for c in p])
    print("Q (x^0, x^2, ...):", [float(c) for c in q])
    x = np.concatenate([np.linspace(0, 30, 6_000_001, dtype=np.float32)[1:],
                        np.geomspace(1e-30, 1e-3, 20000).astype(np.float32)])
    y = tanh32(p, q, x)
    ref = np.tanh(x.astype(np.float64))
    rel = np.abs(y - ref) / ref
    print(f"float32 relative error max {rel.max():.3g} at x = {x[rel.argmax()]:.6g}; max value {y.max()!r}")
