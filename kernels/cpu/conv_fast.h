// Fused CPU causal depthwise conv1d (+ optional SiLU), forward and backward, on raw float32
// pointers. x, out, dout, dx: (B, D, L) contiguous; w, dw: (D, K); bias, dbias: (D).
// Work is split over (batch, channel); reductions over the batch use a fixed order.
#pragma once

#include <cstdint>

namespace pmamba::kernels::cpu {

/// Instantiated for float and double.
template <typename T>
void conv_forward(int64_t B, int64_t D, int64_t L, int64_t K, const T* x, const T* w, const T* bias, bool silu, T* out);
template <typename T>
void conv_backward(int64_t B, int64_t D, int64_t L, int64_t K, const T* x, const T* w, const T* bias, bool silu,
                   const T* dout, T* dx, T* dw, T* dbias);
/// One step: state (B, D, K) shifted left and x (B, D) appended; out (B, D).
template <typename T>
void conv_step(int64_t B, int64_t D, int64_t K, T* state, const T* x, const T* w, const T* bias, bool silu, T* out);

}  // namespace pmamba::kernels::cpu
