// The reference kernels against naive float64 loops written straight from the math in
// reference/mamba.md §3.2 (not from the code under test).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "kernels/causal_conv1d.h"
#include "kernels/selective_scan.h"
#include "tests/test_util.h"

namespace pmamba::kernels {
namespace {

double softplus(double v) { return v <= 20 ? std::log1p(std::exp(v)) : v; }
double silu(double v) { return v / (1 + std::exp(-v)); }

// out (B, D, L) and last state (B, D, N), all float64.
std::pair<at::Tensor, at::Tensor> naive_scan(const at::Tensor& u, const at::Tensor& delta,
                                             const at::Tensor& A, const at::Tensor& Bm,
                                             const at::Tensor& Cm, const at::Tensor& Dv,
                                             const at::Tensor& z, const at::Tensor& bias) {
  const int64_t B = u.size(0), D = u.size(1), L = u.size(2), N = A.size(1);
  auto U = u.to(at::kDouble), DT = delta.to(at::kDouble), AA = A.to(at::kDouble),
       BB = Bm.to(at::kDouble), CC = Cm.to(at::kDouble);
  at::Tensor out = at::zeros({B, D, L}, at::kDouble), last = at::zeros({B, D, N}, at::kDouble);
  auto u_ = U.accessor<double, 3>(), dt_ = DT.accessor<double, 3>(), b_ = BB.accessor<double, 3>(),
       c_ = CC.accessor<double, 3>();
  auto a_ = AA.accessor<double, 2>();
  auto o_ = out.accessor<double, 3>(), s_ = last.accessor<double, 3>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t d = 0; d < D; ++d) {
      std::vector<double> h(N, 0.0);
      for (int64_t t = 0; t < L; ++t) {
        double dt = dt_[b][d][t] + (bias.defined() ? bias[d].item<double>() : 0.0);
        dt = softplus(dt);
        double y = 0;
        for (int64_t n = 0; n < N; ++n) {
          h[n] = std::exp(dt * a_[d][n]) * h[n] + dt * b_[b][n][t] * u_[b][d][t];
          y += c_[b][n][t] * h[n];
        }
        if (Dv.defined()) y += Dv[d].item<double>() * u_[b][d][t];
        if (z.defined()) y *= silu(z[b][d][t].item<double>());
        o_[b][d][t] = y;
      }
      for (int64_t n = 0; n < N; ++n) s_[b][d][n] = h[n];
    }
  }
  return {out, last};
}

TEST(ReferenceScan, MatchesNaiveLoop) {
  at::manual_seed(0);
  for (const bool with_z : {true, false}) {
    const int64_t B = 2, D = 5, L = 7, N = 3;
    const at::Tensor u = at::randn({B, D, L}), delta = at::randn({B, D, L}) * 0.5,
                     A = -at::rand({D, N}) - 0.1, Bm = at::randn({B, N, L}),
                     Cm = at::randn({B, N, L}), Dv = at::randn({D}), bias = at::rand({D}) * 0.5;
    const at::Tensor z = with_z ? at::randn({B, D, L}) : at::Tensor();
    ScanOptions o;
    o.return_last_state = true;
    o.backend = Backend::kReference;
    const ScanOutput got = selective_scan(u, delta, A, Bm, Cm, Dv, z, bias, o);
    const auto [out, last] = naive_scan(u, delta, A, Bm, Cm, Dv, z, bias);
    EXPECT_LE(test::max_abs_diff(got.out, out), 1e-5);
    EXPECT_LE(test::max_abs_diff(got.last_state, last), 1e-5);
  }
}

TEST(ReferenceScan, StepFormReproducesFullSequence) {
  at::manual_seed(1);
  const int64_t B = 2, D = 4, L = 6, N = 5;
  const at::Tensor u = at::randn({B, D, L}), delta = at::randn({B, D, L}),
                   A = -at::rand({D, N}) - 0.1, Bm = at::randn({B, N, L}), Cm = at::randn({B, N, L}),
                   Dv = at::randn({D}), z = at::randn({B, D, L}), bias = at::rand({D});
  ScanOptions o;
  o.return_last_state = true;
  const ScanOutput full = selective_scan(u, delta, A, Bm, Cm, Dv, z, bias, o);
  at::Tensor state = at::zeros({B, D, N});
  for (int64_t t = 0; t < L; ++t) {
    const at::Tensor y = selective_scan_step(state, u.select(2, t), delta.select(2, t), A,
                                             Bm.select(2, t), Cm.select(2, t), Dv,
                                             z.select(2, t), bias);
    EXPECT_LE(test::max_abs_diff(y, full.out.select(2, t)), 1e-5) << "t=" << t;
  }
  EXPECT_LE(test::max_abs_diff(state, full.last_state), 1e-5);
}

TEST(ReferenceScan, RejectsBadShapesNamingTheArgument) {
  const at::Tensor u = at::randn({2, 4, 6}), A = -at::rand({4, 3});
  const at::Tensor good_b = at::randn({2, 3, 6});
  PMAMBA_EXPECT_THROW_WITH(selective_scan(u, at::randn({2, 4, 5}), A, good_b, good_b, {}, {}, {}),
                           c10::Error, "delta must have shape");
  PMAMBA_EXPECT_THROW_WITH(selective_scan(u, u, A, at::randn({2, 2, 6}), good_b, {}, {}, {}),
                           c10::Error, "B must have shape");
  PMAMBA_EXPECT_THROW_WITH(selective_scan(u, u, A.to(at::kDouble), good_b, good_b, {}, {}, {}),
                           c10::Error, "A must be float32");
}

TEST(ReferenceConv, MatchesNaiveLoopAndStepForm) {
  at::manual_seed(2);
  const int64_t B = 2, D = 3, L = 9;
  for (const int64_t K : {1, 2, 4}) {
    const at::Tensor x = at::randn({B, D, L}), w = at::randn({D, K}), bias = at::randn({D});
    const at::Tensor got = causal_conv1d(x, w, bias, /*silu=*/true);
    at::Tensor expect = at::zeros({B, D, L}, at::kDouble);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t d = 0; d < D; ++d)
        for (int64_t t = 0; t < L; ++t) {
          double acc = bias[d].item<double>();
          for (int64_t k = 0; k < K; ++k) {
            const int64_t src = t - (K - 1) + k;
            if (src >= 0) acc += w[d][k].item<double>() * x[b][d][src].item<double>();
          }
          expect[b][d][t] = silu(acc);
        }
    EXPECT_LE(test::max_abs_diff(got, expect), 1e-5) << "K=" << K;
    at::Tensor state = at::zeros({B, D, K});
    for (int64_t t = 0; t < L; ++t) {
      const at::Tensor y = causal_conv1d_step(state, x.select(2, t), w, bias, true);
      EXPECT_LE(test::max_abs_diff(y, got.select(2, t)), 1e-6) << "K=" << K << " t=" << t;
    }
  }
}

}  // namespace
}  // namespace pmamba::kernels
