// CUDA paths of the kernel entry points (built with -DPMAMBA_WITH_CUDA=ON against a CUDA
// LibTorch): tensors in, raw pointers to the launchers of kernels/cuda/, autograd Functions out.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/csrc/autograd/custom_function.h>

#include "kernels/cuda/launch.h"
#include "kernels/cuda_dispatch.h"

namespace pmamba::kernels::detail {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

namespace {

cuda::DType dtype_of(const at::Tensor& t) {
  return t.scalar_type() == at::kBFloat16 ? cuda::DType::kBFloat16 : cuda::DType::kFloat32;
}
at::ScalarType storage(const at::Tensor& t) { return t.scalar_type() == at::kBFloat16 ? at::kBFloat16 : at::kFloat; }
at::Tensor as(const at::Tensor& t, at::ScalarType st) { return t.defined() && t.numel() > 0 ? t.to(st).contiguous() : at::Tensor(); }
const float* fptr(const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }
const void* vptr(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }
void* stream() { return at::cuda::getCurrentCUDAStream().stream(); }
void check(int code, const char* what) { TORCH_CHECK(code == 0, what, " failed: ", cuda::error_string(code)); }
at::Tensor placeholder(const at::Tensor& t, const at::Tensor& like) {
  return t.defined() ? t : at::empty({0}, like.options());
}

struct Prepared {
  at::Tensor u, delta, Bt, Ct, z, A, D, bias;
  cuda::ScanParams p{};
};

Prepared prepare(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bm,
                 const at::Tensor& Cm, const at::Tensor& D, const at::Tensor& z, const at::Tensor& bias, bool softplus) {
  Prepared r;
  const at::ScalarType st = storage(u);
  r.u = as(u, st);
  r.delta = as(delta, st);
  r.Bt = Bm.to(st).transpose(1, 2).contiguous();
  r.Ct = Cm.to(st).transpose(1, 2).contiguous();
  r.z = as(z, st);
  r.A = as(A, at::kFloat);
  r.D = as(D, at::kFloat);
  r.bias = as(bias, at::kFloat);
  r.p = cuda::ScanParams{u.size(0), u.size(1), u.size(2), A.size(1), dtype_of(r.u), vptr(r.u), vptr(r.delta),
                         vptr(r.Bt), vptr(r.Ct), vptr(r.z), fptr(r.A), fptr(r.D), fptr(r.bias), softplus,
                         nullptr, nullptr, nullptr};
  return r;
}

class ScanCuda : public torch::autograd::Function<ScanCuda> {
 public:
  static tensor_list forward(AutogradContext* ctx, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                             const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D, const at::Tensor& z,
                             const at::Tensor& bias, bool softplus, bool want_last) {
    Prepared r = prepare(u, delta, A, Bm, Cm, D, z, bias, softplus);
    const int64_t chunks = (u.size(2) + cuda::kChunk - 1) / cuda::kChunk;
    at::Tensor out = at::empty_like(r.u);
    at::Tensor last = at::empty({want_last ? u.size(0) : 0, u.size(1), A.size(1)}, u.options().dtype(at::kFloat));
    at::Tensor ckpt = at::empty({u.size(0), u.size(1), chunks, A.size(1)}, u.options().dtype(at::kFloat));
    r.p.out = out.data_ptr();
    r.p.last_state = want_last ? last.data_ptr<float>() : nullptr;
    r.p.ckpt = ckpt.data_ptr<float>();
    check(cuda::scan_forward(r.p, stream()), "selective_scan (CUDA)");
    ctx->save_for_backward({r.u, r.delta, r.Bt, r.Ct, placeholder(r.z, r.u), r.A, placeholder(r.D, r.A),
                            placeholder(r.bias, r.A), ckpt});
    ctx->saved_data["softplus"] = softplus;
    ctx->mark_non_differentiable({last});
    return {out.to(u.scalar_type()), last};
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto s = ctx->get_saved_variables();
    auto opt = [](const at::Tensor& t) { return t.numel() > 0 ? t : at::Tensor(); };
    const at::Tensor u = s[0], delta = s[1], Bt = s[2], Ct = s[3], z = opt(s[4]), A = s[5], D = opt(s[6]),
                     bias = opt(s[7]), ckpt = s[8];
    cuda::ScanGradParams g{};
    g.fwd = cuda::ScanParams{u.size(0), u.size(1), u.size(2), A.size(1), dtype_of(u), vptr(u), vptr(delta),
                             vptr(Bt), vptr(Ct), vptr(z), fptr(A), fptr(D), fptr(bias),
                             ctx->saved_data["softplus"].toBool(), nullptr, nullptr, ckpt.data_ptr<float>()};
    const at::Tensor dout = grads[0].to(u.scalar_type()).contiguous();
    at::Tensor du = at::empty_like(u), ddelta = at::empty_like(u), dz = z.defined() ? at::empty_like(u) : at::Tensor();
    const auto f32 = u.options().dtype(at::kFloat);
    at::Tensor dA = at::empty(A.sizes(), f32), dBt = at::empty(Bt.sizes(), f32), dCt = at::empty(Ct.sizes(), f32);
    at::Tensor dD = at::empty({u.size(1)}, f32), dbias = at::empty({u.size(1)}, f32);
    g.dout = dout.data_ptr();
    g.du = du.data_ptr();
    g.ddelta = ddelta.data_ptr();
    g.dz = z.defined() ? dz.data_ptr() : nullptr;
    g.dA = dA.data_ptr<float>();
    g.dBt = dBt.data_ptr<float>();
    g.dCt = dCt.data_ptr<float>();
    g.dD = dD.data_ptr<float>();
    g.dbias = dbias.data_ptr<float>();
    check(cuda::scan_backward(g, stream()), "selective_scan backward (CUDA)");
    return {du, ddelta, dA, dBt.transpose(1, 2), dCt.transpose(1, 2), D.defined() ? dD : at::Tensor(),
            z.defined() ? dz : at::Tensor(), bias.defined() ? dbias : at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class ConvCuda : public torch::autograd::Function<ConvCuda> {
 public:
  static tensor_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                             bool silu) {
    const at::Tensor xs = as(x, storage(x)), wf = as(w, at::kFloat), bf = as(bias, at::kFloat);
    at::Tensor out = at::empty_like(xs);
    cuda::ConvParams p{x.size(0), x.size(1), x.size(2), w.size(1), dtype_of(xs), xs.data_ptr(), fptr(wf), fptr(bf),
                       silu, out.data_ptr()};
    check(cuda::conv_forward(p, stream()), "causal_conv1d (CUDA)");
    ctx->save_for_backward({xs, wf, placeholder(bf, wf)});
    ctx->saved_data["silu"] = silu;
    return {out.to(x.scalar_type())};
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto s = ctx->get_saved_variables();
    const at::Tensor xs = s[0], wf = s[1], bf = s[2].numel() > 0 ? s[2] : at::Tensor();
    const at::Tensor dout = grads[0].to(xs.scalar_type()).contiguous();
    at::Tensor dx = at::empty_like(xs), dw = at::empty_like(wf), db = at::empty({wf.size(0)}, wf.options());
    cuda::ConvGradParams g{};
    g.fwd = cuda::ConvParams{xs.size(0), xs.size(1), xs.size(2), wf.size(1), dtype_of(xs), xs.data_ptr(), fptr(wf),
                             fptr(bf), ctx->saved_data["silu"].toBool(), nullptr};
    g.dout = dout.data_ptr();
    g.dx = dx.data_ptr();
    g.dw = dw.data_ptr<float>();
    g.dbias = bf.defined() ? db.data_ptr<float>() : nullptr;
    check(cuda::conv_backward(g, stream()), "causal_conv1d backward (CUDA)");
    return {dx, dw, bf.defined() ? db : at::Tensor(), at::Tensor()};
  }
};

}  // namespace

bool cuda_supports(const at::Tensor& t) {
  return t.is_cuda() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16);
}

ScanOutput selective_scan_cuda(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bm,
                               const at::Tensor& Cm, const at::Tensor& D, const at::Tensor& z, const at::Tensor& bias,
                               bool softplus, bool want_last) {
  TORCH_CHECK(A.size(1) <= 64, "selective_scan (CUDA): d_state must be <= 64, got ", A.size(1));
  const tensor_list outs = ScanCuda::apply(u, delta, A, Bm, Cm, placeholder(D, A), placeholder(z, u),
                                           placeholder(bias, A), softplus, want_last);
  ScanOutput r;
  r.out = outs[0];
  if (want_last) r.last_state = outs[1];
  return r;
}

at::Tensor causal_conv1d_cuda(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, bool silu) {
  return ConvCuda::apply(x, w, placeholder(bias, w), silu)[0];
}

}  // namespace pmamba::kernels::detail
