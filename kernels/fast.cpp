#include "kernels/fast.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include "kernels/cpu/conv_fast.h"
#include "kernels/cpu/scan_fast.h"

namespace pmamba::kernels::detail {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

namespace {

at::Tensor f32(const at::Tensor& t) { return t.defined() ? t.to(at::kFloat).contiguous() : t; }
const float* ptr(const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

struct ScanArgs {
  at::Tensor u, delta, A, Bt, Ct, D, z, bias;  // float32, contiguous; Bt/Ct are (B, L, N)
  cpu::ScanShape shape;
};

ScanArgs prepare(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bm,
                 const at::Tensor& Cm, const at::Tensor& D, const at::Tensor& z, const at::Tensor& bias) {
  ScanArgs a;
  a.u = f32(u);
  a.delta = f32(delta);
  a.A = f32(A);
  a.Bt = Bm.to(at::kFloat).transpose(1, 2).contiguous();  // (B, L, N)
  a.Ct = Cm.to(at::kFloat).transpose(1, 2).contiguous();
  a.D = f32(D);
  a.z = f32(z);
  a.bias = f32(bias);
  a.shape = cpu::ScanShape{u.size(0), u.size(1), u.size(2), A.size(1)};
  return a;
}

// Runs the forward kernel; ckpt is allocated when the backward will need it.
std::pair<at::Tensor, at::Tensor> run_forward(const ScanArgs& a, bool softplus, bool want_last, at::Tensor* ckpt) {
  const auto& s = a.shape;
  at::Tensor out = at::empty({s.batch, s.dim, s.len}, at::kFloat);
  at::Tensor last = want_last ? at::empty({s.batch, s.dim, s.dstate}, at::kFloat) : at::Tensor();
  if (ckpt) *ckpt = at::empty({s.batch, s.groups(), s.chunks(), s.dstate, cpu::kLanes}, at::kFloat);
  cpu::ScanForward f{s,         ptr(a.u), ptr(a.delta), ptr(a.A), ptr(a.Bt), ptr(a.Ct), ptr(a.D), ptr(a.z),
                     ptr(a.bias), softplus, out.data_ptr<float>(), want_last ? last.data_ptr<float>() : nullptr,
                     ckpt ? ckpt->data_ptr<float>() : nullptr};
  cpu::scan_forward(f);
  return {out, last};
}

class ScanFunction : public torch::autograd::Function<ScanFunction> {
 public:
  static tensor_list forward(AutogradContext* ctx, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                             const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D, const at::Tensor& z,
                             const at::Tensor& bias, bool softplus, bool want_last) {
    const ScanArgs a = prepare(u, delta, A, Bm, Cm, D, z, bias);
    at::Tensor ckpt;
    auto [out, last] = run_forward(a, softplus, want_last, &ckpt);
    ctx->save_for_backward({a.u, a.delta, a.A, a.Bt, a.Ct, a.D, a.z, a.bias, ckpt});
    ctx->saved_data["softplus"] = softplus;
    // Remember which inputs were given and their dtypes, to shape the gradients.
    ctx->saved_data["has_D"] = D.defined();
    ctx->saved_data["has_z"] = z.defined();
    ctx->saved_data["has_bias"] = bias.defined();
    ctx->saved_data["u_dtype"] = static_cast<int64_t>(u.scalar_type());
    ctx->saved_data["delta_dtype"] = static_cast<int64_t>(delta.scalar_type());
    ctx->saved_data["B_dtype"] = static_cast<int64_t>(Bm.scalar_type());
    ctx->saved_data["C_dtype"] = static_cast<int64_t>(Cm.scalar_type());
    ctx->saved_data["z_dtype"] = static_cast<int64_t>(z.defined() ? z.scalar_type() : at::kFloat);
    if (!want_last) last = at::empty({0}, at::kFloat);
    ctx->mark_non_differentiable({last});
    return {out.to(u.scalar_type()), last};
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    ScanArgs a;
    a.u = saved[0];
    a.delta = saved[1];
    a.A = saved[2];
    a.Bt = saved[3];
    a.Ct = saved[4];
    a.D = saved[5];
    a.z = saved[6];
    a.bias = saved[7];
    const at::Tensor ckpt = saved[8];
    const auto& s = a.shape = cpu::ScanShape{a.u.size(0), a.u.size(1), a.u.size(2), a.A.size(1)};
    const at::Tensor dout = f32(grads[0].defined() ? grads[0] : at::zeros({s.batch, s.dim, s.len}));
    at::Tensor du = at::empty_like(a.u), ddelta = at::empty_like(a.u), dA = at::empty_like(a.A);
    at::Tensor dBt = at::empty_like(a.Bt), dCt = at::empty_like(a.Ct);
    at::Tensor dz = a.z.defined() ? at::empty_like(a.u) : at::Tensor();
    at::Tensor dD = at::empty({s.dim}, at::kFloat), dbias = at::empty({s.dim}, at::kFloat);
    cpu::ScanBackward b{s,         ptr(a.u),   ptr(a.delta), ptr(a.A),  ptr(a.Bt), ptr(a.Ct), ptr(a.D),
                        ptr(a.z),  ptr(a.bias), ckpt.data_ptr<float>(), dout.data_ptr<float>(),
                        ctx->saved_data["softplus"].toBool(),
                        du.data_ptr<float>(), ddelta.data_ptr<float>(), a.z.defined() ? dz.data_ptr<float>() : nullptr,
                        dA.data_ptr<float>(), dBt.data_ptr<float>(), dCt.data_ptr<float>(), dD.data_ptr<float>(),
                        dbias.data_ptr<float>()};
    cpu::scan_backward(b);
    auto dtype = [&](const char* k) { return static_cast<at::ScalarType>(ctx->saved_data[k].toInt()); };
    return {du.to(dtype("u_dtype")),
            ddelta.to(dtype("delta_dtype")),
            dA,
            dBt.transpose(1, 2).to(dtype("B_dtype")),
            dCt.transpose(1, 2).to(dtype("C_dtype")),
            ctx->saved_data["has_D"].toBool() ? dD : at::Tensor(),
            ctx->saved_data["has_z"].toBool() ? dz.to(dtype("z_dtype")) : at::Tensor(),
            ctx->saved_data["has_bias"].toBool() ? dbias : at::Tensor(),
            at::Tensor(),
            at::Tensor()};
  }
};

class ConvFunction : public torch::autograd::Function<ConvFunction> {
 public:
  static tensor_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                             bool silu) {
    const at::Tensor xf = f32(x), wf = f32(w), bf = f32(bias);
    at::Tensor out = at::empty(xf.sizes(), at::kFloat);
    cpu::conv_forward(xf.size(0), xf.size(1), xf.size(2), wf.size(1), ptr(xf), ptr(wf), ptr(bf), silu,
                      out.data_ptr<float>());
    ctx->save_for_backward({xf, wf, bf});
    ctx->saved_data["silu"] = silu;
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    ctx->saved_data["has_bias"] = bias.defined();
    return {out.to(x.scalar_type())};
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &xf = saved[0], &wf = saved[1], &bf = saved[2];
    const at::Tensor dout = f32(grads[0]);
    at::Tensor dx = at::empty_like(xf), dw = at::empty_like(wf);
    at::Tensor db = at::empty({wf.size(0)}, at::kFloat);
    cpu::conv_backward(xf.size(0), xf.size(1), xf.size(2), wf.size(1), ptr(xf), ptr(wf), ptr(bf),
                       ctx->saved_data["silu"].toBool(), dout.data_ptr<float>(), dx.data_ptr<float>(),
                       dw.data_ptr<float>(), db.data_ptr<float>());
    return {dx.to(static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt())), dw,
            ctx->saved_data["has_bias"].toBool() ? db : at::Tensor(), at::Tensor()};
  }
};

bool any_requires_grad(std::initializer_list<at::Tensor> ts) {
  if (!at::GradMode::is_enabled()) return false;
  for (const auto& t : ts) {
    if (t.defined() && t.requires_grad()) return true;
  }
  return false;
}

}  // namespace

