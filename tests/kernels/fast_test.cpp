// The fast CPU kernels against the reference path (computed in float64 on the same values),
// a float64 finite-difference gradient check of the fast path, thread-count independence, and
// the recurrent step forms.
//
// Tolerances: errors are measured relative to the largest magnitude of the reference tensor,
// max |fast - ref| / max |ref|: <= 1e-5 for float32 inputs, <= 1e-2 for bfloat16 inputs (the
// output itself is rounded to bfloat16, 2^-8 relative).
#include <c10/core/GradMode.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include <functional>

#include "kernels/causal_conv1d.h"
#include "kernels/cpu/scan_fast.h"
#include "kernels/selective_scan.h"
#include "tests/test_util.h"

namespace pmamba::kernels {
namespace {

double rel_err(const at::Tensor& got, const at::Tensor& ref) {
  const double scale = std::max(ref.detach().abs().max().item<double>(), 1e-30);
  return test::max_abs_diff(got, ref) / scale;
}

struct ScanInputs {
  at::Tensor u, delta, A, B, C, D, z, bias;
  std::vector<at::Tensor> all() const { return {u, delta, A, B, C, D, z, bias}; }
  ScanInputs to(at::ScalarType t, bool grad) const {
    auto cvt = [&](const at::Tensor& x, at::ScalarType st) {
      return x.defined() ? x.detach().to(st).requires_grad_(grad) : at::Tensor();
    };
    // A, D and the bias are float32 parameters in the model (float64 for the ground truth).
    const at::ScalarType param = t == at::kDouble ? at::kDouble : at::kFloat;
    return {cvt(u, t), cvt(delta, t), cvt(A, param), cvt(B, t), cvt(C, t), cvt(D, param), cvt(z, t), cvt(bias, param)};
  }
};

ScanInputs random_inputs(int64_t B, int64_t D, int64_t L, int64_t N, bool with_z, bool with_bias, uint64_t seed) {
  at::manual_seed(seed);
  ScanInputs x;
  x.u = at::randn({B, D, L});
  x.delta = at::randn({B, D, L}) * 0.5;
  x.A = -(at::rand({D, N}) + 0.1) * 2;
  x.B = at::randn({B, N, L});
  x.C = at::randn({B, N, L});
  x.D = at::randn({D});
  if (with_z) x.z = at::randn({B, D, L});
  if (with_bias) x.bias = at::rand({D}) * 0.5 - 0.25;
  return x;
}

at::Tensor run_scan(const ScanInputs& x, Backend backend, bool last = false, at::Tensor* last_state = nullptr) {
  ScanOptions o;
  o.backend = backend;
  o.return_last_state = last;
  ScanOutput r = selective_scan(x.u, x.delta, x.A, x.B, x.C, x.D, x.z, x.bias, o);
  if (last_state) *last_state = r.last_state;
  return r.out;
}

// Runs out = scan(x); loss = sum(out * w); returns out and the gradients of every input.
std::pair<at::Tensor, std::vector<at::Tensor>> forward_backward(const ScanInputs& x, Backend b, const at::Tensor& w) {
  const at::Tensor out = run_scan(x, b);
  (out.to(w.scalar_type()) * w).sum().backward();
  std::vector<at::Tensor> grads;
  for (const auto& t : x.all()) grads.push_back(t.defined() ? t.grad() : at::Tensor());
  return {out, grads};
}

const char* kNames[] = {"u", "delta", "A", "B", "C", "D", "z", "delta_bias"};

TEST(FastScan, MatchesReferenceForwardAndEveryGradient) {
  int cases = 0;
  for (const int64_t L : {1, 63, 64, 130}) {
    for (const int64_t D : {5, 17, 33}) {
      for (const int64_t N : {1, 16}) {
        for (const bool with_z : {true, false}) {
          for (const bool with_bias : {true, false}) {
            if ((D == 17) + with_z + with_bias == 0 && L > 64) continue;  // keep the grid quick
            SCOPED_TRACE("L " + std::to_string(L) + " D " + std::to_string(D) + " N " + std::to_string(N) +
                         " z " + std::to_string(with_z) + " bias " + std::to_string(with_bias));
            const ScanInputs base = random_inputs(2, D, L, N, with_z, with_bias, 1000 + L + D + N);
            const at::Tensor w = at::randn({2, D, L}, at::kDouble);
            const ScanInputs fast_in = base.to(at::kFloat, true), ref_in = base.to(at::kDouble, true);
            const auto [fast_out, fast_grads] = forward_backward(fast_in, Backend::kFast, w);
            const auto [ref_out, ref_grads] = forward_backward(ref_in, Backend::kReference, w);
            EXPECT_LE(rel_err(fast_out, ref_out), 1e-5) << "out";
            for (size_t i = 0; i < fast_grads.size(); ++i) {
              if (!ref_grads[i].defined()) {
                EXPECT_FALSE(fast_grads[i].defined()) << kNames[i];
                continue;
              }
              ASSERT_TRUE(fast_grads[i].defined()) << kNames[i];
              EXPECT_LE(rel_err(fast_grads[i], ref_grads[i]), 1e-5) << "d" << kNames[i];
            }
            at::Tensor last_fast, last_ref;
            run_scan(base.to(at::kFloat, false), Backend::kFast, true, &last_fast);
            run_scan(base.to(at::kDouble, false), Backend::kReference, true, &last_ref);
            EXPECT_LE(rel_err(last_fast, last_ref), 1e-5) << "last_state";
            ++cases;
          }
        }
      }
    }
  }
  EXPECT_GT(cases, 40);
}

TEST(FastScan, BFloat16InputsWithinDocumentedTolerance) {
  const ScanInputs base = random_inputs(2, 17, 70, 16, true, true, 7);
  ScanInputs bf = base.to(at::kBFloat16, true);
  // The float64 reference sees the same (bfloat16-rounded) values.
  ScanInputs ref = bf.to(at::kDouble, true);
  const at::Tensor w = at::randn({2, 17, 70}, at::kDouble);
  const auto [fo, fg] = forward_backward(bf, Backend::kFast, w);
  const auto [ro, rg] = forward_backward(ref, Backend::kReference, w);
  EXPECT_EQ(fo.scalar_type(), at::kBFloat16);
  EXPECT_LE(rel_err(fo, ro), 1e-2);
  for (size_t i = 0; i < fg.size(); ++i) EXPECT_LE(rel_err(fg[i], rg[i]), 1e-2) << "d" << kNames[i];
}

// Central differences in float64 against the analytical gradient of the fast path.
void gradcheck(const std::function<at::Tensor(const std::vector<at::Tensor>&)>& f, std::vector<at::Tensor> in) {
  for (auto& t : in) {
    if (t.defined()) t = t.detach().to(at::kDouble).requires_grad_(true);
  }
  std::vector<at::Tensor> wrt;
  for (auto& t : in) {
    if (t.defined()) wrt.push_back(t);
  }
  const at::Tensor y = f(in);
  const auto analytic = torch::autograd::grad({y}, wrt, {}, false, false, true);
  const double eps = 1e-6;
  c10::NoGradGuard no_grad;
  for (size_t k = 0; k < wrt.size(); ++k) {
    at::Tensor flat = wrt[k].view({-1});  // inputs are contiguous; the gradients may not be
    for (int64_t j = 0; j < flat.numel(); ++j) {
      const double v = flat[j].item<double>();
      flat[j] = v + eps;
      const double hi = f(in).item<double>();
      flat[j] = v - eps;
      const double lo = f(in).item<double>();
      flat[j] = v;
      const double numeric = (hi - lo) / (2 * eps);
      const double a = analytic[k].reshape({-1})[j].item<double>();
      EXPECT_NEAR(a, numeric, 1e-6 + 1e-5 * std::abs(numeric)) << "input " << k << " element " << j;
    }
  }
}

TEST(FastScan, DoublePrecisionGradcheck) {
  for (const bool with_z : {true, false}) {
    const ScanInputs x = random_inputs(2, 3, 5, 2, with_z, true, 11);
    const at::Tensor w = at::randn({2, 3, 5}, at::kDouble);
    gradcheck(
        [&](const std::vector<at::Tensor>& v) {
          ScanOptions o;
          o.backend = Backend::kFast;
          return (selective_scan(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], o).out * w).sum();
        },
        x.all());
  }
}

TEST(FastScan, ResultsDoNotDependOnTheThreadCount) {
  const ScanInputs base = random_inputs(2, 70, 150, 16, true, true, 3);
  const at::Tensor w = at::randn({2, 70, 150}, at::kDouble);
  const int before = at::get_num_threads();
  at::set_num_threads(1);
  const auto [o1, g1] = forward_backward(base.to(at::kFloat, true), Backend::kFast, w);
  at::set_num_threads(2);
  const auto [o2, g2] = forward_backward(base.to(at::kFloat, true), Backend::kFast, w);
  at::set_num_threads(before);
  EXPECT_TRUE(test::bitwise_equal(o1, o2));
  for (size_t i = 0; i < g1.size(); ++i) EXPECT_TRUE(test::bitwise_equal(g1[i], g2[i])) << "d" << kNames[i];
}

// Every vector path must give the scalar path's bits: forward output, last state and every
// gradient, on shapes that leave partial channel groups (D % 16) and partial chunks (L % 64),
// and d_state sizes that fill the batched dB/dC lane sums (16 rows on AVX-512, 8 on AVX2) and
// leave rows over (20, 12, 5).
void expect_isa_matches_scalar(cpu::Isa isa) {
  if (!cpu::isa_supported(isa)) GTEST_SKIP() << "this CPU has no " << cpu::isa_name(isa) << " (best: " << cpu::isa_name(cpu::best_isa()) << ")";
  struct Case {
    int64_t B, D, L, N;
    bool z, bias;
  };
  for (const Case& c : {Case{2, 37, 150, 16, true, true}, Case{1, 16, 64, 5, false, false}, Case{3, 9, 7, 16, true, false},
                      Case{2, 19, 70, 20, true, true}, Case{1, 17, 9, 12, false, true}}) {
    const ScanInputs base = random_inputs(c.B, c.D, c.L, c.N, c.z, c.bias, 11);
    const at::Tensor w = at::randn({c.B, c.D, c.L}, at::kFloat);
    std::vector<at::Tensor> got[2];
    for (int k = 0; k < 2; ++k) {
      cpu::set_scan_isa(k == 0 ? cpu::Isa::kScalar : isa);
      const ScanInputs x = base.to(at::kFloat, true);
      at::Tensor last;
      ScanOptions o;
      o.backend = Backend::kFast;
      o.return_last_state = true;
      const ScanOutput r = selective_scan(x.u, x.delta, x.A, x.B, x.C, x.D, x.z, x.bias, o);
      (r.out * w).sum().backward();
      got[k] = {r.out, r.last_state};
      for (const auto& t : x.all()) got[k].push_back(t.defined() ? t.grad() : at::Tensor());
    }
    cpu::set_scan_isa(std::nullopt);
    const char* what[] = {"out", "last_state", "du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias"};
    for (size_t i = 0; i < got[0].size(); ++i) {
      ASSERT_EQ(got[0][i].defined(), got[1][i].defined()) << what[i];
      if (!got[0][i].defined()) continue;
      EXPECT_TRUE(test::bitwise_equal(got[0][i], got[1][i]))
          << what[i] << " differs between scalar and " << cpu::isa_name(isa) << " at D " << c.D << " L " << c.L
          << " N " << c.N << ": max diff " << test::max_abs_diff(got[0][i], got[1][i]);
    }
  }
}

TEST(FastScan, Avx2PathGivesTheScalarPathsBits) { expect_isa_matches_scalar(cpu::Isa::kAvx2); }
TEST(FastScan, Avx512PathGivesTheScalarPathsBits) { expect_isa_matches_scalar(cpu::Isa::kAvx512); }

// The model hands the scan transposed views of (B, L, D) tensors (z a view into the wider xz):
// they are read in place, the output and the delta/z gradients come back in that layout, and
// every value has the bits of the contiguous call.
TEST(FastScan, TransposedPlanesGiveTheContiguousBitsInTheirOwnLayout) {
  const int64_t B = 2, D = 37, L = 150, N = 16;
  const ScanInputs base = random_inputs(B, D, L, N, true, true, 5);
  const at::Tensor w = at::randn({B, D, L});
  const ScanInputs flat = base.to(at::kFloat, true);
  const auto [out0, g0] = forward_backward(flat, Backend::kFast, w);

  // Leaves in the model's layout; the scan sees (B, D, L) views of them.
  const at::Tensor delta_t = base.delta.transpose(1, 2).contiguous().requires_grad_(true);  // (B, L, D)
  const at::Tensor xz = at::cat({at::randn({B, L, D}), base.z.transpose(1, 2)}, -1).requires_grad_(true);  // (B, L, 2D)
  ScanInputs x = base.to(at::kFloat, true);
  x.delta = delta_t.transpose(1, 2);
  x.z = xz.narrow(-1, D, D).transpose(1, 2);
  ASSERT_EQ(x.delta.stride(1), 1);
  ASSERT_EQ(x.z.stride(1), 1);
  std::vector<int64_t> ddelta_strides, dz_strides;
  x.delta.register_hook([&](const at::Tensor& g) { ddelta_strides = g.strides().vec(); });
  x.z.register_hook([&](const at::Tensor& g) { dz_strides = g.strides().vec(); });
  const at::Tensor out = run_scan(x, Backend::kFast);
  EXPECT_TRUE(out.transpose(1, 2).is_contiguous()) << "the output follows z's (B, L, D) layout";
  EXPECT_TRUE(test::bitwise_equal(out, out0));
  (out * w).sum().backward();
  ASSERT_EQ(ddelta_strides.size(), 3u);
  ASSERT_EQ(dz_strides.size(), 3u);
  EXPECT_EQ(ddelta_strides[1], 1) << "ddelta comes back in delta's layout";
  EXPECT_EQ(dz_strides[1], 1) << "dz comes back in z's layout";
  EXPECT_TRUE(test::bitwise_equal(delta_t.grad().transpose(1, 2), g0[1])) << "ddelta";
  EXPECT_TRUE(test::bitwise_equal(xz.grad().narrow(-1, D, D).transpose(1, 2), g0[6])) << "dz";
  EXPECT_TRUE(test::bitwise_equal(xz.grad().narrow(-1, 0, D), at::zeros({B, L, D}))) << "the rest of xz";
  for (size_t i : {0, 2, 3, 4, 5, 7}) EXPECT_TRUE(test::bitwise_equal(x.all()[i].grad(), g0[i])) << "d" << kNames[i];

  // Without autograd the same views give the same output, in the same layout.
  at::NoGradGuard no_grad;
  const at::Tensor out_ng = run_scan(x, Backend::kFast);
  EXPECT_TRUE(out_ng.transpose(1, 2).is_contiguous());
  EXPECT_TRUE(test::bitwise_equal(out_ng, out0));
}

TEST(FastScan, RefusesAnInstructionSetTheCpuLacks) {
  if (cpu::isa_supported(cpu::Isa::kAvx512)) GTEST_SKIP() << "this CPU supports every path";
  for (cpu::Isa isa : {cpu::Isa::kAvx2, cpu::Isa::kAvx512}) {
    if (cpu::isa_supported(isa)) continue;
    try {
      cpu::set_scan_isa(isa);
      ADD_FAILURE() << "set_scan_isa(" << cpu::isa_name(isa) << ") accepted an unsupported path";
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what_without_backtrace()).find("does not support"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(cpu::scan_isa(), cpu::best_isa());
}

TEST(FastScan, StepFormReproducesFullSequence) {
  const ScanInputs x = random_inputs(2, 19, 40, 16, true, true, 5);
  ScanOptions o;
  o.backend = Backend::kFast;
  o.return_last_state = true;
  const ScanOutput full = selective_scan(x.u, x.delta, x.A, x.B, x.C, x.D, x.z, x.bias, o);
  set_default_backend(Backend::kFast);
  at::Tensor state = at::zeros({2, 19, 16});
  for (int64_t t = 0; t < 40; ++t) {
    const at::Tensor y = selective_scan_step(state, x.u.select(2, t), x.delta.select(2, t), x.A, x.B.select(2, t),
                                             x.C.select(2, t), x.D, x.z.select(2, t), x.bias);
    EXPECT_LE(test::max_abs_diff(y, full.out.select(2, t)), 1e-5) << "t=" << t;
  }
  EXPECT_LE(test::max_abs_diff(state, full.last_state), 1e-5);
  set_default_backend(Backend::kAuto);
}

TEST(FastConv, MatchesReferenceAndGradcheck) {
  for (const int64_t K : {1, 3, 4}) {
    for (const bool silu : {true, false}) {
      at::manual_seed(K);
      const at::Tensor x = at::randn({2, 7, 33}), w = at::randn({7, K}), b = at::randn({7});
      const at::Tensor g = at::randn({2, 7, 33}, at::kDouble);
      std::vector<at::Tensor> grads_fast, grads_ref;
      at::Tensor out_fast, out_ref;
      for (const Backend be : {Backend::kFast, Backend::kReference}) {
        const at::ScalarType st = be == Backend::kFast ? at::kFloat : at::kDouble;
        at::Tensor xi = x.detach().to(st).requires_grad_(true), wi = w.detach().to(st).requires_grad_(true),
                   bi = b.detach().to(st).requires_grad_(true);
        const at::Tensor out = causal_conv1d(xi, wi, bi, silu, be);
        (out.to(at::kDouble) * g).sum().backward();
        (be == Backend::kFast ? out_fast : out_ref) = out;
        (be == Backend::kFast ? grads_fast : grads_ref) = {xi.grad(), wi.grad(), bi.grad()};
      }
      EXPECT_LE(rel_err(out_fast, out_ref), 1e-5) << "K " << K;
      for (int i = 0; i < 3; ++i) EXPECT_LE(rel_err(grads_fast[i], grads_ref[i]), 1e-5) << "K " << K << " grad " << i;
      gradcheck([&](const std::vector<at::Tensor>& v) { return (causal_conv1d(v[0], v[1], v[2], silu, Backend::kFast) * g.narrow(2, 0, 6).narrow(1, 0, 3).narrow(0, 0, 1)).sum(); },
                {at::randn({1, 3, 6}), at::randn({3, K}), at::randn({3})});
    }
  }
}

// The backward's sums over L run in 8 interleaved lanes with a scalar tail: lengths around and
// below the lane count, and below the kernel width, exercise every split of body and tail.
TEST(FastConv, BackwardMatchesReferenceAtEveryTailLength) {
  for (const int64_t L : {1, 2, 3, 5, 7, 8, 9, 11, 15, 16, 17, 24, 31, 1001}) {
    for (const int64_t K : {1, 4}) {
      at::manual_seed(100 * L + K);
      const at::Tensor x = at::randn({2, 3, L}), w = at::randn({3, K}), b = at::randn({3});
      const at::Tensor g = at::randn({2, 3, L}, at::kDouble);
      std::vector<at::Tensor> grads[2];
      int i = 0;
      for (const Backend be : {Backend::kFast, Backend::kReference}) {
        const at::ScalarType st = be == Backend::kFast ? at::kFloat : at::kDouble;
        at::Tensor xi = x.detach().to(st).requires_grad_(true), wi = w.detach().to(st).requires_grad_(true),
                   bi = b.detach().to(st).requires_grad_(true);
        (causal_conv1d(xi, wi, bi, true, be).to(at::kDouble) * g).sum().backward();
        grads[i++] = {xi.grad(), wi.grad(), bi.grad()};
      }
      for (int j = 0; j < 3; ++j) EXPECT_LE(rel_err(grads[0][j], grads[1][j]), 1e-5) << "L " << L << " K " << K << " grad " << j;
    }
  }
}

TEST(FastConv, StepFormReproducesFullSequence) {
  at::manual_seed(9);
  const at::Tensor x = at::randn({2, 5, 12}), w = at::randn({5, 4}), b = at::randn({5});
  const at::Tensor full = causal_conv1d(x, w, b, true, Backend::kFast);
  set_default_backend(Backend::kFast);
  at::Tensor state = at::zeros({2, 5, 4});
  for (int64_t t = 0; t < 12; ++t) {
    EXPECT_TRUE(test::bitwise_equal(causal_conv1d_step(state, x.select(2, t), w, b, true), full.select(2, t)))
        << "t=" << t;
  }
  set_default_backend(Backend::kAuto);
}

}  // namespace
}  // namespace pmamba::kernels
