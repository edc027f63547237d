// Reference selective scan made of plain torch ops (ground truth for every fast path).
// It materialises exp(delta * A) and delta * B * u as (B, D, L, N), like
// state-spaces/mamba's selective_scan_ref, so it is slow and memory-hungry by design.
#include <ATen/ATen.h>

#include <vector>

#include "kernels/selective_scan.h"

namespace pmamba::kernels::detail {

// float32 math, or float64 when the inputs are float64 (a ground truth for tests).
at::ScalarType math_type(const at::Tensor& t) { return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor scan_delta(const at::Tensor& delta, const at::Tensor& delta_bias, bool softplus) {
  const at::ScalarType mt = math_type(delta);
  at::Tensor dt = delta.to(mt);  // (B, D, L)
  if (delta_bias.defined()) dt = dt + delta_bias.to(mt).view({1, -1, 1});
  if (softplus) dt = at::softplus(dt, /*beta=*/1, /*threshold=*/20);
  return dt;
}

ScanOutput selective_scan_ref(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                              const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D_skip,
                              const at::Tensor& z, const at::Tensor& delta_bias,
                              bool delta_softplus, bool return_last_state) {
  const auto in_dtype = u.scalar_type();
  const at::ScalarType mt = math_type(u);
  const at::Tensor uf = u.to(mt);                                   // (B, D, L)
  const at::Tensor dt = scan_delta(delta.to(mt), delta_bias, delta_softplus);  // (B, D, L)
  const at::Tensor Af = A.to(mt);                                   // (D, N)
  const at::Tensor Bt = Bm.to(mt).transpose(1, 2).unsqueeze(1);     // (B, 1, L, N)
  const at::Tensor Ct = Cm.to(mt).transpose(1, 2);                  // (B, L, N)

  const at::Tensor dA = at::exp(dt.unsqueeze(-1) * Af.unsqueeze(1));  // (B, D, L, N)
  const at::Tensor dBu = dt.unsqueeze(-1) * Bt * uf.unsqueeze(-1);   // (B, D, L, N)

  const int64_t L = u.size(2);
  at::Tensor h = at::zeros({u.size(0), u.size(1), A.size(1)}, uf.options());  // (B, D, N)
  // unbind once: its backward stacks the per-step gradients, where L separate selects would
  // each allocate a full (B, D, L, N) gradient.
  const std::vector<at::Tensor> dA_t = dA.unbind(2), dBu_t = dBu.unbind(2), C_t = Ct.unbind(1);
  std::vector<at::Tensor> ys;
  ys.reserve(L);
  for (int64_t t = 0; t < L; ++t) {
    h = dA_t[t] * h + dBu_t[t];
    ys.push_back((h * C_t[t].unsqueeze(1)).sum(-1));  // (B, D)
  }
  at::Tensor out = at::stack(ys, 2);  // (B, D, L)
  if (D_skip.defined()) out = out + uf * D_skip.to(mt).view({1, -1, 1});
  if (z.defined()) out = out * at::silu(z.to(mt));
  ScanOutput result;
  result.out = out.to(in_dtype);
  if (return_last_state) result.last_state = h;
  return result;
}

}  // namespace pmamba::kernels::detail
