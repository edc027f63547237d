#include "kernels/cpu/scan_fast.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define PMAMBA_SCAN_X86 1
#include <immintrin.h>
#else
#define PMAMBA_SCAN_X86 0
#endif

#include "kernels/cpu/vmath.h"


namespace pmamba::kernels::cpu {

namespace {

constexpr int G = kLanes;

// Fixed-order sum of the 16 lanes (pairwise), used for reductions over channels.
template <typename T>
inline T lane_sum(const T* v) {
  T a[8];
  for (int i = 0; i < 8; ++i) a[i] = v[i] + v[i + 8];
  for (int i = 0; i < 4; ++i) a[i] = a[i] + a[i + 4];
  return (a[0] + a[2]) + (a[1] + a[3]);
}

// Gathers channels d0..d0+nd of one batch's (D, L) plane into a (T, G) tile starting at t0;
// missing lanes are 0. A time-major plane (unit channel stride) is read one step at a time.
template <typename T>
inline void load_tile(const T* plane, const PlaneStrides& st, int64_t d0, int64_t nd, int64_t t0, int64_t tl,
                      T* tile) {
  if (st.d == 1) {
    for (int64_t tt = 0; tt < tl; ++tt) {
      const T* src = plane + (t0 + tt) * st.l + d0;
      T* dst = tile + tt * G;
      for (int64_t lane = 0; lane < nd; ++lane) dst[lane] = src[lane];
      for (int64_t lane = nd; lane < G; ++lane) dst[lane] = T(0);
    }
    return;
  }
  for (int64_t lane = 0; lane < G; ++lane) {
    if (lane < nd) {
      const T* src = plane + (d0 + lane) * st.d + t0 * st.l;
      for (int64_t tt = 0; tt < tl; ++tt) tile[tt * G + lane] = src[tt * st.l];
    } else {
      for (int64_t tt = 0; tt < tl; ++tt) tile[tt * G + lane] = T(0);
    }
  }
}

template <typename T>
inline void store_tile(T* plane, const PlaneStrides& st, int64_t d0, int64_t nd, int64_t t0, int64_t tl,
                       const T* tile) {
  if (st.d == 1) {
    for (int64_t tt = 0; tt < tl; ++tt) {
      T* dst = plane + (t0 + tt) * st.l + d0;
      for (int64_t lane = 0; lane < nd; ++lane) dst[lane] = tile[tt * G + lane];
    }
    return;
  }
  for (int64_t lane = 0; lane < nd; ++lane) {
    T* dst = plane + (d0 + lane) * st.d + t0 * st.l;
    for (int64_t tt = 0; tt < tl; ++tt) dst[tt * st.l] = tile[tt * G + lane];
  }
}

// 16 lanes of T as plain arrays: the scalar path (and float64), one lane at a time.
template <typename T>
struct Lanes {
  T v[kLanes];
  static Lanes load(const T* p) {
    Lanes r;
    std::memcpy(r.v, p, sizeof r.v);
    return r;
  }
  static void store(T* p, const Lanes& a) { std::memcpy(p, a.v, sizeof a.v); }
  static Lanes set1(T x) {
    Lanes r;
    for (int i = 0; i < kLanes; ++i) r.v[i] = x;
    return r;
  }
  static Lanes zero() { return set1(T(0)); }
  static Lanes add(const Lanes& a, const Lanes& b) {
    Lanes r;
    for (int i = 0; i < kLanes; ++i) r.v[i] = a.v[i] + b.v[i];
    return r;
  }
  static Lanes mul(const Lanes& a, const Lanes& b) {
    Lanes r;
    for (int i = 0; i < kLanes; ++i) r.v[i] = a.v[i] * b.v[i];
    return r;
  }
  static Lanes fma(const Lanes& a, const Lanes& b, const Lanes& c) {
    Lanes r;
    for (int i = 0; i < kLanes; ++i) r.v[i] = fma_(a.v[i], b.v[i], c.v[i]);
    return r;
  }
  static Lanes exp_nonpos(const Lanes& a) {
    Lanes r;
    for (int i = 0; i < kLanes; ++i) r.v[i] = fast_exp_nonpos(a.v[i]);
    return r;
  }
  static T hsum(const Lanes& a) { return lane_sum(a.v); }
  static void hsum_rows(const T* rows, int64_t count, T* out) {
    for (int64_t i = 0; i < count; ++i) out[i] = lane_sum(rows + i * kLanes);
  }
};

// vmath's functions lane by lane (float64 keeps libm's).
#define PMAMBA_LANEWISE(NAME, FN)                               \
  template <typename T>                                         \
  inline Lanes<T> NAME(const Lanes<T>& a) {                     \
    Lanes<T> r;                                                 \
    for (int i = 0; i < kLanes; ++i) r.v[i] = FN(a.v[i]);       \
    return r;                                                   \
  }
PMAMBA_LANEWISE(softplus_v, softplus)
PMAMBA_LANEWISE(sigmoid_v, sigmoid)
PMAMBA_LANEWISE(silu_v, silu)
PMAMBA_LANEWISE(silu_grad_v, silu_grad)
#undef PMAMBA_LANEWISE

namespace scalar_f32 {
using T = float;
using V = Lanes<float>;
#include "kernels/cpu/scan_body.inc"
}  // namespace scalar_f32

namespace scalar_f64 {
using T = double;
using V = Lanes<double>;
#include "kernels/cpu/scan_body.inc"
}  // namespace scalar_f64

#if PMAMBA_SCAN_X86
// vmath's exp_clamped, operation for operation (the same constants, roundings and order).
#define PMAMBA_EXP_CLAMPED(P, I)                                                             \
  const auto magic = P##_set1_ps(12582912.0f);                                               \
  const auto kf = P##_sub_ps(P##_add_ps(P##_mul_ps(x, P##_set1_ps(1.44269504088896341f)), magic), magic); \
  auto r = P##_fmadd_ps(kf, P##_set1_ps(-0.693145751953125f), x);                            \
  r = P##_fmadd_ps(kf, P##_set1_ps(-1.428606765330187e-06f), r);                             \
  auto p = P##_fmadd_ps(P##_set1_ps(1.0f / 5040.0f), r, P##_set1_ps(1.0f / 720.0f));         \
  p = P##_fmadd_ps(p, r, P##_set1_ps(1.0f / 120.0f));                                        \
  p = P##_fmadd_ps(p, r, P##_set1_ps(1.0f / 24.0f));                                         \
  p = P##_fmadd_ps(p, r, P##_set1_ps(1.0f / 6.0f));                                          \
  p = P##_fmadd_ps(p, r, P##_set1_ps(0.5f));                                                 \
  p = P##_fmadd_ps(p, r, P##_set1_ps(1.0f));                                                 \
  p = P##_fmadd_ps(p, r, P##_set1_ps(1.0f));                                                 \
  const auto bits = P##_slli_epi32(P##_add_epi32(P##_cvttps_epi32(kf), P##_set1_epi32(127)), 23); \
  return P##_mul_ps(p, P##_castsi##I##_ps(bits))

// The last two levels of lane_sum's tree over w[0..3] (P: the intrinsics' prefix), as in
// hsum8/hsum16: in each 128-bit quarter, u0 holds two rows of w[0], w[1] and u1 two of w[2],
// w[3], each as (v0 + v2, v1 + v3); f then holds one full sum per element.
#define PMAMBA_HSUM_LAST_LEVELS(P, w, f)                                                          \
  const auto u0 = P##_add_ps(P##_shuffle_ps(w[0], w[1], _MM_SHUFFLE(1, 0, 1, 0)),                \
                             P##_shuffle_ps(w[0], w[1], _MM_SHUFFLE(3, 2, 3, 2)));               \
  const auto u1 = P##_add_ps(P##_shuffle_ps(w[2], w[3], _MM_SHUFFLE(1, 0, 1, 0)),                \
                             P##_shuffle_ps(w[2], w[3], _MM_SHUFFLE(3, 2, 3, 2)));               \
  const auto f = P##_add_ps(P##_shuffle_ps(u0, u1, _MM_SHUFFLE(2, 0, 2, 0)),                     \
                            P##_shuffle_ps(u0, u1, _MM_SHUFFLE(3, 1, 3, 1)))

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
using T = float;
// Two 8-lane registers: lanes 0-7 and 8-15.
struct V {
  __m256 lo, hi;
  static V load(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
  static void store(float* p, const V& a) {
    _mm256_storeu_ps(p, a.lo);
    _mm256_storeu_ps(p + 8, a.hi);
  }
  static V set1(float x) {
    const __m256 v = _mm256_set1_ps(x);
    return {v, v};
  }
  static V zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
  static V add(const V& a, const V& b) { return {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)}; }
  static V sub(const V& a, const V& b) { return {_mm256_sub_ps(a.lo, b.lo), _mm256_sub_ps(a.hi, b.hi)}; }
  static V mul(const V& a, const V& b) { return {_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)}; }
  static V div(const V& a, const V& b) { return {_mm256_div_ps(a.lo, b.lo), _mm256_div_ps(a.hi, b.hi)}; }
  static V fma(const V& a, const V& b, const V& c) {
    return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
  }
  // maxps/minps return the second operand unless the first is greater/smaller: a ? : exactly.
  static V max(const V& a, const V& b) { return {_mm256_max_ps(a.lo, b.lo), _mm256_max_ps(a.hi, b.hi)}; }
  static V min(const V& a, const V& b) { return {_mm256_min_ps(a.lo, b.lo), _mm256_min_ps(a.hi, b.hi)}; }
  static V neg(const V& a) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    return {_mm256_xor_ps(a.lo, sign), _mm256_xor_ps(a.hi, sign)};
  }
  static V select_lt0(const V& x, const V& a, const V& b) {
    const __m256 z = _mm256_setzero_ps();
    return {_mm256_blendv_ps(b.lo, a.lo, _mm256_cmp_ps(x.lo, z, _CMP_LT_OQ)),
            _mm256_blendv_ps(b.hi, a.hi, _mm256_cmp_ps(x.hi, z, _CMP_LT_OQ))};
  }
  static __m256 exp8(__m256 x) { PMAMBA_EXP_CLAMPED(_mm256, 256); }
  static V exp_clamped(const V& a) { return {exp8(a.lo), exp8(a.hi)}; }
  static V exp_nonpos(const V& a) { return exp_clamped(max(a, set1(-87.3f))); }
  // lane_sum's order: (v[i] + v[i+8]), then + 4 apart, then (0 + 2) + (1 + 3).
  static float hsum(const V& a) {
    const __m256 s8 = _mm256_add_ps(a.lo, a.hi);
    const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
  }
  // hsum of 8 rows at once: each level of lane_sum's tree is one add over two rows' halves
  // gathered side by side, so every row sees the same adds in the same order as hsum.
  static __m256 hsum8(const float* rows) {
    __m256 s[8], w[4];
    for (int r = 0; r < 8; ++r) s[r] = _mm256_add_ps(_mm256_loadu_ps(rows + r * 16), _mm256_loadu_ps(rows + r * 16 + 8));
    for (int m = 0; m < 4; ++m)  // 128-bit half h: row 2m + h, v[i] + v[i + 4]
      w[m] = _mm256_add_ps(_mm256_permute2f128_ps(s[2 * m], s[2 * m + 1], 0x20),
                           _mm256_permute2f128_ps(s[2 * m], s[2 * m + 1], 0x31));
    PMAMBA_HSUM_LAST_LEVELS(_mm256, w, f);  // half 0: rows 0, 2, 4, 6; half 1: rows 1, 3, 5, 7
    return _mm256_permutevar8x32_ps(f, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  }
  static void hsum_rows(const float* rows, int64_t count, float* out) {
    int64_t i = 0;
    for (; i + 8 <= count; i += 8) _mm256_storeu_ps(out + i, hsum8(rows + i * 16));
    for (; i < count; ++i) out[i] = hsum(load(rows + i * 16));
  }
};
#include "kernels/cpu/scan_vmath.inc"
#include "kernels/cpu/scan_body.inc"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
// GCC 12's AVX-512 headers start masked intrinsics from `__m512 __Y = __Y;` (deliberately
// undefined), which -Wmaybe-uninitialized reports at every use.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
namespace avx512 {
using T = float;
struct V {
  __m512 v;
  static V load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static void store(float* p, const V& a) { _mm512_storeu_ps(p, a.v); }
  static V set1(float x) { return {_mm512_set1_ps(x)}; }
  static V zero() { return {_mm512_setzero_ps()}; }
  static V add(const V& a, const V& b) { return {_mm512_add_ps(a.v, b.v)}; }
  static V sub(const V& a, const V& b) { return {_mm512_sub_ps(a.v, b.v)}; }
  static V mul(const V& a, const V& b) { return {_mm512_mul_ps(a.v, b.v)}; }
  static V div(const V& a, const V& b) { return {_mm512_div_ps(a.v, b.v)}; }
  static V fma(const V& a, const V& b, const V& c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
  static V max(const V& a, const V& b) { return {_mm512_max_ps(a.v, b.v)}; }
  static V min(const V& a, const V& b) { return {_mm512_min_ps(a.v, b.v)}; }
  static V neg(const V& a) { return {_mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a.v), _mm512_set1_epi32(INT32_MIN)))}; }
  static V select_lt0(const V& x, const V& a, const V& b) {
    return {_mm512_mask_blend_ps(_mm512_cmp_ps_mask(x.v, _mm512_setzero_ps(), _CMP_LT_OQ), b.v, a.v)};
  }
  static __m512 exp16(__m512 x) { PMAMBA_EXP_CLAMPED(_mm512, 512); }
  static V exp_clamped(const V& a) { return {exp16(a.v)}; }
  static V exp_nonpos(const V& a) { return exp_clamped(max(a, set1(-87.3f))); }
  static float hsum(const V& a) {
    const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a.v), 1));
    const __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(a.v), hi);
    const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
  }
  // hsum of 16 rows at once, lane_sum's tree level by level as in avx2::V::hsum8.
  static __m512 hsum16(const float* rows) {
    __m512 p[8], w[4];
    for (int k = 0; k < 8; ++k) {  // lanes 0-7: row 2k, 8-15: row 2k + 1, v[i] + v[i + 8]
      const __m512 a = _mm512_loadu_ps(rows + 2 * k * 16), b = _mm512_loadu_ps(rows + (2 * k + 1) * 16);
      p[k] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
    }
    for (int m = 0; m < 4; ++m)  // quarter j: row 4m + j, v[i] + v[i + 4]
      w[m] = _mm512_add_ps(_mm512_shuffle_f32x4(p[2 * m], p[2 * m + 1], 0x88),
                           _mm512_shuffle_f32x4(p[2 * m], p[2 * m + 1], 0xDD));
    PMAMBA_HSUM_LAST_LEVELS(_mm512, w, f);  // element 4j + e: row 4e + j
    return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), f);
  }
  static void hsum_rows(const float* rows, int64_t count, float* out) {
    int64_t i = 0;
    for (; i + 16 <= count; i += 16) _mm512_storeu_ps(out + i, hsum16(rows + i * 16));
    for (; i < count; ++i) out[i] = hsum(load(rows + i * 16));
  }
};
#include "kernels/cpu/scan_vmath.inc"
#include "kernels/cpu/scan_body.inc"
}  // namespace avx512
#pragma GCC diagnostic pop
#pragma GCC pop_options
#undef PMAMBA_EXP_CLAMPED
#undef PMAMBA_HSUM_LAST_LEVELS
#endif  // PMAMBA_SCAN_X86
template <typename T>
PMAMBA_CLONES void step_channel(int64_t N, T* state, T u, T dt, const T* A, const T* Bv, const T* Cv,
                  T Dv, bool has_z, T z, T* out) {
  const T dtu = dt * u;
  T y = T(0);
  for (int64_t n = 0; n < N; ++n) {
    const T da = fast_exp_nonpos(dt * A[n]);
    state[n] = fma_(da, state[n], dtu * Bv[n]);
    y = fma_(Cv[n], state[n], y);
  }
  T v = fma_(Dv, u, y);
  if (has_z) v *= silu(z);
  *out = v;
}

