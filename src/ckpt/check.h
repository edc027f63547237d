// The one place that decides whether a checkpoint is well-formed. Every reader (training
// resume, evaluation, reshard, diff), the writer's own commit and pmamba-ckpt verify run these
// same checks; they differ only in what happens to a problem: a Problems sink either throws
// the first one (readers, the writer) or collects them all (verify). So no tool can accept
// what verify rejects.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <unordered_map>
#include <vector>

#include "src/ckpt/manifest.h"

namespace pmamba::ckpt {

class ShardReader;

/// Where problems go: kThrow raises FormatError("<prefix><problem>") on the first one,
/// kCollect keeps them all.
class Problems {
 public:
  enum class Mode { kThrow, kCollect };
  explicit Problems(Mode mode, std::string prefix = "") : mode_(mode), prefix_(std::move(prefix)) {}

  void add(const std::string& problem);
  bool empty() const { return list_.empty(); }
  const std::vector<std::string>& list() const { return list_; }
  Mode mode() const { return mode_; }

 private:
  Mode mode_;
  std::string prefix_;
  std::vector<std::string> list_;
};

/// The manifest against its config: version and run id, the layout (stages numbered in order,
/// contiguous layer ranges covering n_layer, file names), every FQN of the config exactly once
/// and held by the stage that owns it, shapes and dtypes as the config implies, optimizer state
/// for every parameter when has_optimizer, aliases exactly where the config ties, and the
/// training state (check_train_state).
void check_manifest(const Manifest& m, Problems& problems);

/// The training state's known fields, for type and range (unknown ones are ignored, as
/// docs/FORMAT.md's forward-compatibility rule says); its step must be the manifest's.
void check_train_state(const nlohmann::ordered_json& train, int64_t step, Problems& problems);

/// A shard opened and found to agree with the manifest.
struct CheckedShard {
  std::unique_ptr<ShardReader> reader;
  std::unordered_map<std::string, StoredDataset> datasets;  // by HDF5 path, as scanned
};

/// Opens `file` (one of `stage`'s files) in `dir` and checks it against the manifest: its size,
/// its header (stage, stage count, layers, part, step, config, training state, compression), and that it
/// holds exactly the datasets the manifest assigns to it, each with the manifest's shape, dtype
/// and digest attribute, compressed as the manifest's compression says. Returns false when the
/// shard cannot be used at all (problems recorded); `out` is filled otherwise.
bool check_shard(const Manifest& m, const StageEntry& stage, const ShardFile& file, const std::string& dir, Problems& problems,
                 CheckedShard& out);

/// Tied copies were equal when written: each alias's digests equal the stored tensor's.
void check_ties(const Manifest& m, Problems& problems);

}  // namespace pmamba::ckpt
