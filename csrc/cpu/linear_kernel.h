// out = x W^T + b for a few rows of x (fastattn.MultiHeadAttention's projections in a decode step),
// for one ISA; included after sdpa_kernel.h in the same per-ISA namespace (its helpers and
// for_each_unit).
//
// Why not NumPy's BLAS, as for every other projection: a decode step's cost is reading the weights
// once, and BLAS's threads keep spinning after the call, competing on few cores with the attention
// kernel's OpenMP threads that run next. Here the weights are streamed by the same OpenMP pool.
// Each W row is read once for up to kRows rows of x (which stay in L1/L2): R dot products share
// every load of W. Work unit: a block of output features.
#pragma once

#include <cstdint>

#include "fastattn/linear_params.h"

namespace fastattn {
namespace FASTATTN_ISA {

constexpr int kLinearRows = 8;  // rows of x per pass over W: 8 accumulators + 2 loads in registers

// res[r] = x_r . w for R rows of x, vector accumulators then a scalar tail.
template <class T, int R>
static inline void dot_rows(const T* const* x, const T* w, int64_t k, T* res) {
  using V = typename VecOf<T>::type;
  constexpr int W = V::W;
  V acc[R];
  for (int r = 0; r < R; ++r) acc[r] = V::zero();
  int64_t i = 0;
  for (; i + W <= k; i += W) {
    const V wv = V::load(w + i);
    for (int r = 0; r < R; ++r) acc[r] = fma(V::load(x[r] + i), wv, acc[r]);
  }
  for (int r = 0; r < R; ++r) {
    T s = acc[r].reduce_add();
    for (int64_t t = i; t < k; ++t) s += x[r][t] * w[t];
    res[r] = s;
  }
}

template <class T>
static void linear_typed(const LinearParams& p) {
  if (p.m <= 0 || p.n <= 0) return;
  constexpr int64_t kBlock = 16;  // output features per work unit
  const int64_t units = (p.n + kBlock - 1) / kBlock;
  // Threads from 256K weights (1 MB in float32) up: below that the wake-up costs more than it saves.
  const bool parallel = p.num_threads > 1 && p.n * p.k >= (int64_t(1) << 18);
  const T* x = static_cast<const T*>(p.x);
  const T* w = static_cast<const T*>(p.w);
  const T* bias = static_cast<const T*>(p.bias);
  T* out = static_cast<T*>(p.out);
  for_each_unit(units, parallel, p.num_threads, 64, [&](int64_t unit, void*) {
    const int64_t j_end = min64(p.n, (unit + 1) * kBlock);
    for (int64_t m0 = 0; m0 < p.m; m0 += kLinearRows) {
      const int rows = int(min64(kLinearRows, p.m - m0));
      const T* xr[kLinearRows];
      for (int r = 0; r < rows; ++r) xr[r] = x + (m0 + r) * p.x_row_stride;
      for (int64_t j = unit * kBlock; j < j_end; ++j) {
        const T* wr = w + j * p.w_row_stride;
        T res[kLinearRows];
        switch (rows) {  // R as a compile-time constant keeps the accumulators in registers
          case 1: dot_rows<T, 1>(xr, wr, p.k, res); break;
          case 2: dot_rows<T, 2>(xr, wr, p.k, res); break;
          case 3: dot_rows<T, 3>(xr, wr, p.k, res); break;
          case 4: dot_rows<T, 4>(xr, wr, p.k, res); break;
          case 5: dot_rows<T, 5>(xr, wr, p.k, res); break;
          case 6: dot_rows<T, 6>(xr, wr, p.k, res); break;
          case 7: dot_rows<T, 7>(xr, wr, p.k, res); break;
          default: dot_rows<T, 8>(xr, wr, p.k, res); break;
        }
        const T b = bias ? bias[j] : T(0);
        for (int r = 0; r < rows; ++r) out[(m0 + r) * p.n + j] = res[r] + b;
      }
    }
  });
}

static void linear(const LinearParams& p) {
  if (p.f64)
    linear_typed<double>(p);
  else
    linear_typed<float>(p);
}

}  // namespace FASTATTN_ISA
}  // namespace fastattn
