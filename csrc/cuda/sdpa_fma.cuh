// Fused SDPA forward in exact float32 (or float64) FMA arithmetic, for callers that want float32
// results without the rounding of tensor-core TF32 operands.
//
// One block: kBM query rows of one (batch, query head), 256 threads as a 16 x 16 grid. Per key tile
// of kBN keys, thread (ty, tx) computes the kBM/16 x kBN/16 scores of its rows ty*RM.. and keys
// tx*RN.. as a register-blocked outer product over the head dim (Q^T and K^T are stored transposed
// in shared memory, so each step is one vector load of RM query values and one of RN key values);
// the 16 threads of a row are 16 adjacent lanes of one warp, so row maxima and sums are warp
// shuffles. The weights P go to shared memory (over the K^T tile, which is spent by then) and
// O += P V runs as a second register-blocked outer product, each thread owning RM rows and kD/16
// value columns. A tile whose values hold an Inf or NaN skips weight-0 keys exactly, so a masked
// key's value cannot turn 0 * Inf into NaN.
#pragma once

#include <cuda_runtime.h>

#include "cuda/common.cuh"

namespace fastattn {
namespace cuda {
namespace exact {

template <class T, int kD>
struct Cfg {
  static constexpr bool kF64 = sizeof(T) == 8;
  static constexpr int kThreads = 256;
  static constexpr int kBM = kF64 ? 32 : 64;
  static constexpr int kBN = kF64 ? (kD <= 128 ? 32 : 16) : (kD <= 128 ? 64 : 32);
  static constexpr int RM = kBM / 16, RN = kBN / 16;
  static constexpr int kVW = 16 / int(sizeof(T));  // elements per 16-byte vector
  static constexpr int kPad = kVW;                 // keeps transposed rows 16-byte aligned
  static constexpr int kLdQ = kBM + kPad, kLdK = kBN + kPad, kLdP = kBM + kPad;
  static constexpr int kCols = kD / 16;            // value columns per thread
  static constexpr size_t kSmem = (size_t(kD) * kLdQ + size_t(kD) * kLdK + size_t(kBN) * kD) * sizeof(T);
  static_assert(kBN * kLdP <= kD * kLdK, "P^T must fit over K^T");
};

// N consecutive elements of shared memory into registers, as one vector load where N * sizeof(T)
// is 16 or 8 bytes (the layouts keep those aligned).
template <int N, class T>
__device__ __forceinline__ void load_vec(const T* src, T (&dst)[N]) {
  if constexpr (N * sizeof(T) == 16) {
    const float4 x = *reinterpret_cast<const float4*>(src);
    static_assert(sizeof(x) == sizeof(dst), "");
    memcpy(&dst, &x, sizeof(x));
  } else if constexpr (N * sizeof(T) == 8) {
    const float2 x = *reinterpret_cast<const float2*>(src);
    memcpy(&dst, &x, sizeof(x));
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) dst[i] = src[i];
  }
}

template <class T, int kD>
__global__ void __launch_bounds__(256) sdpa_fma_kernel(const SdpaParams p) {
  using C = Cfg<T, kD>;
  constexpr int kBM = C::kBM, kBN = C::kBN, RM = C::RM, RN = C::RN, kVW = C::kVW;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQt = reinterpret_cast<T*>(smem_raw);  // [kD][kLdQ], scaled to base 2
  T* sKt = sQt + kD * C::kLdQ;              // [kD][kLdK]; then P^T [kBN][kLdP]
  T* sV = sKt + kD * C::kLdK;               // [kBN][kD]
  T* sP = sKt;

  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  const int64_t n_qb = (p.lq + kBM - 1) / kBM;
  const int64_t bh = int64_t(blockIdx.x) / n_qb;
  const int64_t i0 = (n_qb - 1 - int64_t(blockIdx.x) % n_qb) * kBM;
  const int64_t b = bh / p.hq, h = bh % p.hq, hk = h / (p.hq / p.hkv);
  const T* Q = static_cast<const T*>(p.q) + batch_offset(p, p.q_bs, b) + h * p.q_head_stride;
  const T* K = static_cast<const T*>(p.k) + batch_offset(p, p.k_bs, b) + hk * p.k_head_stride;
  const T* V = static_cast<const T*>(p.v) + batch_offset(p, p.v_bs, b) + hk * p.v_head_stride;
  const RowMask<T> rm(p, b, h);
  const int64_t rows = p.lq - i0 < kBM ? p.lq - i0 : kBM;
  int64_t kb, ke;
  rm.key_range(i0, i0 + rows - 1, &kb, &ke);
  const int64_t d = p.d, dv = p.dv;
  const T neg_inf = Limits<T>::neg_inf();

  // Q^T, scaled by scale * log2(e); padding rows are 0.
  const T qscale = T(p.scale * kLog2e);
  for (int e = tid; e < kBM * kD; e += 256) {
    const int r = e / kD, x = e % kD;
    sQt[x * C::kLdQ + r] = (r < rows && x < d) ? Q[(i0 + r) * p.q_row_stride + x] * qscale : T(0);
  }

  T o[RM][C::kCols];
#pragma unroll
  for (int i = 0; i < RM; ++i)
#pragma unroll
    for (int c = 0; c < C::kCols; ++c) o[i][c] = T(0);
  T m[RM], l[RM];
#pragma unroll
  for (int i = 0; i < RM; ++i) m[i] = neg_inf, l[i] = T(0);
  int64_t mrow[RM];  // mask rows (the last block's padding rows read row lq - 1)
#pragma unroll
  for (int i = 0; i < RM; ++i) {
    const int64_t r = i0 + ty * RM + i;
    mrow[i] = r < p.lq ? r : p.lq - 1;
  }

  for (int64_t j0 = kb; j0 < ke; j0 += kBN) {
    const int64_t n = ke - j0 < kBN ? ke - j0 : kBN;
    __syncthreads();  // the previous tile's P and V are spent
    for (int e = tid; e < kBN * kD; e += 256) {
      const int r = e / kD, x = e % kD;
      sKt[x * C::kLdK + r] = (r < n && x < d) ? K[(j0 + r) * p.k_row_stride + x] : T(0);
    }
    bool nonfinite = false;
    for (int e = tid; e < kBN * kD; e += 256) {
      const int r = e / kD, x = e % kD;
      const T val = (r < n && x < dv) ? V[(j0 + r) * p.v_row_stride + x] : T(0);
      nonfinite |= !isfinite(val);
      sV[r * kD + x] = val;
    }
    nonfinite = __syncthreads_or(nonfinite);

    T s[RM][RN];
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
      for (int j = 0; j < RN; ++j) s[i][j] = T(0);
#pragma unroll 4
    for (int64_t x = 0; x < d; ++x) {
      T qv[RM], kv[RN];
      load_vec<RM>(sQt + x * C::kLdQ + ty * RM, qv);
      load_vec<RN>(sKt + x * C::kLdK + tx * RN, kv);
#pragma unroll
      for (int i = 0; i < RM; ++i)
#pragma unroll
        for (int j = 0; j < RN; ++j) s[i][j] = fma(qv[i], kv[j], s[i][j]);
    }
    const bool whole = p.mask_type == MaskType::none &&
                       rm.band_covers(i0, i0 + rows - 1, j0, j0 + kBN - 1);
    if (!whole) {
#pragma unroll
      for (int i = 0; i < RM; ++i)
#pragma unroll
        for (int j = 0; j < RN; ++j) s[i][j] = rm.apply(mrow[i], j0 + tx * RN + j, s[i][j]);
    }

    // Online softmax per row across the 16 lanes that hold it.
    T base[RM];
#pragma unroll
    for (int i = 0; i < RM; ++i) {
      T mx = m[i];
#pragma unroll
      for (int j = 0; j < RN; ++j) mx = fmax(mx, s[i][j]);
#pragma unroll
      for (int off = 1; off < 16; off *= 2) mx = fmax(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      base[i] = max_or_zero(mx);
      const T alpha = exp2_(m[i] - base[i]);
      m[i] = mx;
      l[i] *= alpha;
#pragma unroll
      for (int c = 0; c < C::kCols; ++c)  // alpha 0: the values so far have weight 0, skipped
        o[i][c] = alpha == T(0) ? T(0) : o[i][c] * alpha;
    }
    __syncthreads();  // every thread is done with K^T: P^T goes over it
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
      for (int j = 0; j < RN; ++j) {
        const T w = exp2_(s[i][j] - base[i]);
        l[i] += w;
        sP[(tx * RN + j) * C::kLdP + ty * RM + i] = w;
      }
    __syncthreads();

    // O += P V; thread tx owns value columns tx*kVW + 16*kVW*c + e.
    for (int64_t j = 0; j < n; ++j) {
      T pv[RM];
      load_vec<RM>(sP + j * C::kLdP + ty * RM, pv);
#pragma unroll
      for (int c = 0; c < C::kCols / kVW; ++c) {
        T vv[kVW];
        load_vec<kVW>(sV + j * kD + tx * kVW + 16 * kVW * c, vv);
#pragma unroll
        for (int i = 0; i < RM; ++i)
#pragma unroll
          for (int e = 0; e < kVW; ++e) {
            T& acc = o[i][c * kVW + e];
            if (nonfinite)  // a weight that is exactly 0 contributes exactly 0, even against Inf
              acc += pv[i] == T(0) ? T(0) : pv[i] * vv[e];
            else
              acc = fma(pv[i], vv[e], acc);
          }
      }
    }
  }

  T* out = static_cast<T*>(p.out) + bh * p.lq * dv;
  T* lse = static_cast<T*>(p.lse);
#pragma unroll
  for (int i = 0; i < RM; ++i) {
    T li = l[i];
#pragma unroll
    for (int off = 1; off < 16; off *= 2) li += __shfl_xor_sync(0xffffffffu, li, off);
    const int64_t r = i0 + ty * RM + i;
    if (r >= p.lq) continue;
    const T inv = li == T(0) ? T(0) : T(1) / li;
#pragma unroll
    for (int c = 0; c < C::kCols / kVW; ++c)
#pragma unroll
      for (int e = 0; e < kVW; ++e) {
        const int64_t y = tx * kVW + 16 * kVW * c + e;
        if (y < dv) out[r * dv + y] = li == T(0) ? T(0) : o[i][c * kVW + e] * inv;
      }
    if (lse && tx == 0) lse[bh * p.lq + r] = li == T(0) ? neg_inf : m[i] * T(kLn2) + log_(li);
  }
}

template <class T, int kD>
cudaError_t launch(const SdpaParams& p, cudaStream_t stream) {
  using C = Cfg<T, kD>;
  const int64_t blocks = (p.lq + C::kBM - 1) / C::kBM * p.batch * p.hq;
  if (blocks == 0) return cudaSuccess;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  cudaError_t err = cudaFuncSetAttribute(sdpa_fma_kernel<T, kD>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, int(C::kSmem));
  if (err != cudaSuccess) return err;
  sdpa_fma_kernel<T, kD><<<unsigned(blocks), C::kThreads, C::kSmem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace exact
}  // namespace cuda
}  // namespace fastattn
