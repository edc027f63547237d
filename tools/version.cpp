// The only file that includes the generated pmamba_version.h: a new commit, or a tree that
// turns dirty or clean, recompiles this file alone and relinks the tools.
#include "tools/version.h"

#include <torch/version.h>

#include "pmamba_version.h"

// PMAMBA_TORCH_CUDA: set by tools/CMakeLists.txt from Torch's CMake package (CAFFE2_USE_CUDA,
// CUDA_VERSION); LibTorch's headers have no macro for it.
#ifndef PMAMBA_TORCH_CUDA
#define PMAMBA_TORCH_CUDA "none"
#endif

namespace pmamba::tools {

const char* pmamba_version() { return PMAMBA_VERSION; }

std::string version_line(const std::string& tool) {
  return tool + " " + PMAMBA_VERSION + " (LibTorch " TORCH_VERSION ", CUDA " PMAMBA_TORCH_CUDA ")";
}

}  // namespace pmamba::tools
