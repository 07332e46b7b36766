// The AVX2 + FMA + F16C path. Compiled with -mavx2 -mfma -mf16c; dispatch calls it only when cpuid
// and xgetbv say the CPU and OS support all three.
#define FASTATTN_ISA avx2
#include "cpu/simd_avx2.h"

namespace fastattn {
namespace avx2 {
// 16 ymm registers: 12 accumulators (12 keys or value dims x 8 queries) + 1 loaded + 1 broadcast.
struct Tuning {
  static constexpr int micro_rows = 12;
  static constexpr long block_n = 96, cols_target = 128;
};
}  // namespace avx2
}  // namespace fastattn

#include "cpu/kernels.h"
#include "cpu/sdpa_kernel.h"

void fastattn::cpu::sdpa_avx2(const SdpaParams& p) { fastattn::avx2::sdpa(p); }
