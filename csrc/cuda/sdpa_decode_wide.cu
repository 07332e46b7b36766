// float32 and float64 instantiations of the decode (few-query, split-KV) SDPA kernels.
#include "cuda/launchers.h"
#include "cuda/sdpa_decode.cuh"

namespace fastattn {
namespace cuda {

cudaError_t launch_decode_wide(const SdpaParams& p, int kd, int splits, cudaStream_t stream) {
  if (p.dtype == DType::f32) return decode::launch_lanes<float, float>(p, kd, splits, stream);
  return decode::launch_lanes<double, double>(p, kd, splits, stream);
}

}  // namespace cuda
}  // namespace fastattn
