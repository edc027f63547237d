#include "src/ckpt/fault.h"

#include <csignal>
#include <cstdlib>
#include <unistd.h>

namespace pmamba::ckpt {

namespace {

// True when PMAMBA_FAULT is `point` or `point@index` (any index matches a spec without one).
bool matches(const char* point, int index) {
  const char* env = std::getenv("PMAMBA_FAULT");
  if (!env || !*env) return false;
  const std::string spec = env;
  const size_t at = spec.find('@');
  if (spec.substr(0, at) != point) return false;
  return at == std::string::npos || index < 0 || std::atoi(spec.c_str() + at + 1) == index;
}

}  // namespace

void fault_point(const char* point, int stage) {
  if (!matches(point, stage)) return;
  ::kill(::getpid(), SIGKILL);
  ::pause();
}

bool fault_injected(const char* point, int index) { return matches(point, index); }

}  // namespace pmamba::ckpt
