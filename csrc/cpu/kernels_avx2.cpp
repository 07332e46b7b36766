// The AVX2 + FMA + F16C path. Compiled with -mavx2 -mfma -mf16c; dispatch calls it only when cpuid
// and xgetbv say the CPU and OS support all three.
#define FASTATTN_ISA avx2
#include "cpu/simd_avx2.h"

namespace fastattn {
namespace avx2 {
// 16 ymm registers. Wide block: 4 keys (or value dims) x 3 vectors of 8 queries = 12 accumulators
// + 3 loaded + 1 broadcast, 7 loads per 12 FMAs; 4 divides the usual head dims. Narrow block
// (decode): 12 x 1. Key tiles of 48 keys, 72 for float32 head dims up to 64 (sdpa_kernel.h): on
// Zen 3, 72 and 96 ran alike and 1-2% faster than 48; on Cascade Lake 96 was 8-10% slower than
// 72 (the tile's value rows and weights no longer fit L1 together).
struct Tuning {
  static constexpr int micro_rows = 4, micro_vecs = 3, narrow_rows = 12;
  static constexpr int pv_unroll = 1;  // keys per pass of the P V micro-kernel
  static constexpr long block_n = 48, block_n_short = 72, cols_target = 96;
};
}  // namespace avx2
}  // namespace fastattn

#include "cpu/kernels.h"
#include "cpu/sdpa_kernel.h"
#include "cpu/attention_kernel.h"
#include "cpu/linear_kernel.h"
#include "cpu/vector_attention_kernel.h"
#include "cpu/layer_norm_kernel.h"

void fastattn::cpu::sdpa_avx2(const SdpaParams& p) { fastattn::avx2::sdpa(p); }
void fastattn::cpu::attention_avx2(const AttentionParams& p) { fastattn::avx2::attention(p); }
void fastattn::cpu::linear_avx2(const LinearParams& p) { fastattn::avx2::linear(p); }
void fastattn::cpu::vector_attention_avx2(const VectorAttentionParams& p) {
  fastattn::avx2::vector_attention(p);
}
bool fastattn::cpu::vector_attention_fast_path_avx2(const VectorAttentionParams& p) {
  return fastattn::avx2::vector_attention_fast_path(p);
}
void fastattn::cpu::layer_norm_avx2(const LayerNormParams& p) { fastattn::avx2::layer_norm(p); }
