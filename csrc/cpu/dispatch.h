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

}  // namespace cpu
}  // namespace fastattn
