// Fused CPU causal depthwise conv1d (+ optional SiLU), forward and backward, on raw float32
// pointers. x, out, dout, dx: (B, D, L) contiguous; w, dw: (D, K); bias, dbias: (D).
// Work is split over (batch, channel); reductions over the batch use a fixed order.
#pragma once

#include <cstdint>

namespace pmamba::kernels::cpu {

void conv_forward(int64_t B, int64_t D, int64_t L, int64_t K, const float* x, const float* w, const float* bias,
                  bool silu, float* out);
void conv_backward(int64_t B, int64_t D, int64_t L, int64_t K, const float* x, const float* w, const float* bias,
                   bool silu, const float* dout, float* dx, float* dw, float* dbias);
/// One step: state (B, D, K) shifted left and x (B, D) appended; out (B, D).
void conv_step(int64_t B, int64_t D, int64_t K, float* state, const float* x, const float* w, const float* bias,
               bool silu, float* out);

}  // namespace pmamba::kernels::cpu
