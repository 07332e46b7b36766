// The general attention module (fastattn.attention) for one ISA: scores of every query with every
// key, an alignment over the keys (softmax, sigmoid, sparsemax, hard), and the context as the
// weighted sum of the values, fused. Included after sdpa_kernel.h in the same per-ISA namespace:
// it reuses its SIMD wrapper, tiling constants, scratch arena and micro-kernels.
//
// Work item: (batch, block of NR queries). Scores are kept transposed (keys down, queries across)
// for the whole row of keys, O(Lk) memory per query, because sparsemax and hard need the whole row;
// every alignment then runs down the columns, W queries per vector, with no horizontal reductions:
//   Q^T block -> S^T = K Q^T (dot, activated: micro-kernel; additive: act(q + k) . w per key)
//   -> masks -> alignment in place -> O^T = V^T A^T (micro-kernel) -> context, weights.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>

#include "cpu/simd_activation.h"
#include "fastattn/attention_params.h"

namespace fastattn {
namespace FASTATTN_ISA {

template <class T>
struct AttentionPlan {
  using V = typename VecOf<T>::type;
  static constexpr int W = V::W;
  static constexpr int R = Tuning::micro_rows, NV = Tuning::micro_vecs;
  static constexpr int64_t NR = int64_t(NV) * W;  // queries per work item
  static constexpr int64_t BN = round_up(Tuning::block_n, R);
  // Additive scores take keys kKeys at a time; key blocks are padded with zero keys to kPad.
  static constexpr int kKeys = 4;
  static constexpr int64_t kPad = std::lcm(R, kKeys);
  static_assert(BN % kPad == 0, "padded key groups must tile a key block");
  // Sparsemax's threshold: bisection steps before the exact solve on the support they find.
  static constexpr int kBisections = sizeof(T) == 8 ? 60 : 30;

  // Additive tanh and sigmoid in product form (product_scores): |q|, |k| up to kExpRange keep
  // e^(f q) and e^(f k) normal numbers (|f x| <= 80). Batches whose keys lie at one offset (keys
  // broadcast over batch dims) share a key set: key_set[b] is batch b's, key_exp holds e^(f k),
  // one row of d per (set, key), and key_exp_ok[set] says the set's keys are all in range; null
  // when not in use.
  static constexpr T kExpRange = T(40);
  T* key_exp = nullptr;
  const uint8_t* key_exp_ok = nullptr;
  const int64_t* key_set = nullptr;
  T w_sum = T(0);

  const AttentionParams& p;
  int64_t q_blocks, lk_pad;
  int64_t off_st, off_ot, off_zero, scratch_elems;
  size_t scratch_bytes;

  explicit AttentionPlan(const AttentionParams& params) : p(params) {
    q_blocks = (p.lq + NR - 1) / NR;
    check_buffer_elems((double(p.lk) + double(BN + p.d + p.dv)) * double(NR));  // S^T holds every key
    lk_pad = round_up(max64(p.lk, 1), BN);
    off_st = p.d * NR;
    off_ot = off_st + lk_pad * NR;
    off_zero = off_ot + p.dv * NR;
    scratch_elems = round_up(off_zero + max64(p.d, p.dv) + R, 8);
    scratch_bytes = size_t(scratch_elems) * sizeof(T) + 2 * size_t(BN) * sizeof(const T*);
  }

  int64_t items() const { return p.batch * q_blocks; }

