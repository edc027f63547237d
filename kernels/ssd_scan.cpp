#include "kernels/ssd_scan.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <vector>

#include "kernels/check.h"
#include "kernels/fast.h"

namespace pmamba::kernels {

namespace {

// dt, A and D are fp32 in the model; float64 is accepted with float64 x (gradient checks).
void check_param_dtype(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  if (!t.defined()) return;
  TORCH_CHECK(t.scalar_type() == at::kFloat || (t.scalar_type() == at::kDouble && x.scalar_type() == at::kDouble),
              op, ": ", name, " must be float32 (or float64 with float64 x) but is ", t.scalar_type());
}

// (check.h's device check names the reference tensor u, the Mamba-1 input.)
void check_device(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  if (!t.defined()) return;
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device());
}

// Checks everything but the leading (B, L) or (B) dimensions, which the callers check: A, the
// group count, D, dtypes and devices. Returns N.
int64_t check_common(const char* op, const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                     const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D, int64_t H, int64_t P) {
  TORCH_CHECK(H >= 1 && P >= 1, op, ": x must have at least one head and one channel per head but has shape ",
              detail::shape_str(x));
  detail::check_shape(op, "A", A, {H});
  const int64_t G = Bm.size(-2), N = Bm.size(-1);
  TORCH_CHECK(G >= 1 && N >= 1, op, ": B must have at least one group and one state but has shape ",
              detail::shape_str(Bm));
  TORCH_CHECK(H % G == 0, op, ": the head count H = ", H, " must be a multiple of the group count G = ", G,
              " (B has shape ", detail::shape_str(Bm), ")");
  TORCH_CHECK(Cm.defined() && Cm.sizes() == Bm.sizes(), op, ": C must have the shape of B, ", Bm.sizes(),
              ", but has ", detail::shape_str(Cm));
  if (D.defined()) {
    TORCH_CHECK((D.dim() == 1 && D.size(0) == H) || (D.dim() == 2 && D.size(0) == H && D.size(1) == P), op,
                ": D must have shape [", H, "] or [", H, ", ", P, "] but has ", detail::shape_str(D));
  }
  for (const auto& [name, t] :
       {std::pair<const char*, const at::Tensor&>{"x", x}, {"B", Bm}, {"C", Cm}}) {
    detail::check_floating(op, name, t);
  }
  check_param_dtype(op, "dt", dt, x);
  check_param_dtype(op, "A", A, x);
  check_param_dtype(op, "D", D, x);
  for (const auto& [name, t] :
       {std::pair<const char*, const at::Tensor&>{"dt", dt}, {"A", A}, {"B", Bm}, {"C", Cm}, {"D", D}}) {
    check_device(op, name, t, x);
  }
  return N;
}

void check_ssd_args(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& Bm,
                    const at::Tensor& Cm, const at::Tensor& D, const SsdOptions& options) {
  constexpr const char* op = "ssd_scan";
  TORCH_CHECK(x.defined() && x.dim() == 4, op, ": x must be (B, L, H, P) but has shape ", detail::shape_str(x));
  const int64_t batch = x.size(0), L = x.size(1), H = x.size(2), P = x.size(3);
  TORCH_CHECK(L >= 1, op, ": sequence length must be >= 1 but is ", L);
  detail::check_shape(op, "dt", dt, {batch, L, H});
  TORCH_CHECK(Bm.defined() && Bm.dim() == 4 && Bm.size(0) == batch && Bm.size(1) == L, op,
              ": B must be (batch, L, G, N) with batch = ", batch, ", L = ", L, " but has shape ", detail::shape_str(Bm));
  check_common(op, x, dt, A, Bm, Cm, D, H, P);
  TORCH_CHECK(options.chunk_size >= 1, op, ": chunk_size must be >= 1 but is ", options.chunk_size);
}

}  // namespace

SsdOutput ssd_scan(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& Bm,
                   const at::Tensor& Cm, const at::Tensor& D_skip, const SsdOptions& options) {
  check_ssd_args(x, dt, A, Bm, Cm, D_skip, options);
  if (x.is_cuda()) {  // no CUDA SSD kernel: the chunked torch-ops form runs on the device
    return detail::ssd_scan_chunked_ref(x, dt, A, Bm, Cm, D_skip, options.chunk_size, options.return_last_state);
  }
  Backend b = options.backend == Backend::kAuto ? default_backend() : options.backend;
  if (b == Backend::kAuto) b = detail::fast_cpu_supports(x) ? Backend::kFast : Backend::kReference;
  TORCH_CHECK(b != Backend::kFast || detail::fast_cpu_supports(x),
              "ssd_scan: the fast path needs CPU float32/bfloat16/float16/float64 tensors, got ", x.scalar_type(),
              " on ", x.device());
  if (b == Backend::kFast) return detail::ssd_scan_fast(x, dt, A, Bm, Cm, D_skip, options.return_last_state);
  return detail::ssd_scan_chunked_ref(x, dt, A, Bm, Cm, D_skip, options.chunk_size, options.return_last_state);
}

at::Tensor ssd_scan_step(at::Tensor& state, const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                         const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& D_skip) {
  constexpr const char* op = "ssd_scan_step";
  TORCH_CHECK(x.defined() && x.dim() == 3, op, ": x must be (B, H, P) but has shape ", detail::shape_str(x));
  const int64_t batch = x.size(0), H = x.size(1), P = x.size(2);
  detail::check_shape(op, "dt", dt, {batch, H});
  TORCH_CHECK(Bm.defined() && Bm.dim() == 3 && Bm.size(0) == batch, op, ": B must be (batch, G, N) with batch = ", batch,
              " but has shape ", detail::shape_str(Bm));
  const int64_t N = check_common(op, x, dt, A, Bm, Cm, D_skip, H, P);
  detail::check_shape(op, "state", state, {batch, H, P, N});
  TORCH_CHECK(state.scalar_type() == at::kFloat, op, ": state must be float32 but is ", state.scalar_type());
  check_device(op, "state", state, x);

  const Backend b = default_backend();
  if (!x.is_cuda() && b != Backend::kReference && detail::fast_cpu_supports(x) && state.is_contiguous()) {
    return detail::ssd_scan_step_fast(state, x, dt, A, Bm, Cm, D_skip);
  }
  c10::NoGradGuard no_grad;
  const int64_t G = Bm.size(1);
  const at::Tensor group_of = at::arange(H, at::TensorOptions().dtype(at::kLong).device(x.device())).div(H / G, "floor");
  const at::Tensor xf = x.to(at::kFloat);                                   // (B, H, P)
  const at::Tensor dtf = dt.to(at::kFloat);                                 // (B, H)
  const at::Tensor dA = at::exp(dtf * A.to(at::kFloat));                    // (B, H)
  const at::Tensor Bh = Bm.to(at::kFloat).index_select(1, group_of);        // (B, H, N)
  const at::Tensor Ch = Cm.to(at::kFloat).index_select(1, group_of);        // (B, H, N)
  state.copy_(dA.view({batch, H, 1, 1}) * state + (dtf.unsqueeze(-1) * xf).unsqueeze(-1) * Bh.unsqueeze(2));
  at::Tensor y = (state * Ch.unsqueeze(2)).sum(-1);                          // (B, H, P)
  if (D_skip.defined()) y = y + xf * (D_skip.dim() == 1 ? D_skip.view({1, H, 1}) : D_skip.unsqueeze(0)).to(at::kFloat);
  return y.to(x.scalar_type());
}

}  // namespace pmamba::kernels
