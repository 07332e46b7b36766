// The kernel families' launchers, one per translation unit (so nvcc compiles them in parallel),
// and the dispatcher in sdpa_forward.cu that picks one. `kd` is the padded head dim (64, 128 or
// 256) the kernel is compiled for: max(d, dv) rounded up.
#pragma once

#include <cuda_runtime.h>

#include "cuda/cuda_params.h"

namespace fastattn {
namespace cuda {

cudaError_t launch_mma_f16(const SdpaParams& p, int kd, cudaStream_t stream);
cudaError_t launch_mma_bf16(const SdpaParams& p, int kd, cudaStream_t stream);
cudaError_t launch_mma_tf32(const SdpaParams& p, int kd, cudaStream_t stream);
// float32 or float64 (p.dtype), exact FMA arithmetic.
cudaError_t launch_fma(const SdpaParams& p, int kd, cudaStream_t stream);
// Few queries, any dtype; `splits` > 1 splits the keys (see sdpa_decode.cuh).
cudaError_t launch_decode(const SdpaParams& p, int kd, int splits, cudaStream_t stream);

// The Lq up to which the decode kernel serves a call.
constexpr int64_t kDecodeMaxLq = 8;

// Query rows per decode block: all rows of a (batch, kv head) item are the group's heads times Lq;
// one row (plain multi-head decoding) gets a kernel whose registers hold one row, so more blocks
// fit on a multiprocessor; otherwise up to kDecodeMaxRows (half that in float64).
constexpr int kDecodeMaxRows = 8;
inline int decode_rows_per_block(const SdpaParams& p) {
  if (p.hq / p.hkv * p.lq <= 1) return 1;
  return p.dtype == DType::f64 ? kDecodeMaxRows / 2 : kDecodeMaxRows;
}

}  // namespace cuda
}  // namespace fastattn
