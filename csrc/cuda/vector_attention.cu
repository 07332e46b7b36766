// fastattn.vector_attention on the GPU, dense and neighbour form in one kernel.
//
// One warp per query row (b, i), 4 rows per block; everything a row needs lives in its slice of
// shared memory: the relation r (C), the accumulator (C), the weight MLP's hidden layer (Hd), and
// per group the candidate's logits/weights, running max m, exponent base, sum l and rescale factor.
// Per visible candidate j:
//   r[c] = q[c] (-|+|*) k_j[c] (+ delta_ij[c])                         lanes over channels
//   u[g] = W2 relu(W1 r + b1) + b2, or the sum of r over group g        lanes over hidden / groups
//   (+ additive mask) in base 2, online softmax per group              lanes over groups
//   acc[c] = acc[c] * alpha[g(c)] + p[g(c)] (v_j[c] + delta_ij[c])     lanes over channels
// A missing (index -1) or masked candidate is skipped outright: weight exactly 0, so a NaN or Inf
// in a row nobody attends to cannot reach an output, and a row with no candidate gets zeros.
// With return_weights the logits are stored as they come and normalised at the end of the row.
#include <cuda_runtime.h>

#include "cuda/common.cuh"
#include "cuda/cuda_params.h"

namespace fastattn {
namespace cuda {
namespace {

constexpr int kRowsPerBlock = 4;

template <class T>
__global__ void __launch_bounds__(32 * kRowsPerBlock) vector_attention_kernel(const VectorParams p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t row = int64_t(blockIdx.x) * kRowsPerBlock + warp;
  if (row >= p.batch * p.lq) return;  // whole warps leave: no block-wide barrier below
  const int64_t C = p.c, G = p.groups, Hd = p.hidden;
  T* r = reinterpret_cast<T*>(smem_raw) + int64_t(warp) * (2 * C + Hd + 5 * G);
  T* acc = r + C;
  T* h = acc + C;
  T* u = h + Hd;  // logits, then weights 2^(u - base)
  T* m = u + G;
  T* base = m + G;
  T* l = base + G;
  T* alpha = l + G;
  const int64_t b = row / p.lq, i = row % p.lq;
  const T neg_inf = Limits<T>::neg_inf();
  const T log2e = T(kLog2e);
  const int64_t per_group = C / G;

  const T* q = static_cast<const T*>(p.q) + batch_offset(p, p.q_bs, b) + i * p.q_row_stride;
  const T* K = static_cast<const T*>(p.k) + batch_offset(p, p.k_bs, b);
  const T* V = static_cast<const T*>(p.v) + batch_offset(p, p.v_bs, b);
  const T* P = p.pos ? static_cast<const T*>(p.pos) + batch_offset(p, p.pos_bs, b) + i * p.pos_row_stride
                     : nullptr;
  const char* M = nullptr;
  if (p.mask_type != MaskType::none)
    M = static_cast<const char*>(p.mask) +
        (batch_offset(p, p.mask_bs, b) + i * p.mask_row_stride) * RowMask<T>::elem_size(p.mask_type);
  T* wrow = p.weights ? static_cast<T*>(p.weights) + row * p.lk * G : nullptr;
  const T* w1 = static_cast<const T*>(p.w1);
  const T* b1 = static_cast<const T*>(p.b1);
  const T* w2 = static_cast<const T*>(p.w2);
  const T* b2 = static_cast<const T*>(p.b2);

  for (int64_t c = lane; c < C; c += 32) acc[c] = T(0);
  for (int64_t g = lane; g < G; g += 32) m[g] = neg_inf, base[g] = T(0), l[g] = T(0);
  bool started = false;

  for (int64_t s = 0; s < p.lk; ++s) {
    // Which key row, and whether it is visible (warp-uniform).
    int64_t j = p.index ? p.index[i * p.lk + s] : s;
    T add = T(0);
    if (j >= 0 && M) {
      const int64_t at = s * p.mask_col_stride;
      if (p.mask_type == MaskType::boolean) {
        if (!reinterpret_cast<const uint8_t*>(M)[at]) j = -1;
      } else {
        add = p.mask_type == MaskType::f64 ? mask_from_f64<T>(reinterpret_cast<const double*>(M)[at])
                                           : T(reinterpret_cast<const float*>(M)[at]);
        if (add == neg_inf) j = -1;
      }
    }
    if (j < 0) {
      if (wrow)
        for (int64_t g = lane; g < G; g += 32) wrow[s * G + g] = neg_inf;
      continue;
    }
    const T* kr = K + j * p.k_row_stride;
    const T* vr = V + j * p.v_row_stride;
    const T* pr = P ? P + s * p.pos_col_stride : nullptr;

    // The relation r_ij (+ delta_ij).
    for (int64_t c = lane; c < C; c += 32) {
      const T x = q[c], y = kr[c];
      T rel = p.relation == 0 ? x - y : p.relation == 1 ? x + y : x * y;
      if (pr) rel += pr[c];
      r[c] = rel;
    }
    __syncwarp();
    // Logits, base 2.
    if (w1) {
      for (int64_t x = lane; x < Hd; x += 32) {
        const T* wr = w1 + x * C;
        T sum = b1[x];
        for (int64_t c = 0; c < C; ++c) sum = fma(wr[c], r[c], sum);
        h[x] = sum > T(0) ? sum : (sum == sum ? T(0) : sum);  // relu keeps a NaN
      }
      __syncwarp();
      for (int64_t g = lane; g < G; g += 32) {
        const T* wr = w2 + g * Hd;
        T sum = b2[g];
        for (int64_t x = 0; x < Hd; ++x) sum = fma(wr[x], h[x], sum);
        u[g] = sum * log2e + mask_base2(add);
      }
    } else {
      for (int64_t g = lane; g < G; g += 32) {
        T sum = T(0);
        if (p.sharing == 0)
          for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) sum += r[c];
        else
          for (int64_t c = g; c < C; c += G) sum += r[c];
        u[g] = sum * log2e + mask_base2(add);
      }
    }
    // Online softmax per group; the lane that owns group g is the only one touching its state.
    for (int64_t g = lane; g < G; g += 32) {
      const T x = u[g];
      if (wrow) wrow[s * G + g] = x;
      const T m_new = fmax(m[g], x);
      const T safe = max_or_zero(m_new);  // no visible key yet: any finite base
      const T a = started ? exp2_(base[g] - safe) : T(0);
      const T w = exp2_(x - safe);
      l[g] = l[g] * a + w;
      m[g] = m_new;
      base[g] = safe;
      alpha[g] = a;
      u[g] = w;
    }
    __syncwarp();
    for (int64_t c = lane; c < C; c += 32) {
      const int64_t g = p.sharing == 0 ? c / per_group : c % G;
      const T val = pr ? vr[c] + pr[c] : vr[c];
      acc[c] = (started ? acc[c] * alpha[g] : T(0)) + u[g] * val;
    }
    __syncwarp();
    started = true;
  }

