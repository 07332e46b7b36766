// float32 and float64 instantiations of the exact FMA SDPA kernel.
#include "cuda/launchers.h"
#include "cuda/sdpa_fma.cuh"

namespace fastattn {
namespace cuda {

cudaError_t launch_fma(const SdpaParams& p, int kd, cudaStream_t stream) {
  if (p.dtype == DType::f64) {
    switch (kd) {
      case 64: return exact::launch<double, 64>(p, stream);
      case 128: return exact::launch<double, 128>(p, stream);
      default: return exact::launch<double, 256>(p, stream);
    }
  }
  switch (kd) {
    case 64: return exact::launch<float, 64>(p, stream);
    case 128: return exact::launch<float, 128>(p, stream);
    default: return exact::launch<float, 256>(p, stream);
  }
}

}  // namespace cuda
}  // namespace fastattn
