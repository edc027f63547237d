#include "kernels/cpu/conv_fast.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "kernels/cpu/vmath.h"


namespace pmamba::kernels::cpu {

namespace {

// pre[t] = bias + sum_k w[k] x[t - (K-1) + k], accumulated in k order.
template <typename T>
PMAMBA_CLONES void preact(int64_t L, int64_t K, const T* x, const T* w, T b, T* pre) {
  for (int64_t t = 0; t < L; ++t) pre[t] = b;
  for (int64_t k = 0; k < K; ++k) {
    const int64_t shift = K - 1 - k;  // x index = t - shift
    const T wk = w[k];
    for (int64_t t = shift; t < L; ++t) pre[t] = fma_(wk, x[t - shift], pre[t]);
  }
}

template <typename T>
PMAMBA_CLONES void activate(int64_t L, const T* pre, bool silu_on, T* out) {
  if (!silu_on) {
    for (int64_t t = 0; t < L; ++t) out[t] = pre[t];
    return;
  }
  for (int64_t t = 0; t < L; ++t) out[t] = silu(pre[t]);
}

// dpre = dout * silu'(pre): an exp and a divide per element, which vectorise only with
// -fno-trapping-math (kernels/CMakeLists.txt).
template <typename T>
PMAMBA_CLONES void activate_backward(int64_t L, const T* pre, const T* dout, bool silu_on, T* dpre) {
  if (!silu_on) {
    for (int64_t t = 0; t < L; ++t) dpre[t] = dout[t];
    return;
  }
  for (int64_t t = 0; t < L; ++t) dpre[t] = dout[t] * silu_grad(pre[t]);
}

// The dw and dbias sums over L run in kLanes interleaved partial sums (t mod kLanes from the start of
// the range) combined in one fixed tree: a single serial chain was latency-bound (5% of a training
// step), and lanes defined per element, not per vector register, keep every ISA clone and thread
// count on the same bits.
constexpr int kLanes = 8;

template <typename T>
inline T combine_lanes(const T* lane) {
  static_assert(kLanes == 8, "the tree below combines exactly 8 lanes");
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

template <typename T>
PMAMBA_CLONES void backward_channel(int64_t L, int64_t K, const T* x, const T* w, T b, bool silu_on, const T* dout,
                      T* pre, T* dpre, T* dx, T* dw, T* dbias) {
  preact(L, K, x, w, b, pre);
  activate_backward(L, pre, dout, silu_on, dpre);
  for (int64_t s = 0; s < L; ++s) dx[s] = T(0);
  for (int64_t k = 0; k < K; ++k) {
    const int64_t shift = K - 1 - k;
    const T wk = w[k];
    for (int64_t s = 0; s + shift < L; ++s) dx[s] = fma_(wk, dpre[s + shift], dx[s]);
    T lane[kLanes] = {};
    int64_t t = shift;
    for (; t + kLanes <= L; t += kLanes)
      for (int j = 0; j < kLanes; ++j) lane[j] = fma_(dpre[t + j], x[t - shift + j], lane[j]);
    for (int j = 0; t < L; ++t, ++j) lane[j] = fma_(dpre[t], x[t - shift], lane[j]);
    dw[k] = combine_lanes(lane);
  }
  T lane[kLanes] = {};
  int64_t t = 0;
  for (; t + kLanes <= L; t += kLanes)
    for (int j = 0; j < kLanes; ++j) lane[j] += dpre[t + j];
  for (int j = 0; t < L; ++t, ++j) lane[j] += dpre[t];
  *dbias = combine_lanes(lane);
}

}  // namespace

template <typename T>
void conv_forward(int64_t B, int64_t D, int64_t L, int64_t K, const T* x, const T* w, const T* bias,
                  bool silu_on, T* out) {
  at::parallel_for(0, B * D, 16, [&](int64_t begin, int64_t end) {
    thread_local std::vector<T> pre;
    pre.resize(static_cast<size_t>(L));
    for (int64_t k = begin; k < end; ++k) {
      const int64_t d = k % D;
      preact(L, K, x + k * L, w + d * K, bias ? bias[d] : T(0), pre.data());
      activate(L, pre.data(), silu_on, out + k * L);
    }
  });
}

template <typename T>
void conv_backward(int64_t B, int64_t D, int64_t L, int64_t K, const T* x, const T* w, const T* bias,
                   bool silu_on, const T* dout, T* dx, T* dw, T* dbias) {
  std::vector<T> dw_part(static_cast<size_t>(B * D * K)), db_part(static_cast<size_t>(B * D));
  at::parallel_for(0, B * D, 16, [&](int64_t begin, int64_t end) {
    thread_local std::vector<T> pre, dpre;
    pre.resize(static_cast<size_t>(L));
    dpre.resize(static_cast<size_t>(L));
    for (int64_t k = begin; k < end; ++k) {
      const int64_t d = k % D;
      backward_channel(L, K, x + k * L, w + d * K, bias ? bias[d] : T(0), silu_on, dout + k * L, pre.data(),
                       dpre.data(), dx + k * L, dw_part.data() + k * K, db_part.data() + k);
    }
  });
  for (int64_t i = 0; i < D * K; ++i) {
    T v = T(0);
    for (int64_t b = 0; b < B; ++b) v += dw_part[b * D * K + i];
    dw[i] = v;
  }
  if (dbias) {
    for (int64_t d = 0; d < D; ++d) {
      T v = T(0);
      for (int64_t b = 0; b < B; ++b) v += db_part[b * D + d];
      dbias[d] = v;
    }
  }
}

template <typename T>
void conv_step(int64_t B, int64_t D, int64_t K, T* state, const T* x, const T* w, const T* bias,
               bool silu_on, T* out) {
  for (int64_t k = 0; k < B * D; ++k) {
    T* s = state + k * K;
    for (int64_t i = 0; i + 1 < K; ++i) s[i] = s[i + 1];
    s[K - 1] = x[k];
    const int64_t d = k % D;
    T acc = bias ? bias[d] : T(0);
    for (int64_t i = 0; i < K; ++i) acc = fma_(w[d * K + i], s[i], acc);
    out[k] = silu_on ? silu(acc) : acc;
  }
}

#define PMAMBA_INSTANTIATE(T)                                                                              \
  template void conv_forward<T>(int64_t, int64_t, int64_t, int64_t, const T*, const T*, const T*, bool, T*);    \
  template void conv_backward<T>(int64_t, int64_t, int64_t, int64_t, const T*, const T*, const T*, bool,       \
                                 const T*, T*, T*, T*);                                                        \
  template void conv_step<T>(int64_t, int64_t, int64_t, T*, const T*, const T*, const T*, bool, T*);
PMAMBA_INSTANTIATE(float)
PMAMBA_INSTANTIATE(double)
#undef PMAMBA_INSTANTIATE

}  // namespace pmamba::kernels::cpu
