// The boundary between the bindings and the kernels of the general attention module
// (fastattn.attention): plain pointers, sizes and strides. The Python layer has already applied
// the score's cheap transforms (W q + b, scaling, normalising for cosine, the additive score's
// projections), so the kernels see score-form query and key rows.
#pragma once

#include <cstdint>

#include "fastattn/sdpa_params.h"

namespace fastattn {

// dot: s = q.k. activated: s = act(q.k + bias). additive: s = sum_a w[a] act(q[a] + k[a]).
enum class ScoreKind : int32_t { dot = 0, activated = 1, additive = 2 };
enum class AlignKind : int32_t { softmax = 0, sigmoid = 1, sparsemax = 2, hard = 3 };
enum class Activation : int32_t { identity = 0, tanh = 1, relu = 2, sigmoid = 3 };

struct AttentionParams {
  bool f64 = false;  // float64 operands and results; else float32 (the Python layer widens halves)

  // Batch dims flattened to `batch`, with per-batch element offsets as in SdpaParams.
  int64_t batch = 0, lq = 0, lk = 0, d = 0, dv = 0;
  const void* q = nullptr;  // (.., lq, d) score-form queries
  const void* k = nullptr;  // (.., lk, d) score-form keys
  const void* v = nullptr;  // (.., lk, dv)
  const int64_t* q_batch_offset = nullptr;
  const int64_t* k_batch_offset = nullptr;
  const int64_t* v_batch_offset = nullptr;
  int64_t q_row_stride = 0, k_row_stride = 0, v_row_stride = 0;

  ScoreKind score = ScoreKind::dot;
  Activation act = Activation::identity;
  double bias = 0.0;        // activated
  const void* w = nullptr;  // additive: (d,)
  AlignKind align = AlignKind::softmax;

  MaskKind mask_kind = MaskKind::none;  // boolean (nonzero = attend) or additive (compute type)
  const void* mask = nullptr;
  const int64_t* mask_batch_offset = nullptr;
  int64_t mask_row_stride = 0, mask_col_stride = 0;

  void* out = nullptr;      // C-contiguous (batch, lq, dv)
  void* weights = nullptr;  // C-contiguous (batch, lq, lk), or null
  int num_threads = 1;
};

}  // namespace fastattn