  void run_item(int64_t item, T* scratch) const {
    const int64_t b = item / q_blocks, i0 = (item % q_blocks) * NR;
    const int64_t rows = min64(NR, p.lq - i0);
    T* qt = scratch;
    T* st = scratch + off_st;
    T* ot = scratch + off_ot;
    T* zero_row = scratch + off_zero;
    const T** krows = reinterpret_cast<const T**>(scratch + scratch_elems);
    const T** vrows = krows + BN;
    for (int64_t x = 0; x < max64(p.d, p.dv) + R; ++x) zero_row[x] = T(0);

    const T* q = static_cast<const T*>(p.q) + p.q_batch_offset[b] + i0 * p.q_row_stride;
    for (int64_t c = 0; c < NR; ++c)
      for (int64_t x = 0; x < p.d; ++x) qt[x * NR + c] = c < rows ? q[c * p.q_row_stride + x] : T(0);

    const bool product = key_exp && key_exp_ok[key_set[b]] && in_range(qt, p.d * NR);
    if (product) {
      const V f = V::set1(product_factor());
      for (int64_t x = 0; x < p.d * NR; x += W) exp_accurate(f * V::load(qt + x)).store(qt + x);
      scores(key_exp + key_set[b] * p.lk * p.d, p.d, true, qt, st, zero_row, krows);
    } else {
      scores(static_cast<const T*>(p.k) + p.k_batch_offset[b], p.k_row_stride, false, qt, st, zero_row, krows);
    }
    apply_masks(b, i0, rows, st);
    for (int64_t c0 = 0; c0 < NR; c0 += W) align(st + c0);
    context(b, st, ot, zero_row, vrows);

    T* out = static_cast<T*>(p.out) + (b * p.lq + i0) * p.dv;
    for (int64_t c = 0; c < rows; ++c)
      for (int64_t y = 0; y < p.dv; ++y) out[c * p.dv + y] = ot[y * NR + c];
    if (p.weights) {
      T* weights = static_cast<T*>(p.weights) + (b * p.lq + i0) * p.lk;
      for (int64_t c = 0; c < rows; ++c)
        for (int64_t j = 0; j < p.lk; ++j) weights[c * p.lk + j] = st[j * NR + c];
    }
  }

  // S^T for all keys (rows `row_stride` apart from `keys`; with `product`, the additive score's
  // e^(f k) rows against e^(f q) in qt), tile by tile; rows past lk (up to lk_pad) hold scores of
  // zero keys.
  void scores(const T* keys, int64_t row_stride, bool product, const T* qt, T* st, const T* zero_row,
              const T** krows) const {
    for (int64_t j0 = 0; j0 < p.lk; j0 += BN) {
      const int64_t n = min64(BN, p.lk - j0), n_pad = min64(BN, round_up(n, kPad));
      for (int64_t j = 0; j < n_pad; ++j) krows[j] = j < n ? keys + (j0 + j) * row_stride : zero_row;
      T* s = st + j0 * NR;
      if (product) {
        product_scores(qt, krows, n, s);
        continue;
      }
      if (p.score == ScoreKind::additive) {
        switch (p.act) {
          case Activation::identity: additive_scores<Activation::identity>(qt, krows, n, s); break;
          case Activation::tanh: additive_scores<Activation::tanh>(qt, krows, n, s); break;
          case Activation::relu: additive_scores<Activation::relu>(qt, krows, n, s); break;
          case Activation::sigmoid: additive_scores<Activation::sigmoid>(qt, krows, n, s); break;
        }
        continue;
      }
      for (int64_t j = 0; j < n_pad; j += R) score_micro<V, R, NV>(krows + j, qt, NR, p.d, s + j * NR, NR);
      if (p.score == ScoreKind::activated) {
        switch (p.act) {
          case Activation::identity: activate_scores<Activation::identity>(s, n); break;
          case Activation::tanh: activate_scores<Activation::tanh>(s, n); break;
          case Activation::relu: activate_scores<Activation::relu>(s, n); break;
          case Activation::sigmoid: activate_scores<Activation::sigmoid>(s, n); break;
        }
      }
    }
  }

  template <Activation A>
  void activate_scores(T* s, int64_t n) const {
    const V bias = V::set1(T(p.bias));
    for (int64_t i = 0; i < n * NR; i += W) activate<A>(V::load(s + i) + bias).store(s + i);
  }

