// Everything a training run decides before any stage builds a model or joins a rendezvous:
// the options are checked, the checkpoint root is locked (when this process commits) and its
// ownership settled, the checkpoint resumed from is opened and its run's settings restored,
// the layout, schedule and data source are made, and the memory and disk the run needs are
// compared with what the machine has. The local launcher plans before it spawns a stage, so a
// configuration error is reported once, not once per stage; each rank plans again for itself.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "src/ckpt/checkpoint.h"
#include "src/ckpt/lock.h"
#include "src/model/config.h"
#include "src/model/partition.h"
#include "src/pp/data.h"
#include "src/pp/train.h"

namespace pmamba::pp {

struct TrainPlan {
  TrainOptions o;                    // as given, with the resumed run's settings filled in
  model::MambaConfig config;
  std::vector<model::StageSpec> stages;
  std::unique_ptr<ckpt::CheckpointReader> reader;  // the checkpoint resumed from (or null)
  std::unique_ptr<ckpt::CheckpointReader> init;    // --init-from: the weights a new run starts from (or null)
  nlohmann::ordered_json initialized_from;         // {dir, run_id, step} of those weights, kept by resumes; null if none
  int64_t start_step = 0, samples = 0, tokens = 0;
  std::string run_id;
  nlohmann::ordered_json data_content;  // the data source's content (null for built-in tasks)
  std::unique_ptr<DataSource> data;     // the source, read and checked once (a rank trains from it)
  ckpt::RootLock lock;               // held when this process commits
  bool created_root = false;         // this plan created the checkpoint root
  std::string note;                  // how the resume source was found, when `latest` did not name it
};

/// A model config JSON file: a regular file of at most 1 MiB (a device or a FIFO is refused
/// before anything is read). Throws model::ConfigError naming the file.
model::MambaConfig load_config_file(const std::string& path);

/// Option values that can only be wrong (ranges, finiteness, spellings), before anything is
/// read: throws UsageError naming the option, what it must be and what was given.
void check_train_options(const TrainOptions& o);

/// --microbatches over --dp: an even split, and in tree mode a power-of-two share per replica.
/// Throws UsageError with the --dp values that would work.
void check_data_parallel(const TrainOptions& o);

/// Plans the run (see above). `commits`: this process commits checkpoints and so takes (or,
/// with PMAMBA_LOCK_FD from the launcher, adopts) the root's lock first. `stage`: the stage this
/// process runs, or -1 when this machine runs them all (the memory estimate). Throws
/// UsageError, ckpt errors or model::ConfigError; a failed plan removes a checkpoint root it
/// created.
TrainPlan plan_training(const TrainOptions& o, bool commits, int stage);

/// Bytes a stage's parameters occupy in float32 (the tied head counted in its stage).
std::vector<int64_t> stage_parameter_bytes(const model::MambaConfig& config,
                                           const std::vector<model::StageSpec>& stages);

}  // namespace pmamba::pp
