/* The machine's FMA peak: 12 independent vfmadd231ps chains per thread (enough to cover the
 * FMA latency on two pipes), one thread per core, best of 5 runs. 256-bit registers (the AVX2
 * path's peak) unless built with AVX-512, then 512-bit ones (which run at a lower clock on Intel
 * server cores, so the two peaks are not simply 1:2).
 *
 *   gcc -O3 -mavx2 -mfma -fopenmp bench/fma_peak.c -o /tmp/fma_peak && /tmp/fma_peak [threads]
 *   gcc -O3 -mavx512f -fopenmp bench/fma_peak.c -o /tmp/fma_peak512 && /tmp/fma_peak512 [threads]
 */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

enum { kChains = 12 };

#ifdef __AVX512F__
typedef __m512 vec;
#define kLanes 16
#define vset1 _mm512_set1_ps
#define vfmadd _mm512_fmadd_ps
#define kName "AVX-512"
#else
typedef __m256 vec;
#define kLanes 8
#define vset1 _mm256_set1_ps
#define vfmadd _mm256_fmadd_ps
#define kName "AVX2"
#endif

int main(int argc, char** argv) {
  const int threads = argc > 1 ? atoi(argv[1]) : omp_get_num_procs();
  const long iters = 200000000;
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    const double t0 = omp_get_wtime();
#pragma omp parallel num_threads(threads)
    {
      vec acc[kChains];
      for (int i = 0; i < kChains; ++i) acc[i] = vset1(i * 0.001f);
      const vec b = vset1(0.9999f), c = vset1(0.0001f);
      for (long i = 0; i < iters; ++i)
        for (int j = 0; j < kChains; ++j) acc[j] = vfmadd(acc[j], b, c);
      float sink = 0;
      for (int i = 0; i < kChains; ++i) sink += acc[i][0];
      if (sink == 12345.f) printf("%f\n", sink); /* keeps the loop alive */
    }
    const double gflops = 2.0 * kLanes * kChains * (double)iters * threads / (omp_get_wtime() - t0) / 1e9;
    if (gflops > best) best = gflops;
  }
  printf(kName " FMA peak, %d threads: %.1f GFLOP/s\n", threads, best);
  return 0;
}
