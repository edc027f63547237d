// The fast CPU paths behind the kernel entry points (internal; callers use selective_scan.h
// and causal_conv1d.h). Differentiable through torch::autograd::Function with the fused
// backward kernels of cpu/scan_fast.h and cpu/conv_fast.h.
#pragma once

#include <ATen/core/Tensor.h>

#include "kernels/selective_scan.h"

namespace pmamba::kernels::detail {

/// Whether the fast CPU path can run on these tensors (CPU; float32, bfloat16, float16, or
/// float64, which it computes in float64 for gradient checks).
bool fast_cpu_supports(const at::Tensor& t);

ScanOutput selective_scan_fast(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                               const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D_skip,
                               const at::Tensor& z, const at::Tensor& delta_bias, bool delta_softplus,
                               bool return_last_state);
at::Tensor selective_scan_step_fast(at::Tensor& state, const at::Tensor& u, const at::Tensor& delta,
                                    const at::Tensor& A, const at::Tensor& Bm, const at::Tensor& Cm,
                                    const at::Tensor& D_skip, const at::Tensor& z, const at::Tensor& delta_bias,
                                    bool delta_softplus);
at::Tensor causal_conv1d_fast(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, bool silu);
at::Tensor causal_conv1d_step_fast(at::Tensor& conv_state, const at::Tensor& x, const at::Tensor& weight,
                                   const at::Tensor& bias, bool silu);

}  // namespace pmamba::kernels::detail
