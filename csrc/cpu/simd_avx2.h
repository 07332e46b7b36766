// The SIMD wrapper the kernels are written against, AVX2 + FMA flavour: 8 floats or 4 doubles.
// Included only by kernels_avx2.cpp; its lane sums' hadd tree and its transposes are in
// simd_lane_sums256.h and simd_transpose256.h, shared with the AVX-512 wrapper.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "cpu/half.h"
#include "cpu/simd_exp.h"
#include "cpu/simd_lane_sums256.h"
#include "cpu/simd_transpose256.h"

namespace fastattn {
namespace FASTATTN_ISA {

struct VF32 {
  using T = float;
  static constexpr int W = 8;
  __m256 v;

  static VF32 zero() { return {_mm256_setzero_ps()}; }
  static VF32 set1(float x) { return {_mm256_set1_ps(x)}; }
  static VF32 load(const float* p) { return {_mm256_loadu_ps(p)}; }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  friend VF32 operator+(VF32 a, VF32 b) { return {_mm256_add_ps(a.v, b.v)}; }
  friend VF32 operator-(VF32 a, VF32 b) { return {_mm256_sub_ps(a.v, b.v)}; }
  friend VF32 operator*(VF32 a, VF32 b) { return {_mm256_mul_ps(a.v, b.v)}; }
  friend VF32 operator/(VF32 a, VF32 b) { return {_mm256_div_ps(a.v, b.v)}; }
  friend VF32 fma(VF32 a, VF32 b, VF32 c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
  // max(a, b): b when either is NaN (the x86 rule); callers put the value that must win a NaN last.
  friend VF32 max(VF32 a, VF32 b) { return {_mm256_max_ps(a.v, b.v)}; }
  friend VF32 min(VF32 a, VF32 b) { return {_mm256_min_ps(a.v, b.v)}; }
  // a < b ? then : otherwise, per lane (false for NaN).
  friend VF32 select_lt(VF32 a, VF32 b, VF32 then, VF32 otherwise) {
    return {_mm256_blendv_ps(otherwise.v, then.v, _mm256_cmp_ps(a.v, b.v, _CMP_LT_OQ))};
  }
  // 0 where a < b, else x (NaN a keeps x): an AND with a compare mask, which unlike a blend does
  // not compete with the FMAs for their two pipes.
  friend VF32 zero_where_lt(VF32 a, VF32 b, VF32 x) {
    return {_mm256_and_ps(x.v, _mm256_cmp_ps(a.v, b.v, _CMP_NLT_UQ))};
  }
  // a == b ? then : otherwise, per lane (false for NaN).
  friend VF32 select_eq(VF32 a, VF32 b, VF32 then, VF32 otherwise) {
    return {_mm256_blendv_ps(otherwise.v, then.v, _mm256_cmp_ps(a.v, b.v, _CMP_EQ_OQ))};
  }
  // W float16 / bfloat16 values widened to float32.
  static VF32 load(const f16* p) {
    return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))};
  }
  static VF32 load(const bf16* p) {
    const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return {_mm256_castsi256_ps(_mm256_slli_epi32(h, 16))};
  }
  // p * 2^n where the low bits of t hold the integer n, -126 < n < 128 (exp2_poly's magic-number
  // rounding): 2^n is built from those bits and multiplied in, so a NaN p stays NaN whatever its
  // payload (adding n to p's exponent bits instead would turn a NaN whose low payload bits are set
  // into a number). The third operand, n as a value, is for AVX-512's vscalefps.
  friend VF32 times_pow2(VF32 p, VF32 t, VF32) {
    const __m256i e = _mm256_slli_epi32(_mm256_castps_si256(t.v), 23);
    const __m256i pow2 = _mm256_add_epi32(e, _mm256_set1_epi32(127 << 23));
    return {_mm256_mul_ps(p.v, _mm256_castsi256_ps(pow2))};
  }
  float reduce_max() const {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
  }
  float reduce_add() const {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
  }
};

struct VF64 {
  using T = double;
  static constexpr int W = 4;
  __m256d v;

