// The boundary between the bindings and the CPU/CUDA kernels of scaled_dot_product_attention:
// plain pointers, sizes and strides, no SIMD types and no Python. The bindings fill it after the
// Python layer has checked every shape; the kernels trust it.
#pragma once

#include <cstdint>

namespace fastattn {

// Storage type of query, key, value and out. float64 is computed in float64, the rest in float32.
enum class DType : int32_t { f32 = 0, f64 = 1, f16 = 2, bf16 = 3 };

enum class MaskKind : int32_t { none = 0, boolean = 1, additive = 2 };

// "No bound" for the left/right extent of the visible band of keys. Far from INT64 limits so that
// i + diag +- bound never overflows.
constexpr int64_t kUnbounded = int64_t(1) << 60;

struct SdpaParams {
  DType dtype = DType::f32;

  // Batch dims are flattened to `batch`; *_batch_offset[b] is the element offset of batch b in each
  // tensor (broadcast batch dims simply repeat offsets). The last dim of q, k, v is contiguous.
  int64_t batch = 0, hq = 0, hkv = 0, lq = 0, lk = 0, d = 0, dv = 0;
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const int64_t* q_batch_offset = nullptr;
  const int64_t* k_batch_offset = nullptr;
  const int64_t* v_batch_offset = nullptr;
  int64_t q_head_stride = 0, q_row_stride = 0;
  int64_t k_head_stride = 0, k_row_stride = 0;
  int64_t v_head_stride = 0, v_row_stride = 0;

  // Output: C-contiguous (batch, hq, lq, dv) in the storage type. lse: C-contiguous (batch, hq, lq)
  // in the compute type (float32 or float64), or null when not wanted.
  void* out = nullptr;
  void* lse = nullptr;

  // Mask: uint8 (nonzero = attend) or additive in the compute type. Strides in elements; 0 means
  // broadcast along that dim.
  MaskKind mask_kind = MaskKind::none;
  const void* mask = nullptr;
  const int64_t* mask_batch_offset = nullptr;
  int64_t mask_head_stride = 0, mask_row_stride = 0, mask_col_stride = 0;

  // Visible band: query i sees keys j with i + diag - left <= j <= i + diag + right.
  // Causal masking is right = 0; bottom-right alignment is diag = lk - lq.
  int64_t diag = 0, left = kUnbounded, right = kUnbounded;

  // Per-batch number of valid keys (keys at positions >= kv_lengths[b] are ignored), or null.
  const int64_t* kv_lengths = nullptr;

  double scale = 1.0;
  // Optional query projection, fused into the kernel's query packing (the general attention
  // module's general and biased_general scores, k . (W q + b)): with q_proj
  // set, each query row q has dq elements and the kernel attends with W q + b, d elements, in
  // its place. W is C-contiguous (d, dq) and b (d,) or null, both in the compute type.
  const void* q_proj = nullptr;
  const void* q_proj_bias = nullptr;
  int64_t dq = 0;
  int num_threads = 1;
};

}  // namespace fastattn
