#include "cpu/dispatch.h"

namespace fastattn {
namespace cpu {

SdpaKernel sdpa_kernel(Isa isa) {
  switch (isa) {
#if FASTATTN_HAVE_X86
    case Isa::avx512: return &sdpa_avx512;
    case Isa::avx2: return &sdpa_avx2;
#endif
    default: return &sdpa_scalar;
  }
}

AttentionKernel attention_kernel(Isa isa) {
  switch (isa) {
#if FASTATTN_HAVE_X86
    case Isa::avx512: return &attention_avx512;
    case Isa::avx2: return &attention_avx2;
#endif
    default: return &attention_scalar;
  }
}

LinearKernel linear_kernel(Isa isa) {
  switch (isa) {
#if FASTATTN_HAVE_X86
    case Isa::avx512: return &linear_avx512;
    case Isa::avx2: return &linear_avx2;
#endif
    default: return &linear_scalar;
  }
}

VectorAttentionKernel vector_attention_kernel(Isa isa) {
  switch (isa) {
#if FASTATTN_HAVE_X86
    case Isa::avx512: return &vector_attention_avx512;
    case Isa::avx2: return &vector_attention_avx2;
#endif
    default: return &vector_attention_scalar;
  }
}

LayerNormKernel layer_norm_kernel(Isa isa) {
  switch (isa) {
#if FASTATTN_HAVE_X86
    case Isa::avx512: return &layer_norm_avx512;
    case Isa::avx2: return &layer_norm_avx2;
#endif
    default: return &layer_norm_scalar;
  }
}

}  // namespace cpu
}  // namespace fastattn
