// The kernel table: the chosen ISA's entry points, picked once.
#pragma once

#include "cpu/isa.h"
#include "cpu/kernels.h"

namespace fastattn {
namespace cpu {

SdpaKernel sdpa_kernel(Isa isa);
AttentionKernel attention_kernel(Isa isa);
LinearKernel linear_kernel(Isa isa);
VectorAttentionKernel vector_attention_kernel(Isa isa);
LayerNormKernel layer_norm_kernel(Isa isa);

// The ISA a call runs on: `chosen`, except that on AVX-512 two kinds of call that would leave
// 512-bit vectors mostly empty run on the AVX2 kernels (every AVX-512 CPU has AVX2, FMA and F16C),
// unless handover_enabled() is false. The caller names the ISA returned in last_kernel().
Isa sdpa_isa(Isa chosen, const SdpaParams& p);
Isa vector_attention_isa(Isa chosen, const VectorAttentionParams& p);

}  // namespace cpu
}  // namespace fastattn
