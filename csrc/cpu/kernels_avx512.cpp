// The AVX-512 path (F, BW, DQ, VL) in full 16-wide registers. Compiled with those flags; dispatch
// calls it only when cpuid and xgetbv say the CPU and OS support them.
#define FASTATTN_ISA avx512
#include "cpu/simd_avx512.h"

namespace fastattn {
namespace avx512 {
// 32 zmm registers. Wide block: 8 keys (or value dims) x 3 vectors of 16 queries = 24
// accumulators + 3 loaded + 1 broadcast; 8 divides the usual head dims (12 x 2 left 4- and 8-row tails
// at 64 and 128, and its 12 key-row pointers did not fit the integer registers). Narrow block
// (decode): 24 x 1. Items of about 192 queries: lq = 1024 splits into five items of 192 and one
// of 64 (two 32-query blocks), where 144 left a last item of 16 on the narrow block. Measured on
// a 2-core Cascade Lake (bench/RESULTS.md, eighth session): 12 x 2 with 128-query items reached
// 84 GFLOP/s on one thread at (1,8,1024,1024,64), this tuning 100-104.
struct Tuning {
  static constexpr int micro_rows = 8, micro_vecs = 3, narrow_rows = 24;
  static constexpr int pv_unroll = 2;  // keys per pass of the P V micro-kernel
  static constexpr long block_n = 96, block_n_short = 96, cols_target = 192;
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
