// Saving and loading whole checkpoints: the commit protocol (DESIGN §3) and load-time
// resharding (a reader serves any FQN from whichever shard holds it).
//
// Commit protocol, in order (each step is a fault-injection point, see fault.h):
//   1. shards are written into <root>/step-N.tmp-<pid>-<n>/ under temporary names,
//      fsynced and renamed (shard-partial, shard-written, shard-synced, shard-renamed);
//   2. manifest.json is built (by scanning the shards, or from their writers' records when one
//      process wrote them all), written to a temporary name, fsynced, renamed
//      (manifest-written, manifest-renamed);
//   3. the directory is renamed to step-N (an existing step-N is swapped out atomically) and
//      the root fsynced (dir-renamed);
//   4. `latest` is replaced by rename (latest-written, latest-renamed);
//   5. the run's committed checkpoints beyond keep_last, stale temporary directories and (with
//      --overwrite) other runs' checkpoints are removed (pruned).
// A crash anywhere leaves the previous checkpoint loadable; readers find the newest committed
// checkpoint of the run even when the crash came between steps 3 and 4. Only a holder of the
// root's lock (lock.h) may run steps 1-5.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "src/ckpt/check.h"
#include "src/ckpt/manifest.h"
#include "src/ckpt/shard.h"

namespace pmamba::ckpt {

class ThreadPool;

/// Creates a fresh temporary step directory in `root`, whose lock (lock.h) this process must
/// hold; returns its path.
std::string begin_step_dir(const std::string& root, int64_t step);

struct CommitOptions {
  int keep_last = 0;               // 0 keeps every checkpoint of the run
  bool remove_other_runs = false;  // --overwrite: delete other runs' step directories after this commit
};

struct CommitResult {
  std::string dir;           // the committed step directory
  std::string latest_error;  // "" or why `latest` could not be updated (the checkpoint is committed
                             // anyway: readers find the newest committed step directory)
};

/// Writes the manifest last and publishes the checkpoint (steps 2-5 above). The lock of `root`
/// must be held. Once the step directory is renamed the checkpoint is committed: a failure to
/// write `latest` after that is reported in the result, not thrown.
CommitResult commit_step_dir(const std::string& root, const std::string& tmp_dir, const Manifest& manifest,
                             const CommitOptions& options);
/// Removes a temporary step directory after a failed save (never throws).
void abort_step_dir(const std::string& tmp_dir) noexcept;

/// A committed checkpoint found in a root.
struct CommittedStep {
  int64_t step = 0;
  std::string dir;     // the step directory
  std::string run_id;  // "" for version 1, or when its manifest cannot be read
};
/// The committed checkpoints of `root`, by ascending step.
std::vector<CommittedStep> committed_checkpoints(const std::string& root);
/// Steps of the committed checkpoints under root, ascending.
std::vector<int64_t> committed_steps(const std::string& root);

/// A checkpoint root or a step directory -> the committed step directory. For a root,
/// `latest` names it, unless `latest` is missing or names an older (or no longer existing)
/// step than the newest committed one of the same run: a writer that crashed between renaming
/// its step directory and updating `latest`, or ran out of disk there, left that checkpoint
/// committed. `note` (when given) says when that recovery happened. Throws FormatError
/// "... is not a committed checkpoint ..." or naming what `latest` holds.
std::string resolve_checkpoint_dir(const std::string& path, std::string* note = nullptr);

/// The run id of the checkpoint a root resolves to ("" when the root has none, or a version-1
/// one).
std::string root_run_id(const std::string& root);

/// Refuses (UsageError) an output root that would put checkpoints where they do not belong: a
/// step directory, anything inside a step directory or inside another checkpoint root, and
/// anything equal to, inside or containing one of `inputs` (checkpoint roots or step
/// directories; for a step directory its root counts too), whether or not the output exists.
/// The output may be `may_equal` (a resumed run keeps writing into the root it resumed from).
void check_output_location(const std::string& out, const std::vector<std::string>& inputs,
                           const std::string& may_equal = "");

struct StageData {
  std::vector<TensorToSave> tensors;
  std::vector<AliasToSave> aliases;
};

struct SaveOptions {
  WriteOptions write;
  int keep_last = 0;  // 0 keeps every checkpoint
  bool has_optimizer = true;
  std::string run_id;  // "" draws a new one
  SaveProfile* profile = nullptr;  // when set, where the save's time went is added to it
};

/// Saves a whole model from one process, holding the root's lock while it does: `produce` is
/// called once per stage, in order, so only one stage's tensors need to be alive at a time.
/// Returns the committed directory. On any failure nothing is committed and the temporary
/// directory is removed.
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

/// Read side: opens a committed checkpoint and puts it through the checks of check.h before
/// anything is loaded: the manifest against its config, every shard against the manifest
/// (size, header, the exact set of datasets), tied copies equal. Digests are checked as
/// tensors are read.
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

  /// The shard of a stage (opened and checked when the reader was made).
  ShardReader& shard(const std::string& file);
  /// The dataset metadata of a shard as scanned (path -> info).
  const std::unordered_map<std::string, StoredDataset>& shard_datasets(const std::string& file);
  ThreadPool* pool() { return pool_.get(); }

 private:
  std::string dir_;
  Manifest manifest_;
  std::unique_ptr<ThreadPool> pool_;
  std::map<std::string, CheckedShard> shards_;
};

}  // namespace pmamba::ckpt
