// TF32 instantiations of the tensor-core SDPA kernel: float32 storage, opt-in
// (fastattn.set_cuda_tf32(True) or FASTATTN_CUDA_TF32=1).
#include "cuda/launchers.h"
#include "cuda/sdpa_mma.cuh"

namespace fastattn {
namespace cuda {

cudaError_t launch_mma_tf32(const SdpaParams& p, int kd, cudaStream_t stream) {
  switch (kd) {
    case 64: return mma::launch<float, 64>(p, stream);
    case 128: return mma::launch<float, 128>(p, stream);
    default: return mma::launch<float, 256>(p, stream);
  }
}

}  // namespace cuda
}  // namespace fastattn