template <typename T>
struct GroupFns {
  void (*fwd)(const ScanForward<T>&, int64_t, int64_t);
  void (*bwd)(const ScanBackward<T>&, int64_t, int64_t, T*, T*, T*, T*, T*);
};

template <typename T>
GroupFns<T> group_fns();

template <>
GroupFns<double> group_fns<double>() {
  return {scalar_f64::forward_group, scalar_f64::backward_group};
}

template <>
GroupFns<float> group_fns<float>() {
  switch (scan_isa()) {
#if PMAMBA_SCAN_X86
    case Isa::kAvx512: return {avx512::forward_group, avx512::backward_group};
    case Isa::kAvx2: return {avx2::forward_group, avx2::backward_group};
#endif
    default: return {scalar_f32::forward_group, scalar_f32::backward_group};
  }
}

std::atomic<int> g_forced_isa{-1};

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    case Isa::kScalar: return "scalar";
  }
  return "?";
}

std::optional<Isa> parse_isa(const std::string& name) {
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512})
    if (name == isa_name(isa)) return isa;
  return std::nullopt;
}

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return true;
#if PMAMBA_SCAN_X86
    case Isa::kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::kAvx512: return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
#endif
    default: return false;
  }
}

Isa best_isa() {
  for (Isa isa : {Isa::kAvx512, Isa::kAvx2})
    if (isa_supported(isa)) return isa;
  return Isa::kScalar;
}

