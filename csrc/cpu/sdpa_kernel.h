// Fused, tiled scaled-dot-product attention for one ISA: written once against the SIMD wrapper
// (VecOf<T>::type) and the tile sizes (Tuning) of the translation unit that includes it, inside that
// unit's own namespace FASTATTN_ISA so no two ISAs' copies can be mixed up by the linker. This file
// deliberately uses no std templates that the linker could merge across translation units.
//
// Layout: scores are computed transposed, keys down and queries across (S^T = K Q^T). Then
//  - K and V rows are read where they lie, as broadcast operands: no per-tile transpose or copy
//    (float16/bfloat16 tiles are widened to float32 once per tile, nothing more);
//  - the query block is packed once per work item (Q^T, scaled by scale * log2 e: the softmax
//    works in base 2), and every softmax statistic (running max m, running sum l, rescale factor)
//    is a vector across queries: no horizontal reductions in the inner loops;
//  - all query heads of a grouped-query group form the columns of one work item, so each K/V tile
//    is read once for the whole group.
// Work item: (batch, kv head, block of query rows), visiting its visible key tiles last to first:
//   run_item_blocked (many queries): S^T = K Q^T and O^T += V^T P^T by register-blocked
//   micro-kernels; masked tiles take the classic online softmax (max, exp2, rescale O), unmasked
//   ones "lazy rescaling" (exp2 against the running max right after scoring, no rescale).
//   run_item_rowwise (a few queries, decode): dot products along the head dim, K/V streamed once.
//   Split-KV: when items are too few for the threads, their key ranges are split into work units
//   whose partial (O, m, l) are merged by log-sum-exp.
//   -> out = O / l, lse = (m + log2 l) ln 2; a query with no visible key gets 0 and -inf.
// Memory beyond inputs and output is one tile-sized scratch arena per thread (plus, under split-KV,
// one partial result per unit); no Lq x Lk buffer.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <new>

#include "cpu/half.h"
#include "cpu/threads.h"
#include "fastattn/sdpa_params.h"

