// Fused, tiled scaled-dot-product attention for one ISA: written once against the SIMD wrapper
// (VecOf<T>::type) and the tile sizes (Tuning) of the translation unit that includes it, inside that
// unit's own namespace FASTATTN_ISA so no two ISAs' copies can be mixed up by the linker. This file
// deliberately uses no std templates that the linker could merge across translation units.
//
// Layout: scores are computed transposed, keys down and queries across (S^T = K Q^T). Then
//  - K and V rows are read where they lie, as broadcast operands: no per-tile transpose or copy
//    (float16/bfloat16 tiles are widened to float32 once per tile, nothing more);
//  - the query block is packed once per work item (Q^T, scaled), and every softmax statistic
//    (running max m, running sum l, rescale factor) is a vector across queries: no horizontal
//    reductions in the inner loops;
//  - all query heads of a grouped-query group form the columns of one work item, so each K/V tile
//    is read once for the whole group (decode: one pass over the cache per kv head).
// Work item: (batch, kv head, block of query rows). Per item:
//   Q^T block -> for each tile of BN visible keys: S^T = K Q^T (register-blocked micro-kernel),
//   masks, online softmax per query, O^T += V^T P^T (micro-kernel) -> out = O / l, lse = m + log l.
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

constexpr double kLog2e = 1.44269504088896340736, kLn2 = 0.69314718055994530942;

template <class E> struct ComputeOf { using type = float; };
template <> struct ComputeOf<double> { using type = double; };

// dst[0:n] = src[0:n] widened to the compute type, W lanes at a time.
template <class V, class E>
static inline void widen_row(const E* src, typename V::T* dst, int64_t n) {
  int64_t x = 0;
  for (; x + V::W <= n; x += V::W) V::load(src + x).store(dst + x);
  for (; x < n; ++x) dst[x] = to_compute(src[x]);
}

