// CUDA kernels against the CPU reference (float64) on the same random values. Built only with
// -DPMAMBA_WITH_CUDA=ON; every test reports "skipped" without a CUDA device.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include "tests/cuda_compare.h"

namespace pmamba::kernels {
namespace {

using test::conv_vs_reference;
using test::scan_vs_reference;

TEST(CudaKernels, SelectiveScanMatchesReferenceCuda) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  for (const auto dt : {at::kFloat, at::kBFloat16}) {
    at::manual_seed(3);
    const int64_t B = 2, D = 37, L = 150, N = 16;
    std::vector<at::Tensor> base = {at::randn({B, D, L}), at::randn({B, D, L}) * 0.5, -(at::rand({D, N}) + 0.1),
                                    at::randn({B, N, L}), at::randn({B, N, L}), at::randn({D}),
                                    at::randn({B, D, L}), at::rand({D}) * 0.5};
    const at::Tensor w = at::randn({B, D, L}, at::kDouble);
    const test::CudaErrors e = scan_vs_reference(base, dt, w);
    const double tol = dt == at::kFloat ? 1e-4 : 2e-2;
    EXPECT_LE(e.out, tol);
    for (size_t i = 0; i < base.size(); ++i) EXPECT_LE(e.grads[i], tol) << "input " << i;
  }
}

TEST(CudaKernels, CausalConvMatchesReferenceCuda) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  at::manual_seed(4);
  const at::Tensor x = at::randn({2, 33, 70}), w = at::randn({33, 4}), b = at::randn({33});
  const test::CudaErrors e = conv_vs_reference(x, w, b);
  EXPECT_LE(e.out, 1e-4);
  for (int i = 0; i < 3; ++i) EXPECT_LE(e.grads[i], 1e-4) << "grad " << i;
}

}  // namespace
}  // namespace pmamba::kernels
