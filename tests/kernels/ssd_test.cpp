// The Mamba-2 SSD scan: the chunked torch-ops form against the recurrence, the fused CPU kernel
// against the float64 recurrence (forward, last_state and all six gradients), a float64
// finite-difference check of the fused backward, thread-count independence, the step form,
// dispatch, and argument errors.
//
// Tolerances: the chunked form vs the recurrence, both float32: max |diff| <= 1e-5 on outputs of
// order 1 (checked). The fused kernel vs the float64 recurrence: max |fast - ref| / max |ref|
// <= 1e-5 for float32 inputs, <= 1e-12 for float64 inputs, <= 1e-2 for bfloat16 inputs (the
// output itself is rounded to bfloat16).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include <functional>
#include <string>
#include <vector>

#include "kernels/ssd_scan.h"
#include "kernels/threads.h"
#include "tests/test_util.h"

namespace pmamba::kernels {
namespace {

enum class Skip { kNone, kPerHead, kPerChannel };  // D absent, (H), (H, P)

struct Shape {
  int64_t batch, len, heads, headdim, groups, dstate;
  Skip skip;
  std::string str() const {
    return "B " + std::to_string(batch) + " L " + std::to_string(len) + " H " + std::to_string(heads) + " P " +
           std::to_string(headdim) + " G " + std::to_string(groups) + " N " + std::to_string(dstate) + " D " +
           std::to_string(static_cast<int>(skip));
  }
};

// Small shapes covering G = 1 and 2, H / G of 1, 2 and 4, each form of D, P and N that are not
// multiples of the kernel's 16 lanes, and L that is not a multiple of any chunk length.
const Shape kShapes[] = {
    {2, 37, 4, 5, 1, 6, Skip::kPerHead},
    {2, 45, 4, 3, 2, 16, Skip::kPerChannel},
    {2, 20, 2, 8, 2, 5, Skip::kNone},
    {2, 300, 2, 18, 1, 20, Skip::kPerHead},      // 3 forward checkpoints, a partial sub-chunk
    {2, 130, 3, 70, 1, 17, Skip::kPerChannel},  // P = 70: a 64-lane and a 16-lane tile
};

const char* kNames[] = {"x", "dt", "A", "B", "C", "D"};

struct SsdInputs {
  at::Tensor x, dt, A, B, C, D;
  std::vector<at::Tensor> all() const { return {x, dt, A, B, C, D}; }
  // x, B and C to `t`; dt, A and D are float32 parameters in the model (float64 for float64).
  SsdInputs to(at::ScalarType t, bool grad) const {
    auto cvt = [&](const at::Tensor& v, at::ScalarType st) {
      return v.defined() ? v.detach().to(st).requires_grad_(grad) : at::Tensor();
    };
    const at::ScalarType param = t == at::kDouble ? at::kDouble : at::kFloat;
    return {cvt(x, t), cvt(dt, param), cvt(A, param), cvt(B, t), cvt(C, t), cvt(D, param)};
  }
};

SsdInputs random_inputs(const Shape& s, uint64_t seed) {
  at::manual_seed(seed);
  SsdInputs in;
  in.x = at::randn({s.batch, s.len, s.heads, s.headdim});
  in.dt = at::softplus(at::randn({s.batch, s.len, s.heads}) * 0.5 - 1.0);  // 0.1 .. 1: the final time step
  in.A = -(at::rand({s.heads}) + 0.5);
  in.B = at::randn({s.batch, s.len, s.groups, s.dstate});
  in.C = at::randn({s.batch, s.len, s.groups, s.dstate}) / std::sqrt(static_cast<double>(s.dstate));
  if (s.skip == Skip::kPerHead) in.D = at::randn({s.heads});
  if (s.skip == Skip::kPerChannel) in.D = at::randn({s.heads, s.headdim});
  return in;
}

double rel_err(const at::Tensor& got, const at::Tensor& ref) {
  const double scale = std::max(ref.detach().abs().max().item<double>(), 1e-30);
  return test::max_abs_diff(got, ref) / scale;
}

using ScanFn = std::function<SsdOutput(const SsdInputs&)>;

SsdOutput run_backend(const SsdInputs& in, Backend backend, int64_t chunk = 16) {
  SsdOptions o;
  o.backend = backend;
  o.chunk_size = chunk;
  o.return_last_state = true;
  return ssd_scan(in.x, in.dt, in.A, in.B, in.C, in.D, o);
}
SsdOutput run_fast(const SsdInputs& in) { return run_backend(in, Backend::kFast); }
SsdOutput run_recurrent(const SsdInputs& in) {
  return detail::ssd_scan_recurrent_ref(in.x, in.dt, in.A, in.B, in.C, in.D, true);
}

struct Result {
  at::Tensor out, last;
  std::vector<at::Tensor> grads;  // of x, dt, A, B, C, D (undefined where the input is)
};

// loss = sum(out * w) + sum(last_state * wl), so the gradient through last_state is checked too.
Result forward_backward(const SsdInputs& in, const ScanFn& fn, const at::Tensor& w, const at::Tensor& wl) {
  Result r;
  const SsdOutput o = fn(in);
  r.out = o.out;
  r.last = o.last_state;
  ((o.out.to(at::kDouble) * w).sum() + (o.last_state.to(at::kDouble) * wl).sum()).backward();
  for (const auto& t : in.all()) r.grads.push_back(t.defined() ? t.grad() : at::Tensor());
  return r;
}

std::pair<at::Tensor, at::Tensor> loss_weights(const Shape& s) {
  return {at::randn({s.batch, s.len, s.heads, s.headdim}, at::kDouble),
          at::randn({s.batch, s.heads, s.headdim, s.dstate}, at::kDouble)};
}

TEST(SsdScan, ChunkedReferenceMatchesRecurrence) {
  for (const Shape& s : kShapes) {
    const SsdInputs in = random_inputs(s, 100 + s.len).to(at::kFloat, false);
    const SsdOutput rec = run_recurrent(in);
    EXPECT_GT(rec.out.abs().max().item<double>(), 0.5) << "outputs of order 1";
    for (const int64_t chunk : {1, 7, 16, 64, 256}) {
      SCOPED_TRACE(s.str() + " chunk " + std::to_string(chunk));
      const SsdOutput ch = detail::ssd_scan_chunked_ref(in.x, in.dt, in.A, in.B, in.C, in.D, chunk, true);
      EXPECT_LE(test::max_abs_diff(ch.out, rec.out), 1e-5);
      EXPECT_LE(test::max_abs_diff(ch.last_state, rec.last_state), 1e-5);
    }
  }
}

TEST(SsdScan, ChunkedReferenceGradientsMatchRecurrence) {
  for (const Shape& s : {kShapes[0], kShapes[1]}) {
    SCOPED_TRACE(s.str());
    const SsdInputs base = random_inputs(s, 7);
    const auto [w, wl] = loss_weights(s);
    const Result rec = forward_backward(base.to(at::kDouble, true), run_recurrent, w, wl);
    const Result ch = forward_backward(
        base.to(at::kDouble, true),
        [](const SsdInputs& in) { return detail::ssd_scan_chunked_ref(in.x, in.dt, in.A, in.B, in.C, in.D, 16, true); },
        w, wl);
    for (size_t i = 0; i < rec.grads.size(); ++i) {
      if (!rec.grads[i].defined()) continue;
      EXPECT_LE(rel_err(ch.grads[i], rec.grads[i]), 1e-10) << "d" << kNames[i];
    }
  }
}

void expect_matches(const Result& got, const Result& ref, double tol) {
  EXPECT_LE(rel_err(got.out, ref.out), tol) << "out";
  EXPECT_LE(rel_err(got.last, ref.last), tol) << "last_state";
  for (size_t i = 0; i < ref.grads.size(); ++i) {
    if (!ref.grads[i].defined()) {
      EXPECT_FALSE(got.grads[i].defined()) << kNames[i];
      continue;
    }
    ASSERT_TRUE(got.grads[i].defined()) << kNames[i];
    EXPECT_EQ(got.grads[i].sizes(), ref.grads[i].sizes()) << kNames[i];
    EXPECT_LE(rel_err(got.grads[i], ref.grads[i]), tol) << "d" << kNames[i];
  }
}

TEST(SsdScan, FusedForwardAndGradientsMatchFloat64Reference) {
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(s.str());
    const SsdInputs base = random_inputs(s, 200 + s.len);
    const auto [w, wl] = loss_weights(s);
    const Result ref = forward_backward(base.to(at::kDouble, true), run_recurrent, w, wl);
    {
      SCOPED_TRACE("float32");
      const Result fast = forward_backward(base.to(at::kFloat, true), run_fast, w, wl);
      EXPECT_EQ(fast.out.scalar_type(), at::kFloat);
      expect_matches(fast, ref, 1e-5);
      // Without a backward the forward skips the checkpoints; the numbers must not change.
      const SsdOutput nograd = run_fast(base.to(at::kFloat, false));
      EXPECT_TRUE(test::bitwise_equal(nograd.out, fast.out.detach()));
      EXPECT_TRUE(test::bitwise_equal(nograd.last_state, fast.last.detach()));
    }
    {
      SCOPED_TRACE("float64");
      expect_matches(forward_backward(base.to(at::kDouble, true), run_fast, w, wl), ref, 1e-12);
    }
  }
}

TEST(SsdScan, FusedBFloat16InputsWithinTolerance) {
  const Shape s = kShapes[1];
  const SsdInputs bf = random_inputs(s, 9).to(at::kBFloat16, true);
  const auto [w, wl] = loss_weights(s);
  const Result fast = forward_backward(bf, run_fast, w, wl);
  // The float64 reference sees the same (bfloat16-rounded) values.
  const Result ref = forward_backward(bf.to(at::kDouble, true), run_recurrent, w, wl);
  EXPECT_EQ(fast.out.scalar_type(), at::kBFloat16);
  EXPECT_EQ(fast.grads[0].scalar_type(), at::kBFloat16);
  expect_matches(fast, ref, 1e-2);
}

// Central differences in float64 of loss = sum(out * w) + sum(last_state * wl) against the
// fused backward, for every element of every input.
TEST(SsdScan, FusedFloat64GradientsPassFiniteDifferences) {
  for (const Shape& s : {Shape{2, 5, 4, 3, 2, 3, Skip::kPerHead}, Shape{2, 4, 2, 2, 1, 3, Skip::kPerChannel}}) {
    SCOPED_TRACE(s.str());
    const SsdInputs in = random_inputs(s, 11).to(at::kDouble, true);
    const auto [w, wl] = loss_weights(s);
    auto loss = [&](const SsdInputs& v) {
      const SsdOutput o = run_fast(v);
      return (o.out * w).sum() + (o.last_state * wl).sum();
    };
    std::vector<at::Tensor> wrt;
    for (const auto& t : in.all()) {
      if (t.defined()) wrt.push_back(t);
    }
    const auto analytic = torch::autograd::grad({loss(in)}, wrt);
    const double eps = 1e-6;
    c10::NoGradGuard no_grad;
    for (size_t k = 0; k < wrt.size(); ++k) {
      at::Tensor flat = wrt[k].view({-1});
      const at::Tensor a = analytic[k].reshape({-1});
      for (int64_t j = 0; j < flat.numel(); ++j) {
        const double v = flat[j].item<double>();
        flat[j] = v + eps;
        const double hi = loss(in).item<double>();
        flat[j] = v - eps;
        const double lo = loss(in).item<double>();
        flat[j] = v;
        const double numeric = (hi - lo) / (2 * eps);
        EXPECT_NEAR(a[j].item<double>(), numeric, 1e-6 + 1e-6 * std::abs(numeric))
            << "input " << k << " element " << j;
      }
    }
  }
}

TEST(SsdScan, FusedResultsDoNotDependOnTheThreadCount) {
  const Shape s{2, 300, 3, 18, 1, 20, Skip::kPerChannel};
  const SsdInputs base = random_inputs(s, 3);
  const auto [w, wl] = loss_weights(s);
  const int before = at::get_num_threads();
  std::vector<Result> runs;
  for (const int threads : {1, 2, 3}) {
    set_threads(threads);
    runs.push_back(forward_backward(base.to(at::kFloat, true), run_fast, w, wl));
  }
  set_threads(before);
  for (size_t r = 1; r < runs.size(); ++r) {
    EXPECT_TRUE(test::bitwise_equal(runs[0].out, runs[r].out)) << "run " << r;
    EXPECT_TRUE(test::bitwise_equal(runs[0].last, runs[r].last)) << "run " << r;
    for (size_t i = 0; i < runs[0].grads.size(); ++i) {
      EXPECT_TRUE(test::bitwise_equal(runs[0].grads[i], runs[r].grads[i])) << "d" << kNames[i] << " run " << r;
    }
  }
}

TEST(SsdScan, StepFormReproducesTheFullSequence) {
  for (const Shape& s : {kShapes[0], kShapes[1], kShapes[2]}) {
    SCOPED_TRACE(s.str());
    const SsdInputs in = random_inputs(s, 5);
    const SsdOutput full = run_fast(in);
    for (const Backend b : {Backend::kAuto, Backend::kReference}) {
      SCOPED_TRACE(backend_name(b));
      set_default_backend(b);
      at::Tensor state = at::zeros({s.batch, s.heads, s.headdim, s.dstate});
      for (int64_t t = 0; t < s.len; ++t) {
        const at::Tensor y = ssd_scan_step(state, in.x.select(1, t), in.dt.select(1, t), in.A, in.B.select(1, t),
                                           in.C.select(1, t), in.D);
        if (b == Backend::kAuto) {  // the fused step: the forward's arithmetic
          EXPECT_TRUE(test::bitwise_equal(y, full.out.select(1, t))) << "t=" << t;
        } else {
          EXPECT_LE(test::max_abs_diff(y, full.out.select(1, t)), 1e-5) << "t=" << t;
        }
      }
      if (b == Backend::kAuto) {
        EXPECT_TRUE(test::bitwise_equal(state, full.last_state));
      } else {
        EXPECT_LE(test::max_abs_diff(state, full.last_state), 1e-5);
      }
    }
    set_default_backend(Backend::kAuto);
  }
}

TEST(SsdScan, BackendSelectsTheImplementation) {
  const SsdInputs in = random_inputs(kShapes[0], 13);
  const SsdOutput ref = run_backend(in, Backend::kReference, 16);
  const SsdOutput chunked = detail::ssd_scan_chunked_ref(in.x, in.dt, in.A, in.B, in.C, in.D, 16, true);
  EXPECT_TRUE(test::bitwise_equal(ref.out, chunked.out));
  EXPECT_TRUE(test::bitwise_equal(ref.last_state, chunked.last_state));
  const SsdOutput fast = detail::ssd_scan_fast(in.x, in.dt, in.A, in.B, in.C, in.D, true);
  EXPECT_TRUE(test::bitwise_equal(run_backend(in, Backend::kAuto).out, fast.out));
  set_default_backend(Backend::kReference);
  EXPECT_TRUE(test::bitwise_equal(run_backend(in, Backend::kAuto).out, ref.out));
  set_default_backend(Backend::kAuto);
  // last_state only on request.
  EXPECT_FALSE(ssd_scan(in.x, in.dt, in.A, in.B, in.C, in.D).last_state.defined());
}

TEST(SsdScan, ArgumentErrorsNameTheArgument) {
  const SsdInputs in = random_inputs(Shape{2, 6, 4, 3, 2, 5, Skip::kPerHead}, 1);
  const at::Tensor none;
  PMAMBA_EXPECT_THROW_WITH(ssd_scan(in.x.select(0, 0), in.dt, in.A, in.B, in.C, in.D), c10::Error,
                           "x must be (B, L, H, P) but has shape [6, 4, 3]");
  PMAMBA_EXPECT_THROW_WITH(ssd_scan(in.x, in.dt.narrow(2, 0, 3), in.A, in.B, in.C, in.D), c10::Error,
                           "dt must have shape [2, 6, 4] but has [2, 6, 3]");
  PMAMBA_EXPECT_THROW_WITH(ssd_scan(in.x, in.dt, in.A.narrow(0, 0, 3), in.B, in.C, in.D), c10::Error,
                           "A must have shape [4] but has [3]");
  PMAMBA_EXPECT_THROW_WITH(ssd_scan(in.x, in.dt, in.A, in.B.narrow(1, 0, 5), in.C, in.D), c10::Error,
                           "B must be (batch, L, G, N)");
  PMAMBA_EXPECT_THROW_WITH(ssd_scan(in.x, in.dt, in.A, at::randn({2, 6, 3, 5}), at::randn({2, 6, 3, 5}), in.D),
                           c10::Error, "H = 4 must be a multiple of the group count G = 3");
  PMAMBA_EXPECT_THROW_WITH(ssd_scan(in.x, in.dt, in.A, in.B, in.C.narrow(3, 0, 4), in.D), c10::Error,
                           "C must have the shape of B, [2, 6, 2, 5], but has [2, 6, 2, 4]");
  PMAMBA_EXPECT_THROW_WITH(ssd_scan(in.x, in.dt, in.A, in.B, in.C, at::randn({4, 2})), c10::Error,
                           "D must have shape [4] or [4, 3] but has [4, 2]");
  PMAMBA_EXPECT_THROW_WITH(ssd_scan(in.x, in.dt.to(at::kHalf), in.A, in.B, in.C, in.D), c10::Error,
                           "dt must be float32");
  PMAMBA_EXPECT_THROW_WITH(ssd_scan(in.x, in.dt, in.A, in.B, in.C, in.D, SsdOptions{0}), c10::Error,
                           "chunk_size must be >= 1 but is 0");
  at::Tensor bad_state = at::zeros({2, 4, 3, 4});
  PMAMBA_EXPECT_THROW_WITH(ssd_scan_step(bad_state, in.x.select(1, 0), in.dt.select(1, 0), in.A, in.B.select(1, 0),
                                         in.C.select(1, 0), none),
                           c10::Error, "state must have shape [2, 4, 3, 5] but has [2, 4, 3, 4]");
  at::Tensor state = at::zeros({2, 4, 3, 5});
  PMAMBA_EXPECT_THROW_WITH(ssd_scan_step(state, in.x.select(1, 0), in.dt, in.A, in.B.select(1, 0),
                                         in.C.select(1, 0), none),
                           c10::Error, "dt must have shape [2, 4] but has [2, 6, 4]");
}

}  // namespace
}  // namespace pmamba::kernels
