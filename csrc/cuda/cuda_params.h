// The boundary between the CUDA binding and the CUDA kernels: plain device pointers, sizes and
// element strides, no Python and no CUDA types, so the binding (a host C++ file) and the .cu files
// share it. The Python layer (fastattn/_cuda_arrays.py) has checked every shape and option; the
// kernels trust it.
//
// Unlike the CPU's SdpaParams, batch offsets are not a host array of per-batch offsets: the kernels
// compute them from the batch shape and each operand's batch strides (0 where broadcast), so
// nothing but the operands themselves has to be on the device.
#pragma once

#include <cstdint>

#include "fastattn/sdpa_params.h"  // DType, kUnbounded

namespace fastattn {
namespace cuda {

constexpr int kMaxBatchDims = 6;

// Element type of the mask (bool is one byte, nonzero = attend); additive masks in any float type.
enum class MaskType : int32_t { none = 0, boolean = 1, f32 = 2, f64 = 3, f16 = 4, bf16 = 5 };

// A (batch..., rows, cols) operand broadcast over the batch dims: element strides per batch dim.
struct BatchStrides {
  int64_t s[kMaxBatchDims] = {};
};

struct SdpaParams {
  DType dtype = DType::f32;
  bool tf32 = false;  // float32 on tensor cores (TF32 operands, float32 accumulation): opt-in

  int64_t batch = 0, hq = 0, hkv = 0, lq = 0, lk = 0, d = 0, dv = 0;
  int nbatch = 0;  // batch dims, C order; the flat batch index b runs over their product
  int64_t batch_shape[kMaxBatchDims] = {};

  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  BatchStrides q_bs, k_bs, v_bs;
  int64_t q_head_stride = 0, q_row_stride = 0;
  int64_t k_head_stride = 0, k_row_stride = 0;
  int64_t v_head_stride = 0, v_row_stride = 0;
  // Whether q, k and v allow 16-byte loads: every base pointer, head/row/batch stride and head dim
  // is a multiple of 16 bytes (the host checks; otherwise the kernels load element by element).
  bool vec16 = false;

  // C-contiguous (batch, hq, lq, dv) in the storage type; lse C-contiguous (batch, hq, lq) in the
  // compute type (float32, or float64 for float64), or null.
  void* out = nullptr;
  void* lse = nullptr;

  MaskType mask_type = MaskType::none;
  const void* mask = nullptr;
  BatchStrides mask_bs;
  int64_t mask_head_stride = 0, mask_row_stride = 0, mask_col_stride = 0;

  // Visible band: query i sees keys j with i + diag - left <= j <= i + diag + right.
  int64_t diag = 0, left = kUnbounded, right = kUnbounded;

  // int64 kv lengths on the device, indexed through len_bs, or null.
  const int64_t* kv_lengths = nullptr;
  BatchStrides len_bs;

  double scale = 1.0;
};

// fastattn.vector_attention on the GPU (semantics of fastattn/vector_attention_params.h, the CPU
// kernels' struct): candidate s of query i is key row s (dense form) or index[i * lk + s] (neighbour
// form, batch 1; -1 = none). Float32 or float64 operands (the Python layer widens 16-bit ones).
struct VectorParams {
  bool f64 = false;
  int64_t batch = 0, lq = 0, lk = 0, c = 0, groups = 0, hidden = 0, key_rows = 0;
  int nbatch = 0;
  int64_t batch_shape[kMaxBatchDims] = {};
  const void* q = nullptr;  // (.., lq, c), channels contiguous
  const void* k = nullptr;  // (.., key_rows, c)
  const void* v = nullptr;
  BatchStrides q_bs, k_bs, v_bs;
  int64_t q_row_stride = 0, k_row_stride = 0, v_row_stride = 0;
  const int64_t* index = nullptr;  // C-contiguous (lq, lk), values in [-1, key_rows), or null
  const void* pos = nullptr;       // (.., lq|1, lk|1, c), channels contiguous, or null
  BatchStrides pos_bs;
  int64_t pos_row_stride = 0, pos_col_stride = 0;
  MaskType mask_type = MaskType::none;  // boolean, or additive in the compute type
  const void* mask = nullptr;           // (.., lq|1, lk|1)
  BatchStrides mask_bs;
  int64_t mask_row_stride = 0, mask_col_stride = 0;
  int relation = 0;  // 0 subtract, 1 add, 2 multiply
  int sharing = 0;   // 0 blocked (c / (C/G)), 1 strided (c % G)
  const void* w1 = nullptr;  // C-contiguous (hidden, c), (hidden,), (groups, hidden), (groups,)
  const void* b1 = nullptr;
  const void* w2 = nullptr;
  const void* b2 = nullptr;
  void* out = nullptr;      // C-contiguous (batch, lq, c)
  void* weights = nullptr;  // C-contiguous (batch, lq, lk, groups), or null
};

// Shared memory one query row (one warp) of the vector-attention kernel needs, in bytes; a block
// runs 4 rows, so rows over kVectorMaxRowBytes (40 KB: 2C + Hd + 5G <= 10240 in float32) are refused.
inline int64_t vector_row_bytes(const VectorParams& p) {
  return (2 * p.c + p.hidden + 5 * p.groups) * (p.f64 ? 8 : 4);
}
constexpr int64_t kVectorMaxRowBytes = 40 * 1024;

int vector_attention_forward(const VectorParams& p, void* stream, const char** kernel);

// Launches scaled-dot-product attention on `stream` (a cudaStream_t). Returns a cudaError_t as an
// int (0 = success) and, in *kernel, the name of the kernel that ran (a static string).
int sdpa_forward(const SdpaParams& p, void* stream, const char** kernel);

// The head dims (max(d, dv)) the kernels are compiled for.
constexpr int64_t kMaxHeadDim = 256;

}  // namespace cuda
}  // namespace fastattn
