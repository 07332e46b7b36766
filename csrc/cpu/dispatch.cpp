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

// SDPA calls of at most 65536 flops (4 B Hq Lq Lk D: (1,1,1,16,16,16) has 16384): 16 queries
// fill at most one 512-bit vector and the 24-key narrow blocks are half padding at Lk = 16, so the
// AVX-512 kernel was slower there, and from Python the whole call took 0.5-1.3 us longer (5.4
// against 4.8 us for the tiny shape, Cascade Lake; bench/RESULTS.md). From (1,1,1,32,32,32) on,
// the AVX-512 kernel is faster.
Isa sdpa_isa(Isa chosen, const SdpaParams& p) {
#if FASTATTN_HAVE_X86
  const double flops = 4.0 * double(p.batch) * double(p.hq) * double(p.lq) * double(p.lk) * double(p.d);
  if (chosen == Isa::avx512 && flops <= 65536.0 && handover_enabled()) return Isa::avx2;
#endif
  (void)p;
  return chosen;
}

// A weight MLP whose hidden units and groups fit 256 bits (Point Transformer v2's 8 and 8 in
// float32) takes the AVX2 kernel's fast path, where a pair's hidden row and its weight row are one
// register each: in 512-bit vectors they would be half padding, W1 delta twice the multiply-adds
// and each vector of channels would span two groups. The PTv2 layer of
// bench/bench_vector_attention.py took 60 ms on the AVX-512 kernel against 26 on the AVX2 one
// (2 threads, Cascade Lake). Wider MLPs (9 to 16 hidden units and groups in float32, 5 to 8 in
// float64) take the AVX-512 kernel's own fast path.
Isa vector_attention_isa(Isa chosen, const VectorAttentionParams& p) {
#if FASTATTN_HAVE_X86
  if (chosen == Isa::avx512 && handover_enabled() && vector_attention_fast_path_avx2(p)) return Isa::avx2;
#endif
  (void)p;
  return chosen;
}

}  // namespace cpu
}  // namespace fastattn
