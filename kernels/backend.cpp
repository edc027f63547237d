#include "kernels/backend.h"

#include <atomic>
#include <stdexcept>

namespace pmamba::kernels {
namespace {
std::atomic<Backend> g_default{Backend::kAuto};
}

void set_default_backend(Backend backend) { g_default.store(backend); }
Backend default_backend() { return g_default.load(); }

Backend parse_backend(const std::string& name) {
  if (name == "auto") return Backend::kAuto;
  if (name == "reference" || name == "ref") return Backend::kReference;
  if (name == "fast") return Backend::kFast;
  throw std::invalid_argument("unknown kernel backend '" + name +
                              "' (expected auto, reference or fast)");
}

const char* backend_name(Backend backend) {
  switch (backend) {
    case Backend::kAuto: return "auto";
    case Backend::kReference: return "reference";
    case Backend::kFast: return "fast";
  }
  return "?";
}

}  // namespace pmamba::kernels
