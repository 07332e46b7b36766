// The boundary between the bindings and the linear-layer kernel: y = x W^T + b, the projections
// that the general attention module's scores apply before attending (W q, W_q q + b, W_k k).
#pragma once

#include <cstdint>

namespace fastattn {

struct LinearParams {
  bool f64 = false;  // float64 operands and result; else float32
  int64_t m = 0, k = 0, n = 0;
  const void* x = nullptr;  // (m, k), rows x_row_stride elements apart, contiguous within a row
  int64_t x_row_stride = 0;
  const void* w = nullptr;  // (n, k) C-contiguous
  const void* b = nullptr;  // (n,) or null
  void* y = nullptr;        // (m, n) C-contiguous
  int num_threads = 1;
};

}  // namespace fastattn
