// CUDA entry points (only with PMAMBA_WITH_CUDA); see cuda_dispatch.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include "kernels/selective_scan.h"

namespace pmamba::kernels::detail {

bool cuda_supports(const at::Tensor& t);
ScanOutput selective_scan_cuda(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                               const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D_skip,
                               const at::Tensor& z, const at::Tensor& delta_bias, bool delta_softplus,
                               bool return_last_state);
at::Tensor causal_conv1d_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, bool silu);

}  // namespace pmamba::kernels::detail
