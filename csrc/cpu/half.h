// float16 and bfloat16 storage types and their conversions to and from float32, portable C++ with
// round-to-nearest-even. Everything here has internal linkage (static inline), so each per-ISA
// translation unit keeps its own copy and the linker can never swap in a copy built with other flags.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace fastattn {

struct f16 { uint16_t bits; };
struct bf16 { uint16_t bits; };

static inline float bits_to_float(uint32_t bits) { float f; std::memcpy(&f, &bits, 4); return f; }
static inline uint32_t float_to_bits(float f) { uint32_t b; std::memcpy(&b, &f, 4); return b; }

static inline float to_float(f16 h) {
  const uint32_t sign = uint32_t(h.bits & 0x8000u) << 16;
  const uint32_t exponent = (h.bits >> 10) & 0x1fu;
  const uint32_t mantissa = h.bits & 0x3ffu;
  if (exponent == 0x1f) return bits_to_float(sign | 0x7f800000u | (mantissa << 13));  // inf, nan
  if (exponent != 0) return bits_to_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
  // Zero or subnormal: mantissa * 2^-24, exact in float32.
  return bits_to_float(sign | float_to_bits(float(mantissa) * 5.9604644775390625e-8f));
}

static inline float to_float(bf16 h) { return bits_to_float(uint32_t(h.bits) << 16); }

static inline uint16_t float_to_f16_bits(float f) {
  const uint32_t x = float_to_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return uint16_t(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));  // quiet nan
  if (ax >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (ax < 0x38800000u) {
    // Below the smallest normal (2^-14): the result is a subnormal count of 2^-24 steps. Scaling by
    // 2^24 is exact, and nearbyint rounds half to even in the default rounding mode.
    return uint16_t(sign | uint32_t(std::nearbyint(bits_to_float(ax) * 16777216.0f)));
  }
  // Normal: rebias the exponent (127 -> 15) and round 23 mantissa bits to 10, half to even; a carry
  // out of the mantissa correctly bumps the exponent.
  return uint16_t(sign | ((ax - (112u << 23) + 0xfffu + ((ax >> 13) & 1u)) >> 13));
}

static inline uint16_t float_to_bf16_bits(float f) {
  const uint32_t x = float_to_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x40u);  // quiet nan
  return uint16_t((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

// Uniform spelling for the kernels: load any storage type as the compute type, store it back.
static inline float to_compute(float x) { return x; }
static inline double to_compute(double x) { return x; }
static inline float to_compute(f16 x) { return to_float(x); }
static inline float to_compute(bf16 x) { return to_float(x); }

static inline void from_compute(float x, float* dst) { *dst = x; }
static inline void from_compute(double x, double* dst) { *dst = x; }
static inline void from_compute(float x, f16* dst) { dst->bits = float_to_f16_bits(x); }
static inline void from_compute(float x, bf16* dst) { dst->bits = float_to_bf16_bits(x); }

}  // namespace fastattn