namespace {

// PMAMBA_SCAN_ISA (scalar, avx2, avx512) pins the path for a whole process, for benchmarks and
// for reproducing a report from another machine; results do not depend on it.
Isa env_or_best_isa() {
  const char* env = std::getenv("PMAMBA_SCAN_ISA");
  if (env == nullptr || *env == '\0') return best_isa();
  const std::optional<Isa> isa = parse_isa(env);
  TORCH_CHECK(isa.has_value(), "PMAMBA_SCAN_ISA must be one of scalar, avx2, avx512 but is '", env, "'");
  TORCH_CHECK(isa_supported(*isa), "PMAMBA_SCAN_ISA=", env, ": this CPU does not support ", env,
              " (it supports up to ", isa_name(best_isa()), ")");
  return *isa;
}

}  // namespace

Isa scan_isa() {
  const int forced = g_forced_isa.load(std::memory_order_relaxed);
  if (forced >= 0) return static_cast<Isa>(forced);
  static const Isa chosen = env_or_best_isa();
  return chosen;
}

void set_scan_isa(std::optional<Isa> isa) {
  if (isa) {
    TORCH_CHECK(isa_supported(*isa), "set_scan_isa: this CPU does not support ", isa_name(*isa),
                " (it supports up to ", isa_name(best_isa()), ")");
  }
  g_forced_isa.store(isa ? static_cast<int>(*isa) : -1, std::memory_order_relaxed);
}