  // s_j = sum_a term(acc, q[a], k_j[a], w[a]) for n keys, kKeys at a time: each query vector
  // loaded serves kKeys keys, and the kKeys terms are independent chains the core can overlap (a
  // runtime key count kept the accumulators on the stack and the chains serial, 3x slower). krows
  // is padded with zero keys to a multiple of R, and st has rows up to lk_pad, so whole groups of
  // kKeys are always safe to compute and store.
  template <class Term>
  void key_group_sums(const T* qt, const T* const* krows, int64_t n, T* s, Term term) const {
    const T* w = static_cast<const T*>(p.w);
    for (int64_t j = 0; j < n; j += kKeys) {
      const T* kr[kKeys];
      for (int u = 0; u < kKeys; ++u) kr[u] = krows[j + u];
      for (int64_t c0 = 0; c0 < NR; c0 += W) {
        V acc[kKeys];
        for (int u = 0; u < kKeys; ++u) acc[u] = V::zero();
        for (int64_t a = 0; a < p.d; ++a) {
          const V qa = V::load(qt + a * NR + c0), wa = V::set1(w[a]);
          for (int u = 0; u < kKeys; ++u) acc[u] = term(acc[u], qa, V::set1(kr[u][a]), wa);
        }
        for (int u = 0; u < kKeys; ++u) acc[u].store(s + (j + u) * NR + c0);
      }
    }
  }

  // s_j = sum_a w[a] act(q[a] + k_j[a]), the activation evaluated per term.
  template <Activation A>
  void additive_scores(const T* qt, const T* const* krows, int64_t n, T* s) const {
    key_group_sums(qt, krows, n, s, [](V acc, V qa, V kb, V wa) { return fma(wa, activate<A>(qa + kb), acc); });
  }

  // Additive tanh and sigmoid scores without evaluating either function per (query, key, a):
  //   tanh(q + k) = 1 - 2 / (1 + e^(2q) e^(2k)),   sigmoid(q + k) = 1 / (1 + e^-q e^-k),
  // so with A = e^(f q) per query (packed into qt), B = e^(f k) per key (key_exp) and f = 2 or -1,
  //   s = sum_a w[a] / (1 + A[a] B[a])   (sigmoid),   s = sum_a w[a] - 2 (that sum)   (tanh):
  // an FMA, a division and an add per term where the rational tanh took fifteen operations, 2.3x
  // faster. Each term is within 4e-7 of the exact tanh (absolute: near 0 it is not relative) and
  // 4.2e-7 relative of the exact sigmoid, in float32; A and B are normal numbers in range.
  T product_factor() const { return p.act == Activation::tanh ? T(2) : T(-1); }

  static bool in_range(const T* x, int64_t n) {
    bool ok = true;
    for (int64_t i = 0; i < n; ++i) ok &= std::fabs(x[i]) <= kExpRange;  // false for NaN
    return ok;
  }

  void product_scores(const T* qt, const T* const* krows, int64_t n, T* s) const {
    const V one = V::set1(T(1));
    key_group_sums(qt, krows, n, s, [one](V acc, V qa, V kb, V wa) { return acc + wa / fma(qa, kb, one); });
    if (p.act == Activation::tanh) {
      const V sum = V::set1(w_sum), two = V::set1(T(2));
      for (int64_t i = 0; i < n * NR; i += W) fma(V::zero() - two, V::load(s + i), sum).store(s + i);
    }
  }

  // key_exp rows of key set `set` = e^(f k) for key rows [r0, r1) of batch b (one of the set's
  // batches); whether all were in range.
  bool exp_keys(int64_t set, int64_t b, int64_t r0, int64_t r1) const {
    const V f = V::set1(product_factor());
    bool ok = true;
    for (int64_t r = r0; r < r1; ++r) {
      const T* k = static_cast<const T*>(p.k) + p.k_batch_offset[b] + r * p.k_row_stride;
      T* e = key_exp + (set * p.lk + r) * p.d;
      ok &= in_range(k, p.d);
      int64_t a = 0;
      for (; a + W <= p.d; a += W) exp_accurate(f * V::load(k + a)).store(e + a);
      for (; a < p.d; ++a) e[a] = std::exp(product_factor() * k[a]);
    }
    return ok;
  }

