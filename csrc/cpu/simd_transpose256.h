// Register transposes on 256-bit registers: 8 x 8 floats, 4 x 4 doubles. The SDPA kernel packs
// queries into Q^T and unpacks O^T into output rows with them. One set of shuffles serves the AVX2
// wrapper directly and the AVX-512 one as blocks of its 16 x 16 (8 x 8) transpose, so both paths
// run the same (AVX2-tested) code. Included by simd_avx2.h and simd_avx512.h inside their ISA's
// namespace.
#pragma once

#include <immintrin.h>

namespace fastattn {
namespace FASTATTN_ISA {

// r[k] becomes column k of the 8 x 8 matrix whose rows were r[0..7].
static inline void transpose8(__m256* r) {
  __m256 t[8], s[8];
  for (int k = 0; k < 8; k += 2) {
    t[k] = _mm256_unpacklo_ps(r[k], r[k + 1]);      // a0 b0 a1 b1 | a4 b4 a5 b5
    t[k + 1] = _mm256_unpackhi_ps(r[k], r[k + 1]);  // a2 b2 a3 b3 | a6 b6 a7 b7
  }
  for (int k = 0; k < 8; k += 4) {
    s[k] = _mm256_shuffle_ps(t[k], t[k + 2], 0x44);      // a0 b0 c0 d0 | a4 b4 c4 d4
    s[k + 1] = _mm256_shuffle_ps(t[k], t[k + 2], 0xEE);  // a1 b1 c1 d1 | a5 b5 c5 d5
    s[k + 2] = _mm256_shuffle_ps(t[k + 1], t[k + 3], 0x44);
    s[k + 3] = _mm256_shuffle_ps(t[k + 1], t[k + 3], 0xEE);
  }
  for (int k = 0; k < 4; ++k) {
    r[k] = _mm256_permute2f128_ps(s[k], s[k + 4], 0x20);
    r[k + 4] = _mm256_permute2f128_ps(s[k], s[k + 4], 0x31);
  }
}

// r[k] becomes column k of the 4 x 4 matrix whose rows were r[0..3].
static inline void transpose4(__m256d* r) {
  const __m256d t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
  const __m256d t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
  r[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
  r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
  r[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
  r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
}

}  // namespace FASTATTN_ISA
}  // namespace fastattn
