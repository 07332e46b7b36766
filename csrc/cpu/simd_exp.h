// exp(x) for a SIMD wrapper V (float or double lanes), written once for every ISA.
//
// Range reduction x = n ln2 + r, |r| <= ln2/2, with n rounded by adding 1.5 * 2^mantissa_bits (the
// "magic" number: the sum's low bits then hold n, so no float-to-int conversion or rounding
// instruction is needed); ln2 is split in two (Cody-Waite) so r is exact enough. exp(r) is a
// polynomial whose error is below the type's rounding error: for float a degree-6 fit to exp on
// [-ln2/2, ln2/2] (max relative error 9.3e-8 evaluated in float32, under one ulp); for double the
// Taylor series to degree 13 (truncation below 5e-18). The result is the polynomial with n added
// to its exponent bits.
// Inputs below `lo` (results below the smallest normal) give exactly 0, so exp(-inf) == 0, which
// the masking relies on; inputs above `hi` saturate to a large finite value (the kernels only
// exponentiate x - max <= 0); NaN stays NaN.
#pragma once

namespace fastattn {
namespace FASTATTN_ISA {

template <class T> struct ExpConstants;
template <> struct ExpConstants<float> {
  static constexpr float lo = -86.64f, hi = 88.0f;  // n stays in [-125, 127]: normal results
  static constexpr float log2e = 1.44269504088896341f;
  static constexpr float magic = 12582912.0f;  // 1.5 * 2^23
  static constexpr float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
  static constexpr int degree = 6;
  // Coefficients of r^degree .. r^1 (the constant term is 1).
  static constexpr float coef[degree] = {0.001384364441037178f, 0.008374162949621677f,
                                         0.04166800156235695f, 0.16666431725025177f,
                                         0.4999999403953552f, 1.0f};
};
template <> struct ExpConstants<double> {
  static constexpr double lo = -707.7, hi = 709.0;  // n stays in [-1021, 1023]
  static constexpr double log2e = 1.4426950408889634074;
  static constexpr double magic = 6755399441055744.0;  // 1.5 * 2^52
  static constexpr double ln2_hi = 0.693145751953125, ln2_lo = 1.42860682030941723212e-6;
  static constexpr int degree = 13;
  static constexpr double coef[degree] = {
      1.0 / 6227020800, 1.0 / 479001600, 1.0 / 39916800, 1.0 / 3628800, 1.0 / 362880,
      1.0 / 40320,      1.0 / 5040,      1.0 / 720,      1.0 / 120,     1.0 / 24,
      1.0 / 6,          1.0 / 2,         1.0};
};

template <class V>
static inline V exp_poly(V x) {
  using T = typename V::T;
  using C = ExpConstants<T>;
  // max/min return their second operand for NaN, so NaN passes through the clamp.
  const V xc = min(V::set1(C::hi), max(V::set1(C::lo), x));
  const V t = fma(xc, V::set1(C::log2e), V::set1(C::magic));
  const V n = t - V::set1(C::magic);
  V r = fma(n, V::set1(-C::ln2_hi), xc);
  r = fma(n, V::set1(-C::ln2_lo), r);
  V p = V::set1(C::coef[0]);
  for (int k = 1; k < C::degree; ++k) p = fma(p, r, V::set1(C::coef[k]));
  p = fma(p, r, V::set1(T(1)));
  return select_lt(x, V::set1(C::lo), V::zero(), add_to_exponent(p, t));
}

}  // namespace FASTATTN_ISA
}  // namespace fastattn
