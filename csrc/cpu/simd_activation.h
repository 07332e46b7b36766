// The activations of the general attention module's scores (tanh, relu, sigmoid, identity) for a
// SIMD wrapper V, written once for every ISA. float32 lanes use polynomials and exp2_poly: tanh
// within 2.1e-7 relative, sigmoid within 1e-6 for |x| < 20 (up to 2e-6 beyond, where rounding x
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

// tanh: near 0, x + x^3 P(x^2) (a degree-4 fit in x^2 on [0, 0.625], relative error 7.8e-8, where
// the formula below would cancel); elsewhere 1 - 2 / (exp(2|x|) + 1) (relative error 2.1e-7).
template <class V>
static inline V act_tanh(V x) {
  using T = typename V::T;
  if constexpr (kLibmLanes<V>) {
    return per_lane(x, [](T t) { return std::tanh(t); });
  } else {
    const V ax = max(x, V::zero() - x);  // |x|; NaN stays NaN
    const V x2 = ax * ax;
    V p = V::set1(T(-0.005704987328499556));
    p = fma(p, x2, V::set1(T(0.0206390880048275)));
    p = fma(p, x2, V::set1(T(-0.05373971536755562)));
    p = fma(p, x2, V::set1(T(0.13331441581249237)));
    p = fma(p, x2, V::set1(T(-0.3333328068256378)));
    const V near_zero = fma(ax * x2, p, ax);
    const V e = vexp2(ax * V::set1(T(2.88539008177792681472)));  // exp(2|x|) = 2^(2|x| log2 e)
    const V away = V::set1(T(1)) - V::set1(T(2)) / (e + V::set1(T(1)));
    const V t = select_lt(ax, V::set1(T(0.625)), near_zero, away);
    return select_lt(x, V::zero(), V::zero() - t, t);
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

template <Activation A, class V>
static inline V activate(V x) {
  if constexpr (A == Activation::tanh) return act_tanh(x);
  if constexpr (A == Activation::sigmoid) return act_sigmoid(x);
  if constexpr (A == Activation::relu) return max(V::zero(), x);  // NaN stays NaN
  if constexpr (A == Activation::identity) return x;
}

}  // namespace FASTATTN_ISA
}  // namespace fastattn
