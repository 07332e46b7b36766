/* The machine's read bandwidth: 256 MB summed with AVX2 loads into 4 independent accumulators,
 * split statically over the threads, best of 5 runs. Decode attention reads K and V once and
 * writes almost nothing, so this, not a copy, is the rate it can approach.
 *
 *   gcc -O3 -mavx2 -fopenmp bench/read_peak.c -o /tmp/read_peak && /tmp/read_peak [threads]
 */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char** argv) {
  const int threads = argc > 1 ? atoi(argv[1]) : omp_get_num_procs();
  const long n = (256L << 20) / sizeof(float);
  float* a = aligned_alloc(64, n * sizeof(float));
  if (!a) return 1;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (long i = 0; i < n; ++i) a[i] = 1.0f; /* each thread touches the pages it will read */
  double best = 0;
  float total = 0;
  for (int rep = 0; rep < 5; ++rep) {
    const double t0 = omp_get_wtime();
    float sum = 0;
#pragma omp parallel num_threads(threads) reduction(+ : sum)
    {
      __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
#pragma omp for schedule(static)
      for (long i = 0; i < n; i += 32) {
        s0 = _mm256_add_ps(s0, _mm256_load_ps(a + i));
        s1 = _mm256_add_ps(s1, _mm256_load_ps(a + i + 8));
        s2 = _mm256_add_ps(s2, _mm256_load_ps(a + i + 16));
        s3 = _mm256_add_ps(s3, _mm256_load_ps(a + i + 24));
      }
      float lanes[8];
      _mm256_storeu_ps(lanes, _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
      for (int k = 0; k < 8; ++k) sum += lanes[k];
    }
    const double gbs = n * sizeof(float) / (omp_get_wtime() - t0) / 1e9;
    if (gbs > best) best = gbs;
    total += sum;
  }
  printf("read bandwidth, %d threads: %.1f GB/s (checksum %.0f)\n", threads, best, total);
  free(a);
  return 0;
}
