// CUDA kernels against the CPU reference (float64) on the same random values. Built only with
// -DPMAMBA_WITH_CUDA=ON; every test reports "skipped" without a CUDA device.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include "kernels/causal_conv1d.h"
#include "kernels/selective_scan.h"
#include "tests/test_util.h"

namespace pmamba::kernels {
namespace {

double rel_err(const at::Tensor& got, const at::Tensor& ref) {
  return test::max_abs_diff(got.cpu(), ref.cpu()) / std::max(ref.abs().max().item<double>(), 1e-30);
}

TEST(CudaKernels, SelectiveScanMatchesReferenceCuda) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  for (const auto dt : {at::kFloat, at::kBFloat16}) {
    at::manual_seed(3);
    const int64_t B = 2, D = 37, L = 150, N = 16;
    std::vector<at::Tensor> base = {at::randn({B, D, L}), at::randn({B, D, L}) * 0.5, -(at::rand({D, N}) + 0.1),
                                    at::randn({B, N, L}), at::randn({B, N, L}), at::randn({D}),
                                    at::randn({B, D, L}), at::rand({D}) * 0.5};
    const at::Tensor w = at::randn({B, D, L}, at::kDouble);
    std::vector<at::Tensor> grads[2];
    at::Tensor outs[2];
    for (int gpu = 0; gpu < 2; ++gpu) {
      std::vector<at::Tensor> in;
      for (size_t i = 0; i < base.size(); ++i) {
        const bool param = i == 2 || i == 5 || i == 7;
        at::Tensor t = base[i].to(param ? at::kFloat : dt);
        in.push_back((gpu ? t.cuda() : t.to(at::kDouble)).detach().requires_grad_(true));
      }
      outs[gpu] = selective_scan(in[0], in[1], in[2], in[3], in[4], in[5], in[6], in[7]).out;
      (outs[gpu].to(at::kDouble) * w.to(outs[gpu].device())).sum().backward();
      for (auto& t : in) grads[gpu].push_back(t.grad());
    }
    const double tol = dt == at::kFloat ? 1e-4 : 2e-2;
    EXPECT_LE(rel_err(outs[1], outs[0]), tol);
    for (size_t i = 0; i < base.size(); ++i) EXPECT_LE(rel_err(grads[1][i], grads[0][i]), tol) << "input " << i;
  }
}

TEST(CudaKernels, CausalConvMatchesReferenceCuda) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  at::manual_seed(4);
  const at::Tensor x = at::randn({2, 33, 70}), w = at::randn({33, 4}), b = at::randn({33});
  at::Tensor outs[2];
  std::vector<at::Tensor> grads[2];
  for (int gpu = 0; gpu < 2; ++gpu) {
    at::Tensor xi = (gpu ? x.cuda() : x.to(at::kDouble)).detach().requires_grad_(true);
    at::Tensor wi = (gpu ? w.cuda() : w.to(at::kDouble)).detach().requires_grad_(true);
    at::Tensor bi = (gpu ? b.cuda() : b.to(at::kDouble)).detach().requires_grad_(true);
    outs[gpu] = causal_conv1d(xi, wi, bi, true);
    outs[gpu].to(at::kDouble).sum().backward();
    grads[gpu] = {xi.grad(), wi.grad(), bi.grad()};
  }
  EXPECT_LE(rel_err(outs[1], outs[0]), 1e-4);
  for (int i = 0; i < 3; ++i) EXPECT_LE(rel_err(grads[1][i], grads[0][i]), 1e-4) << "grad " << i;
}

}  // namespace
}  // namespace pmamba::kernels
