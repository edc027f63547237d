// manifest.json: the commit marker and the index of a checkpoint (schema in docs/FORMAT.md).
// It is built by scanning the written shards (so it describes what is really on disk) and is
// validated against the config on every read: each FQN exactly once, in the shard of the stage
// that owns it, with the shape and dtype the config implies.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "src/ckpt/codec.h"
#include "src/ckpt/format.h"
#include "src/model/config.h"
#include "src/model/partition.h"

namespace pmamba::ckpt {

struct SlotEntry {
  std::string path;  // HDF5 path inside the shard
  std::vector<int64_t> shape;
  std::string dtype;
  uint64_t digest = 0;
  int64_t stored_bytes = 0;
  int64_t raw_bytes = 0;
};

struct TensorEntry {
  std::string fqn;
  int stage = 0;          // stage whose shard holds it (for an alias: the stage holding the alias)
  std::string file;       // shard file name
  std::map<Slot, SlotEntry> slots;  // param and, with optimizer state, exp_avg/exp_avg_sq/step
  std::string alias_of;   // non-empty for a tied parameter stored once under another FQN
  std::map<Slot, uint64_t> alias_digests;  // digests of the alias holder's own copies
};

struct StageEntry {
  int stage = 0;
  int64_t layer_begin = 0;
  int64_t layer_end = 0;
  std::string file;
  int64_t bytes = 0;  // shard file size
};

struct Manifest {
  int64_t format_version = kFormatVersion;
  int64_t step = 0;
  model::MambaConfig config;
  Compression compression;
  bool has_optimizer = true;
  std::vector<StageEntry> stages;
  std::vector<TensorEntry> tensors;  // canonical FQN order (model::list_parameters)
  nlohmann::ordered_json train = nlohmann::ordered_json::object();

  const TensorEntry* find(const std::string& fqn) const;
  /// The entry whose bytes hold `fqn` (follows an alias).
  const TensorEntry& resolve(const std::string& fqn) const;
  std::vector<model::StageSpec> stage_specs() const;
  int64_t total_stored_bytes() const;
  int64_t total_raw_bytes() const;
};

/// Scans the shards of `dir` (one per stage of `stages`) and builds the manifest. Throws
/// FormatError when a shard is missing, an FQN is stored twice or is missing, a shape or dtype
/// disagrees with the config, or tied copies differ.
Manifest build_manifest(const std::string& dir, const model::MambaConfig& config,
                        const std::vector<model::StageSpec>& stages, int64_t step,
                        const Compression& compression, bool has_optimizer,
                        const nlohmann::ordered_json& train);

std::string manifest_to_json(const Manifest& m);  // pretty-printed, canonical key order
/// Parses and validates (format, version, config, layout, completeness, shapes). `where` names
/// the file in messages. Throws FormatError.
Manifest manifest_from_json(const std::string& text, const std::string& where);

/// Checks a manifest against its config: every FQN exactly once, owned by the right stage,
/// shapes and dtypes as the config implies, optimizer entries for every parameter. Throws
/// FormatError naming the first problem.
void validate_manifest(const Manifest& m, const std::string& where);

}  // namespace pmamba::ckpt
