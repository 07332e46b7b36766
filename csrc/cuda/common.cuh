// Device helpers shared by the SDPA kernels: element conversions, batch offsets, and the one
// definition of which keys a query sees (band, kv length, mask), so every kernel masks alike.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cuda/std/limits>

#include <cstdint>

#include "cuda/cuda_params.h"

namespace fastattn {
namespace cuda {

constexpr double kLog2e = 1.44269504088896340736, kLn2 = 0.69314718055994530942;

// An additive mask entry in base 2 (add * log2 e), finite whenever add is: entries below
// -FLT_MAX / log2 e (np.finfo(float32).min pads in Hugging Face models) would otherwise overflow
// to -inf and hide keys the mask leaves visible. As the CPU kernels' mask_base2.
template <class T>
__device__ __forceinline__ T mask_base2(T add) {
  const T a = add * T(kLog2e);
  constexpr T big = ::cuda::std::numeric_limits<T>::max();
  if (isinf(a) && !isinf(add)) return a < T(0) ? -big : big;
  return a;
}

// A float64 mask entry in the compute type T, finite whenever it is, as the CPU path clips float64
// masks to float32's range (-1e300 would otherwise cast to -inf and hide its key); NaN stays NaN.
template <class T>
__device__ __forceinline__ T mask_from_f64(double x) {
  constexpr double big = double(::cuda::std::numeric_limits<T>::max());
  return (isnan(x) || isinf(x)) ? T(x) : T(fmin(fmax(x, -big), big));
}

__device__ __forceinline__ float to_compute(float x) { return x; }
__device__ __forceinline__ double to_compute(double x) { return x; }
__device__ __forceinline__ float to_compute(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_compute(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class E> __device__ __forceinline__ E from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
// A value of the compute type (float, or double for float64) in the storage type E.
template <class E> struct Store {
  __device__ static E from(float x) { return from_float<E>(x); }
};
template <> struct Store<double> {
  __device__ static double from(double x) { return x; }
};
template <class E, class T> __device__ __forceinline__ E from_compute(T x) { return Store<E>::from(x); }

template <class T> struct Limits;
template <> struct Limits<float> {
  __device__ static float neg_inf() { return __int_as_float(0xff800000); }
};
template <> struct Limits<double> {
  __device__ static double neg_inf() { return __longlong_as_double(0xfff0000000000000ll); }
};

__device__ __forceinline__ float exp2_(float x) { return exp2f(x); }
__device__ __forceinline__ double exp2_(double x) { return exp2(x); }
__device__ __forceinline__ float log_(float x) { return logf(x); }
__device__ __forceinline__ double log_(double x) { return log(x); }

// Element offset of flat batch index b in an operand with batch strides bs (C order), for any
// params struct with nbatch and batch_shape.
template <class P>
__device__ __forceinline__ int64_t batch_offset(const P& p, const BatchStrides& bs, int64_t b) {
  int64_t off = 0;
  for (int i = p.nbatch - 1; i >= 0; --i) {
    const int64_t n = p.batch_shape[i];
    off += (b % n) * bs.s[i];
    b /= n;
  }
  return off;
}

// Which keys query rows of one (batch, query head) see, and the mask values added to their scores.
// Scores are in base 2 (the softmax uses exp2): s2 = q.k * scale * log2(e), plus mask * log2(e).
template <class T>
struct RowMask {
  int64_t diag, left, right, kv_len;
  MaskType type;
  const char* mask;  // this (batch, head)'s mask, in bytes
  int64_t row_stride, col_stride;  // elements

  __device__ RowMask(const SdpaParams& p, int64_t b, int64_t h) {
    diag = p.diag;
    left = p.left;
    right = p.right;
    kv_len = p.kv_lengths ? p.kv_lengths[batch_offset(p, p.len_bs, b)] : p.lk;
    type = p.mask_type;
    row_stride = p.mask_row_stride;
    col_stride = p.mask_col_stride;
    mask = nullptr;
    if (type != MaskType::none) {
      const int64_t at = batch_offset(p, p.mask_bs, b) + h * p.mask_head_stride;
      mask = static_cast<const char*>(p.mask) + at * elem_size(type);
    }
  }

  __device__ static int64_t elem_size(MaskType t) {
    switch (t) {
      case MaskType::boolean: return 1;
      case MaskType::f16:
      case MaskType::bf16: return 2;
      case MaskType::f64: return 8;
      default: return 4;
    }
  }

  // Keys [begin, end) that some row in [i_lo, i_hi] may see by band and length (not the mask).
  __device__ void key_range(int64_t i_lo, int64_t i_hi, int64_t* begin, int64_t* end) const {
    int64_t b = i_lo + diag - left, e = i_hi + diag + right + 1;
    *begin = b < 0 ? 0 : b;
    *end = e < kv_len ? e : kv_len;
  }

  // Whether the band and the length let every row in [i_lo, i_hi] see every key in [j_lo, j_hi]
  // (then, without a mask, a tile needs no per-score check).
  __device__ bool band_covers(int64_t i_lo, int64_t i_hi, int64_t j_lo, int64_t j_hi) const {
    return j_lo >= i_hi + diag - left && j_hi <= i_lo + diag + right && j_hi < kv_len;
  }

  // The base-2 score s2 of (i, j) after masking: -inf (by assignment, so a NaN or Inf score of an
  // invisible key cannot leak) where not visible, s2 + mask * log2(e) where additive.
  __device__ __forceinline__ T apply(int64_t i, int64_t j, T s2) const {
    return apply_at(mask, i, j, s2);
  }

  // apply() with another head's mask (at_mask is that head's mask, in bytes).
  __device__ __forceinline__ T apply_at(const char* at_mask, int64_t i, int64_t j, T s2) const {
    const T neg_inf = Limits<T>::neg_inf();
    if (j >= kv_len || j < i + diag - left || j > i + diag + right) return neg_inf;
    if (type == MaskType::none) return s2;
    const int64_t at = i * row_stride + j * col_stride;
    T add;
    switch (type) {
      case MaskType::boolean:
        return reinterpret_cast<const uint8_t*>(at_mask)[at] ? s2 : neg_inf;
      case MaskType::f32: add = T(reinterpret_cast<const float*>(at_mask)[at]); break;
      case MaskType::f64: add = mask_from_f64<T>(reinterpret_cast<const double*>(at_mask)[at]); break;
      case MaskType::f16: add = T(__half2float(reinterpret_cast<const __half*>(at_mask)[at])); break;
      default: add = T(__bfloat162float(reinterpret_cast<const __nv_bfloat16*>(at_mask)[at])); break;
    }
    return add == neg_inf ? neg_inf : s2 + mask_base2(add);
  }
};

// The exponent base for a row whose running max is m: m itself, or 0 while the row has seen no
// visible key (m = -inf), so its weights are exp2(-inf) = 0 and never exp2(-inf - -inf) = NaN.
template <class T>
__device__ __forceinline__ T max_or_zero(T m) {
  return m == Limits<T>::neg_inf() ? T(0) : m;
}

}  // namespace cuda
}  // namespace fastattn
