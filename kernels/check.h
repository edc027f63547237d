// Argument checks shared by the kernel entry points, so every backend sees the same
// preconditions in the same order (type, shape relations, device).
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace pmamba::kernels::detail {

inline std::string shape_str(const at::Tensor& t) {
  if (!t.defined()) return "undefined";
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

// Throws c10::Error "<op>: <name> must have shape [..] but has [..]".
inline void check_shape(const char* op, const char* name, const at::Tensor& t,
                        at::IntArrayRef expected) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is required");
  TORCH_CHECK(t.sizes() == expected, op, ": ", name, " must have shape ", expected,
              " but has ", t.sizes());
}

inline void check_optional_shape(const char* op, const char* name, const at::Tensor& t,
                                 at::IntArrayRef expected) {
  if (t.defined()) check_shape(op, name, t, expected);
}

inline void check_floating(const char* op, const char* name, const at::Tensor& t) {
  if (!t.defined()) return;
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble ||
                  t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf,
              op, ": ", name, " must be a floating tensor but is ", t.scalar_type());
}

inline void check_same_device(const char* op, const char* name, const at::Tensor& t,
                              const at::Tensor& ref) {
  if (!t.defined()) return;
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(),
              " but u is on ", ref.device());
}

}  // namespace pmamba::kernels::detail
