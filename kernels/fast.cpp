#include <c10/core/GradMode.h>
#include "kernels/fast.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include "kernels/cpu/conv_fast.h"
#include "kernels/cpu/scan_fast.h"
#include "kernels/fast_args.h"

namespace pmamba::kernels::detail {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

namespace {

struct ScanArgs {
  // float32; u, delta, z: (B, D, L) with any strides (a transposed (B, L, D) is read in place);
  // the rest contiguous, Bt/Ct (B, L, N)
  at::Tensor u, delta, A, Bt, Ct, D, z, bias;
  cpu::ScanShape shape;
};

cpu::PlaneStrides strides_of(const at::Tensor& t) {
  if (!t.defined()) return {};
  return {t.stride(0), t.stride(1), t.stride(2)};
}

// A (B, D, L) result laid out as `like` is when that is a transposed (B, L, D) tensor (the model's
// layout, where the next matmul reads it without a copy), else contiguous (B, D, L).
at::Tensor plane_like(const at::Tensor& like, at::ScalarType st) {
  const auto opts = at::TensorOptions().dtype(st);
  const int64_t B = like.size(0), D = like.size(1), L = like.size(2);
  if (like.stride(1) == 1 && L > 1 && D > 1) return at::empty({B, L, D}, opts).transpose(1, 2);
  return at::empty({B, D, L}, opts);
}

// The planes keep their strides; only a dtype conversion copies.
at::Tensor as_plane(const at::Tensor& t, at::ScalarType st) { return t.defined() ? t.to(st) : t; }

ScanArgs prepare(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bm,
                 const at::Tensor& Cm, const at::Tensor& D, const at::Tensor& z, const at::Tensor& bias) {
  ScanArgs a;
  const at::ScalarType st = compute_type(u);
  a.u = as_plane(u, st);
  a.delta = as_plane(delta, st);
  a.A = as(A, st);
  a.Bt = Bm.to(st).transpose(1, 2).contiguous();  // (B, L, N)
  a.Ct = Cm.to(st).transpose(1, 2).contiguous();
  a.D = as(D, st);
  a.z = as_plane(z, st);
  a.bias = as(bias, st);
  a.shape = cpu::ScanShape{u.size(0), u.size(1), u.size(2), A.size(1)};
  return a;
}

template <typename T>
void forward_kernel(const ScanArgs& a, bool softplus, at::Tensor& out, at::Tensor& last, at::Tensor* ckpt) {
  cpu::ScanForward<T> f{a.shape,  ptr<T>(a.u),    ptr<T>(a.delta), ptr<T>(a.A), ptr<T>(a.Bt),
                        ptr<T>(a.Ct), ptr<T>(a.D), ptr<T>(a.z),    ptr<T>(a.bias), softplus,
                        mptr<T>(out), mptr<T>(last), ckpt ? mptr<T>(*ckpt) : nullptr,
                        strides_of(a.u), strides_of(a.delta), strides_of(a.z), strides_of(out)};
  cpu::scan_forward<T>(f);
}

// Runs the forward kernel; ckpt is allocated when the backward will need it.
std::pair<at::Tensor, at::Tensor> run_forward(const ScanArgs& a, bool softplus, bool want_last, at::Tensor* ckpt) {
  const auto& s = a.shape;
  const auto opts = at::TensorOptions().dtype(a.u.scalar_type());
  at::Tensor out = plane_like(a.z.defined() ? a.z : a.u, a.u.scalar_type());
  at::Tensor last = want_last ? at::empty({s.batch, s.dim, s.dstate}, opts) : at::Tensor();
  if (ckpt) *ckpt = at::empty({s.batch, s.groups(), s.chunks(), s.dstate, cpu::kLanes}, opts);
  if (a.u.scalar_type() == at::kDouble) {
    forward_kernel<double>(a, softplus, out, last, ckpt);
  } else {
    forward_kernel<float>(a, softplus, out, last, ckpt);
  }
  return {out, last};
}

template <typename T>
void backward_kernel(const ScanArgs& a, const at::Tensor& ckpt, const at::Tensor& dout, bool softplus, at::Tensor& du,
                     at::Tensor& ddelta, at::Tensor& dz, at::Tensor& dA, at::Tensor& dBt, at::Tensor& dCt,
                     at::Tensor& dD, at::Tensor& dbias) {
  cpu::ScanBackward<T> b{a.shape,       ptr<T>(a.u),  ptr<T>(a.delta), ptr<T>(a.A),   ptr<T>(a.Bt),
                         ptr<T>(a.Ct),  ptr<T>(a.D),  ptr<T>(a.z),     ptr<T>(a.bias), ptr<T>(ckpt),
                         ptr<T>(dout),  softplus,     mptr<T>(du),     mptr<T>(ddelta), mptr<T>(dz),
                         mptr<T>(dA),   mptr<T>(dBt), mptr<T>(dCt),    mptr<T>(dD),   mptr<T>(dbias),
                         strides_of(a.u), strides_of(a.delta), strides_of(a.z), strides_of(dout),
                         strides_of(du), strides_of(ddelta), strides_of(dz)};
  cpu::scan_backward<T>(b);
}

class ScanFunction : public torch::autograd::Function<ScanFunction> {
 public:
  static tensor_list forward(AutogradContext* ctx, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                             const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D_in, const at::Tensor& z_in,
                             const at::Tensor& bias_in, bool softplus, bool want_last) {
    const at::Tensor D = absent_if_empty(D_in), z = absent_if_empty(z_in), bias = absent_if_empty(bias_in);
    const ScanArgs a = prepare(u, delta, A, Bm, Cm, D, z, bias);
    at::Tensor ckpt;
    auto [out, last] = run_forward(a, softplus, want_last, &ckpt);
    ctx->save_for_backward({a.u, a.delta, a.A, a.Bt, a.Ct, placeholder(a.D), placeholder(a.z), placeholder(a.bias), ckpt});
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
    if (!want_last) last = at::empty({0}, a.u.options());
    ctx->mark_non_differentiable({last});
    return {out.to(u.scalar_type()), last};  // float64 inputs stay float64
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    ScanArgs a;
    a.u = saved[0];
    a.delta = saved[1];
    a.A = saved[2];
    a.Bt = saved[3];
    a.Ct = saved[4];
    a.D = absent_if_empty(saved[5]);
    a.z = absent_if_empty(saved[6]);
    a.bias = absent_if_empty(saved[7]);
    const at::Tensor ckpt = saved[8];
    const auto& s = a.shape = cpu::ScanShape{a.u.size(0), a.u.size(1), a.u.size(2), a.A.size(1)};
    const at::ScalarType st = a.u.scalar_type();
    const at::Tensor dout = as_plane(grads[0].defined() ? grads[0] : at::zeros({s.batch, s.dim, s.len}), st);
    // Each gradient in its input's layout: the model's matmuls and split read them in place.
    at::Tensor du = plane_like(a.u, st), ddelta = plane_like(a.delta, st), dA = at::empty_like(a.A);
    at::Tensor dBt = at::empty_like(a.Bt), dCt = at::empty_like(a.Ct);
    at::Tensor dz = a.z.defined() ? plane_like(a.z, st) : at::Tensor();
    at::Tensor dD = at::empty({s.dim}, st), dbias = at::empty({s.dim}, st);
    const bool softplus = ctx->saved_data["softplus"].toBool();
    if (st == at::kDouble) {
      backward_kernel<double>(a, ckpt, dout, softplus, du, ddelta, dz, dA, dBt, dCt, dD, dbias);
    } else {
      backward_kernel<float>(a, ckpt, dout, softplus, du, ddelta, dz, dA, dBt, dCt, dD, dbias);
    }
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

at::Tensor conv_run(const at::Tensor& xf, const at::Tensor& wf, const at::Tensor& bf, bool silu) {
  at::Tensor out = at::empty(xf.sizes(), xf.options());
  if (xf.scalar_type() == at::kDouble) {
    cpu::conv_forward<double>(xf.size(0), xf.size(1), xf.size(2), wf.size(1), ptr<double>(xf), ptr<double>(wf),
                              ptr<double>(bf), silu, mptr<double>(out));
  } else {
    cpu::conv_forward<float>(xf.size(0), xf.size(1), xf.size(2), wf.size(1), ptr<float>(xf), ptr<float>(wf),
                             ptr<float>(bf), silu, mptr<float>(out));
  }
  return out;
}

class ConvFunction : public torch::autograd::Function<ConvFunction> {
 public:
  static tensor_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias_in,
                             bool silu) {
    const at::Tensor bias = absent_if_empty(bias_in);
    const at::ScalarType st = compute_type(x);
    const at::Tensor xf = as(x, st), wf = as(w, st), bf = as(bias, st);
    at::Tensor out = conv_run(xf, wf, bf, silu);
    ctx->save_for_backward({xf, wf, placeholder(bf)});
    ctx->saved_data["silu"] = silu;
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    ctx->saved_data["has_bias"] = bias.defined();
    return {out.to(x.scalar_type())};
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &xf = saved[0], &wf = saved[1];
    const at::Tensor bf = absent_if_empty(saved[2]);
    const at::Tensor dout = as(grads[0], xf.scalar_type());
    at::Tensor dx = at::empty_like(xf), dw = at::empty_like(wf);
    at::Tensor db = at::empty({wf.size(0)}, xf.scalar_type());
    const bool silu = ctx->saved_data["silu"].toBool();
    if (xf.scalar_type() == at::kDouble) {
      cpu::conv_backward<double>(xf.size(0), xf.size(1), xf.size(2), wf.size(1), ptr<double>(xf), ptr<double>(wf),
                                 ptr<double>(bf), silu, ptr<double>(dout), mptr<double>(dx), mptr<double>(dw),
                                 mptr<double>(db));
    } else {
      cpu::conv_backward<float>(xf.size(0), xf.size(1), xf.size(2), wf.size(1), ptr<float>(xf), ptr<float>(wf),
                                ptr<float>(bf), silu, ptr<float>(dout), mptr<float>(dx), mptr<float>(dw),
                                mptr<float>(db));
    }
    return {dx.to(static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt())), dw,
            ctx->saved_data["has_bias"].toBool() ? db : at::Tensor(), at::Tensor()};
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

bool fast_cpu_supports(const at::Tensor& t) {
  return t.device().is_cpu() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble ||
                                 t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf);
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
  const tensor_list outs =
      ScanFunction::apply(u, delta, A, Bm, Cm, placeholder(D), placeholder(z), placeholder(bias), softplus, want_last);
  r.out = outs[0];
  if (want_last) r.last_state = outs[1];
  return r;
}

at::Tensor selective_scan_step_fast(at::Tensor& state, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                    const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D,
                                    const at::Tensor& z, const at::Tensor& bias, bool softplus) {
  c10::NoGradGuard no_grad;
  const at::ScalarType st = at::kFloat;  // the recurrent state is float32
  const at::Tensor uf = as(u, st), df = as(delta, st), Af = as(A, st), Bf = as(Bm, st), Cf = as(Cm, st),
                   Df = as(D, st), zf = as(z, st), bf = as(bias, st);
  TORCH_CHECK(state.is_contiguous(), "selective_scan_step: state must be contiguous");
  at::Tensor out = at::empty(uf.sizes(), at::kFloat);
  cpu::scan_step<float>(uf.size(0), uf.size(1), Af.size(1), mptr<float>(state), ptr<float>(uf), ptr<float>(df),
                        ptr<float>(Af), ptr<float>(Bf), ptr<float>(Cf), ptr<float>(Df), ptr<float>(zf),
                        ptr<float>(bf), softplus, mptr<float>(out));
  return out.to(u.scalar_type());
}

at::Tensor causal_conv1d_fast(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, bool silu) {
  if (!any_requires_grad({x, w, bias})) {
    const at::ScalarType st = compute_type(x);
    return conv_run(as(x, st), as(w, st), as(bias, st), silu).to(x.scalar_type());
  }
  return ConvFunction::apply(x, w, placeholder(bias), silu)[0];
}

at::Tensor causal_conv1d_step_fast(at::Tensor& conv_state, const at::Tensor& x, const at::Tensor& w,
                                   const at::Tensor& bias, bool silu) {
  c10::NoGradGuard no_grad;
  TORCH_CHECK(conv_state.is_contiguous() && conv_state.scalar_type() == at::kFloat,
              "causal_conv1d_step: the fast path needs a contiguous float32 conv_state");
  const at::Tensor xf = as(x, at::kFloat), wf = as(w, at::kFloat), bf = as(bias, at::kFloat);
  at::Tensor out = at::empty(xf.sizes(), at::kFloat);
  cpu::conv_step<float>(xf.size(0), xf.size(1), wf.size(1), mptr<float>(conv_state), ptr<float>(xf), ptr<float>(wf),
                        ptr<float>(bf), silu, mptr<float>(out));
  return out.to(x.scalar_type());
}

}  // namespace pmamba::kernels::detail
