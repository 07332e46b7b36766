// sdpa_forward: picks the kernel family for a call and, for decoding, the number of key splits.
//   Lq <= kDecodeMaxLq          -> decode kernel (every dtype), split-KV when the items are few
//   float16 / bfloat16          -> tensor-core kernel (mma.sync)
//   float32 with tf32 opted in  -> tensor-core kernel on TF32 operands
//   float32 / float64           -> exact FMA kernel
#include <cuda_runtime.h>

#include "cuda/launchers.h"

namespace fastattn {
namespace cuda {
namespace {

const char* const kNames[5][4] = {
    {"cuda/mma/sdpa/float32", "cuda/mma/sdpa/float64", "cuda/mma/sdpa/float16", "cuda/mma/sdpa/bfloat16"},
    {"cuda/tf32/sdpa/float32", "cuda/tf32/sdpa/float64", "cuda/tf32/sdpa/float16", "cuda/tf32/sdpa/bfloat16"},
    {"cuda/fma/sdpa/float32", "cuda/fma/sdpa/float64", "cuda/fma/sdpa/float16", "cuda/fma/sdpa/bfloat16"},
    {"cuda/decode/sdpa/float32", "cuda/decode/sdpa/float64", "cuda/decode/sdpa/float16",
     "cuda/decode/sdpa/bfloat16"},
    {"cuda/decode-splitkv/sdpa/float32", "cuda/decode-splitkv/sdpa/float64",
     "cuda/decode-splitkv/sdpa/float16", "cuda/decode-splitkv/sdpa/bfloat16"},
};
enum Family { kMma = 0, kTf32 = 1, kFma = 2, kDecode = 3, kDecodeSplit = 4 };

// Multiprocessors of the current device, read once per device.
int multiprocessors() {
  static int cached[64] = {};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0) return 1;
  if (dev < 64 && cached[dev]) return cached[dev];
  int n = 1;
  if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n < 1) n = 1;
  if (dev < 64) cached[dev] = n;
  return n;
}

// Key splits for a decode call: enough blocks for about four per multiprocessor, each split at
// least 256 keys long (shorter ones cost more in the merge than they save).
int decode_splits(const SdpaParams& p) {
  const int64_t rows_per_block = decode_rows_per_block(p);
  const int64_t items = p.batch * p.hkv * ((p.hq / p.hkv * p.lq + rows_per_block - 1) / rows_per_block);
  if (items <= 0) return 1;
  const int64_t want = (4 * int64_t(multiprocessors()) + items - 1) / items;
  const int64_t most = (p.lk + 255) / 256;
  int64_t s = want < most ? want : most;
  if (s > 128) s = 128;
  return s < 1 ? 1 : int(s);
}

}  // namespace

int sdpa_forward(const SdpaParams& p, void* stream_ptr, const char** kernel) {
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const int64_t width = p.d > p.dv ? p.d : p.dv;
  const int kd = width <= 64 ? 64 : width <= 128 ? 128 : 256;
  const int dt = int(p.dtype);
  cudaError_t err = cudaSuccess;
  if (p.lq <= kDecodeMaxLq) {
    const int splits = decode_splits(p);
    *kernel = kNames[splits > 1 ? kDecodeSplit : kDecode][dt];
    err = launch_decode(p, kd, splits, stream);
  } else if (p.dtype == DType::f16) {
    *kernel = kNames[kMma][dt];
    err = launch_mma_f16(p, kd, stream);
  } else if (p.dtype == DType::bf16) {
    *kernel = kNames[kMma][dt];
    err = launch_mma_bf16(p, kd, stream);
  } else if (p.dtype == DType::f32 && p.tf32) {
    *kernel = kNames[kTf32][dt];
    err = launch_mma_tf32(p, kd, stream);
  } else {
    *kernel = kNames[kFma][dt];
    err = launch_fma(p, kd, stream);
  }
  return int(err);
}

}  // namespace cuda
}  // namespace fastattn
