// The SIMD wrapper the kernels are written against, AVX-512 flavour: 16 floats or 8 doubles.
// Included only by kernels_avx512.cpp.
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
  static constexpr int W = 16;
  __m512 v;

  static VF32 zero() { return {_mm512_setzero_ps()}; }
  static VF32 set1(float x) { return {_mm512_set1_ps(x)}; }
  static VF32 load(const float* p) { return {_mm512_loadu_ps(p)}; }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  friend VF32 operator+(VF32 a, VF32 b) { return {_mm512_add_ps(a.v, b.v)}; }
  friend VF32 operator-(VF32 a, VF32 b) { return {_mm512_sub_ps(a.v, b.v)}; }
  friend VF32 operator*(VF32 a, VF32 b) { return {_mm512_mul_ps(a.v, b.v)}; }
  friend VF32 operator/(VF32 a, VF32 b) { return {_mm512_div_ps(a.v, b.v)}; }
  friend VF32 fma(VF32 a, VF32 b, VF32 c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
  // max(a, b): b when either is NaN (the x86 rule); callers put the value that must win a NaN last.
  friend VF32 max(VF32 a, VF32 b) { return {_mm512_max_ps(a.v, b.v)}; }
  friend VF32 min(VF32 a, VF32 b) { return {_mm512_min_ps(a.v, b.v)}; }
  // a < b ? then : otherwise, per lane (false for NaN).
  friend VF32 select_lt(VF32 a, VF32 b, VF32 then, VF32 otherwise) {
    return {_mm512_mask_blend_ps(_mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ), otherwise.v, then.v)};
  }
  // 0 where a < b, else x (NaN a keeps x).
  friend VF32 zero_where_lt(VF32 a, VF32 b, VF32 x) {
    return {_mm512_maskz_mov_ps(_mm512_cmp_ps_mask(a.v, b.v, _CMP_NLT_UQ), x.v)};
  }
  // a == b ? then : otherwise, per lane (false for NaN).
  friend VF32 select_eq(VF32 a, VF32 b, VF32 then, VF32 otherwise) {
    return {_mm512_mask_blend_ps(_mm512_cmp_ps_mask(a.v, b.v, _CMP_EQ_OQ), otherwise.v, then.v)};
  }
  // W float16 / bfloat16 values widened to float32.
  static VF32 load(const f16* p) {
    return {_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))};
  }
  static VF32 load(const bf16* p) {
    const __m512i h = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return {_mm512_castsi512_ps(_mm512_slli_epi32(h, 16))};
  }
  // p * 2^n for an integer n, -126 < n < 128, given as a value (exp2_poly's magic-number rounding
  // also leaves it in t's low bits, which the AVX2 path uses): one vscalefps instead of building
  // 2^n from n's bits and multiplying (three instructions on the two vector ports the FMAs need).
  // A NaN p stays NaN with its payload.
  friend VF32 times_pow2(VF32 p, VF32, VF32 n) { return {_mm512_scalef_ps(p.v, n.v)}; }
  float reduce_max() const { return _mm512_reduce_max_ps(v); }
  float reduce_add() const { return _mm512_reduce_add_ps(v); }
};

struct VF64 {
  using T = double;
  static constexpr int W = 8;
  __m512d v;

  static VF64 zero() { return {_mm512_setzero_pd()}; }
  static VF64 set1(double x) { return {_mm512_set1_pd(x)}; }
  static VF64 load(const double* p) { return {_mm512_loadu_pd(p)}; }
  void store(double* p) const { _mm512_storeu_pd(p, v); }
  friend VF64 operator+(VF64 a, VF64 b) { return {_mm512_add_pd(a.v, b.v)}; }
  friend VF64 operator-(VF64 a, VF64 b) { return {_mm512_sub_pd(a.v, b.v)}; }
  friend VF64 operator*(VF64 a, VF64 b) { return {_mm512_mul_pd(a.v, b.v)}; }
  friend VF64 operator/(VF64 a, VF64 b) { return {_mm512_div_pd(a.v, b.v)}; }
  friend VF64 fma(VF64 a, VF64 b, VF64 c) { return {_mm512_fmadd_pd(a.v, b.v, c.v)}; }
  friend VF64 max(VF64 a, VF64 b) { return {_mm512_max_pd(a.v, b.v)}; }
  friend VF64 min(VF64 a, VF64 b) { return {_mm512_min_pd(a.v, b.v)}; }
  friend VF64 select_lt(VF64 a, VF64 b, VF64 then, VF64 otherwise) {
    return {_mm512_mask_blend_pd(_mm512_cmp_pd_mask(a.v, b.v, _CMP_LT_OQ), otherwise.v, then.v)};
  }
  friend VF64 zero_where_lt(VF64 a, VF64 b, VF64 x) {
    return {_mm512_maskz_mov_pd(_mm512_cmp_pd_mask(a.v, b.v, _CMP_NLT_UQ), x.v)};
  }
  friend VF64 select_eq(VF64 a, VF64 b, VF64 then, VF64 otherwise) {
    return {_mm512_mask_blend_pd(_mm512_cmp_pd_mask(a.v, b.v, _CMP_EQ_OQ), otherwise.v, then.v)};
  }
  friend VF64 times_pow2(VF64 p, VF64, VF64 n) { return {_mm512_scalef_pd(p.v, n.v)}; }  // -1022 < n < 1024
  double reduce_max() const { return _mm512_reduce_max_pd(v); }
  double reduce_add() const { return _mm512_reduce_add_pd(v); }
};

