// The bridge between stage models (+ optimizer) and checkpoints: what a stage saves, how a stage
// of any layout loads itself from a checkpoint of any other layout, and seed checkpoints.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "src/ckpt/checkpoint.h"
#include "src/model/mamba.h"
#include "src/pp/optim.h"

namespace pmamba::pp {

/// The tensors a stage writes: every parameter it owns with its AdamW state (zeros and step 0
/// when `optim` is null). A tied lm_head is written as an alias of backbone.embedding.weight,
/// carrying the digests of this stage's copies. With the stage spread over `parts` files
/// (ckpt::assign_parts decides which FQN goes where; `stages` is the whole layout), only the
/// FQNs of file `part`.
ckpt::StageData collect_stage(model::MambaLMImpl& model, const AdamW* optim,
                              const std::vector<model::StageSpec>* stages = nullptr, int parts = 1, int part = 0);

/// A stage's checkpoint state copied into host buffers of its own, so that a background thread
/// can write it while training goes on changing the live tensors (on the CPU collect_stage hands
/// out the live tensors themselves). The first take() allocates the buffers (pinned when the
/// model is on a GPU, page-aligned on the CPU so an uncompressed shard writes them with O_DIRECT
/// from where they lie) and later ones copy into the same buffers: an asynchronous save costs one
/// extra copy of what the rank saves, held for the whole run, and no allocation per save.
class StageSnapshot {
 public:
  /// Copies what collect_stage returns for the same arguments; the result refers to the buffers
  /// and stays unchanged until the next take(). The digests of a tied alias are computed here,
  /// from the live tensors. For a CPU model it may run on a thread other than training's (it
  /// uses no intra-op parallelism), while nothing changes the state it copies.
  const ckpt::StageData& take(model::MambaLMImpl& model, const AdamW* optim,
                              const std::vector<model::StageSpec>* stages = nullptr, int parts = 1, int part = 0);
  /// Bytes the buffers hold.
  int64_t bytes() const;

 private:
  std::map<std::string, at::Tensor> buffers_;  // "<fqn>/<slot>" -> its host buffer
  ckpt::StageData data_;
};

/// Loads every parameter (and, when `optim` is given, its AdamW state) of the stage from the
/// checkpoint, whatever layout wrote it. Throws ckpt errors; FormatError when the checkpoint's
/// config differs from the model's.
void load_stage(ckpt::CheckpointReader& reader, model::MambaLMImpl& model, AdamW* optim);

struct InitOptions {
  std::string out;
  std::string preset;
  std::string config_path;
  uint64_t seed = 0;
  int pp = 1;
  std::string partition;
  std::string compression = "zstd";
  int threads = 0;
};

/// Writes a committed seed checkpoint (step 0, freshly initialised weights, zeroed optimizer
/// state): the state a training run with the same seed starts from. Returns its directory.
std::string init_checkpoint(const InitOptions& options);

/// Training state stored with a seed checkpoint (written at `step`: a checkpoint's train.step
/// is its step).
nlohmann::ordered_json initial_train_state(uint64_t seed, int64_t step = 0);

}  // namespace pmamba::pp
