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
