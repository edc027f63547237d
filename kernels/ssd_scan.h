// The Mamba-2 SSD scan (state-space dual: a selective scan whose A is one scalar per head) and
// its one-token step form.
//
// Shapes (token-major, as state-spaces/mamba's mamba_chunk_scan_combined):
//   B = batch, L = sequence length, H = heads, P = headdim, G = groups (of B/C), N = d_state.
//   x: (B, L, H, P)   dt: (B, L, H) fp32   A: (H) fp32   Bm, Cm: (B, L, G, N)
//   D_skip: (H) or (H, P) fp32, or undefined.   Head h reads group g = h / (H / G); H % G == 0.
// Math, per (b, h), state S_h (P x N) starting at 0:
//   S_h(t) = exp(dt_h(t) A_h) S_h(t-1) + dt_h(t) x_h(t) ⊗ B_g(t)
//   y_h(t) = S_h(t) C_g(t) + D ∘ x_h(t)
// dt is the final time step: the caller has applied softplus(dt_raw + dt_bias) and any clamp.
// A is negative (dt·A <= 0: the fused path's exp assumes it). All math runs in fp32 (float64
// when x is float64: the ground truth for gradient checks); `out` has x's dtype.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "kernels/backend.h"

namespace pmamba::kernels {

struct SsdOptions {
  int64_t chunk_size = 256;  // the chunked reference's block length (mamba2 default); >= 1
  bool return_last_state = false;
  Backend backend = Backend::kAuto;
};

struct SsdOutput {
  at::Tensor out;         // (B, L, H, P), dtype of x
  at::Tensor last_state;  // (B, H, P, N) fp32 (float64 for float64 x), only with return_last_state
};

/// Full-sequence SSD scan. Checks shapes, dtypes and devices and throws c10::Error naming the
/// offending argument. Differentiable with respect to x, dt, A, Bm, Cm and D_skip (and through
/// last_state). Backend kReference runs the chunked torch-ops form; kFast / kAuto on CPU run the
/// fused kernel; CUDA tensors run the chunked torch-ops form (there is no CUDA SSD kernel yet).
SsdOutput ssd_scan(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& Bm,
                   const at::Tensor& Cm, const at::Tensor& D_skip, const SsdOptions& options = {});

/// One recurrent step for generation. `state` (B, H, P, N) fp32 is updated in place; x is
/// (B, H, P), dt (B, H), Bm and Cm (B, G, N). Returns y (B, H, P) in x's dtype. On CPU (unless
/// the default backend is kReference) it runs the fused kernel's arithmetic, so stepping token
/// by token reproduces ssd_scan's fused output and last_state bitwise. Not differentiable.
at::Tensor ssd_scan_step(at::Tensor& state, const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                         const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D_skip);

namespace detail {
// The implementations behind ssd_scan (arguments as there, already checked). Exposed for tests
// and benchmarks.

/// Torch ops, one step per token (autograd-differentiable): the ground truth.
SsdOutput ssd_scan_recurrent_ref(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                                 const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D_skip,
                                 bool return_last_state);

/// Torch ops, the chunked SSD form of ssd_minimal_discrete (intra-chunk attention-like term from
/// a masked exp of segment sums, chunk states, inter-chunk state passing, off-diagonal term).
/// Pads L up to a multiple of chunk_size; cumulative sums in fp32. Autograd-differentiable.
SsdOutput ssd_scan_chunked_ref(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                               const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D_skip,
                               int64_t chunk_size, bool return_last_state);

/// The fused CPU kernel (cpu/ssd_fast.h) behind a torch::autograd::Function with a fused
/// backward. CPU float32 / bfloat16 / float16 compute in fp32, float64 in float64.
SsdOutput ssd_scan_fast(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& Bm,
                        const at::Tensor& Cm, const at::Tensor& D_skip, bool return_last_state);

/// ssd_scan_step on the fused CPU kernel; state must be contiguous fp32.
at::Tensor ssd_scan_step_fast(at::Tensor& state, const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                              const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D_skip);
}  // namespace detail

}  // namespace pmamba::kernels
