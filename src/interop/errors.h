// Errors thrown by pmamba::interop. Each message is one line that names the file (and the
// tensor, where there is one), what was expected and what was found.
//
// Both derive from pmamba::ckpt's errors, so every tool maps them as it maps a bad checkpoint
// (tools/tool_main.h: exit code 2, "<tool>: <message>"), and the fuzz targets' rule for
// documented bad-input errors (tests/fuzz/fuzz_util.h) covers them.
#pragma once

#include <string>

#include "src/ckpt/errors.h"

namespace pmamba::interop {

/// A file is not a valid (or not a supported) safetensors file or sharded index: truncated,
/// bad header JSON, duplicate keys, unsupported dtype, byte ranges that do not tile the data
/// section, ... Also thrown when such a file cannot be opened or read.
class SafetensorsError : public ckpt::FormatError {
 public:
  explicit SafetensorsError(const std::string& what) : ckpt::FormatError(what) {}
};

/// The writer refuses a request: a spec it cannot store (unsupported dtype, empty or repeated
/// name) or a produced tensor that disagrees with its spec. Nothing is left at the path.
/// (Operating-system failures while writing are ckpt::IoError, as everywhere in pmamba.)
class SafetensorsWriteError : public ckpt::UsageError {
 public:
  explicit SafetensorsWriteError(const std::string& what) : ckpt::UsageError(what) {}
};

/// pmamba-convert refuses a source or a request: a folder without the files it needs, a
/// config field that changes the math and cannot be represented (named, with its value), a
/// tensor missing, left over or of the wrong shape, a model the target format has no class for.
class ConvertError : public ckpt::UsageError {
 public:
  explicit ConvertError(const std::string& what) : ckpt::UsageError(what) {}
};

}  // namespace pmamba::interop
