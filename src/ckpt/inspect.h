// pmamba-ckpt info and ls: what a checkpoint holds, from its manifest (no tensor is decoded);
// pmamba-ckpt params: what a config's model holds, from the config alone.
#pragma once

#include <ostream>
#include <string>

#include "src/model/config.h"

namespace pmamba::ckpt {

/// Step, config, PP layout (stage -> layers, file, bytes, compression ratio), tensor and byte
/// counts. Throws FormatError for anything that is not a valid committed checkpoint.
void print_info(const std::string& path, std::ostream& out, bool json);

/// Every FQN with shape, dtype, owner stage, stored bytes and digest; with `all`, optimizer
/// slots too (one row per slot).
void print_ls(const std::string& path, std::ostream& out, bool json, bool all);

/// The config-only parameter table (nothing allocated): every FQN with shape, element count
/// and layer kind, and the total with a tied head counted once.
void print_params(const model::MambaConfig& config, std::ostream& out, bool json);

}  // namespace pmamba::ckpt
