// Row normalisation over the last axis for one ISA: layer norm (fastattn.layer_norm) and unit
// length (x / |x|, the rows of fastattn.attention's cosine scores), written against the
// SIMD wrapper of the translation unit that includes it. Included after sdpa_kernel.h in the same
// per-ISA namespace: it reuses its helpers and its OpenMP work loop (for_each_unit).
//
// Each row is read twice while it sits in L1: once for the mean, once for the sum of squared
// deviations (two passes, not E[x^2] - mean^2, which cancels badly when |mean| >> std), and then
// written as (x - mean) * rstd * weight + bias. Rows are independent: blocks of rows are the
// work units, in parallel when the whole call is large enough to pay for waking the threads.
// Unit length is one pass for the squared norm and one to scale: in C++ rather than NumPy because
// NumPy's three passes with temporaries cost cosine scores 15% of the attention itself.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "fastattn/layer_norm_params.h"

namespace fastattn {
namespace FASTATTN_ISA {

template <class T>
struct LayerNormRows {
  using V = typename VecOf<T>::type;
  static constexpr int W = V::W;
  // Four independent accumulators hide the add latency; their lanes are summed at the end.
  static constexpr int kAcc = 4;

  const LayerNormParams& p;

  static T row_sum(const T* x, int64_t n) {
    V acc[kAcc] = {V::zero(), V::zero(), V::zero(), V::zero()};
    int64_t i = 0;
    for (; i + kAcc * W <= n; i += kAcc * W)
      for (int a = 0; a < kAcc; ++a) acc[a] = acc[a] + V::load(x + i + a * W);
    for (; i + W <= n; i += W) acc[0] = acc[0] + V::load(x + i);
    T s = ((acc[0] + acc[1]) + (acc[2] + acc[3])).reduce_add();
    for (; i < n; ++i) s += x[i];
    return s;
  }

  static T row_sum_sq_dev(const T* x, int64_t n, T mean) {
    const V m = V::set1(mean);
    V acc[kAcc] = {V::zero(), V::zero(), V::zero(), V::zero()};
    int64_t i = 0;
    for (; i + kAcc * W <= n; i += kAcc * W)
      for (int a = 0; a < kAcc; ++a) {
        const V dev = V::load(x + i + a * W) - m;
        acc[a] = fma(dev, dev, acc[a]);
      }
    for (; i + W <= n; i += W) {
      const V dev = V::load(x + i) - m;
      acc[0] = fma(dev, dev, acc[0]);
    }
    T s = ((acc[0] + acc[1]) + (acc[2] + acc[3])).reduce_add();
    for (; i < n; ++i) s += (x[i] - mean) * (x[i] - mean);
    return s;
  }

  // 1 / sqrt(var + eps) of a row whose squared deviations overflow T (|x - mean| past about 1e19
  // in float32): the deviations divided by the largest one first, which cannot overflow. Rare
  // (huge inputs), so plain scalar code. A row with Inf or NaN keeps the unscaled answer.
  static T scaled_rstd(const T* x, int64_t n, T mean, T eps) {
    T amax = T(0);
    for (int64_t i = 0; i < n; ++i) amax = std::fmax(amax, std::fabs(x[i] - mean));
    if (!std::isfinite(amax) || amax == T(0)) return T(0);
    T s = T(0);
    for (int64_t i = 0; i < n; ++i) {
      const T u = (x[i] - mean) / amax;
      s += u * u;
    }
    return T(1) / (amax * std::sqrt(s / T(n) + eps / amax / amax));
  }

