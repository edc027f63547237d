// Causal depthwise conv1d with optional fused SiLU, as Mamba applies it before the scan.
//
// x: (B, D, L), weight: (D, K), bias: (D) or undefined.
//   out[b, d, t] = bias[d] + sum_{k<K} weight[d, k] * x[b, d, t - (K-1) + k]   (x at t < 0 is 0)
// so weight[:, K-1] multiplies the current token. With silu, out = silu(out).
#pragma once

#include <ATen/core/Tensor.h>

#include "kernels/backend.h"

namespace pmamba::kernels {

/// Full-sequence causal conv. Throws c10::Error on bad shapes/dtypes. Differentiable.
at::Tensor causal_conv1d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                         bool silu, Backend backend = Backend::kAuto);

/// One step: conv_state (B, D, K) holds the last K pre-conv inputs (oldest first); it is
/// shifted left by one and x (B, D) appended in place. Returns (B, D). Not differentiable.
at::Tensor causal_conv1d_step(at::Tensor& conv_state, const at::Tensor& x,
                              const at::Tensor& weight, const at::Tensor& bias, bool silu);

namespace detail {
at::Tensor causal_conv1d_ref(const at::Tensor& x, const at::Tensor& weight,
                             const at::Tensor& bias, bool silu);
}  // namespace detail

}  // namespace pmamba::kernels
