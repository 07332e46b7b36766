// exp(x) for a SIMD wrapper V (float or double lanes), written once for every ISA.
//
// Cody-Waite range reduction x = n ln2 + r with |r| <= ln2/2, then a Taylor polynomial for exp(r)
// long enough that its truncation error is below the type's rounding error (degree 7 for float:
// r^8/8! < 6e-9; degree 13 for double: r^14/14! < 5e-18), then the exponent bits of 2^n.
// NaN stays NaN; inputs below the smallest normal result give exactly 0 (so exp(-inf) == 0, which
// the masking relies on); inputs above the largest finite result saturate (never used: the kernels
// only exponentiate x - max <= 0).
#pragma once

namespace fastattn {
namespace FASTATTN_ISA {

template <class T> struct ExpConstants;
template <> struct ExpConstants<float> {
  static constexpr float lo = -87.33654f, hi = 88.37626f;
  static constexpr float log2e = 1.44269504088896341f;
  static constexpr float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
  static constexpr int degree = 7;
};
template <> struct ExpConstants<double> {
  static constexpr double lo = -708.3964185322641, hi = 709.0;
  static constexpr double log2e = 1.4426950408889634074;
  static constexpr double ln2_hi = 0.693145751953125, ln2_lo = 1.42860682030941723212e-6;
  static constexpr int degree = 13;
};

template <class V>
static inline V exp_poly(V x) {
  using T = typename V::T;
  using C = ExpConstants<T>;
  // max/min return their second operand for NaN, so NaN passes through the clamp.
  V xc = min(V::set1(C::hi), max(V::set1(C::lo), x));
  V n = round_nearest(xc * V::set1(C::log2e));
  V r = fma(n, V::set1(-C::ln2_hi), xc);
  r = fma(n, V::set1(-C::ln2_lo), r);
  // Horner from 1/degree! down to 1: p = 1 + r (1 + r/2 (1 + r/3 (...))).
  V p = V::set1(T(1));
  for (int k = C::degree; k >= 1; --k) p = fma(p * r, V::set1(T(1) / T(k)), V::set1(T(1)));
  return select_lt(x, V::set1(C::lo), V::zero(), p * pow2_int(n));
}

}  // namespace FASTATTN_ISA
}  // namespace fastattn
