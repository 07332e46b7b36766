// Fused flash-style SDPA forward on tensor cores (mma.sync, sm_80+) with float32 accumulation and
// a float32 online softmax: float16 / bfloat16 operands (m16n8k16), or float32 operands rounded to
// TF32 (m16n8k8; opt-in, as it rounds q, k, v and the weights to 10-bit mantissas).
//
// One block: 64 query rows of one (batch, query head), 4 warps of 16 rows each. The block walks its
// visible key range in tiles of kBN keys; K and V tiles are double-buffered in shared memory and
// the next tile's copy (cp.async) is in flight while the current one is computed. Per tile and warp:
//   S = Q K^T            (16-bit: Q and K fragments by ldmatrix; TF32: by 32-bit loads)
//   masks, then the online softmax on S in base 2 (running max m, running sum l, rescale factor)
//   O += P V             (P re-packed from the S registers as the A operand -- for 16-bit types the
//                         accumulator layout is the A layout, for TF32 four quad shuffles per
//                         register -- so it never goes through shared memory)
// and finally out = O / l, lse = m ln 2 + ln l; a row with no visible key gets 0 and -inf.
//
// Head dims: d and dv are zero-padded to kD (64, 128 or 256), the compile-time size of every
// fragment loop. Shared rows are padded so a warp's fragment loads fall in distinct banks.
//
// Inf/NaN in values: keys outside the block's visible range are zero-filled, and keys that every
// row of the block masks get their value row zeroed before P V. Known deviation from the CPU path:
// a key masked for some rows of a 64-row block but visible to others still enters the tensor-core
// product with weight 0 in the former, so an Inf or NaN in its value row turns 0 * Inf into NaN
// there too. (The exact float32/float64 and the decode kernels skip weight-0 keys one by one.)
#pragma once

#include <cuda_runtime.h>

#include "cuda/common.cuh"

