// SDPA forward for few queries (decoding: Lq <= 8), bound by reading K and V once; every dtype.
//
// One block: up to kR query rows (1, or 8; 4 in float64) of one (batch, kv head) -- the rows of all query heads of a
// grouped-query group, so K and V are read once for the whole group -- and one split of the keys.
// A key row is read by kLPK adjacent lanes, 8 elements (one 16-byte load for 16-bit types) each,
// so a warp reads 32/kLPK whole key rows per step, coalesced. Each lane group reduces its dot
// products with kLPK-wide shuffles; the running max is shared by the whole warp (one more
// shuffle level), so the groups' partial sums of weights and of weighted values add up plainly
// at the end; the 4 warps' partials are merged by the log-sum-exp rule in shared memory.
//
// Split-KV: when (batch, kv head, row chunk) items are too few to fill the GPU, each item's keys
// are split into `splits` ranges run by separate blocks, which write unnormalised partial outputs
// with their max and sum; sdpa_combine merges them. With one split the block writes the output.
// Weight-0 keys are skipped exactly, so an Inf or NaN in a masked key's value cannot leak.
#pragma once

#include <cuda_runtime.h>

#include "cuda/common.cuh"
#include "cuda/launchers.h"

namespace fastattn {
namespace cuda {
namespace decode {

constexpr int kThreads = 128, kWarps = 4, kEPL = 8;  // elements per lane


// Where a split's partial results go: po[(split * R + row) * dv + y], pm/pl[split * R + row],
// with R = batch * hq * lq and row the output row.
template <class T>
struct Partials {
  T* po;
  T* pm;
  T* pl;
  int splits;
};

// 8 elements of a row from global memory: one or more 16-byte loads when vec16, else one by one
// with the elements from `cols` on read as 0.
template <class E, class T>
__device__ __forceinline__ void load8(const E* src, int64_t x0, int64_t cols, bool vec16,
                                      T (&dst)[kEPL]) {
  if (x0 >= cols) {
#pragma unroll
    for (int e = 0; e < kEPL; ++e) dst[e] = T(0);
    return;
  }
  if (vec16) {
    constexpr int kPer = 16 / int(sizeof(E));
    E buf[kEPL];
#pragma unroll
    for (int c = 0; c < kEPL / kPer; ++c)
      *reinterpret_cast<uint4*>(buf + c * kPer) = *reinterpret_cast<const uint4*>(src + c * kPer);
#pragma unroll
    for (int e = 0; e < kEPL; ++e) dst[e] = T(to_compute(buf[e]));
  } else {
#pragma unroll
    for (int e = 0; e < kEPL; ++e) dst[e] = x0 + e < cols ? T(to_compute(src[e])) : T(0);
  }
}

template <class E, class T, int kLPK, int kR>
__global__ void __launch_bounds__(kThreads) sdpa_decode_kernel(const SdpaParams p, int64_t chunks,
                                                               Partials<T> part) {
  constexpr int kD = kLPK * kEPL, kKPW = 32 / kLPK;
  constexpr int kStep = kWarps * kKPW;  // keys per block step
  __shared__ __align__(16) T sq[kR][kD];
  __shared__ __align__(16) T sacc[kWarps][kD];
  __shared__ T sm[kWarps], sl[kWarps];
  __shared__ int64_t s_i[kR], s_row[kR], s_moff[kR];
  __shared__ int64_t s_ilo, s_ihi;

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int grp = lane / kLPK, li = lane % kLPK;
  const int64_t blk = blockIdx.x;
  const int split = int(blk % part.splits);
  const int64_t chunk = (blk / part.splits) % chunks;
  const int64_t bk = blk / part.splits / chunks;
  const int64_t b = bk / p.hkv, hk = bk % p.hkv, group = p.hq / p.hkv;
  const int64_t r0 = chunk * kR;
  const int64_t total = group * p.lq;
  const int nrows = int(total - r0 < kR ? total - r0 : kR);
  const RowMask<T> rm(p, b, hk * group);

  // Row r of the block: query head hk*group + (r0+r)/lq, position (r0+r)%lq.
  if (threadIdx.x < kR) {
    const int r = threadIdx.x;
    const int64_t rr = r0 + (r < nrows ? r : nrows - 1);
    const int64_t hh = rr / p.lq, i = rr % p.lq;
    s_i[r] = i;
    s_row[r] = ((b * p.hq) + hk * group + hh) * p.lq + i;
    s_moff[r] = hh * p.mask_head_stride * RowMask<T>::elem_size(p.mask_type);
  }
  const T qscale = T(p.scale * kLog2e);
  for (int e = threadIdx.x; e < kR * kD; e += kThreads) {
    const int r = e / kD, x = e % kD;
    T val = T(0);
    if (r < nrows && x < p.d) {
      const int64_t rr = r0 + r, hh = hk * group + rr / p.lq, i = rr % p.lq;
      const E* q = static_cast<const E*>(p.q) + batch_offset(p, p.q_bs, b) + hh * p.q_head_stride +
                   i * p.q_row_stride;
      val = T(to_compute(q[x])) * qscale;
    }
    sq[r][x] = val;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int64_t lo = s_i[0], hi = s_i[0];
    for (int r = 1; r < nrows; ++r) {
      lo = s_i[r] < lo ? s_i[r] : lo;
      hi = s_i[r] > hi ? s_i[r] : hi;
    }
    s_ilo = lo;
    s_ihi = hi;
  }
  __syncthreads();

  // This split's keys: whole block steps of the item's visible range, in order.
  int64_t kb, ke;
  rm.key_range(s_ilo, s_ihi, &kb, &ke);
  const int64_t range = ke > kb ? ke - kb : 0;
  const int64_t per = ((range + part.splits - 1) / part.splits + kStep - 1) / kStep * kStep;
  const int64_t sb = kb + split * per < ke ? kb + split * per : ke;
  const int64_t se = sb + per < ke ? sb + per : ke;

  const E* K = static_cast<const E*>(p.k) + batch_offset(p, p.k_bs, b) + hk * p.k_head_stride;
  const E* V = static_cast<const E*>(p.v) + batch_offset(p, p.v_bs, b) + hk * p.v_head_stride;
  const T neg_inf = Limits<T>::neg_inf();
  const bool whole = p.mask_type == MaskType::none && rm.band_covers(s_ilo, s_ihi, sb, se - 1);
  T acc[kR][kEPL], m[kR], l[kR];
#pragma unroll
  for (int r = 0; r < kR; ++r) {
    m[r] = neg_inf;
    l[r] = T(0);
#pragma unroll
    for (int e = 0; e < kEPL; ++e) acc[r][e] = T(0);
  }

  // Software pipeline: the next step's key and value rows load while this step computes.
  T kn[kEPL], vn[kEPL];
  int64_t j = sb + warp * kKPW + grp;
  if (j < se) {
    load8(K + j * p.k_row_stride + li * kEPL, li * kEPL, p.d, p.vec16, kn);
    load8(V + j * p.v_row_stride + li * kEPL, li * kEPL, p.dv, p.vec16, vn);
  }
  for (int64_t j_base = sb; j_base < se; j_base += kStep) {
    T kr[kEPL], vr[kEPL];
#pragma unroll
    for (int e = 0; e < kEPL; ++e) kr[e] = kn[e], vr[e] = vn[e];
    const bool valid = j < se;
    const int64_t jn = j + kStep;
    if (jn < se) {
      load8(K + jn * p.k_row_stride + li * kEPL, li * kEPL, p.d, p.vec16, kn);
      load8(V + jn * p.v_row_stride + li * kEPL, li * kEPL, p.dv, p.vec16, vn);
    }
#pragma unroll
    for (int r = 0; r < kR; ++r) {
      if (r >= nrows) break;
      T qv[kEPL];
#pragma unroll
      for (int e = 0; e < kEPL; ++e) qv[e] = sq[r][li * kEPL + e];
      T s = T(0);
#pragma unroll
      for (int e = 0; e < kEPL; ++e) s = fma(qv[e], kr[e], s);
#pragma unroll
      for (int off = kLPK / 2; off > 0; off /= 2) s += __shfl_xor_sync(0xffffffffu, s, off);
      if (!valid) {
        s = neg_inf;
      } else if (!whole) {
        const char* mask = rm.mask ? rm.mask + s_moff[r] : nullptr;
        s = rm.apply_at(mask, s_i[r], j, s);
      }
      T mx = s;
#pragma unroll
      for (int off = kLPK; off < 32; off *= 2) mx = fmax(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      mx = fmax(mx, m[r]);
      const T base = max_or_zero(mx);
      if (mx != m[r]) {  // warp-uniform: m is the same in every lane
        const T alpha = exp2_(m[r] - base);
        l[r] *= alpha;
#pragma unroll
        for (int e = 0; e < kEPL; ++e)  // alpha 0: the values so far have weight 0, skipped
          acc[r][e] = alpha == T(0) ? T(0) : acc[r][e] * alpha;
        m[r] = mx;
      }
      const T w = exp2_(s - base);
      l[r] += w;
      if (w != T(0)) {
#pragma unroll
        for (int e = 0; e < kEPL; ++e) acc[r][e] = fma(w, vr[e], acc[r][e]);
      }
    }
    j = jn;
  }

  // Sum the lane groups of each warp (same max), then merge the warps by log-sum-exp.
  T* out_part = part.po;
#pragma unroll
  for (int r = 0; r < kR; ++r) {  // unrolled: acc is indexed by compile-time r only
    if (r >= nrows) break;        // block-uniform, so the barriers below are safe
    T lr = l[r];
    for (int off = kLPK; off < 32; off *= 2) lr += __shfl_xor_sync(0xffffffffu, lr, off);
#pragma unroll
    for (int e = 0; e < kEPL; ++e) {
      T a = acc[r][e];
      for (int off = kLPK; off < 32; off *= 2) a += __shfl_xor_sync(0xffffffffu, a, off);
      if (grp == 0) sacc[warp][li * kEPL + e] = a;
    }
    if (lane == 0) sm[warp] = m[r], sl[warp] = lr;
    __syncthreads();
    T mmax = neg_inf;
    bool nan = false;
    for (int w = 0; w < kWarps; ++w) mmax = fmax(mmax, sm[w]), nan |= sl[w] != sl[w];
    T wt[kWarps], lsum = T(0);
    for (int w = 0; w < kWarps; ++w) {
      wt[w] = sm[w] == neg_inf ? T(0) : exp2_(sm[w] - mmax);
      lsum += wt[w] * sl[w];
    }
    if (nan) lsum = T(NAN);
    const int64_t row = s_row[r];
    if (part.splits == 1) {
      const T inv = lsum == T(0) ? T(0) : T(1) / lsum;
      E* dst = static_cast<E*>(p.out) + row * p.dv;
      for (int64_t y = threadIdx.x; y < p.dv; y += kThreads) {
        T o = T(0);
        for (int w = 0; w < kWarps; ++w) o += wt[w] == T(0) ? T(0) : wt[w] * sacc[w][y];
        dst[y] = from_compute<E>(lsum == T(0) ? T(0) : o * inv);
      }
      if (p.lse && threadIdx.x == 0)
        static_cast<T*>(p.lse)[row] = lsum == T(0) ? neg_inf : mmax * T(kLn2) + log_(lsum);
    } else {
      const int64_t R = p.batch * p.hq * p.lq, slot = int64_t(split) * R + row;
      for (int64_t y = threadIdx.x; y < p.dv; y += kThreads) {
        T o = T(0);
        for (int w = 0; w < kWarps; ++w) o += wt[w] == T(0) ? T(0) : wt[w] * sacc[w][y];
        out_part[slot * p.dv + y] = o;
      }
      if (threadIdx.x == 0) part.pm[slot] = mmax, part.pl[slot] = lsum;
    }
    __syncthreads();
  }
}

// Merges the splits' partials of each output row: one warp per row.
template <class E, class T>
__global__ void __launch_bounds__(128) sdpa_combine_kernel(const SdpaParams p, Partials<T> part) {
  const int64_t R = p.batch * p.hq * p.lq;
  const int64_t row = int64_t(blockIdx.x) * 4 + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= R) return;
  const T neg_inf = Limits<T>::neg_inf();
  T mmax = neg_inf;
  bool nan = false;
  for (int s = 0; s < part.splits; ++s) {
    mmax = fmax(mmax, part.pm[s * R + row]);
    nan |= part.pl[s * R + row] != part.pl[s * R + row];
  }
  T lsum = T(0);
  for (int s = 0; s < part.splits; ++s) {
    const T ms = part.pm[s * R + row];
    if (ms != neg_inf) lsum += exp2_(ms - mmax) * part.pl[s * R + row];
  }
  if (nan) lsum = T(NAN);
  const T inv = lsum == T(0) ? T(0) : T(1) / lsum;
  E* dst = static_cast<E*>(p.out) + row * p.dv;
  for (int64_t y = lane; y < p.dv; y += 32) {
    T o = T(0);
    for (int s = 0; s < part.splits; ++s) {
      const T ms = part.pm[s * R + row];
      const T w = ms == neg_inf ? T(0) : exp2_(ms - mmax);
      if (w != T(0)) o += w * part.po[(s * R + row) * p.dv + y];  // a split of weight 0 is skipped
    }
    dst[y] = from_compute<E>(lsum == T(0) ? T(0) : o * inv);
  }
  if (p.lse && lane == 0)
    static_cast<T*>(p.lse)[row] = lsum == T(0) ? neg_inf : mmax * T(kLn2) + log_(lsum);
}

// Launches the decode kernel (and the merge when splits > 1) for storage E, compute T, kR query
// rows per block.
template <class E, class T, int kLPK, int kR>
cudaError_t launch_typed(const SdpaParams& p, int splits, cudaStream_t stream) {
  const int64_t chunks = (p.hq / p.hkv * p.lq + kR - 1) / kR;
  const int64_t blocks = p.batch * p.hkv * chunks * splits;
  if (blocks == 0) return cudaSuccess;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  Partials<T> part{nullptr, nullptr, nullptr, splits};
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
  sdpa_decode_kernel<E, T, kLPK, kR><<<unsigned(blocks), kThreads, 0, stream>>>(
      p, chunks, part);
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess && splits > 1)
    sdpa_combine_kernel<E, T><<<unsigned((rows + 3) / 4), 128, 0, stream>>>(p, part);
  if (err == cudaSuccess) err = cudaGetLastError();
  if (workspace) {
    const cudaError_t free_err = cudaFreeAsync(workspace, stream);
    if (err == cudaSuccess) err = free_err;
  }
  return err;
}

// Rows per block: decode_rows_per_block(p) (launchers.h), 1 or the most the registers allow.
template <class E, class T, int kR>
cudaError_t launch_rows(const SdpaParams& p, int kd, int splits, cudaStream_t stream) {
  switch (kd) {  // lanes per key row: 8 elements each
    case 64: return launch_typed<E, T, 8, kR>(p, splits, stream);
    case 128: return launch_typed<E, T, 16, kR>(p, splits, stream);
    default: return launch_typed<E, T, 32, kR>(p, splits, stream);
  }
}

template <class E, class T>
cudaError_t launch_lanes(const SdpaParams& p, int kd, int splits, cudaStream_t stream) {
  constexpr int kMaxRows = sizeof(T) == 8 ? 4 : 8;
  static_assert(kMaxRows == kDecodeMaxRows || sizeof(T) == 8, "launchers.h disagrees");
  if (decode_rows_per_block(p) == 1) return launch_rows<E, T, 1>(p, kd, splits, stream);
  return launch_rows<E, T, kMaxRows>(p, kd, splits, stream);
}

}  // namespace decode
}  // namespace cuda
}  // namespace fastattn
