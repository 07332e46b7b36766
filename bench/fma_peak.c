/* The machine's AVX2 FMA peak: 12 independent vfmadd231ps chains per thread (enough to cover the
 * FMA latency on two pipes), one thread per core, best of 5 runs.
 *
 *   gcc -O3 -mavx2 -mfma -fopenmp bench/fma_peak.c -o /tmp/fma_peak && /tmp/fma_peak [threads]
 */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

enum { kChains = 12 };

int main(int argc, char** argv) {
  const int threads = argc > 1 ? atoi(argv[1]) : omp_get_num_procs();
  const long iters = 200000000;
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    const double t0 = omp_get_wtime();
#pragma omp parallel num_threads(threads)
    {
      __m256 acc[kChains];
      for (int i = 0; i < kChains; ++i) acc[i] = _mm256_set1_ps(i * 0.001f);
      const __m256 b = _mm256_set1_ps(0.9999f), c = _mm256_set1_ps(0.0001f);
      for (long i = 0; i < iters; ++i)
        for (int j = 0; j < kChains; ++j) acc[j] = _mm256_fmadd_ps(acc[j], b, c);
      float sink = 0;
      for (int i = 0; i < kChains; ++i) sink += acc[i][0];
      if (sink == 12345.f) printf("%f\n", sink); /* keeps the loop alive */
    }
    const double gflops = 2.0 * 8 * kChains * (double)iters * threads / (omp_get_wtime() - t0) / 1e9;
    if (gflops > best) best = gflops;
  }
  printf("AVX2 FMA peak, %d threads: %.1f GFLOP/s\n", threads, best);
  return 0;
}