float exp_bound_loop(Isa isa, float* x, int64_t n, int64_t reps) {
  TORCH_CHECK(isa_supported(isa), "exp_bound_loop: this CPU does not support ", isa_name(isa));
  TORCH_CHECK(n > 0 && n % kLanes == 0, "exp_bound_loop: n must be a positive multiple of ", kLanes, " but is ", n);
  switch (isa) {
#if PMAMBA_SCAN_X86
    case Isa::kAvx512: return avx512::exp_bound_loop(x, n, reps);
    case Isa::kAvx2: return avx2::exp_bound_loop(x, n, reps);
#endif
    default: return scalar_f32::exp_bound_loop(x, n, reps);
  }
}

template <typename T>
void scan_forward(const ScanForward<T>& a) {
  const int64_t tasks = a.s.batch * a.s.groups();
  const auto fwd = group_fns<T>().fwd;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) fwd(a, k / a.s.groups(), k % a.s.groups());
  });
}

template <typename T>
void scan_backward(const ScanBackward<T>& a) {
  const ScanShape& s = a.s;
  const int64_t Gs = s.groups(), B = s.batch, D = s.dim, L = s.len, N = s.dstate;
  // Per-(batch, group) partial sums, reduced below in a fixed order.
  std::vector<T> dB_part(static_cast<size_t>(B * Gs * L * N)), dC_part(dB_part.size());
  std::vector<T> dA_part(static_cast<size_t>(B * D * N)), dD_part(static_cast<size_t>(B * D)),
      dbias_part(static_cast<size_t>(B * D));
  const auto bwd = group_fns<T>().bwd;
  at::parallel_for(0, B * Gs, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t b = k / Gs, g = k % Gs;
      bwd(a, b, g, dB_part.data() + (b * Gs + g) * L * N, dC_part.data() + (b * Gs + g) * L * N,
                     dA_part.data() + b * D * N, dD_part.data() + b * D, dbias_part.data() + b * D);
    }
  });
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      T* dB = a.dBt + b * L * N;
      T* dC = a.dCt + b * L * N;
      std::fill(dB, dB + L * N, T(0));
      std::fill(dC, dC + L * N, T(0));
      for (int64_t g = 0; g < Gs; ++g) {
        const T* pb = dB_part.data() + (b * Gs + g) * L * N;
        const T* pc = dC_part.data() + (b * Gs + g) * L * N;
        for (int64_t i = 0; i < L * N; ++i) {
          dB[i] += pb[i];
          dC[i] += pc[i];
        }
      }
    }
  });
  for (int64_t i = 0; i < D * N; ++i) {
    T v = T(0);
    for (int64_t b = 0; b < B; ++b) v += dA_part[b * D * N + i];
    a.dA[i] = v;
  }
  for (int64_t d = 0; d < D; ++d) {
    T vd = T(0), vb = T(0);
    for (int64_t b = 0; b < B; ++b) {
      vd += dD_part[b * D + d];
      vb += dbias_part[b * D + d];
    }
    if (a.dD) a.dD[d] = vd;
    if (a.dbias) a.dbias[d] = vb;
  }
}

