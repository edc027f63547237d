// Small HDF5 files of named tensors (evaluation logits, test fixtures). Not the checkpoint
// format: no digests, no manifest; written to a temporary name and renamed into place.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <utility>
#include <vector>

namespace pmamba::ckpt {

/// Writes each tensor as a contiguous dataset (float32, float64, int64 or int32) at its name
/// ("/logits"). Replaces `path` atomically. Throws IoError/UsageError.
void write_tensor_file(const std::string& path,
                       const std::vector<std::pair<std::string, at::Tensor>>& tensors);

/// Reads one dataset back as a CPU tensor of the matching dtype. Throws FormatError when the
/// dataset is missing or of an unsupported type.
at::Tensor read_tensor_file(const std::string& path, const std::string& name);

/// Names of the datasets found directly under `group` ("/" for the root).
std::vector<std::string> list_tensor_file(const std::string& path, const std::string& group = "/");

/// A string attribute of the file's root group.
std::string read_tensor_file_attr(const std::string& path, const std::string& name);

}  // namespace pmamba::ckpt
