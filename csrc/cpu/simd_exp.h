// 2^x for a SIMD wrapper V (float or double lanes), written once for every ISA. The kernels work in
// base 2: log2(e) is folded into the query scale, so softmax's exp(s - m) is 2^(s2 - m2) and costs
// no extra multiply.
//
// x = n + r with n = round(x), found by adding 1.5 * 2^mantissa_bits (the "magic" number: the sum's
// low bits then hold n, so no float-to-int conversion or rounding instruction is needed); r = x - n
// is exact and lies in [-1/2, 1/2]. 2^r is a polynomial whose error is below the type's rounding
// error: for float a degree-6 fit on [-1/2, 1/2] (max relative error 1.0e-7 evaluated in float32,
// under one ulp); for double the Taylor series of exp(r ln2) to degree 13 (truncation below
// 5e-18). The result is the polynomial times 2^n (exact: a power of two made from n's bits, or
// AVX-512's vscalefps).
// Inputs below `lo` (results below the smallest normal) give exactly 0, so 2^-inf == 0, which the
// masking relies on; inputs above `hi` saturate to a large finite value (the kernels only
// exponentiate s - max <= 0); NaN stays NaN, whatever its payload.
#pragma once

namespace fastattn {
namespace FASTATTN_ISA {

// ln2^k / k!, the Taylor coefficients of 2^r = exp(r ln2).
constexpr double taylor_exp2(int k) {
  double c = 1.0;
  for (int i = 1; i <= k; ++i) c *= 0.69314718055994530942 / i;
  return c;
}

template <class T> struct Exp2Constants;
template <> struct Exp2Constants<float> {
  static constexpr float lo = -125.0f, hi = 127.0f;  // n stays in [-125, 127]: normal results
  static constexpr float magic = 12582912.0f;         // 1.5 * 2^23
  static constexpr int degree = 6;
  // Coefficients of r^degree .. r^1 (the constant term is 1).
  static constexpr float coef[degree] = {0.00015353341586887836f, 0.0013398900628089905f,
                                         0.009618437848985195f,   0.055503323674201965f,
                                         0.24022647738456726f,    0.6931471824645996f};
};
template <> struct Exp2Constants<double> {
  static constexpr double lo = -1021.0, hi = 1023.0;  // n stays in [-1021, 1023]
  static constexpr double magic = 6755399441055744.0;  // 1.5 * 2^52
  static constexpr int degree = 13;
  static constexpr double coef[degree] = {
      taylor_exp2(13), taylor_exp2(12), taylor_exp2(11), taylor_exp2(10), taylor_exp2(9),
      taylor_exp2(8),  taylor_exp2(7),  taylor_exp2(6),  taylor_exp2(5),  taylor_exp2(4),
      taylor_exp2(3),  taylor_exp2(2),  taylor_exp2(1)};
};

// kClamp = false is for softmax arguments s - max: the same result for every x up to `hi` (and
// exactly 0 below `lo`, by the final mask alone), an unspecified one above `hi` (the lazy softmax
// redoes any tile whose arguments exceed its small headroom). It saves the clamp's max and min,
// which compete with the FMAs for their two pipes: about 2 of the ~9 cycles an exp2 of 8 floats
// costs in the prefill kernel.
template <class V, bool kClamp = true>
static inline V exp2_poly(V x) {
  using T = typename V::T;
  using C = Exp2Constants<T>;
  // max/min return their second operand for NaN, so NaN passes through the clamp.
  const V xc = kClamp ? min(V::set1(C::hi), max(V::set1(C::lo), x)) : x;
  const V t = xc + V::set1(C::magic);
  const V n = t - V::set1(C::magic);
  const V r = xc - n;
  V p = V::set1(C::coef[0]);
  for (int k = 1; k < C::degree; ++k) p = fma(p, r, V::set1(C::coef[k]));
  p = fma(p, r, V::set1(T(1)));
  return zero_where_lt(x, V::set1(C::lo), times_pow2(p, t, n));
}

}  // namespace FASTATTN_ISA
}  // namespace fastattn
