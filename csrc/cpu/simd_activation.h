// The activations of the general attention module's scores (tanh, relu, sigmoid, identity) for a
// SIMD wrapper V, written once for every ISA. float32 lanes use a rational fit and exp2_poly: tanh
// within 3.7e-7 relative, sigmoid within 1e-6 for |x| < 20 (up to 2e-6 beyond, where rounding x
// to float32 already costs as much); float64 lanes and the one-lane portable path call the C
// library lane by lane (float64 is the accuracy path, not the speed path).
#pragma once

#include <cmath>

#include "fastattn/attention_params.h"

namespace fastattn {
namespace FASTATTN_ISA {

template <class V, class F>
static inline V per_lane(V x, F f) {
  typename V::T lanes[V::W];
  x.store(lanes);
  for (int i = 0; i < V::W; ++i) lanes[i] = f(lanes[i]);
  return V::load(lanes);
}

template <class V>
constexpr bool kLibmLanes = sizeof(typename V::T) == 8 || V::W == 1;

// tanh: x P(x^2) / Q(x^2), a degree (9, 8) rational fit made for this library (weighted least
// squares on the relative error, reweighted towards minimax: bench/fit_tanh.py), on x
// clamped to +-7.95, where float32 tanh is within 2.3e-7 of 1. Relative error 3.7e-7 in float32
// arithmetic everywhere, odd by construction (so tanh(-0) = -0), NaN in gives NaN out. Twelve
// vector operations and one division: the old 1 - 2/(exp(2x) + 1) with a near-zero polynomial
// cost twice that, and is what bounded additive attention.
template <class V>
static inline V act_tanh(V x) {
  using T = typename V::T;
  if constexpr (kLibmLanes<V>) {
    return per_lane(x, [](T t) { return std::tanh(t); });
  } else {
    const V c = V::set1(T(7.95));
    const V xc = min(c, max(V::zero() - c, x));  // x last: NaN wins
    const V t = xc * xc;
    V p = V::set1(T(1.3354608086046937e-08));
    p = fma(p, t, V::set1(T(2.0609149942174554e-05)));
    p = fma(p, t, V::set1(T(0.003495597979053855)));
    p = fma(p, t, V::set1(T(0.133810356259346)));
    p = fma(p, t, V::set1(T(1.0)));
    V q = V::set1(T(7.77656623540679e-07));
    q = fma(q, t, V::set1(T(0.00032856466714292765)));
    q = fma(q, t, V::set1(T(0.025877026841044426)));
    q = fma(q, t, V::set1(T(0.4671435058116913)));
    q = fma(q, t, V::set1(T(1.0)));
    return xc * p / q;
  }
}

// sigmoid: 1 / (1 + exp(-x)), with the relative error of exp2_poly.
template <class V>
static inline V act_sigmoid(V x) {
  using T = typename V::T;
  if constexpr (kLibmLanes<V>) {
    return per_lane(x, [](T t) { return T(1) / (T(1) + std::exp(-t)); });
  } else {
    const V e = vexp2(x * V::set1(T(-1.44269504088896340736)));
    return V::set1(T(1)) / (V::set1(T(1)) + e);
  }
}

// e^x within 1.5e-7 relative in float32 for |x| <= 87 (float64 lanes and the one-lane path: the C
// library). x = n ln2 + r with n = round(x log2 e) and r from two FMAs against ln2 split in two
// floats (Cody and Waite), so r keeps its low bits however large n is; then 2^n, exact, times
// 2^(r log2 e), whose argument is at most 1/2 in magnitude. exp2_poly(x log2 e) in one step would
// lose |x| * 6e-8 to the rounding of its argument: 5e-6 at x = 80.
template <class V>
static inline V exp_accurate(V x) {
  using T = typename V::T;
  if constexpr (kLibmLanes<V>) {
    return per_lane(x, [](T t) { return std::exp(t); });
  } else {
    const V log2e = V::set1(T(1.44269504088896340736)), magic = V::set1(T(12582912.0f));
    const V n = (x * log2e + magic) - magic;
    V r = fma(V::zero() - n, V::set1(T(0.693145751953125)), x);
    r = fma(V::zero() - n, V::set1(T(1.428606765330187e-06)), r);
    return exp2_poly(n) * exp2_poly(r * log2e);
  }
}

template <Activation A, class V>
static inline V activate(V x) {
  if constexpr (A == Activation::tanh) return act_tanh(x);
  if constexpr (A == Activation::sigmoid) return act_sigmoid(x);
  if constexpr (A == Activation::relu) return max(V::zero(), x);  // NaN stays NaN
  if constexpr (A == Activation::identity) return x;
}

}  // namespace FASTATTN_ISA
}  // namespace fastattn
