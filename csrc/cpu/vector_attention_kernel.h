// Vector attention (fastattn.vector_attention) for one ISA, dense and neighbour form in one fused
// kernel. Included after sdpa_kernel.h in the same per-ISA namespace: it reuses its SIMD wrapper,
// helpers (min64, round_up), thread runner (for_each_unit) and per-thread scratch arena.
//
// Per query i, its candidate keys are visited in tiles of up to kTile; for each tile, in scratch:
//   relation rows r_tj (only when needed) -> weight logits u_tg (group sums of r, or the weight MLP
//   W2 relu(W1 r + b1) + b2 by register-blocked row-times-matrix micro-kernels) -> per-group online
//   softmax (running max and sum per group, base 2: log2 e is folded into W2 and b2) ->
//   acc[c] += a_tg(c) (v_t[c] + delta_t[c]), reading v and delta rows where they lie.
// No (N, S, C) temporary: a tile of at most kTile rows per thread.
//
// The fast path (weight MLP with a linear relation, hidden units and groups each fitting one
// vector: PTv2's 64->8->8 on AVX2 float32) works on tiles of up to kPairTile pairs that pack whole
// queries' candidate lists: each pair's W1 delta as W dot products along delta's channels ending in
// one transpose-sum (w1_times, which also makes the per-row projections), then W2 for 8 pairs at a
// time, then each query's vertical online softmax and its aggregation with 8 channel vectors of
// the accumulator held in registers. The phases run over the whole tile in turn, so no phase reads
// single lanes of vectors the previous one just stored.
//
// With the MLP and a linear relation (subtract, add), W1 r + b1 = (W1 q_i + b1) +- W1 k_j + W1 delta
// is split: W1 q + b1 and +-W1 k are computed once per row before the pairs (an (N + M) x hidden
// buffer), so each pair costs W1 delta (or nothing without pos) and never forms r.
//
// A candidate that is missing (index -1) or masked reads a zero row for key, value and delta and
// gets weight exactly 0, so NaN or Inf in a row nobody attends to cannot reach an output, and a
// query with no candidate at all gets exact zeros.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <new>

#include "fastattn/vector_attention_params.h"

