// AdamW with decoupled weight decay and optimizer state keyed by FQN (not by tensor address,
// unlike torch::optim's serializer), so it can be saved per stage and resharded.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "src/model/config.h"

namespace pmamba::pp {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;  // not applied to A_log, D, norms, biases
};

struct ParamState {
  at::Tensor exp_avg;     // float32, parameter shape
  at::Tensor exp_avg_sq;  // float32, parameter shape
  int64_t step = 0;
};

class AdamW {
 public:
  /// `params` are (FQN, parameter) pairs of one stage; state starts at zero.
  AdamW(std::vector<std::pair<std::string, at::Tensor>> params, const model::MambaConfig& config,
        AdamWOptions options);

  /// One update with learning rate `lr` from each parameter's .grad() (a parameter without a
  /// gradient is treated as having a zero gradient, as in a step that did not touch it).
  void step(double lr);

  std::map<std::string, ParamState>& state() { return state_; }
  const std::map<std::string, ParamState>& state() const { return state_; }
  const std::vector<std::pair<std::string, at::Tensor>>& params() const { return params_; }
  const AdamWOptions& options() const { return options_; }

 private:
  std::vector<std::pair<std::string, at::Tensor>> params_;
  std::map<std::string, bool> no_decay_;
  std::map<std::string, ParamState> state_;
  AdamWOptions options_;
};

}  // namespace pmamba::pp
