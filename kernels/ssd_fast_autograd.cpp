// The fused CPU SSD scan behind ssd_scan (kernels/cpu/ssd_fast.h): dtype handling, and a
// torch::autograd::Function whose backward is the fused reverse scan.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>

#include "kernels/cpu/ssd_fast.h"
#include "kernels/fast_args.h"
#include "kernels/ssd_scan.h"

namespace pmamba::kernels::detail {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

namespace {

struct SsdArgs {
  at::Tensor x, dt, A, B, C, D;  // compute dtype, contiguous
  cpu::SsdShape shape;
};

SsdArgs prepare(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& Bm,
                const at::Tensor& Cm, const at::Tensor& D) {
  const at::ScalarType st = compute_type(x);
  SsdArgs a{as(x, st), as(dt, st), as(A, st), as(Bm, st), as(Cm, st), as(D, st), {}};
  a.shape = cpu::SsdShape{x.size(0), x.size(1), x.size(2), x.size(3), Bm.size(2), Bm.size(3)};
  return a;
}

// Runs the forward kernel. last_state is computed when want_last; ckpt is allocated (and
// filled) when the backward will need it.
std::pair<at::Tensor, at::Tensor> run_forward(const SsdArgs& a, bool want_last, at::Tensor* ckpt) {
  const cpu::SsdShape& s = a.shape;
  const auto opts = a.x.options();
  at::Tensor out = at::empty({s.batch, s.len, s.heads, s.headdim}, opts);                              // (B, L, H, P)
  at::Tensor last = want_last ? at::empty({s.batch, s.heads, s.headdim, s.dstate}, opts) : at::Tensor();  // (B, H, P, N)
  if (ckpt) *ckpt = at::empty({s.batch, s.heads, s.chunks(), s.headdim, s.padded_dstate()}, opts);   // (B, H, c, P, Np)
  auto run = [&](auto zero) {
    using T = decltype(zero);
    cpu::SsdForward<T> f{s,       ptr<T>(a.x),  ptr<T>(a.dt),  ptr<T>(a.A),
                         ptr<T>(a.B), ptr<T>(a.C), ptr<T>(a.D), a.D.defined() && a.D.dim() == 2,
                         mptr<T>(out), mptr<T>(last), ckpt ? mptr<T>(*ckpt) : nullptr};
    cpu::ssd_forward<T>(f);
  };
  if (a.x.scalar_type() == at::kDouble) {
    run(double{});
  } else {
    run(float{});
  }
  return {out, last};
}

class SsdFunction : public torch::autograd::Function<SsdFunction> {
 public:
  // Returns {out (B, L, H, P) in x's dtype, last_state (B, H, P, N)}. last_state is always
  // computed here (one transpose per head) so a gradient reaching it can flow back.
  static tensor_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                             const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D_in) {
    const at::Tensor D = absent_if_empty(D_in);
    const SsdArgs a = prepare(x, dt, A, Bm, Cm, D);
    at::Tensor ckpt;
    auto [out, last] = run_forward(a, /*want_last=*/true, &ckpt);
    ctx->save_for_backward({a.x, a.dt, a.A, a.B, a.C, placeholder(a.D), ckpt});
    // The input dtypes and D's presence shape the returned gradients.
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    ctx->saved_data["dt_dtype"] = static_cast<int64_t>(dt.scalar_type());
    ctx->saved_data["A_dtype"] = static_cast<int64_t>(A.scalar_type());
    ctx->saved_data["B_dtype"] = static_cast<int64_t>(Bm.scalar_type());
    ctx->saved_data["C_dtype"] = static_cast<int64_t>(Cm.scalar_type());
    ctx->saved_data["D_dtype"] = static_cast<int64_t>(D.defined() ? D.scalar_type() : at::kFloat);
    ctx->saved_data["has_D"] = D.defined();
    return {out.to(x.scalar_type()), last};
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    SsdArgs a;
    a.x = saved[0];
    a.dt = saved[1];
    a.A = saved[2];
    a.B = saved[3];
    a.C = saved[4];
    a.D = absent_if_empty(saved[5]);
    const at::Tensor ckpt = saved[6];
    const cpu::SsdShape& s = a.shape =
        cpu::SsdShape{a.x.size(0), a.x.size(1), a.x.size(2), a.x.size(3), a.B.size(2), a.B.size(3)};
    const at::ScalarType st = a.x.scalar_type();
    const at::Tensor dout = grads[0].defined() ? as(grads[0], st) : at::zeros_like(a.x);  // (B, L, H, P)
    const at::Tensor dlast = as(grads[1], st);                                             // (B, H, P, N) or undefined
    at::Tensor dx = at::empty_like(a.x), ddt = at::empty_like(a.dt), dA = at::empty_like(a.A);
    at::Tensor dB = at::empty_like(a.B), dC = at::empty_like(a.C);
    at::Tensor dD = a.D.defined() ? at::empty_like(a.D) : at::Tensor();
    auto run = [&](auto zero) {
      using T = decltype(zero);
      cpu::SsdBackward<T> bw{s,           ptr<T>(a.x),  ptr<T>(a.dt), ptr<T>(a.A),  ptr<T>(a.B),
                             ptr<T>(a.C), ptr<T>(a.D),  a.D.defined() && a.D.dim() == 2,
                             ptr<T>(ckpt), ptr<T>(dout), ptr<T>(dlast), mptr<T>(dx), mptr<T>(ddt),
                             mptr<T>(dA), mptr<T>(dB), mptr<T>(dC), mptr<T>(dD)};
      cpu::ssd_backward<T>(bw);
    };
    if (st == at::kDouble) {
      run(double{});
    } else {
      run(float{});
    }
    auto dtype = [&](const char* k) { return static_cast<at::ScalarType>(ctx->saved_data[k].toInt()); };
    return {dx.to(dtype("x_dtype")),
            ddt.to(dtype("dt_dtype")),
            dA.to(dtype("A_dtype")),
            dB.to(dtype("B_dtype")),
            dC.to(dtype("C_dtype")),
            ctx->saved_data["has_D"].toBool() ? dD.to(dtype("D_dtype")) : at::Tensor()};
  }
};

bool any_requires_grad(std::initializer_list<at::Tensor> ts) {
  if (!c10::GradMode::is_enabled()) return false;
  for (const auto& t : ts) {
    if (t.defined() && t.requires_grad()) return true;
  }
  return false;
}

}  // namespace

