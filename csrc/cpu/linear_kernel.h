// y = x W^T + b for one ISA: the projections of the general attention module's scores, run on
// this library's own threads. NumPy's matmul would do the arithmetic as fast, but OpenBLAS's
// threads spin for a while after each call and take the cores from the attention kernel that
// runs next (1.2-1.8x slower dot-reducible scores, measured in bench/RESULTS.md).
// Included after sdpa_kernel.h in the same per-ISA namespace: it reuses score_micro, whose
// S^T = K Q^T tile is exactly y^T = W x^T with W's rows as the keys and x's rows as the queries.
#pragma once

#include <cstdint>

#include "fastattn/linear_params.h"

namespace fastattn {
namespace FASTATTN_ISA {

template <class T>
struct LinearPlan {
  using V = typename VecOf<T>::type;
  static constexpr int W = V::W;
  static constexpr int R = Tuning::micro_rows, NV = Tuning::micro_vecs;
  static constexpr int64_t NR = int64_t(NV) * W;  // rows of x per work item

  const LinearParams& p;
  int64_t blocks, n_pad, off_yt, off_zero;
  size_t scratch_bytes;

  explicit LinearPlan(const LinearParams& params) : p(params) {
    blocks = (p.m + NR - 1) / NR;
    n_pad = round_up(max64(p.n, 1), R);
    off_yt = p.k * NR;
    off_zero = off_yt + n_pad * NR;
    const int64_t elems = round_up(off_zero + p.k + 1, 8);
    scratch_bytes = size_t(elems) * sizeof(T) + size_t(n_pad) * sizeof(const T*);
  }

  // Rows [i0, i0 + NR) of y: x^T packed (k x NR, zero columns past m), y^T = W x^T by R rows of W
  // at a time (zero rows past n), then y = y^T transposed plus b.
  void run_block(int64_t block, T* scratch) const {
    const int64_t i0 = block * NR, rows = min64(NR, p.m - i0);
    T* xt = scratch;
    T* yt = scratch + off_yt;
    T* zero_row = scratch + off_zero;
    const T** wrows = reinterpret_cast<const T**>(zero_row + round_up(p.k + 1, 8));
    for (int64_t x = 0; x < p.k + 1; ++x) zero_row[x] = T(0);
    const T* x = static_cast<const T*>(p.x) + i0 * p.x_row_stride;
    for (int64_t c = 0; c < NR; ++c)
      for (int64_t a = 0; a < p.k; ++a) xt[a * NR + c] = c < rows ? x[c * p.x_row_stride + a] : T(0);
    const T* w = static_cast<const T*>(p.w);
    for (int64_t j = 0; j < n_pad; ++j) wrows[j] = j < p.n ? w + j * p.k : zero_row;
    for (int64_t j = 0; j < n_pad; j += R) score_micro<V, R, NV>(wrows + j, xt, NR, p.k, yt + j * NR, NR);
    const T* b = static_cast<const T*>(p.b);
    T* y = static_cast<T*>(p.y) + i0 * p.n;
    for (int64_t c = 0; c < rows; ++c)
      for (int64_t j = 0; j < p.n; ++j) y[c * p.n + j] = b ? yt[j * NR + c] + b[j] : yt[j * NR + c];
  }
};

template <class T>
static void linear_typed(const LinearParams& p) {
  const LinearPlan<T> plan(p);
  if (plan.blocks == 0 || p.n == 0) return;
  // Threads only from about a millisecond of work: a projection in front of an attention call is
  // one more parallel region, and on a busy machine every region can wait a scheduler slice for a
  // descheduled thread (measured: 0.34 ms minimum, 10 ms median, for 4096 x 64 x 64 on 2 threads
  // under load), which costs more than the one core loses on small projections.
  const double work = double(p.m) * double(p.n) * double(p.k);
  const bool parallel = p.num_threads > 1 && plan.blocks > 1 && work > double(1 << 25);
  for_each_unit(plan.blocks, parallel, p.num_threads, plan.scratch_bytes,
                [&plan](int64_t block, void* scratch) { plan.run_block(block, static_cast<T*>(scratch)); });
}

static void linear(const LinearParams& p) {
  if (p.f64)
    linear_typed<double>(p);
  else
    linear_typed<float>(p);
}

}  // namespace FASTATTN_ISA
}  // namespace fastattn
