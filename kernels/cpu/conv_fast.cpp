#include "kernels/cpu/conv_fast.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "kernels/cpu/vmath.h"

#define PMAMBA_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

namespace pmamba::kernels::cpu {

namespace {

// pre[t] = bias + sum_k w[k] x[t - (K-1) + k], accumulated in k order.
PMAMBA_CLONES
void preact(int64_t L, int64_t K, const float* x, const float* w, float b, float* pre) {
  for (int64_t t = 0; t < L; ++t) pre[t] = b;
  for (int64_t k = 0; k < K; ++k) {
    const int64_t shift = K - 1 - k;  // x index = t - shift
    const float wk = w[k];
    for (int64_t t = shift; t < L; ++t) pre[t] = fmaf_(wk, x[t - shift], pre[t]);
  }
}

PMAMBA_CLONES
void activate(int64_t L, const float* pre, bool silu_on, float* out) {
  if (!silu_on) {
    for (int64_t t = 0; t < L; ++t) out[t] = pre[t];
    return;
  }
  for (int64_t t = 0; t < L; ++t) out[t] = silu(pre[t]);
}

PMAMBA_CLONES
void backward_channel(int64_t L, int64_t K, const float* x, const float* w, float b, bool silu_on, const float* dout,
                      float* pre, float* dpre, float* dx, float* dw, float* dbias) {
  preact(L, K, x, w, b, pre);
  for (int64_t t = 0; t < L; ++t) dpre[t] = silu_on ? dout[t] * silu_grad(pre[t]) : dout[t];
  for (int64_t s = 0; s < L; ++s) dx[s] = 0.0f;
  for (int64_t k = 0; k < K; ++k) {
    const int64_t shift = K - 1 - k;
    const float wk = w[k];
    for (int64_t s = 0; s + shift < L; ++s) dx[s] = fmaf_(wk, dpre[s + shift], dx[s]);
    float acc = 0.0f;
    for (int64_t t = shift; t < L; ++t) acc = fmaf_(dpre[t], x[t - shift], acc);
    dw[k] = acc;
  }
  float acc = 0.0f;
  for (int64_t t = 0; t < L; ++t) acc += dpre[t];
  *dbias = acc;
}

}  // namespace

void conv_forward(int64_t B, int64_t D, int64_t L, int64_t K, const float* x, const float* w, const float* bias,
                  bool silu_on, float* out) {
  at::parallel_for(0, B * D, 16, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> pre;
    pre.resize(static_cast<size_t>(L));
    for (int64_t k = begin; k < end; ++k) {
      const int64_t d = k % D;
      preact(L, K, x + k * L, w + d * K, bias ? bias[d] : 0.0f, pre.data());
      activate(L, pre.data(), silu_on, out + k * L);
    }
  });
}

void conv_backward(int64_t B, int64_t D, int64_t L, int64_t K, const float* x, const float* w, const float* bias,
                   bool silu_on, const float* dout, float* dx, float* dw, float* dbias) {
  std::vector<float> dw_part(static_cast<size_t>(B * D * K)), db_part(static_cast<size_t>(B * D));
  at::parallel_for(0, B * D, 16, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> pre, dpre;
    pre.resize(static_cast<size_t>(L));
    dpre.resize(static_cast<size_t>(L));
    for (int64_t k = begin; k < end; ++k) {
      const int64_t d = k % D;
      backward_channel(L, K, x + k * L, w + d * K, bias ? bias[d] : 0.0f, silu_on, dout + k * L, pre.data(),
                       dpre.data(), dx + k * L, dw_part.data() + k * K, db_part.data() + k);
    }
  });
  for (int64_t i = 0; i < D * K; ++i) {
    float v = 0.0f;
    for (int64_t b = 0; b < B; ++b) v += dw_part[b * D * K + i];
    dw[i] = v;
  }
  if (dbias) {
    for (int64_t d = 0; d < D; ++d) {
      float v = 0.0f;
      for (int64_t b = 0; b < B; ++b) v += db_part[b * D + d];
      dbias[d] = v;
    }
  }
}

void conv_step(int64_t B, int64_t D, int64_t K, float* state, const float* x, const float* w, const float* bias,
               bool silu_on, float* out) {
  for (int64_t k = 0; k < B * D; ++k) {
    float* s = state + k * K;
    for (int64_t i = 0; i + 1 < K; ++i) s[i] = s[i + 1];
    s[K - 1] = x[k];
    const int64_t d = k % D;
    float acc = bias ? bias[d] : 0.0f;
    for (int64_t i = 0; i < K; ++i) acc = fmaf_(w[d * K + i], s[i], acc);
    out[k] = silu_on ? silu(acc) : acc;
  }
}

}  // namespace pmamba::kernels::cpu