namespace fastattn {
namespace FASTATTN_ISA {

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
static constexpr inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Throws std::bad_alloc (MemoryError in Python) for a buffer of `elems` elements that could never
// be allocated. Sizes are products of array dims, and keys or queries broadcast from one row (stride
// 0) make dims as large as 2^60, where the int64 products would wrap to a small, wrong size.
static inline void check_buffer_elems(double elems) {
  if (!(elems < 0x1p56)) throw std::bad_alloc();
}

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

// Asks for the cache lines of bytes [0, bytes) of row into L1, without waiting for them.
static inline void prefetch_row(const void* row, int64_t bytes) {
#if defined(__GNUC__) || defined(__clang__)
  const char* at = static_cast<const char*>(row);
  for (int64_t x = 0; x < bytes; x += 64) __builtin_prefetch(at + x, 0, 3);
#else
  (void)row;
  (void)bytes;
#endif
}

constexpr double kLog2e = 1.44269504088896340736, kLn2 = 0.69314718055994530942;

// An additive mask entry in the kernels' base 2 (add * log2 e), finite whenever add is: entries
// below -FLT_MAX / log2 e (Hugging Face pads with np.finfo(float32).min) would overflow to -inf
// and hide keys the mask leaves visible, so a row of only such entries would give 0 instead of
// the average of its values (PyTorch's and the float64 reference's answer).
template <class T>
static inline T mask_base2(T add) {
  const T a = add * T(kLog2e);
  constexpr T big = std::numeric_limits<T>::max();
  if (std::isinf(a) && !std::isinf(add)) return a < T(0) ? -big : big;
  return a;
}

template <class E> struct ComputeOf { using type = float; };
template <> struct ComputeOf<double> { using type = double; };

// dst[0:n] = src[0:n] widened to the compute type, W lanes at a time.
template <class V, class E>
static inline void widen_row(const E* src, typename V::T* dst, int64_t n) {
  int64_t x = 0;
  for (; x + V::W <= n; x += V::W) V::load(src + x).store(dst + x);
  for (; x < n; ++x) dst[x] = to_compute(src[x]);
}

// Whether rows[0..n) of dv values are all finite: x * 0 is 0 for a finite x and NaN otherwise.
// Four independent sums of vector loads: one chain of FMAs (or broadcasts) ran at its latency and
// cost more than the P V product it guards.
template <class V>
static inline bool rows_finite(const typename V::T* const* rows, int64_t n, int64_t dv) {
  constexpr int64_t W = V::W;
  const V zero = V::zero();
  V c0 = zero, c1 = zero, c2 = zero, c3 = zero;
  for (int64_t j = 0; j < n; ++j) {
    const typename V::T* row = rows[j];
    int64_t y = 0;
    for (; y + 4 * W <= dv; y += 4 * W) {
      c0 = fma(V::load(row + y), zero, c0);
      c1 = fma(V::load(row + y + W), zero, c1);
      c2 = fma(V::load(row + y + 2 * W), zero, c2);
      c3 = fma(V::load(row + y + 3 * W), zero, c3);
    }
    for (; y + W <= dv; y += W) c0 = fma(V::load(row + y), zero, c0);
    for (; y < dv; ++y) c1 = fma(V::set1(row[y]), zero, c1);
  }
  return ((c0 + c1) + (c2 + c3)).reduce_add() == typename V::T(0);
}

// The tail x0 .. n of dot(a, b), one element at a time (the first x0 went W lanes at a time).
template <class V>
static inline typename V::T dot_tail(const typename V::T* a, const typename V::T* b, int64_t x0,
                                     int64_t n) {
  typename V::T s = 0;
  for (int64_t x = x0; x < n; ++x) s += a[x] * b[x];
  return s;
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

// O^T[R x NV*W] += V^T[R value dims x n keys] . P^T[n x NV*W]; V row j starts at v + j * vstride.
// The tile's sum starts from zero and is added to O once: summing in two levels (keys within a
// tile, then tiles) keeps the rounding error of long rows near that of a blocked GEMM.
// With kSafe, a weight that is exactly 0 contributes exactly 0 even against an Inf/NaN value.
// The rows are walked by a stride, not through row pointers: a pointer load and an add fewer per
// key, in a loop whose 24 FMAs per key come with only about 15 other instructions on AVX-512.
template <class V, int R, int NV, bool kSafe>
static inline void accumulate_micro(const typename V::T* v, int64_t vstride, int64_t y0,
                                    const typename V::T* pt, int64_t ldp, int64_t n,
                                    typename V::T* ot, int64_t ldo) {
  constexpr int W = V::W;
  V acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NV; ++c) acc[r][c] = V::zero();
  const auto key = [&](int64_t j, const typename V::T* vrow) {
    V b[NV];
    for (int c = 0; c < NV; ++c) b[c] = V::load(pt + j * ldp + c * W);
    for (int r = 0; r < R; ++r) {
      const V a = V::set1(vrow[r]);
      for (int c = 0; c < NV; ++c) {
        if (kSafe)
          acc[r][c] = acc[r][c] + select_eq(b[c], V::zero(), V::zero(), a * b[c]);
        else
          acc[r][c] = fma(a, b[c], acc[r][c]);
      }
    }
  };
  // Tuning::pv_unroll keys per pass (AVX-512: 2): the loop's own instructions are shared by twice
  // the FMAs, 3-5% on the AVX-512 prefill shapes; with AVX2's 16 registers it spilled (5-13% slower).
  constexpr int U = Tuning::pv_unroll;
  const typename V::T* vrow = v + y0;
  int64_t j = 0;
  for (; j + U <= n; j += U, vrow += U * vstride)
    for (int u = 0; u < U; ++u) key(j + u, vrow + u * vstride);
  for (; j < n; ++j, vrow += vstride) key(j, vrow);
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NV; ++c) (acc[r][c] + V::load(ot + r * ldo + c * W)).store(ot + r * ldo + c * W);
}

// Weights of an R x NV block of fresh scores (base 2) against a running max m that is finite but
// may be stale: each score s becomes 2^(s - m), and the block's max and sum per query are folded
// into tmax and tsum. Rows from `valid` on are padding keys and get weight 0. Run right after the
// block was scored, while it is in L1.
template <class V, int R, int NV>
static inline void exp_block(typename V::T* s, int64_t lds, const typename V::T* m,
                             typename V::T* tmax, typename V::T* tsum, int64_t valid) {
  constexpr int W = V::W;
  for (int c = 0; c < NV; ++c) {
    const V mc = V::load(m + c * W);
    V bmax = V::load(tmax + c * W), bsum = V::zero();
    for (int r = 0; r < R; ++r) {
      typename V::T* at = s + r * lds + c * W;
      if (r < valid) {
        const V x = V::load(at);
        bmax = max(bmax, x);
        const V e = vexp2_softmax(x - mc);
        e.store(at);
        bsum = bsum + e;
      } else {
        V::zero().store(at);
      }
    }
    bmax.store(tmax + c * W);
    (V::load(tsum + c * W) + bsum).store(tsum + c * W);
  }
}

// accumulate_micro for the last `rows` (< R) value dims: picks the instantiation at run time.
template <class V, int R, int NV, bool kSafe>
struct AccumulateTail {
  static void run(int rows, const typename V::T* v, int64_t vstride, int64_t y0,
                  const typename V::T* pt, int64_t ldp, int64_t n, typename V::T* ot,
                  int64_t ldo) {
    if (rows == R)
      accumulate_micro<V, R, NV, kSafe>(v, vstride, y0, pt, ldp, n, ot, ldo);
    else
      AccumulateTail<V, R - 1, NV, kSafe>::run(rows, v, vstride, y0, pt, ldp, n, ot, ldo);
  }
};
template <class V, int NV, bool kSafe>
struct AccumulateTail<V, 0, NV, kSafe> {
  static void run(int, const typename V::T*, int64_t, int64_t, const typename V::T*, int64_t,
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
  // items with at most one vector of queries. Items with at most W/2 queries (decode) use the
  // row-wise path instead, vectorised along the head dim.
  static constexpr int MR = Tuning::micro_rows, NV = Tuning::micro_vecs;
  static constexpr int MRn = Tuning::narrow_rows;
  static constexpr int64_t NR = int64_t(NV) * W;
  // Keys per tile: BN, or BNs on the blocked path when a key's K and V rows take at most
  // kShortRowBytes in the compute type (head dims up to 64 in float32, which float16 and bfloat16
  // are widened to; up to 32 in float64): a tile's K and V then take about the bytes of BN keys of
  // float32 head dim 128, and each micro-kernel call runs over more keys (kernels_avx2.cpp and
  // kernels_avx512.cpp give their measurements); the row-wise (decode) path keeps BN.
  static constexpr int64_t BN = round_up(round_up(Tuning::block_n, MR), MRn);
  static constexpr int64_t BNs = round_up(round_up(Tuning::block_n_short, MR), MRn);
  static constexpr int64_t kShortRowBytes = 512;
  static constexpr int MRmax = MR > MRn ? MR : MRn;
  static constexpr int64_t kRowwiseMaxCols = W / 2;
  static_assert(BN % MR == 0 && BN % MRn == 0 && BN % W == 0 && BNs % MR == 0 && BNs % MRn == 0 &&
                    BNs % W == 0,
                "a key tile must hold whole register blocks");

  const SdpaParams& p;
  int64_t group;          // query heads per kv head
  int64_t rows_per_head;  // query rows of one head in a work item
  int64_t q_blocks;
  int64_t bn;             // keys per tile on the blocked path (BN or BNs)
  int64_t tile_cap;       // rows of the scratch tiles: the larger of bn and the row-wise path's BN
  int64_t cols_cap;       // columns (queries) per item, padded to whole register blocks
  // Scratch layout (elements of T): Q, S^T, O, m, l, alpha (also a tile's max on the lazy path),
  // a tile's sum of weights (lazy path), a tile's output rows (row-wise path),
  // widened K and V tiles, a zero row, the query rows before their projection (with q_proj),
  // then the key and value row pointers.
  int64_t off_st, off_o, off_m, off_l, off_alpha, off_tsum, off_acc, off_kw, off_vw, off_zero,
      off_xq, scratch_elems;
  size_t scratch_bytes;

  explicit SdpaPlan(const SdpaParams& params) : p(params) {
    group = p.hkv > 0 ? p.hq / p.hkv : 1;
    // About cols_target queries per item: enough to amortise each K/V tile over many queries,
    // few enough that Q, S^T and O stay in L2.
    rows_per_head = max64(1, min64(p.lq, Tuning::cols_target / group));
    q_blocks = p.lq > 0 ? (p.lq + rows_per_head - 1) / rows_per_head : 0;
    cols_cap = round_up(rows_per_head * group, NR);
    const int64_t width = max64(p.d, p.dv);
    bn = (p.d + p.dv) * int64_t(sizeof(T)) <= kShortRowBytes ? BNs : BN;
    tile_cap = max64(bn, BN);
    off_st = p.d * cols_cap;
    off_o = off_st + tile_cap * cols_cap;
    off_m = off_o + p.dv * cols_cap;
    off_l = off_m + cols_cap;
    off_alpha = off_l + cols_cap;
    off_tsum = off_alpha + cols_cap;
    off_acc = off_tsum + cols_cap;
    off_kw = off_acc + kRowwiseMaxCols * p.dv;
    off_vw = off_kw + (kWiden ? tile_cap * p.d : 0);
    off_zero = off_vw + (kWiden ? tile_cap * p.dv : 0);
    off_xq = round_up(off_zero + width + MRmax, 8);
    scratch_elems = round_up(off_xq + (p.q_proj ? p.dq * cols_cap : 0), 8);
    scratch_bytes = size_t(scratch_elems) * sizeof(T) + 2 * size_t(tile_cap) * sizeof(const T*);
  }

  int64_t items() const { return p.batch * p.hkv * q_blocks; }

  // Split-KV: with fewer items than threads (decoding with few kv heads), each item's keys are
  // split into `splits` chunks of whole tiles, computed as separate work units, and the units'
  // partial results (unnormalised O, m, l per query) merged with the log-sum-exp rule.
  int64_t splits = 1;
  T* partials = nullptr;  // splits > 1: per (item, split), O (cols x dv, by rows), then m, then l
  int64_t partial_elems() const { return cols_cap * (p.dv + 2); }
  int64_t units() const { return items() * splits; }

  // One work item: its queries (columns: query row i0 + c % rows of head hk * group + c / rows),
  // the keys it can see at all, and its slices of scratch.
  struct Item {
    int64_t b, hk, i0, rows, cols, cols_pad, key_begin, key_end;
    const E* k;
    const E* v;
    T *q, *st, *o, *m, *l, *alpha, *tsum, *acc, *kw, *vw, *zero_row;
    const T** krows;
    const T** vrows;
    const T* v0;  // the tile's value row j is v0 + j * v_stride (vrows[j] for j < n)
    int64_t v_stride;
  };

  Item locate(int64_t item, T* scratch, int64_t col_multiple) const {
    Item it;
    // Largest blocks first (under causal masking the last query rows see the most keys), so the
    // dynamic schedule ends on small items.
    const int64_t qb = q_blocks - 1 - item % q_blocks;
    const int64_t bk = item / q_blocks;
    it.hk = bk % p.hkv;
    it.b = bk / p.hkv;
    it.i0 = qb * rows_per_head;
    it.rows = min64(rows_per_head, p.lq - it.i0);
    it.cols = it.rows * group;
    it.cols_pad = round_up(it.cols, col_multiple);
    // The band of the first and last rows, cut to [0, kv_length).
    const int64_t kv_len = p.kv_lengths ? p.kv_lengths[it.b] : p.lk;
    it.key_begin = max64(0, it.i0 + p.diag - p.left);
    it.key_end = min64(kv_len, it.i0 + it.rows - 1 + p.diag + p.right + 1);
    it.k = static_cast<const E*>(p.k) + p.k_batch_offset[it.b] + it.hk * p.k_head_stride;
    it.v = static_cast<const E*>(p.v) + p.v_batch_offset[it.b] + it.hk * p.v_head_stride;
    it.q = scratch;
    it.st = scratch + off_st;
    it.o = scratch + off_o;
    it.m = scratch + off_m;
    it.l = scratch + off_l;
    it.alpha = scratch + off_alpha;
    it.tsum = scratch + off_tsum;
    it.acc = scratch + off_acc;
    it.kw = scratch + off_kw;
    it.vw = scratch + off_vw;
    it.zero_row = scratch + off_zero;
    it.krows = reinterpret_cast<const T**>(scratch + scratch_elems);
    it.vrows = it.krows + tile_cap;
    for (int64_t c = 0; c < it.cols_pad; ++c) it.m[c] = -std::numeric_limits<T>::infinity();
    for (int64_t c = 0; c < it.cols_pad; ++c) it.l[c] = T(0);
    for (int64_t x = 0; x < max64(p.d, p.dv) + MRmax; ++x) it.zero_row[x] = T(0);
    return it;
  }

  const E* query_row(const Item& it, int64_t c) const {
    return static_cast<const E*>(p.q) + p.q_batch_offset[it.b] +
           (it.hk * group + c / it.rows) * p.q_head_stride + (it.i0 + c % it.rows) * p.q_row_stride;
  }

  // Scores are s * log2(e) (the softmax exponentiates with 2^x), so the scale takes log2(e).
  T query_scale() const { return T(p.scale * kLog2e); }

  // dst[x][c] = scale * q_c[x] (x < width) for the item's queries, W queries by W dims at a time
  // through a register transpose (one by one at the ragged edges); padding columns are 0. Done
  // one element at a time, this and finish's unpacking took about 4% of a (4,8,8,512,512,64)
  // prefill.
  void pack_rows(const Item& it, int64_t width, T scale, T* dst) const {
    const int64_t ld = it.cols_pad, whole = width / W * W;
    const V vscale = V::set1(scale);
    int64_t c0 = 0;
    for (; c0 + W <= it.cols; c0 += W) {
      const E* rows[W];
      for (int k = 0; k < W; ++k) rows[k] = query_row(it, c0 + k);
      for (int64_t x0 = 0; x0 < whole; x0 += W) {
        V block[W];
        for (int k = 0; k < W; ++k) block[k] = V::load(rows[k] + x0) * vscale;
        transpose(block);
        for (int k = 0; k < W; ++k) block[k].store(dst + (x0 + k) * ld + c0);
      }
      for (int64_t x = whole; x < width; ++x)
        for (int k = 0; k < W; ++k) dst[x * ld + c0 + k] = to_compute(rows[k][x]) * scale;
    }
    for (int64_t c = c0; c < it.cols; ++c) {
      const E* qrow = query_row(it, c);
      for (int64_t x = 0; x < width; ++x) dst[x * ld + c] = to_compute(qrow[x]) * scale;
    }
    for (int64_t x = 0; x < width; ++x)
      for (int64_t c = it.cols; c < ld; ++c) dst[x * ld + c] = T(0);
  }

  // Q^T for the blocked path (column blocks of NRb queries). With a query projection, the rows
  // go to X^T first and Q^T = scale * (W X^T + b) is computed by the score micro-kernel, W's
  // rows as its keys, while X^T is in cache: the same arithmetic as the linear kernel's, without
  // a separate pass (and parallel region) over all queries before the attention.
  template <int R, int NVb>
  void pack_queries(const Item& it, T* scratch) const {
    if (!p.q_proj) return pack_rows(it, p.d, query_scale(), it.q);
    constexpr int64_t NRb = int64_t(NVb) * W;
    const int64_t d = p.d, dq = p.dq, ld = it.cols_pad;
    T* xt = scratch + off_xq;
    pack_rows(it, dq, T(1), xt);
    const T* w = static_cast<const T*>(p.q_proj);
    for (int64_t e0 = 0; e0 < d; e0 += R) {
      const int64_t rows = min64(R, d - e0);
      const T* wrows[R];
      for (int r = 0; r < R; ++r) wrows[r] = w + (e0 + min64(r, rows - 1)) * dq;  // repeats: discarded
      for (int64_t c0 = 0; c0 < ld; c0 += NRb) {
        if (rows == R) {
          score_micro<V, R, NVb>(wrows, xt + c0, ld, dq, it.q + e0 * ld + c0, ld);
        } else {
          T part[R * NRb];
          score_micro<V, R, NVb>(wrows, xt + c0, ld, dq, part, NRb);
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t c = 0; c < NRb; ++c) it.q[(e0 + r) * ld + c0 + c] = part[r * NRb + c];
        }
      }
    }
    const T* b = static_cast<const T*>(p.q_proj_bias);
    const V scale = V::set1(query_scale());
    for (int64_t e = 0; e < d; ++e) {
      T* row = it.q + e * ld;
      const V be = V::set1(b ? b[e] : T(0));
      for (int64_t c0 = 0; c0 < ld; c0 += W)
        ((b ? V::load(row + c0) + be : V::load(row + c0)) * scale).store(row + c0);
      for (int64_t c = it.cols; c < ld; ++c) row[c] = T(0);  // padding queries (X^T's are 0, b not)
    }
  }

