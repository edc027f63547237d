// Elementwise math for the fast CPU kernels, written so GCC/Clang vectorise it (branch-free,
// no libm calls) and so every lane computes exactly the same operations as a scalar would:
// a value's result never depends on where it sits in a vector, on the thread count or on the
// ISA clone that runs it (fused multiply-adds are explicit, contraction is off for these files).
//   fast_exp      |rel err| < 2e-7 on [-87, 88] (Cody-Waite reduction + degree-7 Taylor)
//   softplus      log1p(exp(x)) via max(x,0) + 2 atanh(y / (2 + y)), y = exp(-|x|)
//   sigmoid, silu
// Each also has a float64 overload built on libm, for gradient checks in double precision.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

// Hot loops are compiled for AVX-512 and AVX2+FMA as well as the baseline; the loader picks one.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define PMAMBA_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PMAMBA_CLONES
#endif

namespace pmamba::kernels::cpu {

inline float fma_(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
inline double fma_(double a, double b, double c) { return __builtin_fma(a, b, c); }

// exp(x) for x already clamped to [-87.3, 88.3].
inline float exp_clamped(float x) {
  // k = round(x / ln 2) by the 1.5 * 2^23 trick (round to nearest even, vectorises everywhere).
  const float magic = 12582912.0f;
  const float kf = (x * 1.44269504088896341f + magic) - magic;
  float r = fma_(kf, -0.693145751953125f, x);
  r = fma_(kf, -1.428606765330187e-06f, r);
  float p = 1.0f / 5040.0f;
  p = fma_(p, r, 1.0f / 720.0f);
  p = fma_(p, r, 1.0f / 120.0f);
  p = fma_(p, r, 1.0f / 24.0f);
  p = fma_(p, r, 1.0f / 6.0f);
  p = fma_(p, r, 0.5f);
  p = fma_(p, r, 1.0f);
  p = fma_(p, r, 1.0f);
  const int32_t bits = (static_cast<int32_t>(kf) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// exp for x <= 0 (the scan's dt * A): only the lower clamp, which keeps the vector code lean.
inline float fast_exp_nonpos(float x) { return exp_clamped(x > -87.3f ? x : -87.3f); }

inline float fast_exp(float x) {
  x = x > -87.3f ? x : -87.3f;  // maxps / minps
  x = x < 88.3f ? x : 88.3f;
  return exp_clamped(x);
}

// log1p(y) for y in [0, 1]: 2 atanh(s), s = y / (2 + y) <= 1/3; terms to s^13 (< 1e-8 relative).
inline float log1p_unit(float y) {
  const float s = y / (2.0f + y);
  const float s2 = s * s;
  float p = 1.0f / 13.0f;
  p = fma_(p, s2, 1.0f / 11.0f);
  p = fma_(p, s2, 1.0f / 9.0f);
  p = fma_(p, s2, 1.0f / 7.0f);
  p = fma_(p, s2, 1.0f / 5.0f);
  p = fma_(p, s2, 1.0f / 3.0f);
  p = fma_(p, s2, 1.0f);
  return 2.0f * s * p;
}

inline float softplus(float x) {
  const float ax = x < 0 ? -x : x;
  return (x > 0 ? x : 0.0f) + log1p_unit(fast_exp(-ax));
}

inline float sigmoid(float x) { return 1.0f / (1.0f + fast_exp(-x)); }
inline float silu(float x) { return x * sigmoid(x); }
// d/dx silu(x) = sigmoid(x) * (1 + x * (1 - sigmoid(x)))
inline float silu_grad(float x) {
  const float s = sigmoid(x);
  return s * fma_(x, 1.0f - s, 1.0f);
}

// float64 versions (used for gradient checks in double precision): libm, full accuracy.
inline double fast_exp(double x) { return std::exp(x); }
inline double fast_exp_nonpos(double x) { return std::exp(x); }
inline double softplus(double x) { return x > 20.0 ? x : std::log1p(std::exp(x)); }
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline double silu(double x) { return x * sigmoid(x); }
inline double silu_grad(double x) {
  const double s = sigmoid(x);
  return s * (1.0 + x * (1.0 - s));
}

}  // namespace pmamba::kernels::cpu
