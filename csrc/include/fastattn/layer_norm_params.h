// The boundary between the bindings and the row-normalisation kernels: layer norm
// (fastattn.layer_norm) and unit length (the rows of cosine scores): plain pointers, sizes and
// strides. The Python layer has flattened the leading dims into rows and
// widened float16/bfloat16 to float32, so the kernels see float32 or float64 only.
#pragma once

#include <cstdint>

namespace fastattn {

struct LayerNormParams {
  bool f64 = false;  // float64 operands and result; else float32

  int64_t rows = 0, d = 0;  // normalise each of `rows` rows of `d` elements
  const void* x = nullptr;  // row r starts at x + r * x_row_stride (elements); contiguous in a row
  int64_t x_row_stride = 0;
  const void* weight = nullptr;  // (d,) contiguous, or null (1)
  const void* bias = nullptr;    // (d,) contiguous, or null (0)
  void* out = nullptr;           // C-contiguous (rows, d), not overlapping x
  double eps = 1e-5;
  // x / |x| instead (cosine scores): no centring, no eps, weight and bias null; a zero row stays
  // 0, and rows whose squared norm under- or overflows are scaled by their largest element first.
  bool unit_length = false;
  int num_threads = 1;
};

}  // namespace fastattn
