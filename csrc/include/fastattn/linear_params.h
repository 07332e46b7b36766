// The boundary between the bindings and the small-batch projection kernels: out = x W^T + b for a
// handful of rows of x (a decode step's tokens), W streamed once. Plain pointers and sizes.
#pragma once

#include <cstdint>

namespace fastattn {

struct LinearParams {
  bool f64 = false;  // float64 operands and result; else float32

  int64_t m = 0, n = 0, k = 0;  // x (m, k), W (n, k), out (m, n)
  const void* x = nullptr;      // row r at x + r * x_row_stride (elements), contiguous in a row
  int64_t x_row_stride = 0;
  const void* w = nullptr;      // row j at w + j * w_row_stride, contiguous in a row
  int64_t w_row_stride = 0;
  const void* bias = nullptr;   // (n,) contiguous, or null
  void* out = nullptr;          // C-contiguous (m, n), not overlapping the inputs
  int num_threads = 1;
};

}  // namespace fastattn
