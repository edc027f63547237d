// Internal helpers shared by the fused kernels' autograd wrappers (fast.cpp, ssd_fast_autograd.cpp):
// the compute dtype, contiguous copies, raw pointers of optional tensors, and the empty-tensor
// stand-in for absent inputs.
#pragma once

#include <ATen/ATen.h>

namespace pmamba::kernels::detail {

// The kernels compute in float32, or in float64 when the inputs are float64 (gradient checks);
// 16-bit inputs are widened to float32.
inline at::ScalarType compute_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}
inline at::Tensor as(const at::Tensor& t, at::ScalarType st) { return t.defined() ? t.to(st).contiguous() : t; }

template <typename T>
const T* ptr(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}
template <typename T>
T* mptr(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// Absent optional inputs cross the autograd Function boundary as empty tensors: LibTorch 1.13's
// custom functions cannot take undefined ones.
inline at::Tensor placeholder(const at::Tensor& t) { return t.defined() ? t : at::empty({0}); }
inline at::Tensor absent_if_empty(const at::Tensor& t) {
  return t.defined() && t.numel() > 0 ? t : at::Tensor();
}

}  // namespace pmamba::kernels::detail
