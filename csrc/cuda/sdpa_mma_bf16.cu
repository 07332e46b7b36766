// bfloat16 instantiations of the tensor-core SDPA kernel (one dtype per file: parallel builds).
#include "cuda/launchers.h"
#include "cuda/sdpa_mma.cuh"

namespace fastattn {
namespace cuda {

cudaError_t launch_mma_bf16(const SdpaParams& p, int kd, cudaStream_t stream) {
  switch (kd) {
    case 64: return mma::launch<__nv_bfloat16, 64>(p, stream);
    case 128: return mma::launch<__nv_bfloat16, 128>(p, stream);
    default: return mma::launch<__nv_bfloat16, 256>(p, stream);
  }
}

}  // namespace cuda
}  // namespace fastattn
