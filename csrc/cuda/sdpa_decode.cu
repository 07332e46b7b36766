// Instantiations and launch of the decode (few-query, split-KV) SDPA kernels, every dtype.
#include "cuda/launchers.h"
#include "cuda/sdpa_decode.cuh"

namespace fastattn {
namespace cuda {
namespace {

template <class E, class T, int kLPK>
cudaError_t launch_typed(const SdpaParams& p, int splits, cudaStream_t stream) {
  constexpr int kR = decode::Rows<T>::value;
  const int64_t chunks = (p.hq / p.hkv * p.lq + kR - 1) / kR;
  const int64_t blocks = p.batch * p.hkv * chunks * splits;
  if (blocks == 0) return cudaSuccess;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  decode::Partials<T> part{nullptr, nullptr, nullptr, splits};
  void* workspace = nullptr;
  const int64_t rows = p.batch * p.hq * p.lq;
  if (splits > 1) {
    // Stream-ordered: allocated, used and freed in the caller's stream order, no synchronisation.
    const size_t bytes = size_t(splits) * size_t(rows) * size_t(p.dv + 2) * sizeof(T);
    cudaError_t err = cudaMallocAsync(&workspace, bytes, stream);
    if (err != cudaSuccess) return err;
    part.po = static_cast<T*>(workspace);
    part.pm = part.po + int64_t(splits) * rows * p.dv;
    part.pl = part.pm + int64_t(splits) * rows;
  }
  decode::sdpa_decode_kernel<E, T, kLPK><<<unsigned(blocks), decode::kThreads, 0, stream>>>(
      p, chunks, part);
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess && splits > 1)
    decode::sdpa_combine_kernel<E, T><<<unsigned((rows + 3) / 4), 128, 0, stream>>>(p, part);
  if (err == cudaSuccess) err = cudaGetLastError();
  if (workspace) {
    const cudaError_t free_err = cudaFreeAsync(workspace, stream);
    if (err == cudaSuccess) err = free_err;
  }
  return err;
}

template <class E, class T>
cudaError_t launch_lanes(const SdpaParams& p, int kd, int splits, cudaStream_t stream) {
  switch (kd) {  // lanes per key row: 8 elements each
    case 64: return launch_typed<E, T, 8>(p, splits, stream);
    case 128: return launch_typed<E, T, 16>(p, splits, stream);
    default: return launch_typed<E, T, 32>(p, splits, stream);
  }
}

}  // namespace

cudaError_t launch_decode(const SdpaParams& p, int kd, int splits, cudaStream_t stream) {
  switch (p.dtype) {
    case DType::f16: return launch_lanes<__half, float>(p, kd, splits, stream);
    case DType::bf16: return launch_lanes<__nv_bfloat16, float>(p, kd, splits, stream);
    case DType::f32: return launch_lanes<float, float>(p, kd, splits, stream);
    default: return launch_lanes<double, double>(p, kd, splits, stream);
  }
}

}  // namespace cuda
}  // namespace fastattn
