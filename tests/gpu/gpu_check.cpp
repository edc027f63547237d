// GPU check of the CUDA kernels (run by scripts/gpu-check.sh on a machine with an NVIDIA GPU):
// 1. correctness: CUDA forward and every gradient against the CPU reference computed in float64
//    on the same values, fresh random inputs (never zeros) per case, float32 and bfloat16;
//    error = max |cuda - ref| / max |ref| (float32 <= 1e-4: the kernels use __expf; bfloat16
//    <= 2e-2); NaN fails;
// 2. speed at the mamba-130m layer shape: time (CUDA-synchronised, median of 20 after warm-up)
//    and achieved bandwidth against a device-to-device copy measured on the same GPU.
// Prints a table; exits 1 when a correctness case fails.
#include <c10/core/GradMode.h>
#include <ATen/ATen.h>
#include <torch/cuda.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "kernels/causal_conv1d.h"
#include "kernels/selective_scan.h"
#include "tests/cuda_compare.h"

using namespace pmamba::kernels;

namespace {

double median_ms(const std::function<void()>& fn, int reps = 20) {
  for (int i = 0; i < 3; ++i) fn();
  torch::cuda::synchronize();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto a = std::chrono::steady_clock::now();
    fn();
    torch::cuda::synchronize();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

int failures = 0;

void scan_case(int64_t B, int64_t D, int64_t L, int64_t N, bool with_z, at::ScalarType dt) {
  const auto cpu = at::TensorOptions().dtype(at::kFloat);
  std::vector<at::Tensor> base = {at::randn({B, D, L}, cpu), at::randn({B, D, L}, cpu) * 0.5,
                                  -(at::rand({D, N}, cpu) + 0.1) * 2, at::randn({B, N, L}, cpu),
                                  at::randn({B, N, L}, cpu), at::randn({D}, cpu),
                                  with_z ? at::randn({B, D, L}, cpu) : at::Tensor(), at::rand({D}, cpu) * 0.5};
  const at::Tensor w = at::randn({B, D, L}, at::TensorOptions().dtype(at::kDouble));
  const pmamba::test::CudaErrors e = pmamba::test::scan_vs_reference(base, dt, w);
  const double tol = dt == at::kFloat ? 1e-4 : 2e-2;
  double worst = e.out;
  std::string where = "out";
  const char* names[] = {"du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias"};
  for (size_t i = 0; i < e.grads.size(); ++i) {
    if (e.grads[i] > worst) {
      worst = e.grads[i];
      where = names[i];
    }
  }
  const bool ok = worst <= tol;
  failures += !ok;
  std::printf("scan   B %lld D %4lld L %5lld N %2lld z %d %-8s  worst rel err %.2e (%s)  %s\n",
              static_cast<long long>(B), static_cast<long long>(D), static_cast<long long>(L),
              static_cast<long long>(N), with_z, dt == at::kFloat ? "float32" : "bfloat16", worst, where.c_str(),
              ok ? "ok" : "FAIL");
}

void conv_case(int64_t B, int64_t D, int64_t L, int64_t K, at::ScalarType dt) {
  const at::Tensor x = at::randn({B, D, L}).to(dt), w = at::randn({D, K}), b = at::randn({D});
  const pmamba::test::CudaErrors e = pmamba::test::conv_vs_reference(x, w, b);
  double worst = e.out;
  for (const double g : e.grads) worst = std::max(worst, g);
  const bool ok = worst <= (dt == at::kFloat ? 1e-4 : 2e-2);
  failures += !ok;
  std::printf("conv   B %lld D %4lld L %5lld K %lld  %-8s  worst rel err %.2e  %s\n", static_cast<long long>(B),
              static_cast<long long>(D), static_cast<long long>(L), static_cast<long long>(K),
              dt == at::kFloat ? "float32" : "bfloat16", worst, ok ? "ok" : "FAIL");
}

}  // namespace

int main() {
  if (!torch::cuda::is_available()) {
    std::printf("no CUDA device: nothing to check\n");
    return 77;
  }
  at::manual_seed(1);
  for (const auto dt : {at::kFloat, at::kBFloat16}) {
    scan_case(2, 17, 1, 16, true, dt);
    scan_case(2, 33, 70, 16, true, dt);
    scan_case(1, 64, 130, 1, false, dt);
    scan_case(2, 200, 1000, 16, true, dt);
    conv_case(2, 33, 70, 4, dt);
    conv_case(1, 7, 5, 3, dt);
  }
  // Speed at the mamba-130m layer shape.
  const int64_t B = 2, D = 1536, L = 2048, N = 16;
  const auto dev = at::TensorOptions().device(at::kCUDA);
  at::Tensor big = at::randn({int64_t{1} << 28}, dev), big2 = at::empty_like(big);
  const double copy_ms = median_ms([&] { big2.copy_(big); });
  const double copy_gbs = 2.0 * big.nbytes() / copy_ms / 1e6;
  std::printf("\ndevice copy: %.0f GB/s (read + write)\n", copy_gbs);
  for (const auto dt : {at::kFloat, at::kBFloat16}) {
    const auto o = dev.dtype(dt);
    at::Tensor u = at::randn({B, D, L}, o), delta = at::randn({B, D, L}, o) * 0.5, z = at::randn({B, D, L}, o);
    at::Tensor A = -(at::rand({D, N}, dev) + 0.1), Bm = at::randn({B, N, L}, o), Cm = at::randn({B, N, L}, o);
    at::Tensor Dv = at::randn({D}, dev), bias = at::rand({D}, dev);
    const double fwd = median_ms([&] {
      c10::NoGradGuard ng;
      selective_scan(u, delta, A, Bm, Cm, Dv, z, bias);
    });
    for (auto* t : {&u, &delta, &z, &Bm, &Cm}) t->requires_grad_(true);
    const double fwd_bwd = median_ms([&] { selective_scan(u, delta, A, Bm, Cm, Dv, z, bias).out.sum().backward(); });
    const double s = static_cast<double>(at::elementSize(dt));
    const double bytes = (4 * s * B * D * L) + (2 * s * B * L * N);  // u, delta, z in; out; B, C
    std::printf("scan %-8s fwd %8.3f ms (%6.0f GB/s = %4.1f%% of copy)   fwd+bwd %8.3f ms\n",
                dt == at::kFloat ? "float32" : "bfloat16", fwd, bytes / fwd / 1e6, 100 * bytes / fwd / 1e6 / copy_gbs,
                fwd_bwd);
  }
  std::printf("\n%s: %d correctness failure(s)\n", failures ? "FAIL" : "OK", failures);
  return failures ? 1 : 0;
}