  // out = acc / l per group (0 where nothing was visible); weights = 2^(logit - base) / l.
  __syncwarp();
  T* out = static_cast<T*>(p.out) + row * C;
  for (int64_t c = lane; c < C; c += 32) {
    const int64_t g = p.sharing == 0 ? c / per_group : c % G;
    out[c] = l[g] == T(0) ? T(0) : acc[c] / l[g];
  }
  if (wrow) {
    __syncwarp();
    for (int64_t g = lane; g < G; g += 32) {
      const T inv = l[g] == T(0) ? T(0) : T(1) / l[g];
      for (int64_t s = 0; s < p.lk; ++s) {
        const T x = wrow[s * G + g];
        wrow[s * G + g] = x == neg_inf ? T(0) : exp2_(x - base[g]) * inv;
      }
    }
  }
}

template <class T>
cudaError_t launch(const VectorParams& p, cudaStream_t stream) {
  const int64_t rows = p.batch * p.lq;
  if (rows == 0) return cudaSuccess;
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const size_t smem = size_t(vector_row_bytes(p)) * kRowsPerBlock;
  cudaError_t err = cudaFuncSetAttribute(vector_attention_kernel<T>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (err != cudaSuccess) return err;
  vector_attention_kernel<T><<<unsigned(blocks), 32 * kRowsPerBlock, smem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

int vector_attention_forward(const VectorParams& p, void* stream, const char** kernel) {
  *kernel = p.f64 ? "cuda/warp/vector_attention/float64" : "cuda/warp/vector_attention/float32";
  if (vector_row_bytes(p) > kVectorMaxRowBytes)
    return int(cudaErrorInvalidValue);
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  return int(p.f64 ? launch<double>(p, s) : launch<float>(p, s));
}

}  // namespace cuda
}  // namespace fastattn