bool fast_cpu_supports(const at::Tensor& t) {
  return t.device().is_cpu() &&
         (t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf);
}

ScanOutput selective_scan_fast(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bm,
                               const at::Tensor& Cm, const at::Tensor& D, const at::Tensor& z, const at::Tensor& bias,
                               bool softplus, bool want_last) {
  ScanOutput r;
  if (!any_requires_grad({u, delta, A, Bm, Cm, D, z, bias})) {
    const ScanArgs a = prepare(u, delta, A, Bm, Cm, D, z, bias);
    auto [out, last] = run_forward(a, softplus, want_last, nullptr);
    r.out = out.to(u.scalar_type());
    r.last_state = last;
    return r;
  }
  const tensor_list outs = ScanFunction::apply(u, delta, A, Bm, Cm, D, z, bias, softplus, want_last);
  r.out = outs[0];
  if (want_last) r.last_state = outs[1];
  return r;
}

at::Tensor selective_scan_step_fast(at::Tensor& state, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                    const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D,
                                    const at::Tensor& z, const at::Tensor& bias, bool softplus) {
  at::NoGradGuard no_grad;
  const at::Tensor uf = f32(u), df = f32(delta), Af = f32(A), Bf = f32(Bm), Cf = f32(Cm), Df = f32(D), zf = f32(z),
                   bf = f32(bias);
  TORCH_CHECK(state.is_contiguous(), "selective_scan_step: state must be contiguous");
  at::Tensor out = at::empty(uf.sizes(), at::kFloat);
  cpu::scan_step(uf.size(0), uf.size(1), Af.size(1), state.data_ptr<float>(), ptr(uf), ptr(df), ptr(Af), ptr(Bf),
                 ptr(Cf), ptr(Df), ptr(zf), ptr(bf), softplus, out.data_ptr<float>());
  return out.to(u.scalar_type());
}

at::Tensor causal_conv1d_fast(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, bool silu) {
  if (!any_requires_grad({x, w, bias})) {
    const at::Tensor xf = f32(x), wf = f32(w), bf = f32(bias);
    at::Tensor out = at::empty(xf.sizes(), at::kFloat);
    cpu::conv_forward(xf.size(0), xf.size(1), xf.size(2), wf.size(1), ptr(xf), ptr(wf), ptr(bf), silu,
                      out.data_ptr<float>());
    return out.to(x.scalar_type());
  }
  return ConvFunction::apply(x, w, bias, silu)[0];
}

at::Tensor causal_conv1d_step_fast(at::Tensor& conv_state, const at::Tensor& x, const at::Tensor& w,
                                   const at::Tensor& bias, bool silu) {
  at::NoGradGuard no_grad;
  TORCH_CHECK(conv_state.is_contiguous() && conv_state.scalar_type() == at::kFloat,
              "causal_conv1d_step: the fast path needs a contiguous float32 conv_state");
  const at::Tensor xf = f32(x), wf = f32(w), bf = f32(bias);
  at::Tensor out = at::empty(xf.sizes(), at::kFloat);
  cpu::conv_step(xf.size(0), xf.size(1), wf.size(1), conv_state.data_ptr<float>(), ptr(xf), ptr(wf), ptr(bf), silu,
                 out.data_ptr<float>());
  return out.to(x.scalar_type());
}

}  // namespace pmamba::kernels::detail