  static VF64 zero() { return {_mm256_setzero_pd()}; }
  static VF64 set1(double x) { return {_mm256_set1_pd(x)}; }
  static VF64 load(const double* p) { return {_mm256_loadu_pd(p)}; }
  void store(double* p) const { _mm256_storeu_pd(p, v); }
  friend VF64 operator+(VF64 a, VF64 b) { return {_mm256_add_pd(a.v, b.v)}; }
  friend VF64 operator-(VF64 a, VF64 b) { return {_mm256_sub_pd(a.v, b.v)}; }
  friend VF64 operator*(VF64 a, VF64 b) { return {_mm256_mul_pd(a.v, b.v)}; }
  friend VF64 operator/(VF64 a, VF64 b) { return {_mm256_div_pd(a.v, b.v)}; }
  friend VF64 fma(VF64 a, VF64 b, VF64 c) { return {_mm256_fmadd_pd(a.v, b.v, c.v)}; }
  friend VF64 max(VF64 a, VF64 b) { return {_mm256_max_pd(a.v, b.v)}; }
  friend VF64 min(VF64 a, VF64 b) { return {_mm256_min_pd(a.v, b.v)}; }
  friend VF64 select_lt(VF64 a, VF64 b, VF64 then, VF64 otherwise) {
    return {_mm256_blendv_pd(otherwise.v, then.v, _mm256_cmp_pd(a.v, b.v, _CMP_LT_OQ))};
  }
  friend VF64 zero_where_lt(VF64 a, VF64 b, VF64 x) {
    return {_mm256_and_pd(x.v, _mm256_cmp_pd(a.v, b.v, _CMP_NLT_UQ))};
  }
  friend VF64 select_eq(VF64 a, VF64 b, VF64 then, VF64 otherwise) {
    return {_mm256_blendv_pd(otherwise.v, then.v, _mm256_cmp_pd(a.v, b.v, _CMP_EQ_OQ))};
  }
  friend VF64 times_pow2(VF64 p, VF64 t, VF64) {  // as VF32's, -1022 < n < 1024
    const __m256i e = _mm256_slli_epi64(_mm256_castpd_si256(t.v), 52);
    const __m256i pow2 = _mm256_add_epi64(e, _mm256_set1_epi64x(int64_t(1023) << 52));
    return {_mm256_mul_pd(p.v, _mm256_castsi256_pd(pow2))};
  }
  double reduce_max() const {
    __m128d m = _mm_max_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    m = _mm_max_sd(m, _mm_unpackhi_pd(m, m));
    return _mm_cvtsd_f64(m);
  }
  double reduce_add() const {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    s = _mm_add_sd(s, _mm_unpackhi_pd(s, s));
    return _mm_cvtsd_f64(s);
  }
};

static inline VF32 vexp2(VF32 x) { return exp2_poly(x); }
static inline VF64 vexp2(VF64 x) { return exp2_poly(x); }
// 2^x for softmax arguments x = s - max <= hi (exp2_poly without its clamp).
static inline VF32 vexp2_softmax(VF32 x) { return exp2_poly<VF32, false>(x); }
static inline VF64 vexp2_softmax(VF64 x) { return exp2_poly<VF64, false>(x); }

// Lane r of the result is the sum of a[r]'s lanes, r < W: W horizontal sums at the cost of one
// transpose (hadd tree), for dot products that run along vectors and end as one vector.
static inline VF32 lane_sums(const VF32* a) {
  __m256 v[8];
  for (int r = 0; r < 8; ++r) v[r] = a[r].v;
  return {lane_sums8(v)};
}
static inline VF64 lane_sums(const VF64* a) {
  __m256d v[4];
  for (int r = 0; r < 4; ++r) v[r] = a[r].v;
  return {lane_sums4(v)};
}

// a[k] becomes column k of the W x W matrix whose rows were a[0..W-1].
static inline void transpose(VF32* a) {
  __m256 v[8];
  for (int r = 0; r < 8; ++r) v[r] = a[r].v;
  transpose8(v);
  for (int r = 0; r < 8; ++r) a[r].v = v[r];
}
static inline void transpose(VF64* a) {
  __m256d v[4];
  for (int r = 0; r < 4; ++r) v[r] = a[r].v;
  transpose4(v);
  for (int r = 0; r < 4; ++r) a[r].v = v[r];
}

template <class T> struct VecOf;
template <> struct VecOf<float> { using type = VF32; };
template <> struct VecOf<double> { using type = VF64; };

}  // namespace FASTATTN_ISA
}  // namespace fastattn
