// The SIMD wrapper the kernels are written against, portable flavour: one lane, plain C++.
// Included only by kernels_scalar.cpp, which is built without ISA flags and runs on any CPU.
#pragma once

#include <cmath>

#include "cpu/half.h"

namespace fastattn {
namespace FASTATTN_ISA {

template <class TT>
struct VScalar {
  using T = TT;
  static constexpr int W = 1;
  T v;

  static VScalar zero() { return {T(0)}; }
  static VScalar set1(T x) { return {x}; }
  static VScalar load(const T* p) { return {*p}; }
  void store(T* p) const { *p = v; }
  friend VScalar operator+(VScalar a, VScalar b) { return {a.v + b.v}; }
  friend VScalar operator-(VScalar a, VScalar b) { return {a.v - b.v}; }
  friend VScalar operator*(VScalar a, VScalar b) { return {a.v * b.v}; }
  friend VScalar operator/(VScalar a, VScalar b) { return {a.v / b.v}; }
  // Separate multiply and add: std::fma is a slow library call without hardware FMA.
  friend VScalar fma(VScalar a, VScalar b, VScalar c) { return {a.v * b.v + c.v}; }
  // Same NaN rule as the x86 instructions: the second operand wins when either is NaN.
  friend VScalar max(VScalar a, VScalar b) { return {a.v > b.v ? a.v : b.v}; }
  friend VScalar min(VScalar a, VScalar b) { return {a.v < b.v ? a.v : b.v}; }
  friend VScalar select_lt(VScalar a, VScalar b, VScalar then, VScalar otherwise) {
    return {a.v < b.v ? then.v : otherwise.v};
  }
  friend VScalar select_eq(VScalar a, VScalar b, VScalar then, VScalar otherwise) {
    return {a.v == b.v ? then.v : otherwise.v};
  }
  static VScalar load(const f16* p) { return {to_float(*p)}; }
  static VScalar load(const bf16* p) { return {to_float(*p)}; }
  T reduce_max() const { return v; }
  T reduce_add() const { return v; }
};

static inline VScalar<float> vexp2(VScalar<float> x) { return {std::exp2(x.v)}; }
static inline VScalar<double> vexp2(VScalar<double> x) { return {std::exp2(x.v)}; }
template <class T>
static inline VScalar<T> vexp2_softmax(VScalar<T> x) { return vexp2(x); }

// Lane r of the result is the sum of a[r]'s lanes (one lane: a[0] itself).
template <class T>
static inline VScalar<T> lane_sums(const VScalar<T>* a) { return a[0]; }

// Transposes a W x W block in place (one lane: nothing to do).
template <class T>
static inline void transpose(VScalar<T>*) {}

template <class T> struct VecOf { using type = VScalar<T>; };

}  // namespace FASTATTN_ISA
}  // namespace fastattn
