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
  int64_t blocks, n_pad, off_yt, off_zero, off_rows;
  size_t scratch_bytes;

  // Scratch (elements of T): x^T, y^T, a zero row, then W's row pointers. The pointers start
  // where the layout says, not at a rounded total: with float64's 12-row blocks and an odd k
  // the rounded total fell short of them, and the last pointers overran the block.
  explicit LinearPlan(const LinearParams& params) : p(params) {
    blocks = (p.m + NR - 1) / NR;
    n_pad = round_up(max64(p.n, 1), R);
    off_yt = p.k * NR;
    off_zero = off_yt + n_pad * NR;
    off_rows = off_zero + round_up(p.k + 1, 8);
    scratch_bytes = size_t(off_rows) * sizeof(T) + size_t(n_pad) * sizeof(const T*);
  }

  // Rows [i0, i0 + NR) of y: x^T packed (k x NR, zero columns past m), y^T = W x^T by R rows of W
  // at a time (zero rows past n), then y = y^T transposed plus b.
  void run_block(int64_t block, T* scratch) const {
    const int64_t i0 = block * NR, rows = min64(NR, p.m - i0);
    T* xt = scratch;
    T* yt = scratch + off_yt;
    T* zero_row = scratch + off_zero;
    const T** wrows = reinterpret_cast<const T**>(scratch + off_rows);
    for (int64_t x = 0; x < p.k + 1; ++x) zero_row[x] = T(0);
    const T* x = static_cast<const T*>(p.x) + i0 * p.x_row_stride;
    // x^T and y by W x W register transposes where whole blocks fit, element by element at the
    // edges: one element at a time they took as long as the product itself at k = n = 64.
    const int64_t k_whole = p.k / W * W, n_whole = p.n / W * W;
    int64_t c0 = 0;
    for (; c0 + W <= rows; c0 += W) {
      for (int64_t a0 = 0; a0 < k_whole; a0 += W) {
        V block[W];
        for (int r = 0; r < W; ++r) block[r] = V::load(x + (c0 + r) * p.x_row_stride + a0);
        transpose(block);
        for (int r = 0; r < W; ++r) block[r].store(xt + (a0 + r) * NR + c0);
      }
      for (int64_t a = k_whole; a < p.k; ++a)
        for (int r = 0; r < W; ++r) xt[a * NR + c0 + r] = x[(c0 + r) * p.x_row_stride + a];
    }
    for (int64_t c = c0; c < NR; ++c)
      for (int64_t a = 0; a < p.k; ++a) xt[a * NR + c] = c < rows ? x[c * p.x_row_stride + a] : T(0);
    const T* w = static_cast<const T*>(p.w);
    for (int64_t j = 0; j < n_pad; ++j) wrows[j] = j < p.n ? w + j * p.k : zero_row;
    for (int64_t j = 0; j < n_pad; j += R) score_micro<V, R, NV>(wrows + j, xt, NR, p.k, yt + j * NR, NR);
    const T* b = static_cast<const T*>(p.b);
    T* y = static_cast<T*>(p.y) + i0 * p.n;
    for (c0 = 0; c0 + W <= rows; c0 += W) {
      for (int64_t j0 = 0; j0 < n_whole; j0 += W) {
        V block[W];
        for (int r = 0; r < W; ++r) block[r] = V::load(yt + (j0 + r) * NR + c0);
        transpose(block);
        for (int r = 0; r < W; ++r) (b ? block[r] + V::load(b + j0) : block[r]).store(y + (c0 + r) * p.n + j0);
      }
      for (int r = 0; r < W; ++r)
        for (int64_t j = n_whole; j < p.n; ++j) y[(c0 + r) * p.n + j] = b ? yt[j * NR + c0 + r] + b[j] : yt[j * NR + c0 + r];
    }
    for (int64_t c = c0; c < rows; ++c)
      for (int64_t j = 0; j < p.n; ++j) y[c * p.n + j] = b ? yt[j * NR + c] + b[j] : yt[j * NR + c];
  }
};

