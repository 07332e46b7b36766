// Transposed sums on 256-bit registers: lane r of the result is the sum of a[r]'s lanes. One
// hadd tree serves the AVX2 wrapper directly and the AVX-512 one after it adds each 512-bit
// vector's halves, so both paths run the same (AVX2-tested) code. Included by simd_avx2.h and
// simd_avx512.h inside their ISA's namespace.
#pragma once

#include <immintrin.h>

namespace fastattn {
namespace FASTATTN_ISA {

// 8 vectors of 8 floats -> one vector of their 8 sums.
static inline __m256 lane_sums8(const __m256* a) {
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
  // u0 lanes: sums of a0..a3 over the low 128 bits, then over the high 128 bits; u1 for a4..a7
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// 4 vectors of 4 doubles -> one vector of their 4 sums.
static inline __m256d lane_sums4(const __m256d* a) {
  const __m256d t0 = _mm256_hadd_pd(a[0], a[1]), t1 = _mm256_hadd_pd(a[2], a[3]);
  return _mm256_add_pd(_mm256_permute2f128_pd(t0, t1, 0x20), _mm256_permute2f128_pd(t0, t1, 0x31));
}

}  // namespace FASTATTN_ISA
}  // namespace fastattn