  // A masked score becomes -inf by assignment (never by adding), so NaN or Inf in a masked key
  // cannot reach the query.
  void apply_masks(int64_t b, int64_t i0, int64_t rows, T* st) const {
    constexpr T neg_inf = -std::numeric_limits<T>::infinity();
    if (p.mask_kind == MaskKind::none) return;
    for (int64_t c = 0; c < rows; ++c) {
      const int64_t at = p.mask_batch_offset[b] + (i0 + c) * p.mask_row_stride;
      if (p.mask_kind == MaskKind::additive) {
        const T* mask = static_cast<const T*>(p.mask) + at;
        for (int64_t j = 0; j < p.lk; ++j) {
          const T add = mask[j * p.mask_col_stride];
          T& s = st[j * NR + c];
          s = add == neg_inf ? neg_inf : s + add;
        }
      } else {
        const uint8_t* mask = static_cast<const uint8_t*>(p.mask) + at;
        for (int64_t j = 0; j < p.lk; ++j)
          if (!mask[j * p.mask_col_stride]) st[j * NR + c] = neg_inf;
      }
    }
  }

  // NaN in the lanes of queries with a NaN score (a NaN in their query, a visible key or an
  // additive mask), 0 elsewhere: added to their weights so NaN reaches exactly the rows that read
  // it, as softmax and sigmoid do by arithmetic. Masked scores are -inf, never NaN.
  V nan_rows(const T* s) const {
    const V zero = V::zero(), nan = V::set1(std::numeric_limits<T>::quiet_NaN());
    V poison = zero;
    for (int64_t j = 0; j < p.lk; ++j) {
      const V x = V::load(s + j * NR);
      poison = poison + select_eq(x, x, zero, nan);  // x != x only for NaN
    }
    return poison;
  }