template <typename T>
void scan_step(int64_t batch, int64_t dim, int64_t N, T* state, const T* u, const T* delta,
               const T* A, const T* Bv, const T* Cv, const T* Dskip, const T* z,
               const T* bias, bool softplus_on, T* out) {
  at::parallel_for(0, batch * dim, 64, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t b = k / dim, d = k % dim;
      const T x = delta[k] + (bias ? bias[d] : T(0));
      const T dt = softplus_on ? softplus(x) : x;
      step_channel(N, state + k * N, u[k], dt, A + d * N, Bv + b * N, Cv + b * N, Dskip ? Dskip[d] : T(0),
                   z != nullptr, z ? z[k] : T(0), out + k);
    }
  });
}

template void scan_forward<float>(const ScanForward<float>&);
template void scan_forward<double>(const ScanForward<double>&);
template void scan_backward<float>(const ScanBackward<float>&);
template void scan_backward<double>(const ScanBackward<double>&);
template void scan_step<float>(int64_t, int64_t, int64_t, float*, const float*, const float*, const float*,
                               const float*, const float*, const float*, const float*, const float*, bool, float*);
template void scan_step<double>(int64_t, int64_t, int64_t, double*, const double*, const double*, const double*,
                                const double*, const double*, const double*, const double*, const double*, bool,
                                double*);

}  // namespace pmamba::kernels::cpu
