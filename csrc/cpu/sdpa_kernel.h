// Fused, tiled scaled-dot-product attention for one ISA: written once against the SIMD wrapper
// (VecOf<T>::type) and the tile sizes (Tuning) of the translation unit that includes it, inside that
// unit's own namespace FASTATTN_ISA so no two ISAs' copies can be mixed up by the linker. This file
// deliberately uses no std templates that the linker could merge across translation units.
//
// Work item: one block of BM query rows of one (batch, head). Per item:
//   Q block (scaled, in the compute type) -> for each tile of BN visible keys:
//     pack K^T and V, S = Q K^T (register-blocked micro-kernel), apply masks,
//     online softmax (running max m, running sum l, rescale O), O += P V (micro-kernel)
//   -> out = O / l, lse = m + log l.
// Memory beyond inputs and output is one tile-sized scratch arena per thread; no Lq x Lk buffer.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <new>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/half.h"
#include "fastattn/sdpa_params.h"

namespace fastattn {
namespace FASTATTN_ISA {

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
static constexpr inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// One growing, 64-byte aligned scratch block per thread, kept between calls so small calls do not
// pay for malloc. Returns null on allocation failure; the caller reports it after the parallel region.
struct ScratchArena {
  void* ptr = nullptr;
  size_t bytes = 0;
  ~ScratchArena() { std::free(ptr); }
  void* get(size_t want) {
    if (want > bytes) {
      std::free(ptr);
      bytes = 0;
      ptr = std::aligned_alloc(64, size_t(round_up(int64_t(want), 64)));
      if (ptr) bytes = want;
    }
    return ptr;
  }
};
static thread_local ScratchArena scratch_arena;

template <class E> struct ComputeOf { using type = float; };
template <> struct ComputeOf<double> { using type = double; };

// S[MR x NV*W] = Q[MR x d] . Kt[d x NV*W]: rows of Q broadcast, packed K^T rows loaded as vectors.
template <class V, int MR, int NV>
static inline void score_micro(const typename V::T* q, int64_t ldq, const typename V::T* kt,
                               int64_t ldk, int64_t d, typename V::T* s, int64_t lds) {
  constexpr int W = V::W;
  V acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NV; ++c) acc[r][c] = V::zero();
  for (int64_t x = 0; x < d; ++x) {
    V b[NV];
    for (int c = 0; c < NV; ++c) b[c] = V::load(kt + x * ldk + c * W);
    for (int r = 0; r < MR; ++r) {
      const V a = V::set1(q[r * ldq + x]);
      for (int c = 0; c < NV; ++c) acc[r][c] = fma(a, b[c], acc[r][c]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NV; ++c) acc[r][c].store(s + r * lds + c * W);
}

// O[MR x NV*W] += P[MR x n] . Vp[n x NV*W].
template <class V, int MR, int NV>
static inline void accumulate_micro(const typename V::T* p, int64_t ldp, const typename V::T* vp,
                                    int64_t ldv, int64_t n, typename V::T* o, int64_t ldo) {
  constexpr int W = V::W;
  V acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NV; ++c) acc[r][c] = V::load(o + r * ldo + c * W);
  for (int64_t j = 0; j < n; ++j) {
    V b[NV];
    for (int c = 0; c < NV; ++c) b[c] = V::load(vp + j * ldv + c * W);
    for (int r = 0; r < MR; ++r) {
      const V a = V::set1(p[r * ldp + j]);
      for (int c = 0; c < NV; ++c) acc[r][c] = fma(a, b[c], acc[r][c]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NV; ++c) acc[r][c].store(o + r * ldo + c * W);
}

// Everything one work item needs that is the same for all items of a call.
template <class E>
struct SdpaPlan {
  using T = typename ComputeOf<E>::type;
  using V = typename VecOf<T>::type;
  static constexpr int W = V::W;
  static constexpr int MR = Tuning::micro_rows;
  static constexpr int NV = Tuning::micro_vecs;
  static constexpr int64_t NR = int64_t(NV) * W;
  static constexpr int64_t BM = round_up(Tuning::block_m, MR);
  static constexpr int64_t BN = round_up(Tuning::block_n, NR);

  const SdpaParams& p;
  int64_t dv_pad, q_blocks, group;
  // Scratch layout (elements of T): Q block, K^T tile, V tile, scores, O accumulator, m, l.
  int64_t off_kt, off_v, off_s, off_o, off_m, off_l, scratch_elems;

  explicit SdpaPlan(const SdpaParams& params) : p(params) {
    dv_pad = round_up(max64(p.dv, 1), NR);
    q_blocks = (p.lq + BM - 1) / BM;
    group = p.hkv > 0 ? p.hq / p.hkv : 1;
    off_kt = BM * p.d;
    off_v = off_kt + p.d * BN;
    off_s = off_v + BN * dv_pad;
    off_o = off_s + BM * BN;
    off_m = off_o + BM * dv_pad;
    off_l = off_m + BM;
    scratch_elems = off_l + BM;
  }

  void run_item(int64_t item, T* scratch) const;
};

template <class E>
void SdpaPlan<E>::run_item(int64_t item, T* scratch) const {
  constexpr T neg_inf = -std::numeric_limits<T>::infinity();
  const int64_t qb = item % q_blocks;
  const int64_t bh = item / q_blocks;
  const int64_t h = bh % p.hq, b = bh / p.hq, hk = h / group;
  const int64_t i0 = qb * BM, rows = min64(BM, p.lq - i0), rows_pad = round_up(rows, MR);
  const int64_t d = p.d, dv = p.dv;

  const E* q = static_cast<const E*>(p.q) + p.q_batch_offset[b] + h * p.q_head_stride +
               i0 * p.q_row_stride;
  const E* k = static_cast<const E*>(p.k) + p.k_batch_offset[b] + hk * p.k_head_stride;
  const E* v = static_cast<const E*>(p.v) + p.v_batch_offset[b] + hk * p.v_head_stride;
  E* out = static_cast<E*>(p.out) + ((b * p.hq + h) * p.lq + i0) * dv;
  T* lse = p.lse ? static_cast<T*>(p.lse) + (b * p.hq + h) * p.lq + i0 : nullptr;
  const int64_t mask_base =
      p.mask_kind == MaskKind::none ? 0 : p.mask_batch_offset[b] + h * p.mask_head_stride;

  T* qs = scratch;
  T* kt = scratch + off_kt;
  T* vp = scratch + off_v;
  T* s = scratch + off_s;
  T* o = scratch + off_o;
  T* m = scratch + off_m;
  T* l = scratch + off_l;

  // Keys this block can see at all: the band of its first and last rows, cut to [0, kv_length).
  const int64_t kv_len = p.kv_lengths ? p.kv_lengths[b] : p.lk;
  const int64_t last_row = i0 + rows - 1;
  const int64_t key_begin = max64(0, i0 + p.diag - p.left);
  const int64_t key_end = min64(kv_len, last_row + p.diag + p.right + 1);

  const T scale = T(p.scale);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t x = 0; x < d; ++x) qs[r * d + x] = to_compute(q[r * p.q_row_stride + x]) * scale;
  for (int64_t i = rows * d; i < rows_pad * d; ++i) qs[i] = T(0);
  for (int64_t i = 0; i < rows_pad * dv_pad; ++i) o[i] = T(0);
  for (int64_t r = 0; r < rows_pad; ++r) m[r] = neg_inf, l[r] = T(0);

  for (int64_t j0 = key_begin; j0 < key_end; j0 += BN) {
    const int64_t cols = min64(BN, key_end - j0), cols_pad = round_up(cols, NR);

    // Pack K^T (d x cols_pad) and V (cols_pad x dv_pad) in the compute type, zero-padded, and note
    // whether V holds Inf/NaN: then a weight that is exactly 0 must skip its row, not multiply it.
    for (int64_t c = 0; c < cols; ++c) {
      const E* krow = k + (j0 + c) * p.k_row_stride;
      for (int64_t x = 0; x < d; ++x) kt[x * cols_pad + c] = to_compute(krow[x]);
    }
    for (int64_t x = 0; x < d; ++x)
      for (int64_t c = cols; c < cols_pad; ++c) kt[x * cols_pad + c] = T(0);
    T v_check = T(0);
    for (int64_t c = 0; c < cols; ++c) {
      const E* vrow = v + (j0 + c) * p.v_row_stride;
      T* dst = vp + c * dv_pad;
      for (int64_t y = 0; y < dv; ++y) {
        dst[y] = to_compute(vrow[y]);
        v_check += dst[y] * T(0);  // stays 0 unless some value is Inf or NaN
      }
      for (int64_t y = dv; y < dv_pad; ++y) dst[y] = T(0);
    }
    for (int64_t i = cols * dv_pad; i < cols_pad * dv_pad; ++i) vp[i] = T(0);
    const bool v_finite = v_check == T(0);

    for (int64_t r0 = 0; r0 < rows_pad; r0 += MR)
      for (int64_t c0 = 0; c0 < cols_pad; c0 += NR)
        score_micro<V, MR, NV>(qs + r0 * d, d, kt + c0, cols_pad, d, s + r0 * BN + c0, BN);

    // Masks. A masked score becomes -inf by assignment (never by adding), so NaN or Inf in a
    // masked key cannot leak into the row. The band only needs checking on tiles it cuts.
    const bool band_cuts_tile = last_row + p.diag - p.left > j0 || i0 + p.diag + p.right < j0 + cols - 1;
    for (int64_t r = 0; r < rows_pad; ++r) {
      T* srow = s + r * BN;
      const int64_t i = i0 + r;
      if (r < rows && p.mask_kind == MaskKind::additive) {
        const T* mrow = static_cast<const T*>(p.mask) + mask_base + i * p.mask_row_stride;
        for (int64_t c = 0; c < cols; ++c) {
          const T add = mrow[(j0 + c) * p.mask_col_stride];
          srow[c] = add == neg_inf ? neg_inf : srow[c] + add;
        }
      } else if (r < rows && p.mask_kind == MaskKind::boolean) {
        const uint8_t* mrow = static_cast<const uint8_t*>(p.mask) + mask_base + i * p.mask_row_stride;
        for (int64_t c = 0; c < cols; ++c)
          if (!mrow[(j0 + c) * p.mask_col_stride]) srow[c] = neg_inf;
      }
      if (band_cuts_tile) {
        // Visible columns of this row: [i + diag - left, i + diag + right] shifted by j0.
        const int64_t lo = max64(0, i + p.diag - p.left - j0);
        const int64_t hi = min64(cols, i + p.diag + p.right - j0 + 1);
        for (int64_t c = 0; c < min64(lo, cols); ++c) srow[c] = neg_inf;
        for (int64_t c = max64(hi, 0); c < cols; ++c) srow[c] = neg_inf;
      }
      for (int64_t c = cols; c < cols_pad; ++c) srow[c] = neg_inf;
    }

    // Online softmax. A row that has seen only masked keys keeps m = -inf; it exponentiates against
    // 0 instead, so its weights are exp(-inf) = 0 (no inf - inf = NaN) while NaN scores stay NaN.
    for (int64_t r = 0; r < rows_pad; ++r) {
      T* srow = s + r * BN;
      V vmax = V::set1(neg_inf);
      for (int64_t c = 0; c < cols_pad; c += W) vmax = max(vmax, V::load(srow + c));
      const T tile_max = vmax.reduce_max();
      const T m_old = m[r];
      const T m_new = tile_max > m_old ? tile_max : m_old;
      const T m_use = m_new == neg_inf ? T(0) : m_new;
      const V vm = V::set1(m_use);
      V vsum = V::zero();
      for (int64_t c = 0; c < cols_pad; c += W) {
        const V e = vexp(V::load(srow + c) - vm);
        e.store(srow + c);
        vsum = vsum + e;
      }
      const T alpha = std::exp(m_old - m_use);
      l[r] = l[r] * alpha + vsum.reduce_add();
      m[r] = m_new;
      if (alpha != T(1)) {
        const V va = V::set1(alpha);
        T* orow = o + r * dv_pad;
        for (int64_t y = 0; y < dv_pad; y += W) (V::load(orow + y) * va).store(orow + y);
      }
    }

    if (v_finite) {
      for (int64_t r0 = 0; r0 < rows_pad; r0 += MR)
        for (int64_t y0 = 0; y0 < dv_pad; y0 += NR)
          accumulate_micro<V, MR, NV>(s + r0 * BN, BN, vp + y0, dv_pad, cols, o + r0 * dv_pad + y0,
                                      dv_pad);
    } else {
      for (int64_t r = 0; r < rows; ++r) {
        T* orow = o + r * dv_pad;
        for (int64_t c = 0; c < cols; ++c) {
          const T weight = s[r * BN + c];
          if (weight == T(0)) continue;
          const V vw = V::set1(weight);
          for (int64_t y = 0; y < dv_pad; y += W)
            fma(vw, V::load(vp + c * dv_pad + y), V::load(orow + y)).store(orow + y);
        }
      }
    }
  }

  // A row that saw no key (l == 0) outputs exactly 0 with lse -inf; a NaN l keeps the row NaN.
  for (int64_t r = 0; r < rows; ++r) {
    const T lr = l[r];
    const T inv = lr == T(0) ? T(0) : T(1) / lr;
    const T* orow = o + r * dv_pad;
    E* dst = out + r * dv;
    if (lr == T(0)) {
      for (int64_t y = 0; y < dv; ++y) from_compute(T(0), dst + y);
    } else {
      for (int64_t y = 0; y < dv; ++y) from_compute(orow[y] * inv, dst + y);
    }
    if (lse) lse[r] = lr == T(0) ? neg_inf : m[r] + std::log(lr);
  }
}

template <class E>
static void sdpa_typed(const SdpaParams& p) {
  using Plan = SdpaPlan<E>;
  using T = typename Plan::T;
  const Plan plan(p);
  const int64_t items = p.batch * p.hq * plan.q_blocks;
  if (items == 0) return;
  // Threads only pay off past a few microseconds of work; below that the fork/join costs more.
  const double macs = double(p.batch) * double(p.hq) * double(p.lq) * double(p.lk) *
                      double(p.d + p.dv + 8);
  const bool parallel = p.num_threads > 1 && items > 1 && macs > 1.5e5;
  const size_t scratch_bytes = size_t(plan.scratch_elems) * sizeof(T);
  int failed = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(p.num_threads) if (parallel)
#endif
  {
    T* scratch = static_cast<T*>(scratch_arena.get(scratch_bytes));
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
    for (int64_t item = 0; item < items; ++item) {
      if (scratch)
        plan.run_item(item, scratch);
      else {
#ifdef _OPENMP
#pragma omp atomic write
#endif
        failed = 1;
      }
    }
  }
  if (failed) throw std::bad_alloc();
}

static void sdpa(const SdpaParams& p) {
  switch (p.dtype) {
    case DType::f32: sdpa_typed<float>(p); break;
    case DType::f64: sdpa_typed<double>(p); break;
    case DType::f16: sdpa_typed<f16>(p); break;
    case DType::bf16: sdpa_typed<bf16>(p); break;
  }
}

}  // namespace FASTATTN_ISA
}  // namespace fastattn