// S^T[R x NV*W] = K[R rows, each its own pointer][d] . Q^T[d x NV*W].
// The dot products are summed in chunks of kDotChunk terms, each chunk from zero, then the chunks:
// for long head dims that keeps the rounding error near that of a k-blocked GEMM.
constexpr int64_t kDotChunk = 64;
template <class V, int R, int NV>
static inline void score_micro(const typename V::T* const* krows, const typename V::T* qt,
                               int64_t ldq, int64_t d, typename V::T* st, int64_t lds) {
  constexpr int W = V::W;
  for (int64_t x0 = 0; x0 < d || x0 == 0; x0 += kDotChunk) {
    V acc[R][NV];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < NV; ++c) acc[r][c] = V::zero();
    for (int64_t x = x0; x < min64(d, x0 + kDotChunk); ++x) {
      V b[NV];
      for (int c = 0; c < NV; ++c) b[c] = V::load(qt + x * ldq + c * W);
      for (int r = 0; r < R; ++r) {
        const V a = V::set1(krows[r][x]);
        for (int c = 0; c < NV; ++c) acc[r][c] = fma(a, b[c], acc[r][c]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < NV; ++c) {
        typename V::T* dst = st + r * lds + c * W;
        (x0 == 0 ? acc[r][c] : acc[r][c] + V::load(dst)).store(dst);
      }
  }
}

// O^T[R x NV*W] += V^T[R value dims x n keys] . P^T[n x NV*W]; V row j starts at vrows[j].
// The tile's sum starts from zero and is added to O once: summing in two levels (keys within a
// tile, then tiles) keeps the rounding error of long rows near that of a blocked GEMM.
// With kSafe, a weight that is exactly 0 contributes exactly 0 even against an Inf/NaN value.
template <class V, int R, int NV, bool kSafe>
static inline void accumulate_micro(const typename V::T* const* vrows, int64_t y0,
                                    const typename V::T* pt, int64_t ldp, int64_t n,
                                    typename V::T* ot, int64_t ldo) {
  constexpr int W = V::W;
  V acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NV; ++c) acc[r][c] = V::zero();
  for (int64_t j = 0; j < n; ++j) {
    V b[NV];
    for (int c = 0; c < NV; ++c) b[c] = V::load(pt + j * ldp + c * W);
    const typename V::T* vrow = vrows[j] + y0;
    for (int r = 0; r < R; ++r) {
      const V a = V::set1(vrow[r]);
      for (int c = 0; c < NV; ++c) {
        if (kSafe)
          acc[r][c] = acc[r][c] + select_eq(b[c], V::zero(), V::zero(), a * b[c]);
        else
          acc[r][c] = fma(a, b[c], acc[r][c]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NV; ++c) (acc[r][c] + V::load(ot + r * ldo + c * W)).store(ot + r * ldo + c * W);
}

// accumulate_micro for the last `rows` (< R) value dims: picks the instantiation at run time.
template <class V, int R, int NV, bool kSafe>
struct AccumulateTail {
  static void run(int rows, const typename V::T* const* vrows, int64_t y0,
                  const typename V::T* pt, int64_t ldp, int64_t n, typename V::T* ot,
                  int64_t ldo) {
    if (rows == R)
      accumulate_micro<V, R, NV, kSafe>(vrows, y0, pt, ldp, n, ot, ldo);
    else
      AccumulateTail<V, R - 1, NV, kSafe>::run(rows, vrows, y0, pt, ldp, n, ot, ldo);
  }
};
template <class V, int NV, bool kSafe>
struct AccumulateTail<V, 0, NV, kSafe> {
  static void run(int, const typename V::T* const*, int64_t, const typename V::T*, int64_t,
                  int64_t, typename V::T*, int64_t) {}
};

// Everything a work item needs that is the same for all items of a call.
template <class E>
struct SdpaPlan {
  using T = typename ComputeOf<E>::type;
  using V = typename VecOf<T>::type;
  static constexpr bool kWiden = !(sizeof(E) == sizeof(T));  // float16/bfloat16 storage
  static constexpr int W = V::W;
  // Register blocks: MR keys (or value dims) x NV vectors of queries; narrow blocks (MRn x 1) for
  // items with at most one vector of queries (decode), where NV > 1 would compute padding.
  static constexpr int MR = Tuning::micro_rows, NV = Tuning::micro_vecs;
  static constexpr int MRn = Tuning::narrow_rows;
  static constexpr int64_t NR = int64_t(NV) * W;
  static constexpr int64_t BN = round_up(round_up(Tuning::block_n, MR), MRn);
  static constexpr int MRmax = MR > MRn ? MR : MRn;
  static_assert(BN % MR == 0 && BN % MRn == 0, "a key tile must hold whole register blocks");

  const SdpaParams& p;
  int64_t group;       // query heads per kv head
  int64_t rows_per_head;  // query rows of one head in a work item
  int64_t q_blocks;
  int64_t cols_cap;    // columns (queries) per item, padded to whole vectors
  // Scratch layout (elements of T): Q^T, S^T, O^T, m, l, widened K and V tiles, a zero row,
  // then the key and value row pointers.
  int64_t off_st, off_ot, off_m, off_l, off_kw, off_vw, off_zero, scratch_elems;
  size_t scratch_bytes;

  explicit SdpaPlan(const SdpaParams& params) : p(params) {
    group = p.hkv > 0 ? p.hq / p.hkv : 1;
    // About cols_target queries per item: enough to amortise each K/V tile over many queries,
    // few enough that Q^T, S^T and O^T stay in L2.
    rows_per_head = max64(1, min64(p.lq, Tuning::cols_target / group));
    q_blocks = p.lq > 0 ? (p.lq + rows_per_head - 1) / rows_per_head : 0;
    cols_cap = round_up(rows_per_head * group, NR);
    const int64_t width = max64(p.d, p.dv);
    off_st = p.d * cols_cap;
    off_ot = off_st + BN * cols_cap;
    off_m = off_ot + p.dv * cols_cap;
    off_l = off_m + cols_cap;
    off_kw = off_l + cols_cap;
    off_vw = off_kw + (kWiden ? BN * p.d : 0);
    off_zero = off_vw + (kWiden ? BN * p.dv : 0);
    scratch_elems = round_up(off_zero + width + MRmax, 8);
    scratch_bytes = size_t(scratch_elems) * sizeof(T) + 2 * size_t(BN) * sizeof(const T*);
  }

  int64_t items() const { return p.batch * p.hkv * q_blocks; }
  void run_item(int64_t item, T* scratch) const {
    const int64_t qb = q_blocks - 1 - item % q_blocks;
    if (min64(rows_per_head, p.lq - qb * rows_per_head) * group <= W)
      run_item_blocked<MRn, 1>(item, scratch);
    else
      run_item_blocked<MR, NV>(item, scratch);
  }
  template <int R, int NVb>
  void run_item_blocked(int64_t item, T* scratch) const;
};

template <class E>
template <int R, int NVb>
void SdpaPlan<E>::run_item_blocked(int64_t item, T* scratch) const {
  constexpr int64_t NRb = int64_t(NVb) * W;
  constexpr T neg_inf = -std::numeric_limits<T>::infinity();
  constexpr T lowest = std::numeric_limits<T>::lowest();
  // Largest blocks first (under causal masking the last query rows see the most keys), so the
  // dynamic schedule ends on small items.
  const int64_t qb = q_blocks - 1 - item % q_blocks;
  const int64_t bk = item / q_blocks;
  const int64_t hk = bk % p.hkv, b = bk / p.hkv;
  const int64_t i0 = qb * rows_per_head, rows = min64(rows_per_head, p.lq - i0);
  const int64_t cols = rows * group, cols_pad = round_up(cols, NRb);
  const int64_t d = p.d, dv = p.dv;

  T* qt = scratch;
  T* st = scratch + off_st;
  T* ot = scratch + off_ot;
  T* m = scratch + off_m;
  T* l = scratch + off_l;
  T* kw = scratch + off_kw;
  T* vw = scratch + off_vw;
  T* zero_row = scratch + off_zero;
  const T** krows = reinterpret_cast<const T**>(scratch + scratch_elems);
  const T** vrows = krows + BN;

  // Q^T: column c is query row i0 + c % rows of head hk * group + c / rows, scaled, in base 2:
  // scores are s * log2(e), so the softmax exponentiates with 2^x.
  const T scale = T(p.scale * kLog2e);
  const E* q_base = static_cast<const E*>(p.q) + p.q_batch_offset[b];
  for (int64_t c = 0; c < cols; ++c) {
    const E* qrow = q_base + (hk * group + c / rows) * p.q_head_stride + (i0 + c % rows) * p.q_row_stride;
    for (int64_t x = 0; x < d; ++x) qt[x * cols_pad + c] = to_compute(qrow[x]) * scale;
  }
  for (int64_t x = 0; x < d; ++x)
    for (int64_t c = cols; c < cols_pad; ++c) qt[x * cols_pad + c] = T(0);
  for (int64_t i = 0; i < dv * cols_pad; ++i) ot[i] = T(0);
  for (int64_t c = 0; c < cols_pad; ++c) m[c] = neg_inf, l[c] = T(0);
  for (int64_t x = 0; x < max64(d, dv) + R; ++x) zero_row[x] = T(0);

  const E* k = static_cast<const E*>(p.k) + p.k_batch_offset[b] + hk * p.k_head_stride;
  const E* v = static_cast<const E*>(p.v) + p.v_batch_offset[b] + hk * p.v_head_stride;

  // Keys this item can see at all: the band of its first and last rows, cut to [0, kv_length).
  const int64_t kv_len = p.kv_lengths ? p.kv_lengths[b] : p.lk;
  const int64_t last_row = i0 + rows - 1;
  const int64_t key_begin = max64(0, i0 + p.diag - p.left);
  const int64_t key_end = min64(kv_len, last_row + p.diag + p.right + 1);

  for (int64_t j0 = key_begin; j0 < key_end; j0 += BN) {
    const int64_t n = min64(BN, key_end - j0), n_pad = round_up(n, R);

    // Row pointers of this tile's keys and values (widened first for float16/bfloat16); rows past
    // the tile end point at zeros so the micro-kernels always run whole register blocks.
    for (int64_t j = 0; j < n; ++j) {
      const E* krow = k + (j0 + j) * p.k_row_stride;
      const E* vrow = v + (j0 + j) * p.v_row_stride;
      if (kWiden) {
        widen_row<V>(krow, kw + j * d, d);
        widen_row<V>(vrow, vw + j * dv, dv);
        krows[j] = kw + j * d;
        vrows[j] = vw + j * dv;
      } else {
        krows[j] = reinterpret_cast<const T*>(krow);
        vrows[j] = reinterpret_cast<const T*>(vrow);
      }
    }
    for (int64_t j = n; j < n_pad; ++j) krows[j] = vrows[j] = zero_row;

    // An Inf or NaN value must not reach queries whose weight for it is exactly 0 (masked).
    V v_check = V::zero();
    for (int64_t j = 0; j < n; ++j) {
      int64_t y = 0;
      for (; y + W <= dv; y += W) v_check = fma(V::load(vrows[j] + y), V::zero(), v_check);
      for (; y < dv; ++y) v_check = fma(V::set1(vrows[j][y]), V::zero(), v_check);
    }
    const bool v_finite = v_check.reduce_add() == T(0);

    // S^T = K Q^T, one column block at a time so its Q^T panel stays in L1.
    for (int64_t c0 = 0; c0 < cols_pad; c0 += NRb)
      for (int64_t j = 0; j < n_pad; j += R)
        score_micro<V, R, NVb>(krows + j, qt + c0, cols_pad, d, st + j * cols_pad + c0, cols_pad);

    // Masks. A masked score becomes -inf by assignment (never by adding), so NaN or Inf in a
    // masked key cannot leak into the row. The band only needs checking on tiles it cuts.
    const bool band_cuts_tile =
        last_row + p.diag - p.left > j0 || i0 + p.diag + p.right < j0 + n - 1;
    if (band_cuts_tile) {
      for (int64_t j = 0; j < n; ++j) {
        // Query rows that see key j0 + j: i in [j0 + j - diag - right, j0 + j - diag + left].
        const int64_t r_lo = max64(0, j0 + j - p.diag - p.right - i0);
        const int64_t r_hi = min64(rows, j0 + j - p.diag + p.left - i0 + 1);
        T* srow = st + j * cols_pad;
        for (int64_t g = 0; g < group; ++g) {
          for (int64_t r = 0; r < min64(r_lo, rows); ++r) srow[g * rows + r] = neg_inf;
          for (int64_t r = max64(r_hi, 0); r < rows; ++r) srow[g * rows + r] = neg_inf;
        }
      }
    }
    if (p.mask_kind != MaskKind::none) {
      for (int64_t c = 0; c < cols; ++c) {
        const int64_t h = hk * group + c / rows, i = i0 + c % rows;
        const int64_t at = p.mask_batch_offset[b] + h * p.mask_head_stride +
                           i * p.mask_row_stride + j0 * p.mask_col_stride;
        if (p.mask_kind == MaskKind::additive) {
          const T* mask = static_cast<const T*>(p.mask) + at;
          for (int64_t j = 0; j < n; ++j) {
            const T add = mask[j * p.mask_col_stride];
            T& s = st[j * cols_pad + c];
            s = add == neg_inf ? neg_inf : s + add * T(kLog2e);
          }
        } else {
          const uint8_t* mask = static_cast<const uint8_t*>(p.mask) + at;
          for (int64_t j = 0; j < n; ++j)
            if (!mask[j * p.mask_col_stride]) st[j * cols_pad + c] = neg_inf;
        }
      }
    }

    // Online softmax, W queries at a time. A query that has seen only masked keys keeps m = -inf
    // and exponentiates against 0 instead, so its weights are exp(-inf) = 0 (no inf - inf = NaN),
    // while NaN scores stay NaN.
    for (int64_t c0 = 0; c0 < cols_pad; c0 += W) {
      V tile_max = V::set1(neg_inf);
      for (int64_t j = 0; j < n; ++j) tile_max = max(tile_max, V::load(st + j * cols_pad + c0));
      const V m_old = V::load(m + c0);
      const V m_new = max(m_old, tile_max);
      const V m_use = select_lt(m_new, V::set1(lowest), V::zero(), m_new);
      V sums[4] = {V::zero(), V::zero(), V::zero(), V::zero()};  // 4 chains: less rounding, more ILP
      for (int64_t j = 0; j < n; ++j) {
        const V e = vexp2(V::load(st + j * cols_pad + c0) - m_use);
        e.store(st + j * cols_pad + c0);
        sums[j & 3] = sums[j & 3] + e;
      }
      const V sum = (sums[0] + sums[1]) + (sums[2] + sums[3]);
      const V alpha = vexp2(m_old - m_use);
      fma(V::load(l + c0), alpha, sum).store(l + c0);
      m_new.store(m + c0);
      for (int64_t y = 0; y < dv; ++y) (V::load(ot + y * cols_pad + c0) * alpha).store(ot + y * cols_pad + c0);
    }

    // O^T += V^T P^T, R value dims by NVb vectors of queries per register block.
    for (int64_t c0 = 0; c0 < cols_pad; c0 += NRb) {
      for (int64_t y0 = 0; y0 < dv; y0 += R) {
        const int r = int(min64(R, dv - y0));
        T* o = ot + y0 * cols_pad + c0;
        if (v_finite)
          AccumulateTail<V, R, NVb, false>::run(r, vrows, y0, st + c0, cols_pad, n, o, cols_pad);
        else
          AccumulateTail<V, R, NVb, true>::run(r, vrows, y0, st + c0, cols_pad, n, o, cols_pad);
      }
    }
  }

  // A query that saw no key (l == 0) outputs exactly 0 with lse -inf; a NaN l keeps it NaN.
  E* out = static_cast<E*>(p.out);
  T* lse = static_cast<T*>(p.lse);
  for (int64_t c = 0; c < cols; ++c) {
    const int64_t h = hk * group + c / rows, i = i0 + c % rows;
    const int64_t row = (b * p.hq + h) * p.lq + i;
    const T lc = l[c];
    const T inv = lc == T(0) ? T(0) : T(1) / lc;
    E* dst = out + row * dv;
    for (int64_t y = 0; y < dv; ++y) from_compute(lc == T(0) ? T(0) : ot[y * cols_pad + c] * inv, dst + y);
    if (lse) lse[row] = lc == T(0) ? neg_inf : m[c] * T(kLn2) + std::log(lc);
  }
}

template <class E>
static void sdpa_typed(const SdpaParams& p) {
  using Plan = SdpaPlan<E>;
  using T = typename Plan::T;
  const Plan plan(p);
  const int64_t items = plan.items();
  if (items == 0) return;
  // Threads only pay off past a few microseconds of work; below that the fork/join costs more.
  const double macs = double(p.batch) * double(p.hq) * double(p.lq) * double(p.lk) *
                      double(p.d + p.dv + 8);
  const bool parallel = p.num_threads > 1 && items > 1 && macs > 1.5e5;
  int failed = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(p.num_threads) if (parallel)
#endif
  {
    T* scratch = static_cast<T*>(scratch_arena.get(plan.scratch_bytes));
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
    for (int64_t item = 0; item < items; ++item) {
      if (scratch) {
        plan.run_item(item, scratch);
      } else {
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