namespace fastattn {
namespace cuda {
namespace mma {

template <class E, int kD>
struct Cfg {
  static constexpr bool kTf32 = sizeof(E) == 4;
  static constexpr int kWarps = 4, kThreads = 32 * kWarps, kBM = 16 * kWarps;
  // Key tile: as long as the shared memory of an sm_80 block (163 KB, two stages) and the
  // registers (S and O accumulators) allow.
  static constexpr int kBN = kTf32 ? (kD == 64 ? 64 : kD == 128 ? 32 : 16) : (kD <= 128 ? 64 : 32);
  // Shared row strides in elements. 16-bit: +16 bytes, so the 8 rows an ldmatrix reads fall in
  // distinct banks. TF32: Q and K fragments read 8 rows x 4 columns (stride = 4 mod 32 banks),
  // V fragments 4 rows x 8 columns (stride = 8 mod 32).
  static constexpr int kLdQK = kTf32 ? kD + 4 : kD + 8;
  static constexpr int kLdV = kD + 8;
  static constexpr int kVec = 16 / int(sizeof(E));  // elements per 16-byte copy
  static constexpr size_t kSmem =
      (size_t(kBM) * kLdQK + 2 * size_t(kBN) * kLdQK + 2 * size_t(kBN) * kLdV) * sizeof(E);
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// c += a b, m16n8k16, A row-major, B column-major, float32 accumulators.
template <class E>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1);
template <>
__device__ __forceinline__ void mma16816<__half>(float (&c)[4], const uint32_t (&a)[4],
                                                 uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4],
                                                        uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// c += a b, m16n8k8 on TF32 operands (float32 bit patterns rounded by to_tf32).
__device__ __forceinline__ void mma1688_tf32(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}

// Two floats as one register of two 16-bit values, the lower column in the low half.
template <class E> __device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}
template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}

// kRows x kD elements from global (row stride in elements; rows >= valid_rows and columns >= cols
// are zero) into shared memory with row stride kLd. With vec16, by 16-byte cp.async (cols is then
// a multiple of the vector), else element by element.
template <class E, int kD, int kRows, int kLd>
__device__ __forceinline__ void load_tile(E* dst, const E* src, int64_t row_stride,
                                          int64_t valid_rows, int64_t cols, bool vec16) {
  constexpr int kThreads = Cfg<E, kD>::kThreads, kVec = Cfg<E, kD>::kVec;
  if (vec16) {
    constexpr int kChunks = kRows * kD / kVec;
#pragma unroll
    for (int c = threadIdx.x; c < kChunks; c += kThreads) {
      const int r = c / (kD / kVec), x = (c % (kD / kVec)) * kVec;
      const bool ok = r < valid_rows && x < cols;
      // A skipped chunk still needs some global address; nothing is read from it (src size 0).
      cp_async16(dst + r * kLd + x, ok ? src + r * row_stride + x : src, ok ? 16 : 0);
    }
  } else {
    for (int e = threadIdx.x; e < kRows * kD; e += kThreads) {
      const int r = e / kD, x = e % kD;
      dst[r * kLd + x] = (r < valid_rows && x < cols) ? src[r * row_stride + x] : from_float<E>(0.f);
    }
  }
}

template <class E, int kD>
__global__ void __launch_bounds__(Cfg<E, kD>::kThreads) sdpa_mma_kernel(const SdpaParams p) {
  using C = Cfg<E, kD>;
  constexpr int kBM = C::kBM, kBN = C::kBN, kLdQK = C::kLdQK, kLdV = C::kLdV;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  E* sQ = reinterpret_cast<E*>(smem_raw);
  E* sK = sQ + kBM * kLdQK;      // 2 stages
  E* sV = sK + 2 * kBN * kLdQK;  // 2 stages
  __shared__ uint32_t s_used[2];  // keys of the current tile that some row of the block uses
  if (threadIdx.x == 0) s_used[0] = s_used[1] = 0u;  // first read after the loop's first barrier

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4;
  // Query blocks of one head run last to first: under causal masking the last blocks see the most
  // keys, so the longest blocks start first and the grid ends on short ones.
  const int64_t n_qb = (p.lq + kBM - 1) / kBM;
  const int64_t bh = int64_t(blockIdx.x) / n_qb;
  const int64_t i0 = (n_qb - 1 - int64_t(blockIdx.x) % n_qb) * kBM;
  const int64_t b = bh / p.hq, h = bh % p.hq, hk = h / (p.hq / p.hkv);
  const E* Q = static_cast<const E*>(p.q) + batch_offset(p, p.q_bs, b) + h * p.q_head_stride;
  const E* K = static_cast<const E*>(p.k) + batch_offset(p, p.k_bs, b) + hk * p.k_head_stride;
  const E* V = static_cast<const E*>(p.v) + batch_offset(p, p.v_bs, b) + hk * p.v_head_stride;
  const RowMask<float> rm(p, b, h);
  const int64_t rows = p.lq - i0 < kBM ? p.lq - i0 : kBM;
  int64_t kb, ke;
  rm.key_range(i0, i0 + rows - 1, &kb, &ke);
  const int64_t n_tiles = ke > kb ? (ke - kb + kBN - 1) / kBN : 0;

  load_tile<E, kD, kBM, kLdQK>(sQ, Q + i0 * p.q_row_stride, p.q_row_stride, rows, p.d, p.vec16);
  cp_async_commit();
  if (n_tiles > 0) {
    const int64_t n = ke - kb < kBN ? ke - kb : kBN;
    load_tile<E, kD, kBN, kLdQK>(sK, K + kb * p.k_row_stride, p.k_row_stride, n, p.d, p.vec16);
    load_tile<E, kD, kBN, kLdV>(sV, V + kb * p.v_row_stride, p.v_row_stride, n, p.dv, p.vec16);
  }
  cp_async_commit();

  const float neg_inf = Limits<float>::neg_inf();
  const float scale2 = float(p.scale * kLog2e);
  const int64_t row_a = i0 + warp * 16 + g, row_b = row_a + 8;  // this thread's two rows
  // Rows past lq (the last block's padding) are computed but never written; their mask lookups
  // read row lq - 1 so that they stay inside the mask.
  const int64_t mrow_a = row_a < p.lq ? row_a : p.lq - 1, mrow_b = row_b < p.lq ? row_b : p.lq - 1;
  float o[kD / 8][4];
#pragma unroll
  for (int i = 0; i < kD / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m[2] = {neg_inf, neg_inf}, l[2] = {0.f, 0.f};

  for (int64_t tt = 0; tt < n_tiles; ++tt) {
    const int stage = int(tt & 1);
    if (tt + 1 < n_tiles) {
      const int64_t j1 = kb + (tt + 1) * kBN, n = ke - j1 < kBN ? ke - j1 : kBN;
      load_tile<E, kD, kBN, kLdQK>(sK + (stage ^ 1) * kBN * kLdQK, K + j1 * p.k_row_stride,
                                   p.k_row_stride, n, p.d, p.vec16);
      load_tile<E, kD, kBN, kLdV>(sV + (stage ^ 1) * kBN * kLdV, V + j1 * p.v_row_stride,
                                  p.v_row_stride, n, p.dv, p.vec16);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const E* k_s = sK + stage * kBN * kLdQK;
    const E* v_s = sV + stage * kBN * kLdV;
    const E* q_s = sQ + warp * 16 * kLdQK;
    const int64_t j0 = kb + tt * kBN;

    // S = Q K^T for this warp's 16 rows.
    float s[kBN / 8][4];
#pragma unroll
    for (int i = 0; i < kBN / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
    if constexpr (C::kTf32) {
#pragma unroll
      for (int kk = 0; kk < kD / 8; ++kk) {
        const uint32_t a[4] = {to_tf32(q_s[g * kLdQK + kk * 8 + t]),
                               to_tf32(q_s[(g + 8) * kLdQK + kk * 8 + t]),
                               to_tf32(q_s[g * kLdQK + kk * 8 + t + 4]),
                               to_tf32(q_s[(g + 8) * kLdQK + kk * 8 + t + 4])};
#pragma unroll
        for (int nt = 0; nt < kBN / 8; ++nt)
          mma1688_tf32(s[nt], a, to_tf32(k_s[(nt * 8 + g) * kLdQK + kk * 8 + t]),
                       to_tf32(k_s[(nt * 8 + g) * kLdQK + kk * 8 + t + 4]));
      }
    } else {
#pragma unroll
      for (int kk = 0; kk < kD / 16; ++kk) {
        uint32_t a[4];
        ldmatrix_x4(a, q_s + (lane & 15) * kLdQK + kk * 16 + (lane >> 4) * 8);
#pragma unroll
        for (int np = 0; np < kBN / 16; ++np) {
          uint32_t r[4];
          ldmatrix_x4(r, k_s + (np * 16 + (lane >> 4) * 8 + (lane & 7)) * kLdQK + kk * 16 +
                             ((lane >> 3) & 1) * 8);
          mma16816<E>(s[2 * np], a, r[0], r[1]);
          mma16816<E>(s[2 * np + 1], a, r[2], r[3]);
        }
      }
    }

    // Scale to base 2 and mask. A tile that the band and length show whole to every row of the
    // block, without a mask, needs no per-score check.
    const bool whole = p.mask_type == MaskType::none &&
                       rm.band_covers(i0, i0 + rows - 1, j0, j0 + kBN - 1);
#pragma unroll
    for (int nt = 0; nt < kBN / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[nt][e] * scale2;
        if (!whole) x = rm.apply(e < 2 ? mrow_a : mrow_b, j0 + nt * 8 + 2 * t + (e & 1), x);
        s[nt][e] = x;
      }

    // Online softmax. Row maxima over the quad of threads that holds a row; l stays a per-thread
    // partial sum (the quad's m is shared, so partials add up at the end).
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int nt = 0; nt < kBN / 8; ++nt) {
      mx[0] = fmaxf(mx[0], fmaxf(s[nt][0], s[nt][1]));
      mx[1] = fmaxf(mx[1], fmaxf(s[nt][2], s[nt][3]));
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
    }
    float base[2], alpha[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      base[r] = max_or_zero(mx[r]);
      alpha[r] = exp2f(m[r] - base[r]);
      m[r] = mx[r];
      l[r] *= alpha[r];
    }
    // A factor of exactly 0 gives every value summed so far weight 0: they are skipped (o = 0), as
    // in the other kernels, so an Inf among them (padding at a finite mask value, then a far
    // larger score) cannot make 0 x Inf = NaN.
#pragma unroll
    for (int i = 0; i < kD / 8; ++i) {
      o[i][0] = alpha[0] == 0.f ? 0.f : o[i][0] * alpha[0];
      o[i][1] = alpha[0] == 0.f ? 0.f : o[i][1] * alpha[0];
      o[i][2] = alpha[1] == 0.f ? 0.f : o[i][2] * alpha[1];
      o[i][3] = alpha[1] == 0.f ? 0.f : o[i][3] * alpha[1];
    }
#pragma unroll
    for (int nt = 0; nt < kBN / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float w = exp2f(s[nt][e] - base[e >> 1]);
        s[nt][e] = w;
        l[e >> 1] += w;
      }

    // A key that no row of the block may see has weight 0 everywhere, but inside the product
    // 0 * Inf = NaN: zero its value row, so Inf/NaN in masked padding cannot reach any output.
    // Only tiles with masked scores can have such keys; the two barriers are block-uniform.
    if (!whole) {
      uint32_t used[2] = {0u, 0u};  // bit k: key k of the tile has a nonzero weight here
#pragma unroll
      for (int nt = 0; nt < kBN / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (s[nt][e] != 0.f) used[nt / 4] |= 1u << ((nt % 4) * 8 + 2 * t + (e & 1));
      used[0] = __reduce_or_sync(0xffffffffu, used[0]);
      used[1] = __reduce_or_sync(0xffffffffu, used[1]);
      if (lane == 0) {
        atomicOr(&s_used[0], used[0]);
        atomicOr(&s_used[1], used[1]);
      }
      __syncthreads();
      const uint32_t lo = s_used[0], hi = s_used[1];
      constexpr uint32_t kFullLo = kBN >= 32 ? ~0u : (1u << kBN) - 1u;
      constexpr uint32_t kFullHi = kBN >= 64 ? ~0u : 0u;
      if (lo != kFullLo || hi != kFullHi) {
        E* vz = sV + stage * kBN * kLdV;
        for (int x = threadIdx.x; x < kBN * kD; x += C::kThreads) {
          const int r = x / kD;
          if (!(((r < 32 ? lo : hi) >> (r & 31)) & 1u)) vz[r * kLdV + x % kD] = from_float<E>(0.f);
        }
      }
      __syncthreads();
      if (threadIdx.x == 0) s_used[0] = s_used[1] = 0u;  // read by all before the barrier above
    }

    // O += P V with P from the S registers.
    if constexpr (C::kTf32) {
      // A fragment (row g / g+8, keys t and t+4 of an 8-key step) from the accumulators of the
      // quad's lanes that hold those columns: lane t/2 holds keys t&~1, t|1; lane t/2+2 keys t+4..
      const int src_lo = (lane & ~3) | (t >> 1), src_hi = src_lo + 2;
#pragma unroll
      for (int kk = 0; kk < kBN / 8; ++kk) {
        const float lo0 = __shfl_sync(0xffffffffu, s[kk][0], src_lo);
        const float lo1 = __shfl_sync(0xffffffffu, s[kk][1], src_lo);
        const float lo2 = __shfl_sync(0xffffffffu, s[kk][2], src_lo);
        const float lo3 = __shfl_sync(0xffffffffu, s[kk][3], src_lo);
        const float hi0 = __shfl_sync(0xffffffffu, s[kk][0], src_hi);
        const float hi1 = __shfl_sync(0xffffffffu, s[kk][1], src_hi);
        const float hi2 = __shfl_sync(0xffffffffu, s[kk][2], src_hi);
        const float hi3 = __shfl_sync(0xffffffffu, s[kk][3], src_hi);
        const bool odd = t & 1;
        const uint32_t a[4] = {to_tf32(odd ? lo1 : lo0), to_tf32(odd ? lo3 : lo2),
                               to_tf32(odd ? hi1 : hi0), to_tf32(odd ? hi3 : hi2)};
#pragma unroll
        for (int dt = 0; dt < kD / 8; ++dt)
          mma1688_tf32(o[dt], a, to_tf32(v_s[(kk * 8 + t) * kLdV + dt * 8 + g]),
                       to_tf32(v_s[(kk * 8 + t + 4) * kLdV + dt * 8 + g]));
      }
    } else {
      // The accumulator layout of two n8 tiles is the A layout of one k16 step.
#pragma unroll
      for (int kk = 0; kk < kBN / 16; ++kk) {
        const uint32_t a[4] = {pack2<E>(s[2 * kk][0], s[2 * kk][1]),
                               pack2<E>(s[2 * kk][2], s[2 * kk][3]),
                               pack2<E>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                               pack2<E>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
        for (int dp = 0; dp < kD / 16; ++dp) {
          uint32_t r[4];
          ldmatrix_x4_trans(r, v_s + (kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * kLdV +
                                   dp * 16 + (lane >> 4) * 8);
          mma16816<E>(o[2 * dp], a, r[0], r[1]);
          mma16816<E>(o[2 * dp + 1], a, r[2], r[3]);
        }
      }
    }
    __syncthreads();  // the next iteration's copy overwrites this stage
  }
  cp_async_wait<0>();  // no copy may still be writing shared memory when the block exits

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }
  E* out = static_cast<E*>(p.out) + bh * p.lq * p.dv;
  float* lse = static_cast<float*>(p.lse);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = r == 0 ? row_a : row_b;
    if (i >= p.lq) continue;
    const float inv = l[r] == 0.f ? 0.f : 1.f / l[r];
    E* dst = out + i * p.dv;
#pragma unroll
    for (int dt = 0; dt < kD / 8; ++dt) {
      const int64_t y = dt * 8 + 2 * t;
      const float v0 = o[dt][2 * r] * inv, v1 = o[dt][2 * r + 1] * inv;
      if constexpr (!C::kTf32) {
        if ((p.dv & 1) == 0 && y + 1 < p.dv) {
          *reinterpret_cast<uint32_t*>(dst + y) = pack2<E>(v0, v1);
          continue;
        }
      }
      if (y < p.dv) dst[y] = from_float<E>(v0);
      if (y + 1 < p.dv) dst[y + 1] = from_float<E>(v1);
    }
    if (lse && t == 0)
      lse[bh * p.lq + i] = l[r] == 0.f ? neg_inf : m[r] * float(kLn2) + logf(l[r]);
  }
}

template <class E, int kD>
cudaError_t launch(const SdpaParams& p, cudaStream_t stream) {
  using C = Cfg<E, kD>;
  const int64_t blocks = (p.lq + C::kBM - 1) / C::kBM * p.batch * p.hq;
  if (blocks == 0) return cudaSuccess;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  cudaError_t err = cudaFuncSetAttribute(sdpa_mma_kernel<E, kD>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, int(C::kSmem));
  if (err != cudaSuccess) return err;
  sdpa_mma_kernel<E, kD><<<unsigned(blocks), C::kThreads, C::kSmem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace mma
}  // namespace cuda
}  // namespace fastattn
