// AdamW with decoupled weight decay and optimizer state keyed by FQN (not by tensor address,
// unlike torch::optim's serializer), so it can be saved per stage and resharded.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <map>
#include <set>
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
  at::Tensor exp_avg;     // float32, parameter shape; undefined means all zeros
  at::Tensor exp_avg_sq;  // float32, parameter shape; undefined means all zeros
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

  /// State of a parameter. When one stage holds both halves of a tie (PP = 1), lm_head.weight
  /// follows backbone.embedding.weight: their gradients are equal after the tied-gradient
  /// sync, so the embedding is updated once and copied into the head, and both names share
  /// one state (bitwise what two separate updates would give, at half the memory).
  ParamState& state(const std::string& fqn);
  const ParamState& state(const std::string& fqn) const;
  /// Whether `fqn` shares another parameter's state (the tied head at PP = 1).
  bool is_follower(const std::string& fqn) const { return fqn == follower_; }
  const std::vector<std::pair<std::string, at::Tensor>>& params() const { return params_; }
  /// Every state entry (the follower of a tie has none of its own).
  const std::map<std::string, ParamState>& states() const { return state_; }
  const AdamWOptions& options() const { return options_; }
  /// ZeRO-1: only the FQNs in `owned` are updated here (their state lives on this rank; the
  /// others' parameters arrive from their owners). The tied follower goes with its leader.
  void set_owned(std::set<std::string> owned);
  /// Whether this rank updates `fqn` (always, without set_owned).
  bool owns(const std::string& fqn) const;
  /// Copies the tie's leader into its follower (step() does it; call again after parameters
  /// arrived from their owners).
  void sync_follower();
  /// Moves the moments to `device` (after a load on the CPU, for a model on a GPU).
  void to(c10::Device device);

 private:
  std::vector<std::pair<std::string, at::Tensor>> params_;
  std::map<std::string, bool> no_decay_;
  std::map<std::string, ParamState> state_;
  std::string follower_, leader_;
  bool sharded_ = false;
  std::set<std::string> owned_;
  AdamWOptions options_;
};

}  // namespace pmamba::pp
