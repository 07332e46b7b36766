// The AVX2 + FMA + F16C path. Compiled with -mavx2 -mfma -mf16c; dispatch calls it only when cpuid
// and xgetbv say the CPU and OS support all three.
#define FASTATTN_ISA avx2
#include "cpu/simd_avx2.h"

namespace fastattn {
namespace avx2 {
// 16 ymm registers. Wide block: 6 keys (or value dims) x 2 vectors of 8 queries = 12 accumulators
// + 2 loaded + 1 broadcast, 8 loads per 12 FMAs. Narrow block (decode): 12 x 1.
struct Tuning {
  static constexpr int micro_rows = 6, micro_vecs = 2, narrow_rows = 12;
  static constexpr long block_n = 48, cols_target = 96;
};
}  // namespace avx2
}  // namespace fastattn

#include "cpu/kernels.h"
#include "cpu/sdpa_kernel.h"

void fastattn::cpu::sdpa_avx2(const SdpaParams& p) { fastattn::avx2::sdpa(p); }
