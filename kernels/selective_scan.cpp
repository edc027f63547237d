#include <c10/core/GradMode.h>
#include "kernels/selective_scan.h"

#include <ATen/ATen.h>

#include "kernels/check.h"
#include "kernels/fast.h"
#ifdef PMAMBA_WITH_CUDA
#include "kernels/cuda_dispatch.h"
#endif

namespace pmamba::kernels {

namespace detail {
at::Tensor scan_delta(const at::Tensor& delta, const at::Tensor& delta_bias, bool softplus);
}

namespace {

void check_scan_args(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                     const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D_skip,
                     const at::Tensor& z, const at::Tensor& delta_bias) {
  constexpr const char* op = "selective_scan";
  TORCH_CHECK(u.defined() && u.dim() == 3, op, ": u must be (B, D, L) but has shape ",
              detail::shape_str(u));
  const int64_t batch = u.size(0), dim = u.size(1), len = u.size(2);
  TORCH_CHECK(len >= 1, op, ": sequence length must be >= 1 but is ", len);
  TORCH_CHECK(A.defined() && A.dim() == 2 && A.size(0) == dim, op,
              ": A must be (D, N) with D = ", dim, " but has shape ", detail::shape_str(A));
  const int64_t n = A.size(1);
  TORCH_CHECK(n >= 1, op, ": d_state must be >= 1");
  TORCH_CHECK(A.scalar_type() == at::kFloat || (A.scalar_type() == at::kDouble && u.scalar_type() == at::kDouble), op,
              ": A must be float32 (or float64 with float64 inputs) but is ", A.scalar_type());
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"u", u},
                                {"delta", delta}, {"B", Bm}, {"C", Cm}, {"z", z}}) {
    detail::check_floating(op, name, t);
  }
  detail::check_shape(op, "delta", delta, {batch, dim, len});
  detail::check_shape(op, "B", Bm, {batch, n, len});
  detail::check_shape(op, "C", Cm, {batch, n, len});
  detail::check_optional_shape(op, "D", D_skip, {dim});
  detail::check_optional_shape(op, "z", z, {batch, dim, len});
  detail::check_optional_shape(op, "delta_bias", delta_bias, {dim});
  for (const auto& [name, t] :
       {std::pair<const char*, const at::Tensor&>{"delta", delta}, {"A", A}, {"B", Bm},
        {"C", Cm}, {"D", D_skip}, {"z", z}, {"delta_bias", delta_bias}}) {
    detail::check_same_device(op, name, t, u);
  }
}

Backend resolve(Backend requested, const at::Tensor& u) {
  if (u.is_cuda()) return Backend::kAuto;  // the CUDA kernels (checked by the caller)
  Backend b = requested == Backend::kAuto ? default_backend() : requested;
  if (b == Backend::kAuto) b = detail::fast_cpu_supports(u) ? Backend::kFast : Backend::kReference;
  TORCH_CHECK(b != Backend::kFast || detail::fast_cpu_supports(u),
              "selective_scan: the fast path needs CPU float32/bfloat16/float16 tensors, got ", u.scalar_type(),
              " on ", u.device());
  return b;
}

}  // namespace

ScanOutput selective_scan(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                          const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D_skip,
                          const at::Tensor& z, const at::Tensor& delta_bias,
                          const ScanOptions& options) {
  check_scan_args(u, delta, A, Bm, Cm, D_skip, z, delta_bias);
  if (u.is_cuda()) {
#ifdef PMAMBA_WITH_CUDA
    if (options.backend != Backend::kReference && detail::cuda_supports(u)) {
      return detail::selective_scan_cuda(u, delta, A, Bm, Cm, D_skip, z, delta_bias, options.delta_softplus,
                                         options.return_last_state);
    }
#endif
    return detail::selective_scan_ref(u, delta, A, Bm, Cm, D_skip, z, delta_bias, options.delta_softplus,
                                      options.return_last_state);
  }
  switch (resolve(options.backend, u)) {
    case Backend::kFast:
      return detail::selective_scan_fast(u, delta, A, Bm, Cm, D_skip, z, delta_bias, options.delta_softplus,
                                         options.return_last_state);
    default:
      return detail::selective_scan_ref(u, delta, A, Bm, Cm, D_skip, z, delta_bias,
                                        options.delta_softplus, options.return_last_state);
  }
}

at::Tensor selective_scan_step(at::Tensor& state, const at::Tensor& u, const at::Tensor& delta,
                               const at::Tensor& A, const at::Tensor& Bm, const at::Tensor& Cm,
                               const at::Tensor& D_skip, const at::Tensor& z,
                               const at::Tensor& delta_bias, bool delta_softplus) {
  constexpr const char* op = "selective_scan_step";
  TORCH_CHECK(u.defined() && u.dim() == 2, op, ": u must be (B, D) but has shape ",
              detail::shape_str(u));
  const int64_t batch = u.size(0), dim = u.size(1);
  TORCH_CHECK(A.defined() && A.dim() == 2 && A.size(0) == dim, op,
              ": A must be (D, N) with D = ", dim, " but has shape ", detail::shape_str(A));
  const int64_t n = A.size(1);
  detail::check_shape(op, "state", state, {batch, dim, n});
  TORCH_CHECK(state.scalar_type() == at::kFloat, op, ": state must be float32 but is ",
              state.scalar_type());
  detail::check_shape(op, "delta", delta, {batch, dim});
  detail::check_shape(op, "B", Bm, {batch, n});
  detail::check_shape(op, "C", Cm, {batch, n});
  detail::check_optional_shape(op, "D", D_skip, {dim});
  detail::check_optional_shape(op, "z", z, {batch, dim});
  detail::check_optional_shape(op, "delta_bias", delta_bias, {dim});

  if (!u.is_cuda() && resolve(Backend::kAuto, u) == Backend::kFast && state.is_contiguous()) {
    return detail::selective_scan_step_fast(state, u, delta, A, Bm, Cm, D_skip, z, delta_bias, delta_softplus);
  }
  c10::NoGradGuard no_grad;
  const at::Tensor uf = u.to(at::kFloat);                                          // (B, D)
  const at::Tensor dt = detail::scan_delta(delta.unsqueeze(-1), delta_bias, delta_softplus)
                            .squeeze(-1);                                            // (B, D)
  const at::Tensor dA = at::exp(dt.unsqueeze(-1) * A.unsqueeze(0));                 // (B, D, N)
  const at::Tensor dBu = dt.unsqueeze(-1) * Bm.to(at::kFloat).unsqueeze(1) * uf.unsqueeze(-1);
  state.copy_(dA * state + dBu);
  // y from the fp32 state, rounded only at the end (the vLLM #48578 pitfall).
  at::Tensor y = (state * Cm.to(at::kFloat).unsqueeze(1)).sum(-1);  // (B, D)
  if (D_skip.defined()) y = y + uf * D_skip.to(at::kFloat).unsqueeze(0);
  if (z.defined()) y = y * at::silu(z.to(at::kFloat));
  return y.to(u.scalar_type());
}

}  // namespace pmamba::kernels