  // Scores -> weights in place, for the W queries of column vector s[j * NR]. A query with no
  // visible key (every score -inf) gets all-zero weights under every alignment.
  void align(T* s) const {
    constexpr T neg_inf = -std::numeric_limits<T>::infinity();
    const int64_t lk = p.lk;
    const V vneg_inf = V::set1(neg_inf), zero = V::zero(), one = V::set1(T(1));
    V top = vneg_inf;
    for (int64_t j = 0; j < lk; ++j) top = max(top, V::load(s + j * NR));
    switch (p.align) {
      case AlignKind::softmax: {
        const V m = select_lt(top, V::set1(std::numeric_limits<T>::lowest()), zero, top);
        const V log2e = V::set1(T(1.44269504088896340736));
        V sum = zero;
        for (int64_t j = 0; j < lk; ++j) {
          const V e = vexp2((V::load(s + j * NR) - m) * log2e);
          e.store(s + j * NR);
          sum = sum + e;
        }
        const V inv = select_eq(sum, zero, zero, one / sum);
        for (int64_t j = 0; j < lk; ++j) (V::load(s + j * NR) * inv).store(s + j * NR);
        break;
      }
      case AlignKind::sigmoid:
        for (int64_t j = 0; j < lk; ++j) {
          const V x = V::load(s + j * NR);
          select_eq(x, vneg_inf, zero, act_sigmoid(x)).store(s + j * NR);
        }
        break;
      case AlignKind::hard: {
        // The first key reaching the top score wins (ties to the lowest index); -1 if none.
        // Comparisons skip NaN, so a query that read one gets NaN weights (nan_rows), never a
        // finite pick made as if the NaN were not there.
        const V poison = nan_rows(s);
        V best = vneg_inf, index = V::set1(T(-1));
        for (int64_t j = 0; j < lk; ++j) {
          const V x = V::load(s + j * NR);
          index = select_lt(best, x, V::set1(T(j)), index);
          best = select_lt(best, x, x, best);
        }
        for (int64_t j = 0; j < lk; ++j)
          (select_eq(index, V::set1(T(j)), one, zero) + poison).store(s + j * NR);
        break;
      }
      case AlignKind::sparsemax: {
        // On scores shifted by the row max (so the 1 of the simplex is not absorbed by large
        // scores), the threshold tau with sum_j max(z_j - tau, 0) = 1 lies in [-1, 0): bisect
        // it, then solve it exactly on the support {z_j > lo} the bisection found. The bisection's
        // comparisons skip NaN, so a query that read one gets NaN weights (nan_rows).
        const V poison = nan_rows(s);
        const V shift = select_eq(top, vneg_inf, zero, top);
        V lo = V::set1(T(-1)), hi = zero;
        for (int it = 0; it < kBisections; ++it) {
          const V mid = (lo + hi) * V::set1(T(0.5));
          V mass = zero;
          for (int64_t j = 0; j < lk; ++j) mass = mass + max(V::load(s + j * NR) - shift - mid, zero);
          hi = select_lt(mass, one, mid, hi);
          lo = select_lt(mass, one, lo, mid);
        }
        // tau = (sum of the support's z - 1) / its size: the sum compensated (Kahan), since its
        // rounding error is tau's, and with a plain sum over a support of thousands of keys the
        // weights summed to 1 only within 1e-5 (float32).
        V support_sum = zero, support_size = zero, carry = zero;
        for (int64_t j = 0; j < lk; ++j) {
          const V z = V::load(s + j * NR) - shift;
          const V y = select_lt(lo, z, z, zero) - carry;
          const V t = support_sum + y;
          carry = (t - support_sum) - y;
          support_sum = t;
          support_size = support_size + select_lt(lo, z, one, zero);
        }
        const V tau = (support_sum - one) / select_eq(support_size, zero, one, support_size);
        const V none = select_eq(top, vneg_inf, one, zero);  // 1 where no key is visible
        for (int64_t j = 0; j < lk; ++j) {
          const V weight = max(V::load(s + j * NR) - shift - tau, zero);
          (select_eq(none, one, zero, weight) + poison).store(s + j * NR);
        }
        break;
      }
    }
  }

