// What happens to a stage's gradients between the pipeline phase and the optimizer: the tied
// embedding's two halves summed on both ends of the pipeline, the global grad norm reduced in
// the single-process order, and clipping.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <string>
#include <vector>

#include "src/model/mamba.h"

namespace pmamba::pp {

class Transport;

/// A stage's gradient as the sum of its microbatch gradients along one fixed binary tree over
/// the global microbatch index: level k adds aligned blocks left + right, and a block without a
/// partner is carried up unchanged (never added to a zero: -0 + 0 = +0 would change bits). Leaves
/// are pushed in microbatch order; equal levels merge as they arrive (a binary counter), so at
/// most log2(count) + 1 partial sums are alive. Autograd's own accumulation into .grad is left to
/// right, which is another order: each leaf is taken out of .grad after its backward.
class GradientTree {
 public:
  /// `params`: the stage's parameters, in a fixed order.
  explicit GradientTree(std::vector<at::Tensor> params);
  /// Takes every parameter's .grad (leaving it undefined) as the next leaf.
  void push();
  /// The sum of the leaves pushed since the last take(), merged right to left (the tree's
  /// carries), one entry per parameter (undefined: no leaf had a gradient for it).
  std::vector<at::Tensor> take();
  /// Bytes of the partial sums alive now.
  int64_t bytes() const;

 private:
  struct Node {
    int level = 0;
    std::vector<at::Tensor> grads;
  };
  static void add_into(Node& left, Node& right);  // left += right, entry by entry
  std::vector<at::Tensor> params_;
  std::vector<Node> stack_;
};

/// Where a rank sits in the (pp, dp) mesh: rank = stage * dp + index.
struct DataParallel {
  int dp = 1;           // replicas
  int index = 0;        // this rank's DP index
  int stage_rank0 = 0;  // world rank of DP index 0 of this stage
  int rank(int index) const { return stage_rank0 + index; }
};

/// Continues the tree across the DP ranks of a stage: rank index j holds the node of its
/// microbatch range (a tree node, see check_data_parallel), and level by level index
/// j (a multiple of 2^(l+1)) receives j + 2^l's node and adds it, unpaired nodes carried up. The
/// result lands on index 0, which then sends it to every other index (c10d broadcast on the
/// stage's group), so every replica ends with the same bits. One message per tensor: memory
/// stays at the model's gradients plus one tensor. Returns the bytes this rank sent.
double reduce_over_replicas(std::vector<at::Tensor>& grads, const DataParallel& dp, Transport& tx);

/// `--grad-reduce allreduce`: the backend's all-reduce of each gradient over the stage's group
/// (its order depends on the backend and on dp). Returns the bytes this rank sent (as counted
/// for a ring: 2 (dp - 1) / dp of each tensor).
double allreduce_over_replicas(std::vector<at::Tensor>& grads, const DataParallel& dp, Transport& tx);

/// Sum of squares of a float tensor in float64, element by element in storage order: the same
/// number whatever the thread count, on every stage and at PP = 1. On a GPU, the device's own
/// reduction (its order depends only on the shape, which is the same at every layout).
double sum_of_squares(const at::Tensor& g);

/// Tied embedding: both ends form embedding_grad + head_grad in the same order. A stage holding
/// both halves sums them locally; otherwise the first and last stage of the pipeline exchange
/// theirs with `peer` (tags reserved for it). Returns the bytes sent.
double sum_tied_gradients(model::MambaLMImpl& model, Transport* tx, int peer);

/// The global grad norm: the square sums of the FQNs in `order` (canonical order) that this
/// rank contributes (`contributes`; each FQN must be contributed by exactly one rank) are
/// all-reduced over the world — adding zeros elsewhere, exact — and summed in that order.
double global_grad_norm(model::MambaLMImpl& model, const std::vector<std::string>& order, Transport* tx,
                        const std::function<bool(const std::string&)>& contributes);

/// Scales every gradient by clip / (norm + 1e-6) when norm > clip > 0.
void clip_gradients(model::MambaLMImpl& model, double grad_norm, double clip);

}  // namespace pmamba::pp
