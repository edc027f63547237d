// CUDA kernels against the CPU reference computed in float64 on the same values. Shared by the
// gtest suite (tests/kernels/cuda_test.cpp) and pmamba-gpu-check (tests/gpu), which builds
// without gtest, so nothing here asserts: callers compare the errors with their tolerance.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/causal_conv1d.h"
#include "kernels/selective_scan.h"

namespace pmamba::test {

/// max |got - ref| / max |ref|; infinite when got holds a NaN or Inf so that it always fails.
inline double cuda_rel_err(const at::Tensor& got, const at::Tensor& ref) {
  const at::Tensor g = got.detach().to(at::kDouble).cpu(), r = ref.detach().to(at::kDouble).cpu();
  if (!at::isfinite(g).all().item<bool>()) return INFINITY;
  return (g - r).abs().max().item<double>() / std::max(r.abs().max().item<double>(), 1e-30);
}

/// Relative errors of the CUDA result against the reference: the output, then one per input
/// gradient in argument order (0 for an input that was not given).
struct CudaErrors {
  double out = 0;
  std::vector<double> grads;
};

namespace detail {
// Runs fn on CUDA copies of `inputs` and on float64 CPU copies, then compares out and grads.
template <class Fn>
CudaErrors compare_on_cuda(const std::vector<at::Tensor>& inputs, Fn fn) {
  at::Tensor outs[2];
  std::vector<at::Tensor> leaves[2];
  for (int gpu = 0; gpu < 2; ++gpu) {
    for (const at::Tensor& t : inputs) {
      if (!t.defined()) {
        leaves[gpu].emplace_back();
        continue;
      }
      leaves[gpu].push_back((gpu ? t.cuda() : t.to(at::kDouble)).detach().requires_grad_(true));
    }
    outs[gpu] = fn(leaves[gpu]);
  }
  CudaErrors e;
  e.out = cuda_rel_err(outs[1], outs[0]);
  for (size_t i = 0; i < inputs.size(); ++i)
    e.grads.push_back(inputs[i].defined() ? cuda_rel_err(leaves[1][i].grad(), leaves[0][i].grad()) : 0.0);
  return e;
}
}  // namespace detail

/// selective_scan with u, delta, B, C, z rounded to `dt` first (A, D, delta_bias stay float32, as
/// the model keeps them); the loss is sum(out * w) so every output element has its own weight.
/// inputs: u, delta, A, B, C, D, z (may be undefined), delta_bias.
inline CudaErrors scan_vs_reference(const std::vector<at::Tensor>& inputs, at::ScalarType dt, const at::Tensor& w) {
  std::vector<at::Tensor> rounded;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const bool param = i == 2 || i == 5 || i == 7;
    rounded.push_back(inputs[i].defined() ? inputs[i].to(param ? at::kFloat : dt) : at::Tensor());
  }
  return detail::compare_on_cuda(rounded, [&](const std::vector<at::Tensor>& in) {
    const at::Tensor out = kernels::selective_scan(in[0], in[1], in[2], in[3], in[4], in[5], in[6], in[7]).out;
    (out.to(at::kDouble) * w.to(at::kDouble).to(out.device())).sum().backward();
    return out;
  });
}

/// causal_conv1d with SiLU; x is used in its own dtype, w and b as given. Loss is sum(out).
inline CudaErrors conv_vs_reference(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  return detail::compare_on_cuda({x, w, b}, [](const std::vector<at::Tensor>& in) {
    const at::Tensor out = kernels::causal_conv1d(in[0], in[1], in[2], true);
    out.to(at::kDouble).sum().backward();
    return out;
  });
}

}  // namespace pmamba::test
