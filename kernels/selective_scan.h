// Selective scan (the S6 recurrence of Mamba) and its one-token step form.
//
// Shapes (channel-first, as state-spaces/mamba's selective_scan_ref):
//   B = batch, D = channels (d_inner), L = sequence length, N = d_state.
//   u, delta, z: (B, D, L)   A: (D, N) fp32   Bm, Cm: (B, N, L)   D_skip, delta_bias: (D) fp32
// Math, per (b, d, n), state h starting at 0:
//   dt = softplus(delta + delta_bias)      (softplus only when delta_softplus; threshold 20)
//   h_t = exp(dt_t * A) * h_{t-1} + dt_t * Bm_t * u_t
//   y_t = sum_n Cm_t * h_t + D_skip * u_t;   out_t = y_t * silu(z_t)   (when z is given)
// All math runs in fp32; `out` has u's dtype.
#pragma once

#include <ATen/core/Tensor.h>

#include "kernels/backend.h"

namespace pmamba::kernels {

struct ScanOptions {
  bool delta_softplus = true;
  bool return_last_state = false;
  Backend backend = Backend::kAuto;
};

struct ScanOutput {
  at::Tensor out;         // (B, D, L), dtype of u
  at::Tensor last_state;  // (B, D, N) fp32, defined only with return_last_state
};

/// Full-sequence selective scan. Checks shapes, dtypes and devices and throws c10::Error
/// naming the offending argument. Differentiable with respect to every tensor input.
/// D_skip, z and delta_bias may be undefined tensors (treated as absent).
ScanOutput selective_scan(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                          const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D_skip,
                          const at::Tensor& z, const at::Tensor& delta_bias,
                          const ScanOptions& options = {});

/// One recurrent step for generation. `state` (B, D, N) fp32 is updated in place; u, delta, z
/// are (B, D); Bm, Cm are (B, N). Returns out (B, D) in u's dtype. Not differentiable.
at::Tensor selective_scan_step(at::Tensor& state, const at::Tensor& u, const at::Tensor& delta,
                               const at::Tensor& A, const at::Tensor& Bm, const at::Tensor& Cm,
                               const at::Tensor& D_skip, const at::Tensor& z,
                               const at::Tensor& delta_bias, bool delta_softplus = true);

namespace detail {
// The reference path (torch ops); entry points dispatch here. Exposed for tests and benchmarks.
ScanOutput selective_scan_ref(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                              const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D_skip,
                              const at::Tensor& z, const at::Tensor& delta_bias,
                              bool delta_softplus, bool return_last_state);
}  // namespace detail

}  // namespace pmamba::kernels
