// Which implementation a kernel entry point runs. One process-wide default, so a test or a
// benchmark can pin the reference path while the model code stays unchanged.
#pragma once

#include <string>

namespace pmamba::kernels {

enum class Backend {
  kAuto,       // CUDA for CUDA tensors (when built), else the fast CPU path, else the reference
  kReference,  // plain torch ops: the ground truth, differentiable through autograd
  kFast,       // fused CPU kernels with a custom backward
};

/// Sets the backend used when a call passes Backend::kAuto. Not thread-safe against
/// concurrent kernel calls; set it once at start-up.
void set_default_backend(Backend backend);
Backend default_backend();

/// "auto" | "reference" | "fast"; throws std::invalid_argument on anything else.
Backend parse_backend(const std::string& name);
const char* backend_name(Backend backend);

}  // namespace pmamba::kernels
