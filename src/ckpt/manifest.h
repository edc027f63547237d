// manifest.json: the commit marker and the index of a checkpoint (schema in docs/FORMAT.md).
// It is built by scanning the written shards, or from the records their writer kept of what it
// handed HDF5 when one process wrote them all (so it describes what is really on disk), and is
// checked against the config on every read: each FQN exactly once, in the shard of the stage
// that owns it, with the shape and dtype the config implies (check.h holds the checks).
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

class Problems;
struct WrittenShard;

struct TensorEntry {
  std::string fqn;
  int stage = 0;          // stage whose shard holds it (for an alias: the stage holding the alias)
  std::string file;       // shard file name (one of its stage's files)
  std::map<Slot, StoredDataset> slots;  // param and, with optimizer state, exp_avg/exp_avg_sq/step
  std::string alias_of;   // non-empty for a tied parameter stored once under another FQN
  std::map<Slot, uint64_t> alias_digests;  // digests of the alias holder's own copies
};

struct ShardFile {
  std::string file;   // shard file name
  int64_t bytes = 0;  // its size
};

struct StageEntry {
  int stage = 0;
  int64_t layer_begin = 0;
  int64_t layer_end = 0;
  std::vector<ShardFile> files;  // part 0, 1, ... (one before version 3)
};

struct Manifest {
  int64_t format_version = kFormatVersion;
  std::string run_id;  // 32 hex digits; "" in version-1 checkpoints, which had none
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

/// Which of a stage's `parts` files holds each FQN the stage owns (with its optimizer state):
/// in canonical order, each to the file with the fewest elements so far (the lowest index on a
/// tie); a tied alias goes with its target when the stage holds both. Deterministic, so every
/// writer of a stage agrees without talking, and balanced by bytes.
std::map<std::string, int> assign_parts(const model::MambaConfig& config, const model::StageSpec& stage, int parts);
/// The rule itself over (name, element count) pairs.
std::map<std::string, int> assign_balanced(const std::vector<std::pair<std::string, int64_t>>& sizes, int parts);
/// The file of `stage` (in `stages`) that holds `fqn` when every stage has `parts` files.
std::string file_holding(const model::MambaConfig& config, const std::vector<model::StageSpec>& stages, int stage,
                         int parts, const std::string& fqn);

/// Scans the shards of `dir` (`files_per_stage` per stage of `stages`), builds the manifest and puts it
/// through every check a reader will make (check.h), throwing FormatError on the first
/// problem: a missing shard, an FQN stored twice or missing, a shape or dtype that disagrees
/// with the config, tied copies that differ.
Manifest build_manifest(const std::string& dir, const std::string& run_id, const model::MambaConfig& config,
                        const std::vector<model::StageSpec>& stages, int64_t step,
                        const Compression& compression, bool has_optimizer,
                        const nlohmann::ordered_json& train, int files_per_stage = 1);

/// The same manifest from what the writers of its shards report (ShardWriter::written), without
/// reopening them: for a process that wrote every shard itself (save_checkpoint). It is checked as
/// a reader checks a manifest (check_manifest, check_ties), each shard's header and compression
/// against the checkpoint, and each file's size against what its writer fsynced. `written` holds
/// every shard of every stage (any order).
Manifest build_manifest(const std::string& dir, const std::string& run_id, const model::MambaConfig& config,
                        const std::vector<model::StageSpec>& stages, int64_t step,
                        const Compression& compression, bool has_optimizer,
                        const nlohmann::ordered_json& train, const std::vector<WrittenShard>& written);

std::string manifest_to_json(const Manifest& m);  // one line per key and per tensor, canonical order
/// Parses and checks (format, version, run id, config, layout, completeness, shapes, training
/// state). `where` names the file in messages. Throws FormatError on the first problem.
Manifest manifest_from_json(const std::string& text, const std::string& where);
/// The same, collecting problems in `problems` instead of throwing (pmamba-ckpt verify). Returns
/// false when the text is not a manifest at all (nothing else could be checked).
bool manifest_from_json(const std::string& text, const std::string& where, Manifest& out, Problems& problems);

/// xxh3-64 of the training state as the manifest stores it (its compact JSON text).
uint64_t train_digest(const nlohmann::ordered_json& train);

}  // namespace pmamba::ckpt