  // x / |x|, 0 for a zero row. Squares below about FLT_MIN / FLT_EPSILON lose digits to
  // denormals (|x| ~ 1e-16 in float32) and past the range they overflow: such rows are divided by
  // their largest element first (rare, scalar code; 1 / |x| itself may overflow there). Inf or NaN
  // keep the plain answer (x / Inf or NaN).
  void run_unit_row(int64_t r) const {
    const int64_t d = p.d;
    const T* x = static_cast<const T*>(p.x) + r * p.x_row_stride;
    T* out = static_cast<T*>(p.out) + r * d;
    const T sum_sq = row_sum_sq_dev(x, d, T(0));
    const T tiny = std::numeric_limits<T>::min() / std::numeric_limits<T>::epsilon();
    T amax = T(0);
    if (!(sum_sq >= tiny && !std::isinf(sum_sq)))
      for (int64_t i = 0; i < d; ++i) amax = std::fmax(amax, std::fabs(x[i]));
    if (amax > T(0) && std::isfinite(amax) && !std::isnan(sum_sq)) {
      T s = T(0);
      for (int64_t i = 0; i < d; ++i) s += (x[i] / amax) * (x[i] / amax);
      const T norm = std::sqrt(s);  // of x / amax: in [1, sqrt(d)]
      for (int64_t i = 0; i < d; ++i) out[i] = x[i] / amax / norm;
      return;
    }
    // Divided, not multiplied by 1 / |x|: one rounding, so x / |x| is exactly +-1 for d = 1 and
    // equal directions give equal rows (exact ties stay ties for align="hard"). A zero row: 0 / 1.
    const T norm = sum_sq == T(0) ? T(1) : std::sqrt(sum_sq);
    const V vn = V::set1(norm);
    int64_t i = 0;
    for (; i + W <= d; i += W) (V::load(x + i) / vn).store(out + i);
    for (; i < d; ++i) out[i] = x[i] / norm;
  }

  void run_row(int64_t r) const {
    if (p.unit_length) return run_unit_row(r);
    const int64_t d = p.d;
    const T* x = static_cast<const T*>(p.x) + r * p.x_row_stride;
    T* out = static_cast<T*>(p.out) + r * d;
    const T* w = static_cast<const T*>(p.weight);
    const T* b = static_cast<const T*>(p.bias);
    T mean = row_sum(x, d) / T(d);
    if (std::isinf(mean)) {  // the sum left T's range (|x| near its limit): sum x / d instead
      mean = T(0);
      for (int64_t i = 0; i < d; ++i) mean += x[i] / T(d);
    }
    const T var = row_sum_sq_dev(x, d, mean) / T(d);
    T rstd = T(1) / std::sqrt(var + T(p.eps));
    if (std::isinf(var)) rstd = scaled_rstd(x, d, mean, T(p.eps));
    const V vm = V::set1(mean), vr = V::set1(rstd);
    int64_t i = 0;
    for (; i + W <= d; i += W) {
      V y = (V::load(x + i) - vm) * vr;
      if (w) y = y * V::load(w + i);
      if (b) y = y + V::load(b + i);
      y.store(out + i);
    }
    for (; i < d; ++i) {
      T y = (x[i] - mean) * rstd;
      if (w) y = y * w[i];
      if (b) y = y + b[i];
      out[i] = y;
    }
  }
};

template <class T>
static void layer_norm_typed(const LayerNormParams& p) {
  if (p.rows <= 0 || p.d <= 0) return;
  const LayerNormRows<T> rows{p};
  // About 16K elements per unit: big enough to amortise the scheduling, small enough to balance.
  const int64_t rows_per_unit = max64(1, (int64_t(1) << 14) / p.d);
  const int64_t units = (p.rows + rows_per_unit - 1) / rows_per_unit;
  // Threads only for about a millisecond of work or more: below that, waking them saves less than
  // it risks (a thread that is descheduled on a busy machine holds the others at the barrier).
  // Unit length runs right before the attention kernel, whose threads are then awake anyway.
  const int64_t min_parallel = p.unit_length ? int64_t(1) << 16 : int64_t(1) << 20;
  const bool parallel = p.num_threads > 1 && p.rows * p.d >= min_parallel;
  for_each_unit(units, parallel, p.num_threads, 64, [&](int64_t unit, void*) {
    const int64_t end = min64(p.rows, (unit + 1) * rows_per_unit);
    for (int64_t r = unit * rows_per_unit; r < end; ++r) rows.run_row(r);
  });
}

static void layer_norm(const LayerNormParams& p) {
  if (p.f64)
    layer_norm_typed<double>(p);
  else
    layer_norm_typed<float>(p);
}

}  // namespace FASTATTN_ISA
}  // namespace fastattn