  // The row-wise path's query c: scale * q_c, or scale * (W q_c + b) with a query projection.
  void load_query_row(const Item& it, int64_t c, T* dst, T* scratch) const {
    const E* qrow = query_row(it, c);
    const T scale = query_scale();
    if (!p.q_proj) {
      for (int64_t x = 0; x < p.d; ++x) dst[x] = to_compute(qrow[x]) * scale;
      return;
    }
    const int64_t dq = p.dq, dq_vec = dq / W * W;
    T* x = scratch + off_xq;
    for (int64_t a = 0; a < dq; ++a) x[a] = to_compute(qrow[a]);
    const T* w = static_cast<const T*>(p.q_proj);
    const T* b = static_cast<const T*>(p.q_proj_bias);
    for (int64_t e = 0; e < p.d; ++e) {
      const T* we = w + e * dq;
      V acc = V::zero();
      for (int64_t a = 0; a < dq_vec; a += W) acc = fma(V::load(we + a), V::load(x + a), acc);
      const T sum = acc.reduce_add() + dot_tail<V>(we, x, dq_vec, dq);
      dst[e] = (b ? sum + b[e] : sum) * scale;
    }
  }

  // Row pointers of keys and values j0 .. j0+n (widened first for float16/bfloat16); rows up to
  // n_pad point at zeros so micro-kernels always run whole register blocks. Returns whether the
  // values are all finite (true without check_values): if not, a weight that is exactly 0 (masked)
  // must skip its value.
  bool gather_tile(Item& it, int64_t j0, int64_t n, int64_t n_pad, bool check_values = true) const {
    const int64_t d = p.d, dv = p.dv;
    for (int64_t j = 0; j < n; ++j) {
      const E* krow = it.k + (j0 + j) * p.k_row_stride;
      const E* vrow = it.v + (j0 + j) * p.v_row_stride;
      if (kWiden) {
        widen_row<V>(krow, it.kw + j * d, d);
        widen_row<V>(vrow, it.vw + j * dv, dv);
        it.krows[j] = it.kw + j * d;
        it.vrows[j] = it.vw + j * dv;
      } else {
        it.krows[j] = reinterpret_cast<const T*>(krow);
        it.vrows[j] = reinterpret_cast<const T*>(vrow);
      }
    }
    for (int64_t j = n; j < n_pad; ++j) it.krows[j] = it.vrows[j] = it.zero_row;
    it.v0 = kWiden ? it.vw : reinterpret_cast<const T*>(it.v + j0 * p.v_row_stride);
    it.v_stride = kWiden ? dv : p.v_row_stride;
    return !check_values || rows_finite<V>(it.vrows, n, dv);
  }

