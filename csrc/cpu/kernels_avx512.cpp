// The AVX-512 path (F, BW, DQ, VL) in full 16-wide registers. Compiled with those flags; dispatch
// calls it only when cpuid and xgetbv say the CPU and OS support them.
#define FASTATTN_ISA avx512
#include "cpu/simd_avx512.h"

namespace fastattn {
namespace avx512 {
// 32 zmm registers. Wide block: 12 keys (or value dims) x 2 vectors of 16 queries = 24
// accumulators + 2 loaded + 1 broadcast. Narrow block (decode): 24 x 1.
struct Tuning {
  static constexpr int micro_rows = 12, micro_vecs = 2, narrow_rows = 24;
  static constexpr long block_n = 96, block_n_short = 96, cols_target = 128;
};
}  // namespace avx512
}  // namespace fastattn

#include "cpu/kernels.h"
#include "cpu/sdpa_kernel.h"
#include "cpu/attention_kernel.h"
#include "cpu/linear_kernel.h"
#include "cpu/vector_attention_kernel.h"
#include "cpu/layer_norm_kernel.h"

void fastattn::cpu::sdpa_avx512(const SdpaParams& p) { fastattn::avx512::sdpa(p); }
void fastattn::cpu::attention_avx512(const AttentionParams& p) { fastattn::avx512::attention(p); }
void fastattn::cpu::linear_avx512(const LinearParams& p) { fastattn::avx512::linear(p); }
void fastattn::cpu::vector_attention_avx512(const VectorAttentionParams& p) {
  fastattn::avx512::vector_attention(p);
}
void fastattn::cpu::layer_norm_avx512(const LayerNormParams& p) { fastattn::avx512::layer_norm(p); }
