// The parameter table of a Mamba LM, computed from the config alone (nothing allocated):
// every FQN (state-spaces/mamba MambaLMHeadModel names, global layer indices), its shape,
// its owning stage, and the optimizer rules that follow from its name.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "src/model/config.h"
#include "src/model/partition.h"

namespace pmamba::model {

inline constexpr const char* kEmbeddingFqn = "backbone.embedding.weight";
inline constexpr const char* kLmHeadFqn = "lm_head.weight";

struct ParamInfo {
  std::string fqn;
  std::vector<int64_t> shape;
  int64_t layer = -1;            // global layer index, -1 for embedding / norm_f / lm_head
  bool no_weight_decay = false;  // A_log, D, norms, biases
  std::string tied_to;           // lm_head.weight -> backbone.embedding.weight when tied

  int64_t numel() const;
};

/// Canonical order: embedding, layers 0..n-1 (each in module order), norm_f, lm_head.
std::vector<ParamInfo> list_parameters(const MambaConfig& config);

/// The stage (index into `stages`) that owns a parameter.
int owner_stage(const ParamInfo& param, const std::vector<StageSpec>& stages);
bool stage_owns(const ParamInfo& param, const StageSpec& stage);

/// The parameters a stage model registers, in canonical order.
std::vector<ParamInfo> stage_parameters(const MambaConfig& config, const StageSpec& stage);

/// Total parameter count; a tied lm_head is counted once (as the published numbers do).
int64_t count_parameters(const MambaConfig& config);

/// FQN of the global layer index, e.g. layer_prefix(7) == "backbone.layers.7."
std::string layer_prefix(int64_t layer);

/// Parses the global layer index out of an FQN ("backbone.layers.7.mixer.D" -> 7), -1 if none.
int64_t layer_of(const std::string& fqn);

}  // namespace pmamba::model
