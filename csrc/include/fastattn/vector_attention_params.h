// The boundary between the bindings and the vector-attention kernels (fastattn.vector_attention):
// plain pointers, sizes and strides. The Python layer has checked every shape, dtype and index
// value; the kernels trust it.
//
// Both forms are one problem to the kernel: query i of batch b has `lk` candidate keys. Dense form:
// candidate j is key row j of batch b. Neighbour form (index != null, batch == 1): candidate s is
// key row index[i * lk + s], or nothing when that is -1.
#pragma once

#include <cstdint>

#include "fastattn/sdpa_params.h"

namespace fastattn {

// r_ij = q_i - k_j, q_i + k_j, or q_i * k_j (channel by channel).
enum class Relation : int32_t { subtract = 0, add = 1, multiply = 2 };
// Channel c of C uses weight group c / (C / G) (blocked, Point Transformer v2) or c % G (strided,
// Point Transformer v1).
enum class Sharing : int32_t { blocked = 0, strided = 1 };

struct VectorAttentionParams {
  bool f64 = false;  // float64 operands and results; else float32 (the Python layer widens halves)

  // Batch dims flattened to `batch`, with per-batch element offsets. lq queries, lk candidate keys
  // per query, c channels, `groups` weight groups, `hidden` rows of the weight MLP's first layer.
  int64_t batch = 0, lq = 0, lk = 0, c = 0, groups = 0, hidden = 0;
  int64_t key_rows = 0;  // rows of key/value per batch: lk (dense) or M (neighbour form)
  const void* q = nullptr;  // (.., lq, c)
  const void* k = nullptr;  // (.., key_rows, c)
  const void* v = nullptr;  // (.., key_rows, c)
  const int64_t* q_batch_offset = nullptr;
  const int64_t* k_batch_offset = nullptr;
  const int64_t* v_batch_offset = nullptr;
  int64_t q_row_stride = 0, k_row_stride = 0, v_row_stride = 0;

  const int64_t* index = nullptr;  // neighbour form: C-contiguous (lq, lk), values in [-1, key_rows)

  // Positional term delta_ij (.., lq, lk, c), channels contiguous; strides 0 where broadcast.
  const void* pos = nullptr;
  const int64_t* pos_batch_offset = nullptr;
  int64_t pos_row_stride = 0, pos_col_stride = 0;

  // Mask over (query, candidate): uint8 (nonzero = attend) or additive in the compute type, added to
  // every group's weight (-inf masks).
  MaskKind mask_kind = MaskKind::none;
  const void* mask = nullptr;
  const int64_t* mask_batch_offset = nullptr;
  int64_t mask_row_stride = 0, mask_col_stride = 0;

  Relation relation = Relation::subtract;
  Sharing sharing = Sharing::blocked;

  // Weight MLP, C-contiguous, or all null: w1 (hidden, c), b1 (hidden,), w2 (groups, hidden),
  // b2 (groups,).
  const void* w1 = nullptr;
  const void* b1 = nullptr;
  const void* w2 = nullptr;
  const void* b2 = nullptr;

  void* out = nullptr;      // C-contiguous (batch, lq, c)
  void* weights = nullptr;  // C-contiguous (batch, lq, lk, groups), or null
  int num_threads = 1;
};

}  // namespace fastattn