namespace fastattn {
namespace FASTATTN_ISA {

// A heap block that lives for one call (no std::vector: its inline members could be merged by the
// linker across the per-ISA translation units).
template <class T>
struct CallBuffer {
  T* ptr = nullptr;
  explicit CallBuffer(int64_t n) {
    ptr = static_cast<T*>(std::aligned_alloc(64, size_t(round_up(max64(n, 1) * int64_t(sizeof(T)), 64))));
    if (!ptr) throw std::bad_alloc();
  }
  ~CallBuffer() { std::free(ptr); }
  CallBuffer(const CallBuffer&) = delete;
  CallBuffer& operator=(const CallBuffer&) = delete;
};

// out[r][0 : NV*W] = sum_x rows[r][x] * wt[x * ldw + 0 : NV*W] (+ bias + bias_rows[r], then relu
// if asked), for R rows that each have their own pointer: R broadcasts of a row element against NV
// vectors of the matrix row per step. bias and bias_rows may be null.
template <class V, int R, int NV>
static inline void rows_times_micro(const typename V::T* const* rows, int64_t kdim,
                                    const typename V::T* wt, int64_t ldw, typename V::T* out,
                                    int64_t ldo, const typename V::T* bias,
                                    const typename V::T* const* bias_rows, int64_t col, bool relu) {
  constexpr int W = V::W;
  V acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NV; ++c) acc[r][c] = V::zero();
  for (int64_t x = 0; x < kdim; ++x) {
    V b[NV];
    for (int c = 0; c < NV; ++c) b[c] = V::load(wt + x * ldw + c * W);
    for (int r = 0; r < R; ++r) {
      const V a = V::set1(rows[r][x]);
      for (int c = 0; c < NV; ++c) acc[r][c] = fma(a, b[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NV; ++c) {
      V y = acc[r][c];
      if (bias) y = y + V::load(bias + col + c * W);
      if (bias_rows) y = y + V::load(bias_rows[r] + col + c * W);
      if (relu) y = max(V::zero(), y);  // max(0, NaN) keeps the NaN
      y.store(out + r * ldo + c * W);
    }
}

// out[t][0 : ncols] = rows[t][0 : kdim] . wt (kdim x ncols, leading dim ldw) + bias + bias_rows[t],
// relu'd if asked, for t < n; n a multiple of 8, ncols a multiple of W. Column blocks of 3 vectors
// by 4 rows; a last block of 2 vectors by 4 rows or 1 vector by 8 rows (the weight MLP's hidden
// width and group count, 8 in Point Transformer v2, are one AVX2 vector).
template <class V>
static void rows_times(const typename V::T* const* rows, int64_t n, int64_t kdim,
                       const typename V::T* wt, int64_t ldw, int64_t ncols, typename V::T* out,
                       int64_t ldo, const typename V::T* bias = nullptr,
                       const typename V::T* const* bias_rows = nullptr, bool relu = false) {
  constexpr int64_t W = V::W;
  int64_t col = 0;
  const auto bias_at = [bias_rows](int64_t t) { return bias_rows ? bias_rows + t : nullptr; };
  for (; col + 3 * W <= ncols; col += 3 * W)
    for (int64_t t = 0; t < n; t += 4)
      rows_times_micro<V, 4, 3>(rows + t, kdim, wt + col, ldw, out + t * ldo + col, ldo, bias, bias_at(t), col, relu);
  if (ncols - col == 2 * W) {
    for (int64_t t = 0; t < n; t += 4)
      rows_times_micro<V, 4, 2>(rows + t, kdim, wt + col, ldw, out + t * ldo + col, ldo, bias, bias_at(t), col, relu);
  } else if (ncols - col == W) {
    for (int64_t t = 0; t < n; t += 8)
      rows_times_micro<V, 8, 1>(rows + t, kdim, wt + col, ldw, out + t * ldo + col, ldo, bias, bias_at(t), col, relu);
  }
}

// The per-row projections live in a block kept by the calling thread between calls (up to 64 MB;
// larger ones are allocated per call): a fresh multi-megabyte block per call would cost a page
// fault per 4 KB, about as long as computing it.
static thread_local ScratchArena vector_proj_arena;

template <class T>
struct ProjBuffer {
  T* ptr = nullptr;
  void* owned = nullptr;
  explicit ProjBuffer(int64_t n) {
    const size_t bytes = size_t(round_up(max64(n, 1) * int64_t(sizeof(T)), 64));
    if (bytes <= (size_t(64) << 20)) {
      ptr = static_cast<T*>(vector_proj_arena.get(bytes));
    } else {
      owned = std::aligned_alloc(64, bytes);
      ptr = static_cast<T*>(owned);
    }
    if (!ptr) throw std::bad_alloc();
  }
  ~ProjBuffer() { std::free(owned); }
  ProjBuffer(const ProjBuffer&) = delete;
  ProjBuffer& operator=(const ProjBuffer&) = delete;
};

template <class T>
struct VectorAttentionPlan {
  using V = typename VecOf<T>::type;
  static constexpr int64_t W = V::W;
  static constexpr int64_t kTile = 64;  // candidate keys per tile, a multiple of 8
  static constexpr int64_t kProjRows = 64;
  static constexpr int64_t kPairTile = 128;  // pairs per tile of the fast path, a multiple of 8
  // How the W channels of one vector find their weight group: all one group (a broadcast), W
  // consecutive groups (a load), or anything else (gathered lane by lane).
  enum Expand : int { kBroadcast = 0, kContiguous = 1, kGathered = 2 };

  const VectorAttentionParams& p;
  bool mlp, project, has_pos, fast;
  int64_t ts, tcap, c_full, nvec, cpad, hpad, gs;
  // Constants: group of each channel, expand kind and first group of each channel vector.
  CallBuffer<int64_t> ints;
  const int64_t *gmap, *kind, *g0;
  // MLP in kernel form: W1^T (c x hpad), b1 (hpad), W2^T * log2 e (hpad x gs), b2 * log2 e (gs),
  // and for the fast path only W1 in blocks, one per whole channel vector: its hpad rows x W
  // channels (zero rows past hidden; w1_times's dot products).
  CallBuffer<T> consts;
  const T *w1t, *b1, *w2t, *b2, *w1r;
  // project: W1 q + b1 per query row (batch * lq rows), then +-W1 k per key row, hpad apart.
  int64_t pq_rows, pk_rows;
  ProjBuffer<T> proj;
  // Scratch layout (elements of T, then pointer arrays).
  int64_t off_h, off_u, off_acc, off_m, off_ms, off_l, off_sc, off_tmp, off_madd, off_zero, off_qs, scratch_elems;
  size_t scratch_bytes;

  explicit VectorAttentionPlan(const VectorAttentionParams& params)
      : p(params), ints(params.c + 2 * (params.c / W + 1)), consts(const_elems(params)),
        proj(proj_elems(params)) {
    mlp = p.w1 != nullptr;
    project = mlp && p.relation != Relation::multiply;
    has_pos = p.pos != nullptr;
    ts = round_up(max64(min64(p.lk, kTile), 1), 8);
    nvec = p.c / W;
    c_full = nvec * W;
    cpad = round_up(p.c, W);
    hpad = round_up(max64(p.hidden, 1), W);
    gs = round_up(p.groups, W);
    pq_rows = round_up(p.batch * p.lq, kProjRows);
    pk_rows = round_up(p.batch * p.key_rows, kProjRows);
    fast = uses_fast_path(p);
    setup_groups();
    if (mlp) setup_mlp();
    tcap = fast ? kPairTile + 8 : ts;  // rows of the tile arrays

    // rtile (ts x cpad) | htile (tcap x hpad) | utile (tcap x gs) | acc (cpad) | m, ms, l, sc (gs) |
    // tmp (2 W) | madd (tcap) | zero row | fast path's softmax states (kPairTile x 4 W) | pointer
    // arrays (5 x tcap)
    off_h = ts * cpad;
    off_u = off_h + tcap * hpad;
    off_acc = off_u + tcap * gs;
    off_m = off_acc + cpad;
    off_ms = off_m + gs;
    off_l = off_ms + gs;
    off_sc = off_l + gs;
    off_tmp = off_sc + gs;
    off_madd = off_tmp + 2 * W;
    off_zero = off_madd + tcap;
    off_qs = off_zero + max64(cpad, max64(hpad, gs)) + W;  // fast path: softmax state per query of a tile
    scratch_elems = round_up(off_qs + (fast ? 4 * W * kPairTile : 0), 16);
    scratch_bytes = size_t(scratch_elems) * sizeof(T) + 5 * size_t(tcap) * sizeof(const T*);
  }

  // The fast path: the weight MLP with a linear relation, its hidden units and the groups fitting
  // one vector each (Point Transformer v2's 8 and 8 on AVX2 float32), so a pair's hidden row and
  // its weight row are one register each. Not with no keys (lk == 0): its tiling divides by lk;
  // the general path writes the zeros.
  static bool uses_fast_path(const VectorAttentionParams& p) {
    return p.w1 && p.relation != Relation::multiply && round_up(max64(p.hidden, 1), W) == W &&
           round_up(p.groups, W) == W && p.lk > 0;
  }

  static int64_t const_elems(const VectorAttentionParams& p) {
    if (!p.w1) return 1;
    const int64_t hpad = round_up(max64(p.hidden, 1), W), gs = round_up(p.groups, W);
    const int64_t w1_blocks = uses_fast_path(p) ? p.c * hpad : 0;
    return p.c * hpad + hpad + hpad * gs + gs + w1_blocks;
  }
  static int64_t proj_elems(const VectorAttentionParams& p) {
    if (!p.w1 || p.relation == Relation::multiply) return 1;
    const int64_t hpad = round_up(max64(p.hidden, 1), W);
    check_buffer_elems((double(p.batch) * double(p.lq) + double(p.batch) * double(p.key_rows) +
                        double(2 * kProjRows)) * double(hpad));
    return (round_up(p.batch * p.lq, kProjRows) + round_up(p.batch * p.key_rows, kProjRows)) * hpad;
  }

  void setup_groups() {
    int64_t* g = ints.ptr;
    int64_t* kinds = g + p.c;
    int64_t* firsts = kinds + nvec + 1;
    const int64_t per_group = p.c / p.groups;
    for (int64_t c = 0; c < p.c; ++c) g[c] = p.sharing == Sharing::blocked ? c / per_group : c % p.groups;
    for (int64_t k = 0; k < nvec; ++k) {
      const int64_t* lanes = g + k * W;
      bool same = true, consecutive = true;
      for (int64_t l = 1; l < W; ++l) {
        same = same && lanes[l] == lanes[0];
        consecutive = consecutive && lanes[l] == lanes[0] + l;
      }
      kinds[k] = same ? kBroadcast : consecutive ? kContiguous : kGathered;
      firsts[k] = lanes[0];
    }
    gmap = g;
    kind = kinds;
    g0 = firsts;
  }

  void setup_mlp() {
    const T* w1 = static_cast<const T*>(p.w1);
    const T* bias1 = static_cast<const T*>(p.b1);
    const T* w2 = static_cast<const T*>(p.w2);
    const T* bias2 = static_cast<const T*>(p.b2);
    T* dst = consts.ptr;
    T* w1t_ = dst;
    T* b1_ = w1t_ + p.c * hpad;
    T* w2t_ = b1_ + hpad;
    T* b2_ = w2t_ + hpad * gs;
    const T log2e = T(kLog2e);
    for (int64_t c = 0; c < p.c; ++c)
      for (int64_t x = 0; x < hpad; ++x) w1t_[c * hpad + x] = x < p.hidden ? w1[x * p.c + c] : T(0);
    for (int64_t x = 0; x < hpad; ++x) b1_[x] = x < p.hidden ? bias1[x] : T(0);
    for (int64_t x = 0; x < hpad; ++x)
      for (int64_t g = 0; g < gs; ++g)
        w2t_[x * gs + g] = x < p.hidden && g < p.groups ? w2[g * p.hidden + x] * log2e : T(0);
    for (int64_t g = 0; g < gs; ++g) b2_[g] = g < p.groups ? bias2[g] * log2e : T(0);
    w1t = w1t_;
    b1 = b1_;
    w2t = w2t_;
    b2 = b2_;
    w1r = nullptr;
    if (!fast) return;
    T* w1r_ = b2_ + gs;
    // Channel vector by channel vector: the hpad rows' W channels of one vector lie together, so
    // w1_times walks one pointer with fixed offsets (W1 in plain rows, one base per row, left the
    // PTv2 layer's W1 delta loop 2.5-3.4 ms slower on one thread than a fully unrolled C = 64 copy
    // of it; this layout runs as fast as that copy).
    for (int64_t xv = 0; xv < nvec; ++xv)
      for (int64_t x = 0; x < hpad; ++x)
        for (int64_t l = 0; l < W; ++l)
          w1r_[(xv * hpad + x) * W + l] = x < p.hidden ? w1[x * p.c + xv * W + l] : T(0);
    w1r = w1r_;
  }

  // ------------------------------------------------------------------ per-row projections
  int64_t proj_units() const { return project ? (pq_rows + pk_rows) / kProjRows : 0; }

  // Rows [r0, r0 + kProjRows) of W1 q + b1 (query rows) or +-W1 k (key rows, minus for subtract).
  void run_proj_unit(int64_t unit, T* scratch) const {
    const T* rows[kProjRows];
    T* zero = scratch;
    for (int64_t x = 0; x < p.c; ++x) zero[x] = T(0);
    int64_t r0 = unit * kProjRows;
    const bool keys = r0 >= pq_rows;
    if (keys) r0 -= pq_rows;
    const int64_t per_batch = keys ? p.key_rows : p.lq, total = p.batch * per_batch;
    for (int64_t r = 0; r < kProjRows; ++r) {
      const int64_t row = r0 + r;
      if (row >= total) {
        rows[r] = zero;
        continue;
      }
      const int64_t b = row / per_batch, j = row % per_batch;
      rows[r] = keys ? static_cast<const T*>(p.k) + p.k_batch_offset[b] + j * p.k_row_stride
                     : static_cast<const T*>(p.q) + p.q_batch_offset[b] + j * p.q_row_stride;
    }
    T* dst = proj.ptr + ((keys ? pq_rows : 0) + r0) * hpad;
    if (fast) {
      // One row at a time in the dot form: the rows stream in order, a vector per load. The
      // broadcast form below (8 rows' elements against W1^T rows) took 2.5 ms for the PTv2
      // layer's 80000 rows on one thread, this 1.8.
      const V bias = keys ? V::zero() : V::load(b1);
      for (int64_t r = 0; r < kProjRows; ++r) (w1_times(rows[r]) + bias).store(dst + r * hpad);
    } else {
      rows_times<V>(rows, kProjRows, p.c, w1t, hpad, hpad, dst, hpad, keys ? nullptr : b1);
    }
    if (keys && p.relation == Relation::subtract) {
      for (int64_t i = 0; i < kProjRows * hpad; i += W) (V::zero() - V::load(dst + i)).store(dst + i);
    }
  }

  // ------------------------------------------------------------------ per-query work
  int64_t q_block() const {
    const int64_t want = p.lq / (8 * int64_t(max64(p.num_threads, 1)));
    return max64(1, min64(32, want));
  }
  int64_t blocks_per_batch() const { return (p.lq + q_block() - 1) / q_block(); }
  int64_t items() const { return p.batch * blocks_per_batch(); }

  void run_item(int64_t item, T* scratch) const {
    const int64_t nb = blocks_per_batch(), qb = q_block();
    const int64_t b = item / nb, i0 = (item % nb) * qb;
    T* zero = scratch + off_zero;
    for (int64_t x = 0; x < max64(cpad, max64(hpad, gs)) + W; ++x) zero[x] = T(0);
    if (fast) {
      if (has_pos)
        fast_item<true>(b, i0, min64(p.lq, i0 + qb), scratch);
      else
        fast_item<false>(b, i0, min64(p.lq, i0 + qb), scratch);
      return;
    }
    for (int64_t i = i0; i < min64(p.lq, i0 + qb); ++i) {
      prefetch_rows(i + 1);
      if (has_pos) {
        run_query<true>(b, i, scratch);
      } else {
        run_query<false>(b, i, scratch);
      }
    }
  }

  // Neighbour form: the key/value rows of a query are scattered; asking for the next query's rows
  // while this one computes hides most of the memory latency (pos rows are read in order, which
  // the hardware prefetcher sees by itself).
  void prefetch_rows(int64_t i) const {
    if (!p.index || i >= p.lq) return;
    const int64_t* index = p.index + i * p.lk;
    const T* k = static_cast<const T*>(p.k);
    const T* v = static_cast<const T*>(p.v);
    const T* pk = project ? proj.ptr + pq_rows * hpad : nullptr;
    for (int64_t s = 0; s < min64(p.lk, ts); ++s) {
      const int64_t j = index[s];
      if (j < 0) continue;
      prefetch_row(v + j * p.v_row_stride, p.c * int64_t(sizeof(T)));
      if (project)
        prefetch_row(pk + j * hpad, hpad * int64_t(sizeof(T)));
      else
        prefetch_row(k + j * p.k_row_stride, p.c * int64_t(sizeof(T)));
    }
  }

  template <bool kPos>
  void run_query(int64_t b, int64_t i, T* scratch) const {
    constexpr T neg_inf = -std::numeric_limits<T>::infinity();
    T* acc = scratch + off_acc;
    T* m = scratch + off_m;
    T* ms = scratch + off_ms;
    T* l = scratch + off_l;
    T* madd = scratch + off_madd;
    const T* zero = scratch + off_zero;
    const T** krows = reinterpret_cast<const T**>(scratch + scratch_elems);
    const T** vrows = krows + tcap;
    const T** prows = vrows + tcap;
    const T** pkrows = prows + tcap;
    const T** arows = pkrows + tcap;
    const T* qrow = static_cast<const T*>(p.q) + p.q_batch_offset[b] + i * p.q_row_stride;
    const int64_t row = b * p.lq + i;
    T* wrow = p.weights ? static_cast<T*>(p.weights) + row * p.lk * p.groups : nullptr;
    for (int64_t c = 0; c < cpad; ++c) acc[c] = T(0);
    for (int64_t g = 0; g < gs; ++g) {
      m[g] = neg_inf;
      ms[g] = T(0);
      l[g] = T(0);
    }
    bool started = false;
    for (int64_t s0 = 0; s0 < p.lk; s0 += ts) {
      const int64_t n = min64(ts, p.lk - s0), npad = round_up(n, 8);
      if (gather(b, i, s0, n, npad, zero, krows, vrows, prows, pkrows, madd) == 0) {
        if (wrow)
          for (int64_t x = 0; x < n * p.groups; ++x) wrow[s0 * p.groups + x] = neg_inf;
        continue;
      }
      T* u = scratch + off_u;
      logits<kPos>(b, i, qrow, npad, zero, krows, prows, pkrows, arows, madd, scratch);
      if (wrow)
        for (int64_t t = 0; t < n; ++t)
          for (int64_t g = 0; g < p.groups; ++g) wrow[(s0 + t) * p.groups + g] = u[t * gs + g];
      softmax_update(u, n, started, scratch);
      aggregate<kPos>(u, n, vrows, prows, acc, scratch + off_tmp);
      started = true;
    }
    finish(row, acc, l, ms, wrow, scratch + off_tmp, scratch + off_sc);
  }

  // Row pointers of the tile's candidates; a missing or masked one gets the zero row everywhere.
  // Returns how many candidates are visible.
  int64_t gather(int64_t b, int64_t i, int64_t s0, int64_t n, int64_t npad, const T* zero,
                 const T** krows, const T** vrows, const T** prows, const T** pkrows, T* madd) const {
    constexpr T neg_inf = -std::numeric_limits<T>::infinity();
    const T* k = static_cast<const T*>(p.k) + p.k_batch_offset[b];
    const T* v = static_cast<const T*>(p.v) + p.v_batch_offset[b];
    const T* pos = has_pos ? static_cast<const T*>(p.pos) + p.pos_batch_offset[b] + i * p.pos_row_stride : nullptr;
    const T* pk = project ? proj.ptr + (pq_rows + b * p.key_rows) * hpad : nullptr;
    const int64_t* index = p.index ? p.index + i * p.lk : nullptr;
    const int64_t mask_at = p.mask_kind == MaskKind::none ? 0 : p.mask_batch_offset[b] + i * p.mask_row_stride;
    int64_t visible = 0;
    for (int64_t t = 0; t < npad; ++t) {
      const int64_t s = s0 + t;
      int64_t j = -1;
      T add = T(0);
      if (t < n) {
        j = index ? index[s] : s;
        if (p.mask_kind == MaskKind::boolean) {
          if (!static_cast<const uint8_t*>(p.mask)[mask_at + s * p.mask_col_stride]) j = -1;
        } else if (p.mask_kind == MaskKind::additive) {
          add = static_cast<const T*>(p.mask)[mask_at + s * p.mask_col_stride];
          if (add == neg_inf) j = -1;
        }
      }
      if (j < 0) {
        krows[t] = vrows[t] = prows[t] = pkrows[t] = zero;
        madd[t] = T(0);
        continue;
      }
      ++visible;
      krows[t] = k + j * p.k_row_stride;
      vrows[t] = v + j * p.v_row_stride;
      prows[t] = has_pos ? pos + s * p.pos_col_stride : zero;
      pkrows[t] = project ? pk + j * hpad : zero;
      madd[t] = mask_base2(add);
    }
    return visible;
  }

  // r_t = q op k_t (+ delta_t) into dst rows (ld apart), for t < npad.
  template <bool kPos>
  void relation_rows(const T* q, int64_t npad, const T* const* krows, const T* const* prows, T* dst,
                     int64_t ld) const {
    for (int64_t t = 0; t < npad; ++t) {
      const T* k = krows[t];
      const T* d = prows[t];
      T* r = dst + t * ld;
      int64_t c = 0;
      for (; c < c_full; c += W) {
        V x = relate(p.relation, V::load(q + c), V::load(k + c));
        if (kPos) x = x + V::load(d + c);
        x.store(r + c);
      }
      for (; c < p.c; ++c) {
        const T x = relate(p.relation, q[c], k[c]);
        r[c] = kPos ? x + d[c] : x;
      }
    }
  }

  static inline V relate(Relation relation, V a, V b) {
    return relation == Relation::subtract ? a - b : relation == Relation::add ? a + b : a * b;
  }
  static inline T relate(Relation relation, T a, T b) {
    return relation == Relation::subtract ? a - b : relation == Relation::add ? a + b : a * b;
  }

  // u[g] = log2 e * (sum of r = q op k (+ delta) over group g's channels), vector by vector: a
  // vector whose lanes share one group adds its lane sum (runs of them, as blocked sharing makes,
  // are summed first), W consecutive groups add lane-wise, anything else lane by lane.
  template <bool kPos>
  void group_sums(const T* q, const T* k, const T* d, T* u) const {
    for (int64_t g = 0; g < gs; ++g) u[g] = T(0);
    V run = V::zero();
    int64_t run_group = -1;
    for (int64_t kv = 0; kv < nvec; ++kv) {
      const int64_t c = kv * W;
      V x = relate(p.relation, V::load(q + c), V::load(k + c));
      if (kPos) x = x + V::load(d + c);
      if (kind[kv] == kBroadcast) {
        if (g0[kv] != run_group) {
          if (run_group >= 0) u[run_group] += run.reduce_add();
          run = x;
          run_group = g0[kv];
        } else {
          run = run + x;
        }
      } else if (kind[kv] == kContiguous) {
        (V::load(u + g0[kv]) + x).store(u + g0[kv]);
      } else {
        T lanes[W];
        x.store(lanes);
        for (int64_t l = 0; l < W; ++l) u[gmap[c + l]] += lanes[l];
      }
    }
    if (run_group >= 0) u[run_group] += run.reduce_add();
    for (int64_t c = c_full; c < p.c; ++c) u[gmap[c]] += kPos ? relate(p.relation, q[c], k[c]) + d[c] : relate(p.relation, q[c], k[c]);
    const V log2e = V::set1(T(kLog2e));
    for (int64_t g = 0; g < gs; g += W) (V::load(u + g) * log2e).store(u + g);
  }

  // Base-2 weight logits of the tile into utile (npad x gs); masked candidates get -inf.
  template <bool kPos>
  void logits(int64_t b, int64_t i, const T* q, int64_t npad, const T* zero, const T* const* krows,
              const T* const* prows, const T* const* pkrows, const T** arows, const T* madd,
              T* scratch) const {
    constexpr T neg_inf = -std::numeric_limits<T>::infinity();
    T* rtile = scratch;
    T* htile = scratch + off_h;
    T* u = scratch + off_u;
    if (mlp) {
      if (project) {
        // h = relu(W1 delta + (W1 q + b1) +- W1 k)
        const T* pq = proj.ptr + (b * p.lq + i) * hpad;
        if (kPos) {
          rows_times<V>(prows, npad, p.c, w1t, hpad, hpad, htile, hpad, pq, pkrows, true);
        } else {
          for (int64_t t = 0; t < npad; ++t)
            for (int64_t x = 0; x < hpad; x += W)
              max(V::zero(), V::load(pq + x) + V::load(pkrows[t] + x)).store(htile + t * hpad + x);
        }
      } else {
        relation_rows<kPos>(q, npad, krows, prows, rtile, cpad);
        for (int64_t t = 0; t < npad; ++t) arows[t] = rtile + t * cpad;
        rows_times<V>(arows, npad, p.c, w1t, hpad, hpad, htile, hpad, b1, nullptr, true);
      }
      for (int64_t t = 0; t < npad; ++t) arows[t] = htile + t * hpad;
      rows_times<V>(arows, npad, p.hidden, w2t, gs, gs, u, gs, b2);
    } else if (p.groups == p.c) {
      // One channel per group: the weights are the relation itself (gs == cpad).
      relation_rows<kPos>(q, npad, krows, prows, u, gs);
      const V log2e = V::set1(T(kLog2e));
      for (int64_t t = 0; t < npad; ++t) {
        for (int64_t g = p.c; g < gs; ++g) u[t * gs + g] = T(0);
        for (int64_t g = 0; g < gs; g += W) (V::load(u + t * gs + g) * log2e).store(u + t * gs + g);
      }
    } else {
      for (int64_t t = 0; t < npad; ++t) group_sums<kPos>(q, krows[t], prows[t], u + t * gs);
    }
    for (int64_t t = 0; t < npad; ++t) {
      T* ut = u + t * gs;
      if (krows[t] == zero) {
        for (int64_t g = 0; g < gs; ++g) ut[g] = neg_inf;
      } else if (p.mask_kind == MaskKind::additive) {
        for (int64_t g = 0; g < gs; ++g) ut[g] += madd[t];
      }
    }
  }


  // ------------------------------------------------------------------ fast path (hpad == gs == W)
  // Per tile of candidates: the hidden rows h_t = relu((W1 q + b1) +- W1 k_t + W1 delta_t), one
  // vector per pair (W1 delta_t by w1_times), then the logits u_t = W2 h_t + b2 for 8 pairs at a
  // time as 8 accumulator registers; the online softmax is vertical over the tile's rows (no
  // horizontal reductions), and the aggregation keeps up to 8 channel vectors of the accumulator
  // in registers across the tile's pairs.
  // h_t = relu((W1 q + b1) +- W1 k_t + W1 delta_t) for 8 pairs.
  template <bool kPos>
  void fast_hidden(const T* const* pqrows, const T* const* prows, const T* const* pkrows, T* h) const {
    for (int r = 0; r < 8; ++r) {
      V a = V::load(pqrows[r]) + V::load(pkrows[r]);
      if (kPos) a = a + w1_times(prows[r]);
      max(V::zero(), a).store(h + r * W);  // max(0, NaN) keeps the NaN
    }
  }

  // W1 x for one row x of C channels (a pair's delta, or a query or key row for the projections)
  // as one vector (a hidden unit per lane): W dot products running along x's channels a vector at
  // a time, then one transpose-sum (lane_sums); channels past the last whole vector by broadcasts.
  // x is then read a whole vector per load, in order. Broadcasting it element by element into 8
  // rows' accumulators (the previous form for delta: as fast when delta is in cache) left the
  // PTv2 layer at 22.4 ms instead of 19.2 (2 threads; 41 vs 34 ms on one).
  V w1_times(const T* d) const {
    V acc[W];
    for (int k = 0; k < W; ++k) acc[k] = V::zero();
    const T* wx = w1r;  // hpad == W: one W x W block of W1 per channel vector
    for (int64_t x = 0; x < c_full; x += W, wx += W * W) {
      const V dx = V::load(d + x);
      for (int k = 0; k < W; ++k) acc[k] = fma(dx, V::load(wx + k * W), acc[k]);
    }
    V out = lane_sums(acc);
    for (int64_t x = c_full; x < p.c; ++x) out = fma(V::set1(d[x]), V::load(w1t + x * W), out);
    return out;
  }

  // u_t = W2 h_t + b2 (base 2) for 8 pairs.
  void fast_logits(const T* h, T* u) const {
    V a[8];
    const V bias2 = V::load(b2);
    for (int r = 0; r < 8; ++r) a[r] = bias2;
    for (int64_t x = 0; x < p.hidden; ++x) {
      const V w = V::load(w2t + x * W);
      for (int r = 0; r < 8; ++r) a[r] = fma(V::set1(h[r * W + x]), w, a[r]);
    }
    for (int r = 0; r < 8; ++r) a[r].store(u + r * W);
  }

  // acc[k0 + kk] += sum_t e_t[group of vector k0 + kk] (v_t + delta_t)[k0 + kk], kk < NK, the NK
  // accumulator vectors in registers across the tile. kNextGroup (with kBroadcast): vector k0 + kk
  // is all group g0[k0] + kk (blocked sharing with W channels per group, as PTv2's 64 channels in
  // 8 groups on AVX2), so each weight is read at an offset known at compile time; with the groups
  // in a per-vector array instead, GCC kept the array on the stack and reloaded it for every pair
  // (the PTv2 layer 1.5 ms slower on one thread).
  //
  // The segment's sums start from zero and are added to acc at the end (two-level summation, as in
  // aggregate_vector). kToOutput: the segment is the query's whole candidate list, so the sums
  // leave as the output, acc[c] = sum * inv[g(c)] with inv the reciprocal softmax sums ("acc" is
  // then the output row): no accumulator row in scratch to load, store and finish.
  template <bool kPos, int NK, int kKind, bool kNextGroup = false, bool kToOutput = false>
  void fast_aggregate(const T* e, int64_t n, const T* const* vrows, const T* const* prows, T* acc,
                      int64_t k0, T* tmp, const T* inv = nullptr) const {
    V a[NK];
    int64_t go[NK];
    for (int kk = 0; kk < NK; ++kk) {
      a[kk] = V::zero();
      go[kk] = g0[k0 + kk];
    }
    const T* e0 = e + (kNextGroup ? go[0] : 0);
    for (int64_t t = 0; t < n; ++t) {
      const T* vr = vrows[t] + k0 * W;
      const T* pr = prows[t] + k0 * W;
      const T* er = e0 + t * W;
      for (int kk = 0; kk < NK; ++kk) {
        const V x = kPos ? V::load(vr + kk * W) + V::load(pr + kk * W) : V::load(vr + kk * W);
        V wt;
        if (kKind == kBroadcast && kNextGroup)
          wt = V::set1(er[kk]);
        else if (kKind == kBroadcast)
          wt = V::set1(er[go[kk]]);
        else if (kKind == kContiguous)
          wt = V::load(er + go[kk]);
        else
          wt = expand<kGathered>(er, k0 + kk, tmp);
        a[kk] = fma(wt, x, a[kk]);
      }
    }
    for (int kk = 0; kk < NK; ++kk) {
      if (kToOutput)
        a[kk] = a[kk] * expand<kKind>(inv, k0 + kk, tmp);
      else
        a[kk] = a[kk] + V::load(acc + (k0 + kk) * W);
      a[kk].store(acc + (k0 + kk) * W);
    }
  }

  // acc += the segment's weights times (v + delta), or with kToOutput (the whole candidate list in
  // one segment) out = that sum times inv, per channel vector by the fastest form its groups allow.
  template <bool kPos, bool kToOutput>
  void fast_aggregate_all(const T* e, int64_t n, const T* const* vrows, const T* const* prows, T* acc,
                          T* tmp, const T* inv = nullptr) const {
    int64_t k = 0;
    for (; k + 8 <= nvec; k += 8) {
      bool all_b = true, all_c = true, next = true;
      for (int64_t kk = k; kk < k + 8; ++kk) {
        all_b = all_b && kind[kk] == kBroadcast;
        all_c = all_c && kind[kk] == kContiguous;
        next = next && g0[kk] == g0[k] + (kk - k);
      }
      if (all_b && next)
        fast_aggregate<kPos, 8, kBroadcast, true, kToOutput>(e, n, vrows, prows, acc, k, tmp, inv);
      else if (all_b)
        fast_aggregate<kPos, 8, kBroadcast, false, kToOutput>(e, n, vrows, prows, acc, k, tmp, inv);
      else if (all_c)
        fast_aggregate<kPos, 8, kContiguous, false, kToOutput>(e, n, vrows, prows, acc, k, tmp, inv);
      else
        break;
    }
    for (; k < nvec; ++k) {
      switch (kind[k]) {
        case kBroadcast: fast_aggregate<kPos, 1, kBroadcast, false, kToOutput>(e, n, vrows, prows, acc, k, tmp, inv); break;
        case kContiguous: fast_aggregate<kPos, 1, kContiguous, false, kToOutput>(e, n, vrows, prows, acc, k, tmp, inv); break;
        default: fast_aggregate<kPos, 1, kGathered, false, kToOutput>(e, n, vrows, prows, acc, k, tmp, inv); break;
      }
    }
    for (int64_t c = c_full; c < p.c; ++c) {
      const int64_t g = gmap[c];
      T sum = T(0);
      for (int64_t t = 0; t < n; ++t) sum += e[t * W + g] * (kPos ? vrows[t][c] + prows[t][c] : vrows[t][c]);
      acc[c] = kToOutput ? sum * inv[g] : acc[c] + sum;
    }
  }

  // A tile of kPairTile pairs: whole queries' candidate lists when they are short (the neighbour
  // form's S), else one query's candidates in chunks. Its hidden rows and logits are computed for
  // all its pairs first (W1 delta streams the tile's delta rows, contiguous in memory, through a
  // long FMA loop), then each query's softmax and aggregation run over its segment, re-reading
  // delta from cache.
  template <bool kPos>
  void fast_item(int64_t b, int64_t i0, int64_t i1, T* scratch) const {
    constexpr T neg_inf = -std::numeric_limits<T>::infinity();
    T* h = scratch + off_h;
    T* u = scratch + off_u;
    T* madd = scratch + off_madd;
    const T* zero = scratch + off_zero;
    const T** krows = reinterpret_cast<const T**>(scratch + scratch_elems);
    const T** vrows = krows + tcap;
    const T** prows = vrows + tcap;
    const T** pkrows = prows + tcap;
    const T** pqrows = pkrows + tcap;
    int64_t visible[kPairTile];
    const int64_t per = p.lk <= kPairTile ? kPairTile / p.lk : 1;  // queries per tile
    const int64_t chunk = min64(p.lk, kPairTile);
    for (int64_t iq = i0; iq < i1; iq += per) {
      const int64_t nq = min64(per, i1 - iq);
      for (int64_t s0 = 0; s0 < p.lk; s0 += chunk) {
        const int64_t n = min64(chunk, p.lk - s0);
        int64_t np = 0;
        for (int64_t q = 0; q < nq; ++q, np += n) {
          visible[q] = gather(b, iq + q, s0, n, n, zero, krows + np, vrows + np, prows + np, pkrows + np, madd + np);
          const T* pq = proj.ptr + (b * p.lq + iq + q) * hpad;
          for (int64_t t = 0; t < n; ++t) pqrows[np + t] = pq;
        }
        const int64_t npad = round_up(np, 8);
        for (int64_t t = np; t < npad; ++t) krows[t] = vrows[t] = prows[t] = pkrows[t] = pqrows[t] = zero;
        if (s0 + chunk >= p.lk) prefetch_key_projections(b, iq + nq, min64(per, i1 - iq - nq));
        // Each phase runs over the whole tile before the next reads its results back: a
        // broadcast load of one lane of a vector stored just before would wait for the store.
        for (int64_t t = 0; t < npad; t += 8) fast_hidden<kPos>(pqrows + t, prows + t, pkrows + t, h + t * W);
        for (int64_t t = 0; t < npad; t += 8) {
          // The value rows the aggregation will gather (neighbour form), asked for here: W1 delta,
          // before, is bound by its loads and would slow down (5 cycles a pair), and asked for a
          // tile ahead, all at once, they mostly missed (the aggregation 9 cycles a pair slower).
          if (p.index)
            for (int64_t x = t; x < t + 8; ++x) prefetch_row(vrows[x], p.c * int64_t(sizeof(T)));
          fast_logits(h + t * W, u + t * W);
        }
        for (int64_t t = 0; t < np; ++t) {
          if (krows[t] == zero)
            V::set1(neg_inf).store(u + t * W);
          else if (p.mask_kind == MaskKind::additive)
            (V::load(u + t * W) + V::set1(madd[t])).store(u + t * W);
        }
        for (int64_t q = 0; q < nq; ++q)
          fast_softmax(b, iq + q, s0, n, u + q * n * W, visible[q], scratch + off_qs + q * 4 * W);
        for (int64_t q = 0; q < nq; ++q)
          fast_accumulate<kPos>(b, iq + q, s0, n, u + q * n * W, vrows + q * n, prows + q * n, visible[q],
                                scratch + off_qs + q * 4 * W, scratch);
      }
    }
  }

  // Prefetch the key-projection rows of queries [i, i + nq) (neighbour form): the next tile's
  // hidden rows start from them.
  void prefetch_key_projections(int64_t b, int64_t i, int64_t nq) const {
    if (!p.index || nq <= 0) return;
    const int64_t* index = p.index + i * p.lk;
    const T* pk = proj.ptr + (pq_rows + b * p.key_rows) * hpad;
    for (int64_t s = 0; s < nq * p.lk; ++s) {
      const int64_t j = index[s];
      if (j >= 0) prefetch_row(pk + j * hpad, hpad * int64_t(sizeof(T)));
    }
  }

  // Candidates [s0, s0 + n) of query i, part 1: their logits (e, n rows) fold into the query's
  // online softmax state st (m, previous safe max, l, started flag; W each), started at s0 == 0,
  // and become 2^(u - max); st's fourth row gets the accumulator's rescale factor.
  void fast_softmax(int64_t b, int64_t i, int64_t s0, int64_t n, T* e, int64_t visible, T* st) const {
    constexpr T neg_inf = -std::numeric_limits<T>::infinity();
    const V vneg_inf = V::set1(neg_inf);
    T* m = st;
    T* ms = st + W;
    T* l = st + 2 * W;
    // flags[0]: 0 before any visible candidate, 1 after, 2 when the accumulator must first be
    // rescaled by the factor this call left in ms.
    T* flags = st + 3 * W;
    if (s0 == 0) {
      vneg_inf.store(m);
      V::zero().store(ms);
      V::zero().store(l);
      flags[0] = T(0);
    }
    if (p.weights) {
      T* wrow = static_cast<T*>(p.weights) + (b * p.lq + i) * p.lk * p.groups;
      for (int64_t t = 0; t < n; ++t)
        for (int64_t g = 0; g < p.groups; ++g) wrow[(s0 + t) * p.groups + g] = e[t * W + g];
    }
    if (visible == 0) return;
    const bool started = flags[0] != T(0);
    V top = vneg_inf;
    for (int64_t t = 0; t < n; ++t) top = max(top, V::load(e + t * W));
    const V m_new = max(V::load(m), top);
    const V safe = select_eq(m_new, vneg_inf, V::zero(), m_new);  // no visible key yet: any finite value
    V sum = V::zero();
    for (int64_t t = 0; t < n; ++t) {
      const V x = vexp2_softmax(V::load(e + t * W) - safe);
      x.store(e + t * W);
      sum = sum + x;
    }
    V lg = V::load(l);
    if (started) {
      // The accumulator's rescale factor goes where ms was: fast_accumulate applies it, then
      // restores ms from m's safe value.
      const V factor = vexp2(V::load(ms) - safe);
      lg = lg * factor;
      factor.store(ms);
    }
    (lg + sum).store(l);
    m_new.store(m);
    flags[0] = started ? T(2) : T(1);  // 2: rescale the accumulator by the factor in ms first
  }

  // Part 2: acc += the segment's weights times (v + delta); the last segment writes the output.
  template <bool kPos>
  void fast_accumulate(int64_t b, int64_t i, int64_t s0, int64_t n, const T* e, const T* const* vrows,
                       const T* const* prows, int64_t visible, T* st, T* scratch) const {
    constexpr T neg_inf = -std::numeric_limits<T>::infinity();
    T* acc = scratch + off_acc;
    T* tmp = scratch + off_tmp;
    T* m = st;
    T* ms = st + W;
    T* flags = st + 3 * W;
    const int64_t row = b * p.lq + i;
    T* wrow = p.weights ? static_cast<T*>(p.weights) + row * p.lk * p.groups : nullptr;
    const V vneg_inf = V::set1(neg_inf), mv = V::load(m);
    if (s0 == 0 && n == p.lk && visible > 0) {
      // The whole candidate list in one segment (the neighbour form's S): the sums stay in
      // registers from zero to the output row, without the accumulator row's loads, stores and
      // finish (the PTv2 layer: 0.2-0.7 ms of 29 on one thread).
      T* inv = tmp + W;
      reciprocal_sums(st + 2 * W, inv);
      select_eq(mv, vneg_inf, V::zero(), mv).store(ms);
      fast_aggregate_all<kPos, true>(e, n, vrows, prows, static_cast<T*>(p.out) + row * p.c, tmp, inv);
      if (wrow) normalize_weights(wrow, ms, inv);
      return;
    }
    if (s0 == 0)
      for (int64_t c = 0; c < cpad; ++c) acc[c] = T(0);
    if (visible > 0) {
      if (flags[0] == T(2)) scale_acc(acc, ms, tmp);
      select_eq(mv, vneg_inf, V::zero(), mv).store(ms);
      flags[0] = T(1);
      fast_aggregate_all<kPos, false>(e, n, vrows, prows, acc, tmp);
    }
    if (s0 + n >= p.lk) finish(row, acc, st + 2 * W, ms, wrow, tmp, tmp + W);
  }

  // Online softmax per group: folds the tile's maxima into m, rescales l (and returns the factor in
  // scratch's sc row for the accumulator), turns u into 2^(u - max) and adds it to l.
  void softmax_update(T* u, int64_t n, bool started, T* scratch) const {
    constexpr T neg_inf = -std::numeric_limits<T>::infinity();
    T* m = scratch + off_m;
    T* ms = scratch + off_ms;
    T* l = scratch + off_l;
    T* sc = scratch + off_sc;
    const V vneg_inf = V::set1(neg_inf), zero = V::zero();
    for (int64_t g = 0; g < gs; g += W) {
      V top = vneg_inf;
      for (int64_t t = 0; t < n; ++t) top = max(top, V::load(u + t * gs + g));
      const V m_old = V::load(m + g), m_new = max(m_old, top);
      const V safe = select_eq(m_new, vneg_inf, zero, m_new);  // no visible key yet: any finite value
      V sum = zero;
      for (int64_t t = 0; t < n; ++t) {
        const V e = vexp2_softmax(V::load(u + t * gs + g) - safe);
        e.store(u + t * gs + g);
        sum = sum + e;
      }
      V lg = V::load(l + g);
      if (started) {
        const V factor = vexp2(V::load(ms + g) - safe);  // ms: the previous safe max
        factor.store(sc + g);
        lg = lg * factor;
      }
      (lg + sum).store(l + g);
      m_new.store(m + g);
      safe.store(ms + g);
    }
    if (started) scale_acc(scratch + off_acc, sc, scratch + off_tmp);
  }

  // The W weights of channel vector k from a row of per-group values.
  template <int kKind>
  V expand(const T* row, int64_t k, T* tmp) const {
    if (kKind == kBroadcast) return V::set1(row[g0[k]]);
    if (kKind == kContiguous) return V::load(row + g0[k]);
    for (int64_t l = 0; l < W; ++l) tmp[l] = row[gmap[k * W + l]];
    return V::load(tmp);
  }

  V expand_any(const T* row, int64_t k, T* tmp) const {
    switch (kind[k]) {
      case kBroadcast: return expand<kBroadcast>(row, k, tmp);
      case kContiguous: return expand<kContiguous>(row, k, tmp);
      default: return expand<kGathered>(row, k, tmp);
    }
  }

  void scale_acc(T* acc, const T* factor, T* tmp) const {
    for (int64_t k = 0; k < nvec; ++k) (V::load(acc + k * W) * expand_any(factor, k, tmp)).store(acc + k * W);
    for (int64_t c = c_full; c < p.c; ++c) acc[c] *= factor[gmap[c]];
  }

  // acc[c] += sum_t e_t[g(c)] (v_t[c] + delta_t[c]) over the tile's n candidates.
  template <bool kPos>
  void aggregate(const T* e, int64_t n, const T* const* vrows, const T* const* prows, T* acc, T* tmp) const {
    for (int64_t k = 0; k < nvec; ++k) {
      switch (kind[k]) {
        case kBroadcast: aggregate_vector<kPos, kBroadcast>(e, n, vrows, prows, acc, k, tmp); break;
        case kContiguous: aggregate_vector<kPos, kContiguous>(e, n, vrows, prows, acc, k, tmp); break;
        default: aggregate_vector<kPos, kGathered>(e, n, vrows, prows, acc, k, tmp); break;
      }
    }
    for (int64_t c = c_full; c < p.c; ++c) {
      const int64_t g = gmap[c];
      T sum = T(0);
      for (int64_t t = 0; t < n; ++t) sum += e[t * gs + g] * (kPos ? vrows[t][c] + prows[t][c] : vrows[t][c]);
      acc[c] += sum;
    }
  }

  template <bool kPos, int kKind>
  void aggregate_vector(const T* e, int64_t n, const T* const* vrows, const T* const* prows, T* acc,
                        int64_t k, T* tmp) const {
    // Four partial sums, so consecutive candidates do not wait on each other's FMA latency, from
    // zero and added to acc at the end: summed in two levels (candidates within a tile, then
    // tiles), a long candidate list's rounding error stays near a blocked GEMM's.
    const int64_t c0 = k * W;
    V a[4] = {V::zero(), V::zero(), V::zero(), V::zero()};
    int64_t t = 0;
    for (; t + 4 <= n; t += 4)
      for (int u = 0; u < 4; ++u) {
        const T* vrow = vrows[t + u] + c0;
        const V x = kPos ? V::load(vrow) + V::load(prows[t + u] + c0) : V::load(vrow);
        a[u] = fma(expand<kKind>(e + (t + u) * gs, k, tmp), x, a[u]);
      }
    for (; t < n; ++t) {
      const V x = kPos ? V::load(vrows[t] + c0) + V::load(prows[t] + c0) : V::load(vrows[t] + c0);
      a[0] = fma(expand<kKind>(e + t * gs, k, tmp), x, a[0]);
    }
    (V::load(acc + c0) + ((a[0] + a[1]) + (a[2] + a[3]))).store(acc + c0);
  }

  // out = acc / l per group (0 where no key was visible); weights = 2^(logit - max) / l.
  void finish(int64_t row, T* acc, const T* l, const T* ms, T* wrow, T* tmp, T* inv) const {
    reciprocal_sums(l, inv);
    T* out = static_cast<T*>(p.out) + row * p.c;
    for (int64_t k = 0; k < nvec; ++k) (V::load(acc + k * W) * expand_any(inv, k, tmp)).store(out + k * W);
    for (int64_t c = c_full; c < p.c; ++c) out[c] = acc[c] * inv[gmap[c]];
    if (wrow) normalize_weights(wrow, ms, inv);
  }

  // inv = 1 / l per group, 0 where l is 0 (no visible key).
  void reciprocal_sums(const T* l, T* inv) const {
    const V zero = V::zero(), one = V::set1(T(1));
    for (int64_t g = 0; g < gs; g += W) {
      const V lg = V::load(l + g);
      select_eq(lg, zero, zero, one / lg).store(inv + g);
    }
  }

  // The returned weights row, holding base-2 logits, becomes 2^(logit - safe max) / l.
  void normalize_weights(T* wrow, const T* ms, const T* inv) const {
    const int64_t g_full = p.groups / W * W;
    for (int64_t s = 0; s < p.lk; ++s) {
      T* w = wrow + s * p.groups;
      for (int64_t g = 0; g < g_full; g += W)
        (vexp2(V::load(w + g) - V::load(ms + g)) * V::load(inv + g)).store(w + g);
      for (int64_t g = g_full; g < p.groups; ++g) w[g] = T(std::exp2(w[g] - ms[g])) * inv[g];
    }
  }
};

template <class T>
static void vector_attention_typed(const VectorAttentionParams& p) {
  const VectorAttentionPlan<T> plan(p);
  const double per_pair = double(p.c) * double(p.hidden + 4) + double(p.groups) * double(p.hidden + 8);
  const double work = double(p.batch) * double(p.lq) * double(p.lk) * per_pair;
  const bool parallel = p.num_threads > 1 && work > 2e5;
  if (plan.proj_units() > 0)
    for_each_unit(plan.proj_units(), parallel, p.num_threads, size_t(p.c + 16) * sizeof(T),
                  [&plan](int64_t unit, void* scratch) { plan.run_proj_unit(unit, static_cast<T*>(scratch)); });
  if (plan.items() == 0) return;
  for_each_unit(plan.items(), parallel, p.num_threads, plan.scratch_bytes,
                [&plan](int64_t item, void* scratch) { plan.run_item(item, static_cast<T*>(scratch)); });
}

// Whether this ISA's fast path (uses_fast_path) takes p.
static bool vector_attention_fast_path(const VectorAttentionParams& p) {
  return p.f64 ? VectorAttentionPlan<double>::uses_fast_path(p) : VectorAttentionPlan<float>::uses_fast_path(p);
}

static void vector_attention(const VectorAttentionParams& p) {
  if (p.f64)
    vector_attention_typed<double>(p);
  else
    vector_attention_typed<float>(p);
}

}  // namespace FASTATTN_ISA
}  // namespace fastattn
