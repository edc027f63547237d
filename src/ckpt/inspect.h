// pmamba-ckpt info and ls: what a checkpoint holds, from its manifest (no tensor is decoded).
#pragma once

#include <ostream>
#include <string>

namespace pmamba::ckpt {

/// Step, config, PP layout (stage -> layers, file, bytes, compression ratio), tensor and byte
/// counts. Throws FormatError for anything that is not a valid committed checkpoint.
void print_info(const std::string& path, std::ostream& out, bool json);

/// Every FQN with shape, dtype, owner stage, stored bytes and digest; with `all`, optimizer
/// slots too (one row per slot).
void print_ls(const std::string& path, std::ostream& out, bool json, bool all);

}  // namespace pmamba::ckpt