  // O^T = V^T A^T over all keys, tile by tile (two-level sums, as in SDPA).
  void context(int64_t b, const T* st, T* ot, const T* zero_row, const T** vrows) const {
    const T* v = static_cast<const T*>(p.v) + p.v_batch_offset[b];
    for (int64_t i = 0; i < p.dv * NR; ++i) ot[i] = T(0);
    for (int64_t j0 = 0; j0 < p.lk; j0 += BN) {
      const int64_t n = min64(BN, p.lk - j0);
      for (int64_t j = 0; j < n; ++j) vrows[j] = v + (j0 + j) * p.v_row_stride;
      for (int64_t j = n; j < BN; ++j) vrows[j] = zero_row;
      const bool v_finite = rows_finite<V>(vrows, n, p.dv);
      const T* vtile = v + j0 * p.v_row_stride;
      for (int64_t y0 = 0; y0 < p.dv; y0 += R) {
        const int r = int(min64(R, p.dv - y0));
        if (v_finite)
          AccumulateTail<V, R, NV, false>::run(r, vtile, p.v_row_stride, y0, st + j0 * NR, NR, n,
                                                 ot + y0 * NR, NR);
        else
          AccumulateTail<V, R, NV, true>::run(r, vtile, p.v_row_stride, y0, st + j0 * NR, NR, n,
                                                ot + y0 * NR, NR);
      }
    }
  }
};

// Additive tanh and sigmoid in product form: finds the key sets, exponentiates each set's keys
// once (units of 64 rows, threaded like the items) and points the plan at the results, which live
// in the three blocks until the call ends.
template <class T>
static void prepare_product_form(AttentionPlan<T>& plan, const AttentionParams& p, bool parallel,
                                 HeapBlock& key_exp, HeapBlock& key_exp_ok, HeapBlock& key_sets) {
  // Key sets: one per distinct key offset, found with an open-addressing table (set index + 1,
  // 0 = empty) in O(batch); each set's keys are exponentiated once, so key_exp is no larger
  // than the keys themselves however far they broadcast.
  int64_t cap = 1;
  while (cap < 2 * p.batch) cap <<= 1;
  key_sets.ptr = std::calloc(size_t(2 * p.batch + cap), sizeof(int64_t));
  if (!key_sets.ptr) throw std::bad_alloc();
  int64_t* set_of = static_cast<int64_t*>(key_sets.ptr);
  int64_t* first_batch = set_of + p.batch;
  int64_t* table = first_batch + p.batch;
  int64_t sets = 0;
  for (int64_t b = 0; b < p.batch; ++b) {
    const int64_t off = p.k_batch_offset[b];
    uint64_t h = (uint64_t(off) * 0x9E3779B97F4A7C15ull) >> 17;
    while (table[h & (cap - 1)] && p.k_batch_offset[first_batch[table[h & (cap - 1)] - 1]] != off) ++h;
    int64_t& slot = table[h & (cap - 1)];
    if (!slot) {
      first_batch[sets] = b;
      slot = ++sets;
    }
    set_of[b] = slot - 1;
  }
  key_exp.ptr = std::malloc(size_t(sets * p.lk * p.d) * sizeof(T));
  key_exp_ok.ptr = std::malloc(size_t(sets));
  if (!key_exp.ptr || !key_exp_ok.ptr) throw std::bad_alloc();
  plan.key_exp = static_cast<T*>(key_exp.ptr);
  plan.key_set = set_of;
  uint8_t* ok = static_cast<uint8_t*>(key_exp_ok.ptr);
  for (int64_t set = 0; set < sets; ++set) ok[set] = 1;
  const T* w = static_cast<const T*>(p.w);
  for (int64_t a = 0; a < p.d; ++a) plan.w_sum += w[a];
  // Units of 64 key rows; a unit finding one out of range clears its set's flag (a race
  // between units of one set writes the same 0).
  const int64_t chunk = 64, per_set = (p.lk + chunk - 1) / chunk;
  for_each_unit(sets * per_set, parallel, p.num_threads, 64, [&](int64_t unit, void*) {
    const int64_t set = unit / per_set, r0 = (unit % per_set) * chunk;
    if (!plan.exp_keys(set, first_batch[set], r0, min64(p.lk, r0 + chunk))) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
      ok[set] = 0;
    }
  });
  plan.key_exp_ok = ok;
}

template <class T>
static void attention_typed(const AttentionParams& p) {
  AttentionPlan<T> plan(p);
  const int64_t items = plan.items();
  if (items == 0) return;
  const double work = double(p.batch) * double(p.lq) * double(p.lk) * double(p.d + p.dv + 8);
  const bool parallel = p.num_threads > 1 && items > 1 && work > 1.5e5;
  HeapBlock key_exp, key_exp_ok, key_sets;
  if (p.score == ScoreKind::additive && (p.act == Activation::tanh || p.act == Activation::sigmoid) &&
      p.lk > 0 && p.d > 0)
    prepare_product_form(plan, p, parallel, key_exp, key_exp_ok, key_sets);
  for_each_unit(items, parallel, p.num_threads, plan.scratch_bytes,
                [&plan](int64_t item, void* scratch) { plan.run_item(item, static_cast<T*>(scratch)); });
}

static void attention(const AttentionParams& p) {
  if (p.f64)
    attention_typed<double>(p);
  else
    attention_typed<float>(p);
}

}  // namespace FASTATTN_ISA
}  // namespace fastattn
