#include <c10/core/GradMode.h>
#include "kernels/causal_conv1d.h"

#include <ATen/ATen.h>

#include "kernels/check.h"
#include "kernels/fast.h"
#ifdef PMAMBA_WITH_CUDA
#include "kernels/cuda_dispatch.h"
#endif

namespace pmamba::kernels {

namespace detail {

at::Tensor causal_conv1d_ref(const at::Tensor& x, const at::Tensor& weight,
                             const at::Tensor& bias, bool silu) {
  const int64_t dim = x.size(1), len = x.size(2), width = weight.size(1);
  // Depthwise conv with K-1 zeros of left context: pad both sides, keep the first L outputs.
  at::Tensor out = at::conv1d(x, weight.unsqueeze(1), bias, /*stride=*/{1},
                              /*padding=*/{width - 1}, /*dilation=*/{1}, /*groups=*/dim);
  out = out.narrow(2, 0, len);  // (B, D, L)
  return silu ? at::silu(out) : out;
}

}  // namespace detail

namespace {

void check_conv_args(const char* op, const at::Tensor& x, const at::Tensor& weight,
                     const at::Tensor& bias) {
  TORCH_CHECK(weight.defined() && weight.dim() == 2, op,
              ": weight must be (D, K) but has shape ", detail::shape_str(weight));
  const int64_t dim = weight.size(0);
  TORCH_CHECK(weight.size(1) >= 1, op, ": kernel width must be >= 1");
  TORCH_CHECK(x.size(1) == dim, op, ": x has ", x.size(1), " channels but weight has ", dim);
  detail::check_optional_shape(op, "bias", bias, {dim});
  detail::check_floating(op, "x", x);
  detail::check_floating(op, "weight", weight);
  detail::check_same_device(op, "weight", weight, x);
  detail::check_same_device(op, "bias", bias, x);
}

}  // namespace

at::Tensor causal_conv1d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                         bool silu, Backend backend) {
  constexpr const char* op = "causal_conv1d";
  TORCH_CHECK(x.defined() && x.dim() == 3, op, ": x must be (B, D, L) but has shape ",
              detail::shape_str(x));
  TORCH_CHECK(x.size(2) >= 1, op, ": sequence length must be >= 1 but is ", x.size(2));
  check_conv_args(op, x, weight, bias);
#ifdef PMAMBA_WITH_CUDA
  if (x.is_cuda() && backend != Backend::kReference && detail::cuda_supports(x)) {
    return detail::causal_conv1d_cuda(x, weight, bias, silu);
  }
#endif
  if (x.is_cuda()) return detail::causal_conv1d_ref(x, weight, bias, silu);
  Backend b = backend == Backend::kAuto ? default_backend() : backend;
  if (b == Backend::kAuto) b = detail::fast_cpu_supports(x) ? Backend::kFast : Backend::kReference;
  TORCH_CHECK(b != Backend::kFast || detail::fast_cpu_supports(x),
              "causal_conv1d: the fast path needs CPU float32/bfloat16/float16 tensors");
  if (b == Backend::kFast) return detail::causal_conv1d_fast(x, weight, bias, silu);
  return detail::causal_conv1d_ref(x, weight, bias, silu);
}

at::Tensor causal_conv1d_step(at::Tensor& conv_state, const at::Tensor& x,
                              const at::Tensor& weight, const at::Tensor& bias, bool silu) {
  constexpr const char* op = "causal_conv1d_step";
  TORCH_CHECK(x.defined() && x.dim() == 2, op, ": x must be (B, D) but has shape ",
              detail::shape_str(x));
  check_conv_args(op, x, weight, bias);
  detail::check_shape(op, "conv_state", conv_state, {x.size(0), x.size(1), weight.size(1)});

  Backend b = default_backend();
  if (b == Backend::kAuto) b = detail::fast_cpu_supports(x) ? Backend::kFast : Backend::kReference;
  if (!x.is_cuda() && b == Backend::kFast && conv_state.is_contiguous() && conv_state.scalar_type() == at::kFloat) {
    return detail::causal_conv1d_step_fast(conv_state, x, weight, bias, silu);
  }
  c10::NoGradGuard no_grad;
  const int64_t width = weight.size(1);
  if (width > 1) {
    conv_state.narrow(2, 0, width - 1).copy_(conv_state.narrow(2, 1, width - 1).clone());
  }
  conv_state.select(2, width - 1).copy_(x);
  at::Tensor out = (conv_state * weight.unsqueeze(0)).sum(-1);  // (B, D)
  if (bias.defined()) out = out + bias.unsqueeze(0);
  return silu ? at::silu(out) : out;
}

}  // namespace pmamba::kernels