// Few rows of x (a decode step's projections): the blocked path would pad x to NR rows and run
// on one thread, so instead W's rows are split across the threads and each W row, streamed once,
// is dotted with kGroup rows of x at a time (held in cache): the weights' memory stream is the
// cost, and it runs on this library's OpenMP pool, not on OpenBLAS's threads, which spin after a
// call and slowed the attention kernel that follows by 4-9 ms (bench/RESULTS.md).
template <class T>
struct FewRowsLinear {
  using V = typename VecOf<T>::type;
  static constexpr int W = V::W;
  static constexpr int kGroup = 4;       // rows of x per pass over a W row
  static constexpr int64_t kUnit = 64;   // W rows per work unit

  const LinearParams& p;

  int64_t units() const { return (p.n + kUnit - 1) / kUnit; }

  void run_unit(int64_t unit) const {
    const int64_t j0 = unit * kUnit, j1 = min64(p.n, j0 + kUnit);
    for (int64_t c0 = 0; c0 < p.m; c0 += kGroup) {
      switch (min64(kGroup, p.m - c0)) {
        case 1: rows_pass<1, 4>(c0, j0, j1); break;
        case 2: rows_pass<2, 4>(c0, j0, j1); break;
        case 3: rows_pass<3, 2>(c0, j0, j1); break;
        default: rows_pass<4, 2>(c0, j0, j1); break;
      }
    }
  }

  // y[c0 .. c0+G) at columns j0 .. j1, J rows of W at a time: each x chunk loaded serves J rows,
  // the J weight streams run side by side, and G * J FMA chains are in flight (at most 8: with
  // the operands that fills AVX2's 16 registers). Leftover W rows go one at a time.
  template <int G, int J>
  void rows_pass(int64_t c0, int64_t j0, int64_t j1) const {
    const T* x[G];
    for (int c = 0; c < G; ++c) x[c] = static_cast<const T*>(p.x) + (c0 + c) * p.x_row_stride;
    int64_t j = j0;
    for (; j + J <= j1; j += J) rows_block<G, J>(x, c0, j);
    for (; j < j1; ++j) rows_block<G, 1>(x, c0, j);
  }

  template <int G, int J>
  void rows_block(const T* const* x, int64_t c0, int64_t j) const {
    const T* w = static_cast<const T*>(p.w) + j * p.k;
    V acc[J][G];
    for (int r = 0; r < J; ++r)
      for (int c = 0; c < G; ++c) acc[r][c] = V::zero();
    int64_t a = 0;
    for (; a + W <= p.k; a += W) {
      V xa[G];
      for (int c = 0; c < G; ++c) xa[c] = V::load(x[c] + a);
      for (int r = 0; r < J; ++r) {
        const V wa = V::load(w + r * p.k + a);
        for (int c = 0; c < G; ++c) acc[r][c] = fma(wa, xa[c], acc[r][c]);
      }
    }
    const T* b = static_cast<const T*>(p.b);
    T* y = static_cast<T*>(p.y);
    for (int r = 0; r < J; ++r)
      for (int c = 0; c < G; ++c) {
        T sum = acc[r][c].reduce_add();
        for (int64_t t = a; t < p.k; ++t) sum += w[r * p.k + t] * x[c][t];
        y[(c0 + c) * p.n + j + r] = b ? sum + b[j + r] : sum;
      }
  }
};

template <class T>
static void linear_typed(const LinearParams& p) {
  const LinearPlan<T> plan(p);
  if (plan.blocks == 0 || p.n == 0) return;
  // Threads from about 0.05 ms of work (4096 x 64 x 64 takes 0.6 ms on one core, 0.3 on two).
  const double work = double(p.m) * double(p.n) * double(p.k);
  const bool threads = p.num_threads > 1 && work > double(1 << 22);
  if (p.m <= 2 * FewRowsLinear<T>::kGroup || (threads && plan.blocks < p.num_threads)) {
    const FewRowsLinear<T> few{p};
    for_each_unit(few.units(), threads, p.num_threads, 64, [&few](int64_t unit, void*) { few.run_unit(unit); });
    return;
  }
  for_each_unit(plan.blocks, threads && plan.blocks > 1, p.num_threads, plan.scratch_bytes,
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
