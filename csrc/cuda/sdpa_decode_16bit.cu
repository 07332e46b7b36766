// float16 and bfloat16 instantiations of the decode (few-query, split-KV) SDPA kernels.
#include "cuda/launchers.h"
#include "cuda/sdpa_decode.cuh"

namespace fastattn {
namespace cuda {

cudaError_t launch_decode_16bit(const SdpaParams& p, int kd, int splits, cudaStream_t stream) {
  if (p.dtype == DType::f16) return decode::launch_lanes<__half, float>(p, kd, splits, stream);
  return decode::launch_lanes<__nv_bfloat16, float>(p, kd, splits, stream);
}

}  // namespace cuda
}  // namespace fastattn