  // Whether the band (causal, window) hides some key j0 .. j0+n-1 from some query of the item.
  bool band_cuts(const Item& it, int64_t j0, int64_t n) const {
    return it.i0 + it.rows - 1 + p.diag - p.left > j0 || it.i0 + p.diag + p.right < j0 + n - 1;
  }

  // The keys j0 + [lo, hi) of a tile of n that the band lets some query of columns [c0, c1) see
  // (lo == hi when none); every other key of the tile is masked for all of those queries. Padding
  // columns (past it.cols) count as seeing every key: they are never skipped.
  void band_keys(const Item& it, int64_t j0, int64_t n, int64_t c0, int64_t c1, int64_t& lo,
                 int64_t& hi) const {
    lo = n;
    hi = 0;
    for (int64_t c = c0; c < c1; ++c) {
      if (c >= it.cols) {
        lo = 0;
        hi = n;
        return;
      }
      const int64_t i = it.i0 + c % it.rows;
      lo = min64(lo, max64(0, i + p.diag - p.left - j0));
      hi = max64(hi, min64(n, i + p.diag + p.right - j0 + 1));
    }
    if (lo >= hi) lo = hi = 0;
  }

  // Masks on S^T (row j = key j0 + j, column c). A masked score becomes -inf by assignment (never
  // by adding), so NaN or Inf in a masked key cannot leak into the row. The attn_mask goes first
  // and the band (causal, window) last, so a NaN or +Inf mask entry at a key the band hides cannot
  // turn its -inf into NaN. The band only needs checking on tiles it cuts.
  void apply_masks(const Item& it, int64_t j0, int64_t n) const {
    constexpr T neg_inf = -std::numeric_limits<T>::infinity();
    const int64_t ld = it.cols_pad, rows = it.rows;
    T* st = it.st;
    if (p.mask_kind != MaskKind::none) {
      for (int64_t c = 0; c < it.cols; ++c) {
        const int64_t h = it.hk * group + c / rows, i = it.i0 + c % rows;
        const int64_t at = p.mask_batch_offset[it.b] + h * p.mask_head_stride +
                           i * p.mask_row_stride + j0 * p.mask_col_stride;
        if (p.mask_kind == MaskKind::additive) {
          const T* mask = static_cast<const T*>(p.mask) + at;
          for (int64_t j = 0; j < n; ++j) {
            const T add = mask[j * p.mask_col_stride];
            T& s = st[j * ld + c];
            s = add == neg_inf ? neg_inf : s + mask_base2(add);
          }
        } else {
          const uint8_t* mask = static_cast<const uint8_t*>(p.mask) + at;
          for (int64_t j = 0; j < n; ++j)
            if (!mask[j * p.mask_col_stride]) st[j * ld + c] = neg_inf;
        }
      }
    }
    if (band_cuts(it, j0, n)) {
      for (int64_t j = 0; j < n; ++j) {
        // Query rows that see key j0 + j: i in [j0 + j - diag - right, j0 + j - diag + left].
        const int64_t r_lo = max64(0, j0 + j - p.diag - p.right - it.i0);
        const int64_t r_hi = min64(rows, j0 + j - p.diag + p.left - it.i0 + 1);
        T* srow = st + j * ld;
        for (int64_t g = 0; g < group; ++g) {
          for (int64_t r = 0; r < min64(r_lo, rows); ++r) srow[g * rows + r] = neg_inf;
          for (int64_t r = max64(r_hi, 0); r < rows; ++r) srow[g * rows + r] = neg_inf;
        }
      }
    }
  }

  // Online softmax over a tile of S^T, W queries at a time: scores become weights 2^(s - m), and
  // m, l and alpha (the factor the output accumulated so far must be rescaled by) are updated. A
  // query that has seen only masked keys keeps m = -inf and exponentiates against 0 instead, so
  // its weights are 2^-inf = 0 (no inf - inf = NaN), while NaN scores stay NaN.
  void softmax_tile(const Item& it, int64_t n) const {
    constexpr T neg_inf = -std::numeric_limits<T>::infinity();
    const int64_t ld = it.cols_pad;
    for (int64_t c0 = 0; c0 < it.cols_pad; c0 += W) {
      T* s = it.st + c0;
      V tile_max = V::set1(neg_inf);
      for (int64_t j = 0; j < n; ++j) tile_max = max(tile_max, V::load(s + j * ld));
      const V m_old = V::load(it.m + c0);
      const V m_new = max(m_old, tile_max);
      const V m_use = select_lt(m_new, V::set1(std::numeric_limits<T>::lowest()), V::zero(), m_new);
      V sums[4] = {V::zero(), V::zero(), V::zero(), V::zero()};  // 4 chains: less rounding, more ILP
      for (int64_t j = 0; j < n; ++j) {
        const V e = vexp2_softmax(V::load(s + j * ld) - m_use);
        e.store(s + j * ld);
        sums[j & 3] = sums[j & 3] + e;
      }
      const V alpha = vexp2(m_old - m_use);
      fma(V::load(it.l + c0), alpha, (sums[0] + sums[1]) + (sums[2] + sums[3])).store(it.l + c0);
      m_new.store(it.m + c0);
      alpha.store(it.alpha + c0);
    }
  }