static inline VF32 vexp2(VF32 x) { return exp2_poly(x); }
static inline VF64 vexp2(VF64 x) { return exp2_poly(x); }
// 2^x for softmax arguments x = s - max <= hi (exp2_poly without its clamp).
static inline VF32 vexp2_softmax(VF32 x) { return exp2_poly<VF32, false>(x); }
static inline VF64 vexp2_softmax(VF64 x) { return exp2_poly<VF64, false>(x); }

// Lane r of the result is the sum of a[r]'s lanes, r < W: each vector's halves are added, then
// the halves' lane sums come from the AVX2 hadd tree, eight (four) vectors at a time.
static inline VF32 lane_sums(const VF32* a) {
  __m256 h[16];
  for (int r = 0; r < 16; ++r)
    h[r] = _mm256_add_ps(_mm512_castps512_ps256(a[r].v), _mm512_extractf32x8_ps(a[r].v, 1));
  return {_mm512_insertf32x8(_mm512_castps256_ps512(lane_sums8(h)), lane_sums8(h + 8), 1)};
}
static inline VF64 lane_sums(const VF64* a) {
  __m256d h[8];
  for (int r = 0; r < 8; ++r)
    h[r] = _mm256_add_pd(_mm512_castpd512_pd256(a[r].v), _mm512_extractf64x4_pd(a[r].v, 1));
  return {_mm512_insertf64x4(_mm512_castpd256_pd512(lane_sums4(h)), lane_sums4(h + 4), 1)};
}

// a[k] becomes column k of the W x W matrix whose rows were a[0..W-1]: the four 8 x 8 (4 x 4)
// blocks of 256-bit halves are transposed by the AVX2 shuffles, and the off-diagonal ones swapped.
static inline void transpose(VF32* a) {
  __m256 top_left[8], top_right[8], bottom_left[8], bottom_right[8];
  for (int r = 0; r < 8; ++r) {
    top_left[r] = _mm512_castps512_ps256(a[r].v);
    top_right[r] = _mm512_extractf32x8_ps(a[r].v, 1);
    bottom_left[r] = _mm512_castps512_ps256(a[r + 8].v);
    bottom_right[r] = _mm512_extractf32x8_ps(a[r + 8].v, 1);
  }
  transpose8(top_left);
  transpose8(top_right);
  transpose8(bottom_left);
  transpose8(bottom_right);
  for (int r = 0; r < 8; ++r) {
    a[r].v = _mm512_insertf32x8(_mm512_castps256_ps512(top_left[r]), bottom_left[r], 1);
    a[r + 8].v = _mm512_insertf32x8(_mm512_castps256_ps512(top_right[r]), bottom_right[r], 1);
  }
}
static inline void transpose(VF64* a) {
  __m256d top_left[4], top_right[4], bottom_left[4], bottom_right[4];
  for (int r = 0; r < 4; ++r) {
    top_left[r] = _mm512_castpd512_pd256(a[r].v);
    top_right[r] = _mm512_extractf64x4_pd(a[r].v, 1);
    bottom_left[r] = _mm512_castpd512_pd256(a[r + 4].v);
    bottom_right[r] = _mm512_extractf64x4_pd(a[r + 4].v, 1);
  }
  transpose4(top_left);
  transpose4(top_right);
  transpose4(bottom_left);
  transpose4(bottom_right);
  for (int r = 0; r < 4; ++r) {
    a[r].v = _mm512_insertf64x4(_mm512_castpd256_pd512(top_left[r]), bottom_left[r], 1);
    a[r + 4].v = _mm512_insertf64x4(_mm512_castpd256_pd512(top_right[r]), bottom_right[r], 1);
  }
}

template <class T> struct VecOf;
template <> struct VecOf<float> { using type = VF32; };
template <> struct VecOf<double> { using type = VF64; };

}  // namespace FASTATTN_ISA
}  // namespace fastattn
