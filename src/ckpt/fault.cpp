#include "src/ckpt/fault.h"

#include <csignal>
#include <cstdlib>
#include <unistd.h>

namespace pmamba::ckpt {

void fault_point(const char* point, int stage) {
  const char* env = std::getenv("PMAMBA_FAULT");
  if (!env || !*env) return;
  const std::string spec = env;
  const size_t at = spec.find('@');
  const std::string name = spec.substr(0, at);
  if (name != point) return;
  if (at != std::string::npos && stage >= 0 && std::atoi(spec.c_str() + at + 1) != stage) return;
  ::kill(::getpid(), SIGKILL);
  ::pause();
}

}  // namespace pmamba::ckpt
