// The stage executor: runs one step's schedule actions (schedule.h) for one stage — forwards,
// backwards, and the activation and gradient messages to its pipeline neighbours — and says what
// the step cost. Training and evaluation share it; what happens to each microbatch's loss and
// gradients is the caller's (grads.h folds them).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "src/model/mamba.h"
#include "src/pp/schedule.h"

namespace pmamba::pp {

class Transport;

/// P2P tags of microbatch `mb`'s messages (deterministic per microbatch and direction).
inline int activation_tag(int mb) { return 2 * mb; }
inline int gradient_tag(int mb) { return 2 * mb + 1; }

struct StageStep {
  model::MambaLMImpl* model = nullptr;
  const std::vector<Action>* actions = nullptr;  // this stage's list
  bool training = true;          // false: forwards under no_grad, no backwards
  // Pipeline neighbours (ranks on `tx`; -1 where there is none).
  Transport* tx = nullptr;
  int prev = -1, next = -1;
  c10::Device device{c10::kCPU};
  c10::ScalarType autocast = c10::ScalarType::Undefined;  // forward matmul dtype, or Undefined
  int64_t rows = 0, seq_len = 0;  // a microbatch is (rows, seq_len)
  int first_index = 0;            // global index of local microbatch 0 (named in messages)
  // First stage: the (rows, seq_len) int64 token ids of local microbatch i.
  std::function<at::Tensor(int)> input;
  // Last stage, training: the scalar loss of microbatch i from its output (B, L, V), and the
  // count of its correct predictions.
  std::function<at::Tensor(int, const at::Tensor&, int64_t*)> loss;
  // Called after microbatch i's backward (its gradients are in the parameters' .grad).
  std::function<void(int)> after_backward;
  // Gradient bytes the caller holds (so the activation peak leaves them out).
  std::function<int64_t()> gradient_bytes;
};

struct StageResult {
  std::vector<at::Tensor> losses;   // last stage, training: per local microbatch
  std::vector<int64_t> correct;     // last stage, training: per local microbatch
  std::vector<at::Tensor> outputs;  // last stage, forward only: the model's outputs
  double idle_s = 0;                // time blocked in receives
  double pipe_s = 0;                // the whole action list
  double bytes_sent = 0;
  int64_t activation_peak = -1;     // bytes above the start, less gradients; -1 when unknown
};

/// Runs the actions in order. Throws PipelineError/PeerFailure from the transport.
StageResult run_stage(const StageStep& step);

}  // namespace pmamba::pp
