// The decode kernels' dispatcher: one translation unit per pair of dtypes, so that a parallel build
// compiles the 16-bit and the 32/64-bit instantiations side by side.
#include "cuda/launchers.h"

namespace fastattn {
namespace cuda {

cudaError_t launch_decode_16bit(const SdpaParams& p, int kd, int splits, cudaStream_t stream);
cudaError_t launch_decode_wide(const SdpaParams& p, int kd, int splits, cudaStream_t stream);

cudaError_t launch_decode(const SdpaParams& p, int kd, int splits, cudaStream_t stream) {
  return p.dtype == DType::f16 || p.dtype == DType::bf16 ? launch_decode_16bit(p, kd, splits, stream)
                                                        : launch_decode_wide(p, kd, splits, stream);
}

}  // namespace cuda
}  // namespace fastattn
