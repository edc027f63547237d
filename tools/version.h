// What `<tool> --version` prints, the same for every pmamba tool:
//   pmamba-train 0.4.0-12-gabc1234-dirty (LibTorch 1.13.0, CUDA none)
// The version is `git describe --always --dirty` of the source tree at build time
// (cmake/Version.cmake), the CMake project version outside a git checkout. LibTorch's version
// matters under torchrun: its TCPStore protocol changes between versions.
#pragma once

#include <string>

namespace pmamba::tools {

/// pmamba's version: "0.4.0-12-gabc1234-dirty", "0.1.0-g9ff92fa" (no tag), or "0.1.0".
const char* pmamba_version();

/// "<tool> <pmamba_version()> (LibTorch X.Y.Z, CUDA V)": V is the CUDA version of a CUDA
/// LibTorch (as its CMake package found it when pmamba was configured), "none" otherwise.
std::string version_line(const std::string& tool);

}  // namespace pmamba::tools
