// float16 instantiations of the tensor-core SDPA kernel (one dtype per file: parallel builds).
#include "cuda/launchers.h"
#include "cuda/sdpa_mma.cuh"

namespace fastattn {
namespace cuda {

cudaError_t launch_mma_f16(const SdpaParams& p, int kd, cudaStream_t stream) {
  switch (kd) {
    case 64: return mma::launch<__half, 64>(p, stream);
    case 128: return mma::launch<__half, 128>(p, stream);
    default: return mma::launch<__half, 256>(p, stream);
  }
}

}  // namespace cuda
}  // namespace fastattn
