// Reference SSD scans made of plain torch ops: the recurrence (ground truth) and the chunked
// form the Mamba-2 kernels compute (state-spaces/mamba ssd_minimal.py::ssd_minimal_discrete,
// with the padding and fp32 cumulative sums of ssd_chunk_scan_combined_ref). Both are
// autograd-differentiable and slow by design.
#include <ATen/ATen.h>

#include <limits>
#include <vector>

#include "kernels/ssd_scan.h"

namespace pmamba::kernels::detail {

namespace {

// float32 math, or float64 when x is float64.
at::ScalarType compute_type(const at::Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// Adds D ∘ x to y; D is (H) or (H, P).
at::Tensor add_skip(const at::Tensor& y, const at::Tensor& xf, const at::Tensor& D) {
  if (!D.defined()) return y;
  const at::Tensor Dv = D.dim() == 1 ? D.view({1, 1, -1, 1}) : D.unsqueeze(0).unsqueeze(0);  // (1, 1, H, 1|P)
  return y + xf * Dv.to(xf.scalar_type());
}

// segsum(a)[..., i, j] = a[j+1] + ... + a[i] for j <= i, -inf above the diagonal. Summing the
// masked copies (instead of cs_i - cs_j) avoids cancellation between two long cumulative sums.
at::Tensor segsum(const at::Tensor& a) {
  const int64_t T = a.size(-1);
  const auto bool_opts = at::TensorOptions().dtype(at::kBool).device(a.device());
  const at::Tensor strict = at::ones({T, T}, bool_opts).tril(-1);   // (T, T): j < i
  const at::Tensor lower = at::ones({T, T}, bool_opts).tril(0);     // (T, T): j <= i
  std::vector<int64_t> rep(a.sizes().begin(), a.sizes().end());
  rep.push_back(T);
  const at::Tensor ar = a.unsqueeze(-1).expand(rep).masked_fill(strict.logical_not(), 0);  // (..., T, T)
  return ar.cumsum(-2).masked_fill(lower.logical_not(), -std::numeric_limits<double>::infinity());
}

}  // namespace

SsdOutput ssd_scan_recurrent_ref(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                                 const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D_skip,
                                 bool return_last_state) {
  const at::ScalarType mt = compute_type(x);
  const int64_t batch = x.size(0), L = x.size(1), H = x.size(2), P = x.size(3), G = Bm.size(2), N = Bm.size(3);
  const at::Tensor group_of = at::arange(H, at::TensorOptions().dtype(at::kLong).device(x.device())).div(H / G, "floor");
  const at::Tensor xf = x.to(mt);                                  // (B, L, H, P)
  const at::Tensor dtf = dt.to(mt);                                // (B, L, H)
  const at::Tensor dA = at::exp(dtf * A.to(mt));                   // (B, L, H)
  const at::Tensor Bh = Bm.to(mt).index_select(2, group_of);       // (B, L, H, N)
  const at::Tensor Ch = Cm.to(mt).index_select(2, group_of);       // (B, L, H, N)
  const at::Tensor dtx = dtf.unsqueeze(-1) * xf;                   // (B, L, H, P)

  // unbind once: its backward stacks the per-step gradients, where L selects would each
  // allocate a full-size gradient.
  const std::vector<at::Tensor> dA_t = dA.unbind(1), dtx_t = dtx.unbind(1), B_t = Bh.unbind(1), C_t = Ch.unbind(1);
  at::Tensor S = at::zeros({batch, H, P, N}, xf.options());  // (B, H, P, N)
  std::vector<at::Tensor> ys;
  ys.reserve(L);
  for (int64_t t = 0; t < L; ++t) {
    S = dA_t[t].view({batch, H, 1, 1}) * S + dtx_t[t].unsqueeze(-1) * B_t[t].unsqueeze(2);
    ys.push_back((S * C_t[t].unsqueeze(2)).sum(-1));  // (B, H, P)
  }
  const at::Tensor y = add_skip(at::stack(ys, 1), xf, D_skip);  // (B, L, H, P)
  SsdOutput r;
  r.out = y.to(x.scalar_type());
  if (return_last_state) r.last_state = S;
  return r;
}

SsdOutput ssd_scan_chunked_ref(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                               const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D_skip,
                               int64_t chunk_size, bool return_last_state) {
  const at::ScalarType mt = compute_type(x);
  const int64_t batch = x.size(0), L = x.size(1), H = x.size(2), P = x.size(3), G = Bm.size(2), N = Bm.size(3);
  const int64_t R = H / G, Q = chunk_size, nc = (L + Q - 1) / Q, pad = nc * Q - L;
  // Zero padding is inert: dt = 0 there, so the padded steps neither decay nor add to the state.
  const at::Tensor xf = x.to(mt);                                              // (B, L, H, P)
  const at::Tensor xp = at::constant_pad_nd(xf, {0, 0, 0, 0, 0, pad});         // (B, Lp, H, P)
  const at::Tensor dtp = at::constant_pad_nd(dt.to(mt), {0, 0, 0, pad});       // (B, Lp, H)
  const at::Tensor Bc = at::constant_pad_nd(Bm.to(mt), {0, 0, 0, 0, 0, pad}).view({batch, nc, Q, G, N});  // (b, c, l, g, n)
  const at::Tensor Cc = at::constant_pad_nd(Cm.to(mt), {0, 0, 0, 0, 0, pad}).view({batch, nc, Q, G, N});  // (b, c, l, g, n)
  const at::Tensor X = (xp * dtp.unsqueeze(-1)).view({batch, nc, Q, G, R, P});  // (b, c, l, g, r, p): dt x
  const at::Tensor a = (dtp * A.to(mt)).view({batch, nc, Q, H}).permute({0, 3, 1, 2});  // (b, h, c, l): dt A
  const at::Tensor cs = a.cumsum(-1);                                          // (b, h, c, l)

  // 1. Within each chunk: Y_diag[i] = sum_{j <= i} (C_i · B_j) exp(cs_i - cs_j) X_j.
  const at::Tensor decay_in = at::exp(segsum(a)).view({batch, G, R, nc, Q, Q});      // (b, g, r, c, l, s)
  const at::Tensor CB = at::einsum("bclgn,bcsgn->bgcls", {Cc, Bc});                  // (b, g, c, l, s)
  const at::Tensor Y_diag = at::einsum("bgrcls,bcsgrp->bclgrp", {CB.unsqueeze(2) * decay_in, X});  // (b, c, l, g, r, p)

  // 2. Each chunk's own final state (from a zero start): s_c = sum_j exp(cs_end - cs_j) X_j ⊗ B_j.
  const at::Tensor decay_to_end = at::exp(cs.narrow(-1, Q - 1, 1) - cs);             // (b, h, c, l)
  const at::Tensor X_end = X * decay_to_end.view({batch, G, R, nc, Q}).permute({0, 3, 4, 1, 2}).unsqueeze(-1);  // (b, c, l, g, r, p)
  const at::Tensor chunk_states = at::einsum("bclgn,bclgrp->bcgrpn", {Bc, X_end});   // (b, c, g, r, p, n)

  // 3. Pass states across chunks: S entering chunk z = sum_{c < z} exp(sum of the chunk totals
  //    after c, up to z) s_c (a segsum over the chunk totals, with a zero state in front).
  const at::Tensor states = at::cat({at::zeros_like(chunk_states.narrow(1, 0, 1)), chunk_states}, 1);  // (b, c+1, g, r, p, n)
  const at::Tensor totals = at::constant_pad_nd(cs.select(-1, Q - 1), {1, 0});        // (b, h, c+1)
  const at::Tensor decay_chunk = at::exp(segsum(totals)).view({batch, G, R, nc + 1, nc + 1});  // (b, g, r, z, c)
  const at::Tensor passed = at::einsum("bgrzc,bcgrpn->bzgrpn", {decay_chunk, states});  // (b, c+1, g, r, p, n)

  // 4. The entering state's contribution: Y_off[i] = exp(cs_i) C_i · S_prev.
  const at::Tensor decay_from_start = at::exp(cs).view({batch, G, R, nc, Q}).permute({0, 3, 4, 1, 2}).unsqueeze(-1);  // (b, c, l, g, r, 1)
  const at::Tensor Y_off = at::einsum("bclgn,bcgrpn->bclgrp", {Cc, passed.narrow(1, 0, nc)}) * decay_from_start;  // (b, c, l, g, r, p)

  const at::Tensor y = (Y_diag + Y_off).reshape({batch, nc * Q, H, P}).narrow(1, 0, L);  // (B, L, H, P)
  SsdOutput r;
  r.out = add_skip(y, xf, D_skip).to(x.scalar_type());
  if (return_last_state) r.last_state = passed.select(1, nc).reshape({batch, H, P, N});  // (B, H, P, N)
  return r;
}

}  // namespace pmamba::kernels::detail