  // out = O / l per query, exactly 0 with lse -inf where l == 0 (no key seen); a NaN l stays NaN.
  // O element (c, y) is at o[c * o_col + y * o_dim].
  void finish(const Item& it, int64_t o_col, int64_t o_dim) const {
    constexpr T neg_inf = -std::numeric_limits<T>::infinity();
    int64_t c0 = 0;
    if constexpr (!kWiden)
      if (o_col == 1) c0 = finish_blocks(it, o_dim);
    for (int64_t c = c0; c < it.cols; ++c) finish_dims(it, c, 0, o_col, o_dim, output_row(it, c));
    if (T* lse = static_cast<T*>(p.lse))
      for (int64_t c = 0; c < it.cols; ++c) {
        const T lc = it.l[c];
        lse[output_index(it, c)] = lc == T(0) ? neg_inf : it.m[c] * T(kLn2) + std::log(lc);
      }
  }

  // finish for O stored as O^T (the blocked path, o_col == 1): W queries by W value dims at a time
  // through a register transpose, the value dims past the last whole vector one by one. Returns
  // the first query column left for finish_dims.
  int64_t finish_blocks(const Item& it, int64_t o_dim) const {
    const int64_t dv_whole = p.dv / W * W;
    int64_t c0 = 0;
    for (; c0 + W <= it.cols; c0 += W) {
      E* dst[W];
      V inv[W];
      bool seen[W];  // l != 0: some key had weight (else the row is exactly 0)
      for (int k = 0; k < W; ++k) {
        dst[k] = output_row(it, c0 + k);
        seen[k] = it.l[c0 + k] != T(0);
        inv[k] = V::set1(seen[k] ? T(1) / it.l[c0 + k] : T(0));
      }
      for (int64_t y0 = 0; y0 < dv_whole; y0 += W) {
        V block[W];
        for (int k = 0; k < W; ++k) block[k] = V::load(it.o + (y0 + k) * o_dim + c0);
        transpose(block);
        for (int k = 0; k < W; ++k) (seen[k] ? block[k] * inv[k] : V::zero()).store(dst[k] + y0);
      }
      for (int k = 0; k < W; ++k) finish_dims(it, c0 + k, dv_whole, 1, o_dim, dst[k]);
    }
    return c0;
  }

  // Query column c's row of the output (and of lse): (batch, query head, query).
  int64_t output_index(const Item& it, int64_t c) const {
    const int64_t h = it.hk * group + c / it.rows, i = it.i0 + c % it.rows;
    return (it.b * p.hq + h) * p.lq + i;
  }
  E* output_row(const Item& it, int64_t c) const {
    return static_cast<E*>(p.out) + output_index(it, c) * p.dv;
  }

  // finish for column c's value dims y0 .. dv, one at a time.
  void finish_dims(const Item& it, int64_t c, int64_t y0, int64_t o_col, int64_t o_dim, E* dst) const {
    const T lc = it.l[c];
    const T inv = lc == T(0) ? T(0) : T(1) / lc;
    const T* o = it.o + c * o_col;
    for (int64_t y = y0; y < p.dv; ++y) from_compute(lc == T(0) ? T(0) : o[y * o_dim] * inv, dst + y);
  }

  // A lazy tile (S^T rows [0, rows), weights 2^(s - m), its max per query in alpha, its sums in
  // tsum) where some query's max exceeds m + headroom: that query takes the tile's max as its new
  // m, and its weights, tile sum, l and O are multiplied by alpha = 2^(m_old - m_new), as the
  // classic path rescales O. Weights up to 2^kLazyReach are finite, so nothing is lost, and
  // re-scoring the tile (half its FMAs) is avoided: peaked rows (unscaled dot products, trained
  // models' logits) raise their max often. Queries within the headroom keep m (alpha = 1 exactly).
  void rescale_lazy_tile(const Item& it, int64_t rows, T headroom) const {
    const int64_t ld = it.cols_pad;
    for (int64_t c0 = 0; c0 < ld; c0 += W) {
      const V m_old = V::load(it.m + c0), tile_max = V::load(it.alpha + c0);
      const V m_new = select_lt(m_old + V::set1(headroom), tile_max, tile_max, m_old);
      const V alpha = vexp2(m_old - m_new);
      m_new.store(it.m + c0);
      (V::load(it.l + c0) * alpha).store(it.l + c0);
      (V::load(it.tsum + c0) * alpha).store(it.tsum + c0);
      for (int64_t j = 0; j < rows; ++j) (V::load(it.st + j * ld + c0) * alpha).store(it.st + j * ld + c0);
      for (int64_t y = 0; y < p.dv; ++y) (V::load(it.o + y * ld + c0) * alpha).store(it.o + y * ld + c0);
    }
  }

  // The key range of split s of an item: whole tiles of `tile` keys (the path's), in order (empty
  // for splits past the end).
  void narrow_to_split(Item& it, int64_t s, int64_t tile) const {
    if (splits == 1) return;
    const int64_t range = max64(0, it.key_end - it.key_begin);
    const int64_t chunk = round_up((range + splits - 1) / splits, tile);
    it.key_begin = min64(it.key_end, it.key_begin + s * chunk);
    it.key_end = min64(it.key_end, it.key_begin + chunk);
  }

  // The end of a work unit: the item's output, or (split-KV) its partial result. O element (c, y)
  // is at o[c * o_col + y * o_dim].
  void complete(const Item& it, int64_t item, int64_t s, int64_t o_col, int64_t o_dim) const {
    if (splits == 1) return finish(it, o_col, o_dim);
    T* o = partials + (item * splits + s) * partial_elems();
    T* m = o + cols_cap * p.dv;
    T* l = m + cols_cap;
    for (int64_t c = 0; c < it.cols; ++c) {
      for (int64_t y = 0; y < p.dv; ++y) o[c * p.dv + y] = it.o[c * o_col + y * o_dim];
      m[c] = it.m[c];
      l[c] = it.l[c];
    }
  }

  // Split-KV: the item's output from its splits' partials. Each split's sums are rescaled from its
  // own max to the largest; a split that saw no key (m = -inf) adds nothing, a NaN max keeps NaN.
  void merge(int64_t item, T* scratch) const {
    constexpr T neg_inf = -std::numeric_limits<T>::infinity();
    Item it = locate(item, scratch, W);
    const int64_t dv = p.dv;
    for (int64_t c = 0; c < it.cols; ++c) {
      T m_max = neg_inf;
      bool nan = false;
      for (int64_t s = 0; s < splits; ++s) {
        const T m = partials[(item * splits + s) * partial_elems() + cols_cap * dv + c];
        nan = nan || m != m;
        if (m > m_max) m_max = m;
      }
      T* o = it.o + c * dv;
      for (int64_t y = 0; y < dv; ++y) o[y] = T(0);
      T l = T(0);
      if (m_max != neg_inf) {
        for (int64_t s = 0; s < splits; ++s) {
          const T* slot = partials + (item * splits + s) * partial_elems();
          const T w = std::exp2(slot[cols_cap * dv + c] - m_max);
          if (w == T(0)) continue;  // the split's values all have weight 0: skipped
          l += w * slot[cols_cap * (dv + 1) + c];
          for (int64_t y = 0; y < dv; ++y) o[y] += w * slot[c * dv + y];
        }
      }
      it.m[c] = m_max;
      it.l[c] = nan ? std::numeric_limits<T>::quiet_NaN() : l;
    }
    finish(it, dv, 1);
  }

