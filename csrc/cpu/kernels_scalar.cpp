// The portable path: built without ISA flags, runs on any CPU.
#define FASTATTN_ISA scalar
#include "cpu/simd_scalar.h"

namespace fastattn {
namespace scalar {
// One-lane "vectors": an 8 x 2 block still gives the compiler independent accumulators.
struct Tuning {
  static constexpr int micro_rows = 8, micro_vecs = 2, narrow_rows = 8;
  static constexpr int pv_unroll = 1;  // keys per pass of the P V micro-kernel
  static constexpr long block_n = 64, block_n_short = 64, cols_target = 64;
};
}  // namespace scalar
}  // namespace fastattn

#include "cpu/kernels.h"
#include "cpu/sdpa_kernel.h"
#include "cpu/attention_kernel.h"
#include "cpu/linear_kernel.h"
#include "cpu/vector_attention_kernel.h"
#include "cpu/layer_norm_kernel.h"

void fastattn::cpu::sdpa_scalar(const SdpaParams& p) { fastattn::scalar::sdpa(p); }
void fastattn::cpu::attention_scalar(const AttentionParams& p) { fastattn::scalar::attention(p); }
void fastattn::cpu::linear_scalar(const LinearParams& p) { fastattn::scalar::linear(p); }
void fastattn::cpu::vector_attention_scalar(const VectorAttentionParams& p) {
  fastattn::scalar::vector_attention(p);
}
void fastattn::cpu::layer_norm_scalar(const LayerNormParams& p) { fastattn::scalar::layer_norm(p); }
