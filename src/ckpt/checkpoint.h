// Saving and loading whole checkpoints: the commit protocol (DESIGN §3) and load-time
// resharding (a reader serves any FQN from whichever shard holds it).
//
// Commit protocol, in order (each step is a fault-injection point, see fault.h):
//   1. shards are written into <root>/step-N.tmp-<pid>-<n>/ under temporary names,
//      fsynced and renamed (shard-partial, shard-written, shard-synced, shard-renamed);
//   2. manifest.json is built by scanning the shards, written to a temporary name, fsynced,
//      renamed (manifest-written, manifest-renamed);
//   3. the directory is renamed to step-N (an existing step-N is swapped out atomically) and
//      the root fsynced (dir-renamed);
//   4. `latest` is replaced by rename (latest-written, latest-renamed);
//   5. old committed checkpoints beyond keep_last and stale temporary directories are removed
//      (pruned).
// A crash anywhere leaves the previous checkpoint loadable and `latest` naming a committed one.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "src/ckpt/manifest.h"
#include "src/ckpt/shard.h"

namespace pmamba::ckpt {

class ThreadPool;

/// Creates <root> when needed and a fresh temporary step directory; returns its path.
std::string begin_step_dir(const std::string& root, int64_t step);
/// Writes the manifest last and publishes the checkpoint (steps 2-5 above). Returns the
/// committed step directory.
std::string commit_step_dir(const std::string& root, const std::string& tmp_dir,
                            const Manifest& manifest, int keep_last);
/// Removes a temporary step directory after a failed save (never throws).
void abort_step_dir(const std::string& tmp_dir) noexcept;

/// A checkpoint root (follows `latest`) or a step directory -> the committed step directory.
/// Throws FormatError "... is not a committed checkpoint ..." otherwise.
std::string resolve_checkpoint_dir(const std::string& path);
/// Steps of the committed checkpoints under root, ascending.
std::vector<int64_t> committed_steps(const std::string& root);

struct StageData {
  std::vector<TensorToSave> tensors;
  std::vector<AliasToSave> aliases;
};

struct SaveOptions {
  WriteOptions write;
  int keep_last = 0;  // 0 keeps every checkpoint
  bool has_optimizer = true;
};

/// Saves a whole model from one process: `produce` is called once per stage, in order, so
/// only one stage's tensors need to be alive at a time. Returns the committed directory.
/// On any failure nothing is committed and the temporary directory is removed.
std::string save_checkpoint(const std::string& root, int64_t step, const model::MambaConfig& config,
                            const std::vector<model::StageSpec>& stages,
                            const nlohmann::ordered_json& train, const SaveOptions& options,
                            const std::function<StageData(const model::StageSpec&)>& produce);

/// One tensor to load: `dest` is filled in place when defined (contiguous, manifest shape and
/// dtype), otherwise allocated.
struct ReadRequest {
  std::string fqn;
  Slot slot = Slot::kParam;
  at::Tensor dest;
};

/// Read side: opens and validates the manifest of a committed checkpoint; shards are opened on
/// first use and checked against the manifest (size, header, the exact set of datasets).
class CheckpointReader {
 public:
  explicit CheckpointReader(const std::string& path, int threads = 0);
  ~CheckpointReader();
  CheckpointReader(const CheckpointReader&) = delete;
  CheckpointReader& operator=(const CheckpointReader&) = delete;

  const std::string& dir() const { return dir_; }
  const Manifest& manifest() const { return manifest_; }

  /// Reads one slot of an FQN (following a tie alias) into `dest`, which must be contiguous
  /// with the manifest's shape and dtype; verifies the xxh3-64 digest (IntegrityError naming
  /// the FQN and file on mismatch).
  void read(const std::string& fqn, Slot slot, at::Tensor& dest);
  /// Same, allocating the tensor.
  at::Tensor read(const std::string& fqn, Slot slot);
  /// Many reads: digests are verified in the thread pool while the next tensor is read, and
  /// requests that resolve to the same stored tensor (a tie) read it once.
  void read_many(std::vector<ReadRequest>& requests);

  /// The shard of a stage, opened and checked.
  ShardReader& shard(const std::string& file);
  /// The dataset metadata of a shard as scanned (path -> info).
  const std::unordered_map<std::string, DatasetInfo>& shard_datasets(const std::string& file);
  ThreadPool* pool() { return pool_.get(); }

 private:
  std::string dir_;
  Manifest manifest_;
  std::unique_ptr<ThreadPool> pool_;
  std::map<std::string, std::unique_ptr<ShardReader>> shards_;
  std::map<std::string, std::unordered_map<std::string, DatasetInfo>> datasets_;
};

}  // namespace pmamba::ckpt