  void run_unit(int64_t unit, T* scratch) const {
    const int64_t item = unit / splits, s = unit % splits;
    const int64_t qb = q_blocks - 1 - item % q_blocks;
    const int64_t cols = min64(rows_per_head, p.lq - qb * rows_per_head) * group;
    if (cols <= kRowwiseMaxCols)
      run_item_rowwise(item, s, scratch);
    else if (cols <= W)
      run_item_blocked<MRn, 1>(item, s, scratch);
    else if (NV == 3 && round_up(cols, 2 * W) < round_up(cols, NR))
      // Blocks of 2 vectors where 3 would pad more (a last block of 32 queries: 32 instead of
      // 48 columns): (4,8,8,512,512,64) gains 2-3% on AVX2.
      run_item_blocked<MR, 2>(item, s, scratch);
    else
      run_item_blocked<MR, NV>(item, s, scratch);
  }

  template <int R, int NVb>
  void run_item_blocked(int64_t item, int64_t s, T* scratch) const;
  void run_item_rowwise(int64_t item, int64_t s, T* scratch) const;
  void accumulate_rowwise(const Item& it, int64_t n, bool careful) const;
  template <int CB>
  void accumulate_rowwise_blocks(const Item& it, int64_t n) const;
  void scores_rowwise(const Item& it, int64_t j0, int64_t n) const;
  template <int CB>
  void scores_rowwise_blocks(const Item& it, int64_t j0, int64_t n) const;
};

// Many queries: S^T = K Q^T and O^T += V^T P^T with register blocks of R keys (or value dims) by
// NVb vectors of queries. Q is stored transposed (Q^T[x][c]) and O as O^T[y][c].
template <class E>
template <int R, int NVb>
void SdpaPlan<E>::run_item_blocked(int64_t item, int64_t s, T* scratch) const {
  constexpr int64_t NRb = int64_t(NVb) * W;
  Item it = locate(item, scratch, NRb);
  narrow_to_split(it, s, bn);
  const int64_t d = p.d, dv = p.dv, ld = it.cols_pad;
  pack_queries<R, NVb>(it, scratch);
  for (int64_t i = 0; i < dv * ld; ++i) it.o[i] = T(0);

  // Lazy rescaling: once every query has a finite running max m, an unmasked tile is exponentiated
  // against that m block by block, right after scoring (no max pass, no rescale of O: softmax is
  // shift-invariant, and lse = m + log l stays consistent). No weight may stay above
  // 2^kLazyHeadroom, so sums cannot overflow: a tile whose max exceeds some query's m by more
  // than that, but by at most kLazyReach, is rescaled (rescale_lazy_tile); a larger jump is redone
  // the classic way with a fresh max.
  // Tiles are visited last to first: under causal masking the first one visited is then the
  // diagonal tile, which needs the classic path for its mask anyway and sets m for all the rest.
  // kLazyReach: weights below 2^120 and a tile's sum of at most 128 of them stay finite in
  // float32, and the exp2 without its clamp is exact up to 2^127.
  constexpr T kLazyHeadroom = T(8), kLazyReach = T(120);
  static_assert(BN <= 128 && BNs <= 128,
                "a lazy tile's sum of weights below 2^120 must stay below 2^127");
  bool m_ready = false;
  const int64_t tiles = max64(0, it.key_end - it.key_begin + bn - 1) / bn;
  for (int64_t t = tiles - 1; t >= 0; --t) {
    const int64_t j0 = it.key_begin + t * bn;
    const int64_t n = min64(bn, it.key_end - j0), n_pad = round_up(n, R);
    const bool v_finite = gather_tile(it, j0, n, n_pad);
    bool lazy = m_ready && p.mask_kind == MaskKind::none && !band_cuts(it, j0, n);
    if (lazy) {
      T* tmax = it.alpha;
      for (int64_t c = 0; c < ld; ++c) tmax[c] = -std::numeric_limits<T>::infinity(), it.tsum[c] = T(0);
      for (int64_t c0 = 0; c0 < ld; c0 += NRb)
        for (int64_t j = 0; j < n_pad; j += R) {
          score_micro<V, R, NVb>(it.krows + j, it.q + c0, ld, d, it.st + j * ld + c0, ld);
          exp_block<V, R, NVb>(it.st + j * ld + c0, ld, it.m + c0, tmax + c0, it.tsum + c0, n - j);
        }
      bool rescale = false;
      for (int64_t c = 0; c < ld && lazy; ++c) {
        lazy = !(tmax[c] > it.m[c] + kLazyReach);
        rescale = rescale || tmax[c] > it.m[c] + kLazyHeadroom;
      }
      if (lazy && rescale) rescale_lazy_tile(it, n_pad, kLazyHeadroom);
      if (lazy)
        for (int64_t c = 0; c < ld; ++c) it.l[c] += it.tsum[c];
    }
    // On a tile the band cuts (the diagonal tiles of causal masking), a column block's queries
    // may see only part of it: register blocks outside that part are not scored (apply_masks
    // writes -inf there) and the sums skip those keys (weights exactly 0). The causal prefill
    // shapes otherwise spend about 5% of their time on fully masked blocks.
    const bool cut = band_cuts(it, j0, n);
    if (!lazy) {
      // S^T = K Q^T, one column block at a time so its Q^T panel stays in L1.
      for (int64_t c0 = 0; c0 < ld; c0 += NRb) {
        int64_t lo = 0, hi = n;
        if (cut) band_keys(it, j0, n, c0, c0 + NRb, lo, hi);
        for (int64_t j = lo / R * R; j < hi; j += R)
          score_micro<V, R, NVb>(it.krows + j, it.q + c0, ld, d, it.st + j * ld + c0, ld);
      }
      apply_masks(it, j0, n);
      softmax_tile(it, n);
      // A factor of exactly 0 gives every value summed so far weight 0: they are skipped (O = 0),
      // as the README's rule for weight-0 values asks, so an Inf among them cannot make 0 x Inf.
      // The first tile visited has nothing summed yet.
      for (int64_t c0 = 0; c0 < ld && t < tiles - 1; c0 += W) {
        const V alpha = V::load(it.alpha + c0);
        for (int64_t y = 0; y < dv; ++y) {
          T* o = it.o + y * ld + c0;
          select_eq(alpha, V::zero(), V::zero(), V::load(o) * alpha).store(o);
        }
      }
      m_ready = true;
      for (int64_t c = 0; c < ld && m_ready; ++c) m_ready = it.m[c] > -std::numeric_limits<T>::infinity();
    }
    // O^T += V^T P^T.
    for (int64_t c0 = 0; c0 < ld; c0 += NRb) {
      int64_t lo = 0, hi = n;
      if (cut) band_keys(it, j0, n, c0, c0 + NRb, lo, hi);
      const T* v = it.v0 + lo * it.v_stride;
      const T* pt = it.st + lo * ld + c0;
      for (int64_t y0 = 0; y0 < dv && lo < hi; y0 += R) {
        const int r = int(min64(R, dv - y0));
        T* o = it.o + y0 * ld + c0;
        if (v_finite)
          AccumulateTail<V, R, NVb, false>::run(r, v, it.v_stride, y0, pt, ld, hi - lo, o, ld);
        else
          AccumulateTail<V, R, NVb, true>::run(r, v, it.v_stride, y0, pt, ld, hi - lo, o, ld);
      }
    }
  }
  complete(it, item, s, 1, ld);
}

// The row-wise path asks for the K and V rows this many keys ahead of the ones it computes with:
// its loads alone leave the memory system idle for too long between misses on this machine's cores
// (decode (1,32,32,1,8192,128), 2 threads: 21.5 GB/s without, 25-26 with 32 keys ahead; 24 and 64
// ahead, or every other cache line only, do worse).
constexpr int64_t kDecodePrefetchKeys = 32;
// With one query per kv head (MHA), a score block's prefetches go out after its dot products and
// this many keys ahead, so the block's own loads do not queue behind 128 prefetches: MHA decode
// (1,32,32,1,8192,128) 27.5 -> 29 GB/s, (1,16,16,1,16384,128) 28 -> 31 (2 threads). GQA decode
// must prefetch first: 20-21 GB/s instead of 27-29 the other way round. The two prefetch loops
// stay inline in scores_rowwise_blocks: the same loop in a helper function (or a lambda) left
// GQA decode at 16-17 GB/s on this machine, for reasons of code layout I did not pin down.
constexpr int64_t kDecodePrefetchKeysAfter = 16;

// The row-wise path's tile sums: acc row c = sum over the tile's keys of weight (S^T row j,
// column c) times V row j; `careful` skips exactly-0 weights one key at a time.
template <class E>
void SdpaPlan<E>::accumulate_rowwise(const Item& it, int64_t n, bool careful) const {
  const int64_t dv = p.dv, ld = it.cols_pad, cols = it.cols;
  if (careful) {
    for (int64_t c = 0; c < cols; ++c) {
      T* acc = it.acc + c * dv;
      const T* w = it.st + c;  // weight of key j at w[j * ld]
      for (int64_t y = 0; y < dv; ++y) acc[y] = T(0);
      for (int64_t j = 0; j < n; ++j) {
        if (w[j * ld] == T(0)) continue;
        for (int64_t y = 0; y < dv; ++y) acc[y] += w[j * ld] * it.vrows[j][y];
      }
    }
  } else if (cols <= 1) {
    accumulate_rowwise_blocks<1>(it, n);
  } else if (cols <= 2) {
    accumulate_rowwise_blocks<2>(it, n);
  } else if (cols <= 4) {
    accumulate_rowwise_blocks<4>(it, n);
  } else {
    accumulate_rowwise_blocks<8>(it, n);
  }
}

// The sums for CB queries (the item's, rounded up to a power of two; padding queries' sums are
// not stored) at once: 8 / CB vectors of the value row per query held in registers across the
// tile's keys, so each value vector is loaded once for all the queries. Query by query, GQA
// decode with 4 query heads per kv head loaded each value vector 4 times and ran 10-20% slower.
template <class E>
template <int CB>
void SdpaPlan<E>::accumulate_rowwise_blocks(const Item& it, int64_t n) const {
  constexpr int kNY = CB >= 8 ? 1 : 8 / CB;
  const int64_t dv = p.dv, ld = it.cols_pad, cols = min64(it.cols, CB);
  int64_t y = 0;
  for (; y + kNY * W <= dv; y += kNY * W) {
    V a[CB][kNY];
    for (int c = 0; c < CB; ++c)
      for (int u = 0; u < kNY; ++u) a[c][u] = V::zero();
    for (int64_t j = 0; j < n; ++j) {
      const T* vr = it.vrows[j] + y;
      V x[kNY];
      for (int u = 0; u < kNY; ++u) x[u] = V::load(vr + u * W);
      for (int c = 0; c < CB; ++c) {
        const V wc = V::set1(it.st[j * ld + c]);
        for (int u = 0; u < kNY; ++u) a[c][u] = fma(wc, x[u], a[c][u]);
      }
    }
    for (int64_t c = 0; c < cols; ++c)
      for (int u = 0; u < kNY; ++u) a[c][u].store(it.acc + c * dv + y + u * W);
  }
  for (int64_t c = 0; c < cols; ++c) {
    T* acc = it.acc + c * dv;
    const T* w = it.st + c;  // weight of key j at w[j * ld]
    int64_t yc = y;
    for (; yc + W <= dv; yc += W) {
      V a = V::zero();
      for (int64_t j = 0; j < n; ++j) a = fma(V::set1(w[j * ld]), V::load(it.vrows[j] + yc), a);
      a.store(acc + yc);
    }
    for (; yc < dv; ++yc) {
      T a = T(0);
      for (int64_t j = 0; j < n; ++j) a += w[j * ld] * it.vrows[j][yc];
      acc[yc] = a;
    }
  }
}

// The row-wise path's scores of one tile into S^T (key j0 + j: row j), in register blocks of KB
// keys x CB queries (KB * CB = W; CB is the item's query count rounded up to a power of two, the
// padding queries being zero rows): W dot products along the head dim that end in one
// transpose-sum (lane_sums), not one horizontal sum each.
template <class E>
void SdpaPlan<E>::scores_rowwise(const Item& it, int64_t j0, int64_t n) const {
  if (it.cols <= 1 || W < 2)
    scores_rowwise_blocks<1>(it, j0, n);
  else if (it.cols <= 2 || W < 4)
    scores_rowwise_blocks<2>(it, j0, n);
  else if (it.cols <= 4 || W < 8)
    scores_rowwise_blocks<4>(it, j0, n);
  else
    scores_rowwise_blocks<8>(it, j0, n);
}

template <class E>
template <int CB>
void SdpaPlan<E>::scores_rowwise_blocks(const Item& it, int64_t j0, int64_t n) const {
  if constexpr (CB <= W) {
    constexpr int KB = W / CB;
    const int64_t d = p.d, ld = it.cols_pad, d_vec = d / W * W, cols = it.cols;
    for (int64_t j = 0; j < n; j += KB) {
      for (int64_t u = 0; u < KB && CB > 1; ++u) {  // GQA: before the dot products
        const int64_t ahead = j0 + j + u + kDecodePrefetchKeys;
        if (ahead >= it.key_end) break;
        prefetch_row(it.k + ahead * p.k_row_stride, d * int64_t(sizeof(E)));
        prefetch_row(it.v + ahead * p.v_row_stride, p.dv * int64_t(sizeof(E)));
      }
      const T* const* kr = it.krows + j;  // rows past n point at zeros
      V acc[W];
      if constexpr (CB <= 4) {
        // Up to 4 queries: each key row is read start to end before the next (two FMA chains per
        // query), not the KB rows side by side: decode streams faster, (1,32,32,1,8192,128) by
        // 6% and (1,32,8,1,16384,128) by 2% (2 threads). With 8 queries the 16 chains would not
        // fit the registers.
        for (int u = 0; u < KB; ++u) {
          V a0[CB], a1[CB];
          for (int c = 0; c < CB; ++c) a0[c] = a1[c] = V::zero();
          int64_t x = 0;
          for (; x + 2 * W <= d_vec; x += 2 * W) {
            const V k0 = V::load(kr[u] + x), k1 = V::load(kr[u] + x + W);
            for (int c = 0; c < CB; ++c) {
              a0[c] = fma(k0, V::load(it.q + c * d + x), a0[c]);
              a1[c] = fma(k1, V::load(it.q + c * d + x + W), a1[c]);
            }
          }
          if (x < d_vec)
            for (int c = 0; c < CB; ++c) a0[c] = fma(V::load(kr[u] + x), V::load(it.q + c * d + x), a0[c]);
          for (int c = 0; c < CB; ++c) acc[u * CB + c] = a0[c] + a1[c];
        }
      } else {
        for (int r = 0; r < W; ++r) acc[r] = V::zero();
        for (int64_t x = 0; x < d_vec; x += W) {
          V qx[CB];
          for (int c = 0; c < CB; ++c) qx[c] = V::load(it.q + c * d + x);
          for (int u = 0; u < KB; ++u) {
            const V kx = V::load(kr[u] + x);
            for (int c = 0; c < CB; ++c) acc[u * CB + c] = fma(kx, qx[c], acc[u * CB + c]);
          }
        }
      }
      for (int64_t u = 0; u < KB && CB == 1; ++u) {  // MHA: after the dot products
        const int64_t ahead = j0 + j + u + kDecodePrefetchKeysAfter;
        if (ahead >= it.key_end) break;
        prefetch_row(it.k + ahead * p.k_row_stride, d * int64_t(sizeof(E)));
        prefetch_row(it.v + ahead * p.v_row_stride, p.dv * int64_t(sizeof(E)));
      }
      T sums[W];
      lane_sums(acc).store(sums);
      for (int u = 0; u < KB && j + u < n; ++u)
        for (int c = 0; c < CB && c < cols; ++c)
          it.st[(j + u) * ld + c] = sums[u * CB + c] + dot_tail<V>(it.q + c * d, kr[u], d_vec, d);
    }
  }
}

// Few queries (decode): vectorised along the head dim. Each tile's scores are dot products of the
// query rows with the key rows (scores_rowwise), its weights come from the same online softmax as
// the blocked path's, and each output row gains the weighted value rows (accumulate_rowwise). Every
// tile serves all the item's queries while its rows are in cache, so K and V stream from memory
// exactly once. Q and O are stored by rows.
template <class E>
void SdpaPlan<E>::run_item_rowwise(int64_t item, int64_t s, T* scratch) const {
  Item it = locate(item, scratch, W);
  narrow_to_split(it, s, BN);
  const int64_t d = p.d, dv = p.dv, ld = it.cols_pad, cols = it.cols;
  for (int64_t c = 0; c < cols; ++c) load_query_row(it, c, it.q + c * d, scratch);
  for (int64_t i = cols * d; i < W * d; ++i) it.q[i] = T(0);  // padding queries of the score blocks
  for (int64_t i = 0; i < cols * dv; ++i) it.o[i] = T(0);
  // Columns past `cols` are never read back; keep their scores finite.
  for (int64_t j = 0; j < BN; ++j)
    for (int64_t c = cols; c < ld; ++c) it.st[j * ld + c] = T(0);

  for (int64_t j0 = it.key_begin; j0 < it.key_end; j0 += BN) {
    const int64_t n = min64(BN, it.key_end - j0), n_pad = round_up(n, W);
    gather_tile(it, j0, n, n_pad, false);
    scores_rowwise(it, j0, n);
    apply_masks(it, j0, n);
    softmax_tile(it, n);
    // Each output row gains sum_j weight_j * V row j, summed from zero for the tile and then added
    // to the rescaled row (two-level summation, as in the blocked path). The values are checked
    // after the sums, not before them (a pass over the tile less): a finite sum cannot have met an
    // Inf or NaN, and a sum that is not finite is redone skipping exactly-0 weights, so 0 * Inf or
    // 0 * NaN of a masked key contributes 0.
    accumulate_rowwise(it, n, false);
    if (!rows_finite<V>(&it.acc, 1, cols * dv)) accumulate_rowwise(it, n, true);
    for (int64_t c = 0; c < cols; ++c) {
      T* o = it.o + c * dv;
      const T* acc = it.acc + c * dv;
      const T alpha = it.alpha[c];
      if (alpha == T(0))  // the earlier values' weights are all 0: skipped (as in the blocked path)
        for (int64_t y = 0; y < dv; ++y) o[y] = acc[y];
      else
        for (int64_t y = 0; y < dv; ++y) o[y] = o[y] * alpha + acc[y];
    }
  }
  complete(it, item, s, dv, 1);
}

// A heap block freed on scope exit (no std containers in this file: see the top).
struct HeapBlock {
  void* ptr = nullptr;
  ~HeapBlock() { std::free(ptr); }
};

// Runs run(unit, scratch) for every unit: on the calling thread when `parallel` is false (not
// even an inactive OpenMP region, which costs about a microsecond to enter), else on `threads`
// OpenMP threads, dynamically scheduled, each with its own scratch arena of `scratch_bytes`.
template <class F>
static void for_each_unit(int64_t units, bool parallel, int threads, size_t scratch_bytes,
                          const F& run) {
  if (!parallel || units <= 1) {
    void* scratch = scratch_arena.get(scratch_bytes);
    if (!scratch) throw std::bad_alloc();
    for (int64_t unit = 0; unit < units; ++unit) run(unit, scratch);
    return;
  }
  int failed = 0;
  cpu::note_parallel_region();
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
  {
    void* scratch = scratch_arena.get(scratch_bytes);
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
    for (int64_t unit = 0; unit < units; ++unit) {
      if (scratch) {
        run(unit, scratch);
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

template <class E>
static void sdpa_typed(const SdpaParams& p) {
  using Plan = SdpaPlan<E>;
  using T = typename Plan::T;
  // No output row, nothing to do; Hq = 0 with Hkv > 0 would otherwise make a group of 0 heads.
  if (p.batch == 0 || p.hq == 0 || p.lq == 0) return;
  Plan plan(p);
  const int64_t items = plan.items();
  if (items == 0) return;
  // Threads only pay off past a few microseconds of work; below that the fork/join costs more.
  const double macs = double(p.batch) * double(p.hq) * double(p.lq) * double(p.lk) *
                      double(p.d + p.dv + 8);
  const bool parallel = p.num_threads > 1 && macs > 1.5e5;
  // Split-KV when the items alone cannot keep the threads busy: enough splits for two units per
  // thread, each at least four tiles long.
  HeapBlock partials;
  if (parallel && items < 2 * p.num_threads) {
    plan.splits = max64(1, min64((2 * p.num_threads + items - 1) / items, p.lk / (4 * Plan::BN)));
    if (plan.splits > 1) {
      partials.ptr = std::malloc(size_t(items * plan.splits * plan.partial_elems()) * sizeof(T));
      if (!partials.ptr) throw std::bad_alloc();
      plan.partials = static_cast<T*>(partials.ptr);
    }
  }
  for_each_unit(plan.units(), parallel, p.num_threads, plan.scratch_bytes,
                [&plan](int64_t unit, void* scratch) { plan.run_unit(unit, static_cast<T*>(scratch)); });
  if (plan.splits > 1) {
    T* scratch = static_cast<T*>(scratch_arena.get(plan.scratch_bytes));  // this thread's arena
    for (int64_t item = 0; item < items; ++item) plan.merge(item, scratch);
  }
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