SsdOutput ssd_scan_fast(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& Bm,
                        const at::Tensor& Cm, const at::Tensor& D, bool return_last_state) {
  SsdOutput r;
  if (!any_requires_grad({x, dt, A, Bm, Cm, D})) {  // no checkpoints without a backward
    auto [out, last] = run_forward(prepare(x, dt, A, Bm, Cm, D), return_last_state, nullptr);
    r.out = out.to(x.scalar_type());
    r.last_state = last;
    return r;
  }
  const tensor_list outs = SsdFunction::apply(x, dt, A, Bm, Cm, placeholder(D));
  r.out = outs[0];
  if (return_last_state) r.last_state = outs[1];
  return r;
}

at::Tensor ssd_scan_step_fast(at::Tensor& state, const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                              const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D) {
  c10::NoGradGuard no_grad;
  TORCH_CHECK(state.is_contiguous() && state.scalar_type() == at::kFloat,
              "ssd_scan_step: the fast path needs a contiguous float32 state");
  const at::ScalarType st = at::kFloat;  // the recurrent state is float32
  const at::Tensor xf = as(x, st), dtf = as(dt, st), Af = as(A, st), Bf = as(Bm, st), Cf = as(Cm, st),
                   Df = as(D, st);
  const cpu::SsdShape s{xf.size(0), 1, xf.size(1), xf.size(2), Bf.size(1), Bf.size(2)};
  at::Tensor out = at::empty(xf.sizes(), xf.options());  // (B, H, P)
  cpu::ssd_step<float>(s, state.data_ptr<float>(), ptr<float>(xf), ptr<float>(dtf), ptr<float>(Af), ptr<float>(Bf),
                       ptr<float>(Cf), ptr<float>(Df), Df.defined() && Df.dim() == 2, out.data_ptr<float>());
  return out.to(x.scalar_type());
}

}  // namespace pmamba::kernels::detail
