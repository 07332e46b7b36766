// The per-ISA kernel entry points. Only plain structs cross from common code into the ISA
// translation units; each is compiled with its own flags and must only run on a CPU that has them.
#pragma once

#include "fastattn/attention_params.h"
#include "fastattn/layer_norm_params.h"
#include "fastattn/linear_params.h"
#include "fastattn/sdpa_params.h"
#include "fastattn/vector_attention_params.h"

namespace fastattn {
namespace cpu {

using SdpaKernel = void (*)(const SdpaParams&);
using AttentionKernel = void (*)(const AttentionParams&);
using LinearKernel = void (*)(const LinearParams&);
using VectorAttentionKernel = void (*)(const VectorAttentionParams&);
using LayerNormKernel = void (*)(const LayerNormParams&);

void sdpa_scalar(const SdpaParams& p);
void attention_scalar(const AttentionParams& p);
void linear_scalar(const LinearParams& p);
void vector_attention_scalar(const VectorAttentionParams& p);
void layer_norm_scalar(const LayerNormParams& p);
#if FASTATTN_HAVE_X86
void sdpa_avx2(const SdpaParams& p);
void sdpa_avx512(const SdpaParams& p);
void attention_avx2(const AttentionParams& p);
void attention_avx512(const AttentionParams& p);
void linear_avx2(const LinearParams& p);
void linear_avx512(const LinearParams& p);
void vector_attention_avx2(const VectorAttentionParams& p);
void vector_attention_avx512(const VectorAttentionParams& p);
// Whether the AVX2 kernel's fast path (weight MLP hidden units and groups fitting one 256-bit
// vector) takes p: AVX-512 CPUs run such calls on it (dispatch.cpp says why).
bool vector_attention_fast_path_avx2(const VectorAttentionParams& p);
void layer_norm_avx2(const LayerNormParams& p);
void layer_norm_avx512(const LayerNormParams& p);
#endif

}  // namespace cpu
}  // namespace fastattn
