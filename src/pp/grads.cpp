#include "src/pp/grads.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cmath>
#include <map>

#include "src/pp/errors.h"
#include "src/pp/transport.h"

namespace pmamba::pp {

namespace {

constexpr int kTagTieToLast = (1 << 24) + 2, kTagTieToFirst = (1 << 24) + 3;
// Tree messages: level l, tensor k (above every microbatch, handshake and tie tag).
int tree_tag(int level, size_t k) { return (1 << 25) + (level << 16) + static_cast<int>(k & 0xffff); }
constexpr int kTagTreeMask = (1 << 25) - 1;

// Which entries hold a gradient (1) or none (0), as a message.
at::Tensor defined_mask(const std::vector<at::Tensor>& grads) {
  at::Tensor m = at::zeros({static_cast<int64_t>(grads.size())}, at::kByte);
  for (size_t k = 0; k < grads.size(); ++k) m[static_cast<int64_t>(k)] = grads[k].defined() ? 1 : 0;
  return m;
}

}  // namespace

GradientTree::GradientTree(std::vector<at::Tensor> params) : params_(std::move(params)) {}

void GradientTree::add_into(Node& left, Node& right) {
  c10::NoGradGuard no_grad;
  for (size_t k = 0; k < left.grads.size(); ++k) {
    at::Tensor& l = left.grads[k];
    const at::Tensor& r = right.grads[k];
    if (!r.defined()) continue;  // carried: left unchanged
    if (!l.defined()) {
      l = r;
    } else {
      l.add_(r);  // in place: the same bits as l + r
    }
  }
  left.level += 1;
}

void GradientTree::push() {
  Node leaf;
  leaf.grads.reserve(params_.size());
  for (auto& p : params_) {
    leaf.grads.push_back(p.grad());
    p.mutable_grad().reset();
  }
  stack_.push_back(std::move(leaf));
  while (stack_.size() >= 2 && stack_[stack_.size() - 1].level == stack_[stack_.size() - 2].level) {
    Node right = std::move(stack_.back());
    stack_.pop_back();
    add_into(stack_.back(), right);
  }
}

std::vector<at::Tensor> GradientTree::take() {
  if (stack_.empty()) return std::vector<at::Tensor>(params_.size());
  // The blocks left are the binary digits of the count, largest first; the tree's unpaired
  // right-hand blocks are carried up until they meet their left partner, which is a merge from
  // the right.
  while (stack_.size() >= 2) {
    Node right = std::move(stack_.back());
    stack_.pop_back();
    add_into(stack_.back(), right);
  }
  std::vector<at::Tensor> out = std::move(stack_.back().grads);
  stack_.clear();
  return out;
}

int64_t GradientTree::bytes() const {
  int64_t b = 0;
  for (const Node& n : stack_) {
    for (const at::Tensor& g : n.grads) {
      if (g.defined()) b += static_cast<int64_t>(g.nbytes());
    }
  }
  return b;
}

double reduce_over_replicas(std::vector<at::Tensor>& grads, const DataParallel& dp, Transport& tx) {
  double sent = 0;
  c10::NoGradGuard no_grad;
  for (int level = 0, step = 1; step < dp.dp; ++level, step *= 2) {
    if (dp.index % (2 * step) == step) {  // a right-hand node: hand it to its left partner, done
      const int to = dp.rank(dp.index - step);
      at::Tensor mask = defined_mask(grads);
      tx.isend(mask, to, kTagTreeMask - level, "the gradient tree's mask");
      for (size_t k = 0; k < grads.size(); ++k) {
        if (!grads[k].defined()) continue;
        tx.isend(grads[k], to, tree_tag(level, k), "gradient tree level " + std::to_string(level));
        sent += static_cast<double>(grads[k].nbytes());
      }
      tx.wait_sends();
      break;
    }
    if (dp.index % (2 * step) != 0 || dp.index + step >= dp.dp) continue;  // unpaired: carried up
    const int from = dp.rank(dp.index + step);
    at::Tensor mask = at::empty({static_cast<int64_t>(grads.size())}, at::kByte);
    tx.recv(mask, from, kTagTreeMask - level, "the gradient tree's mask");
    for (size_t k = 0; k < grads.size(); ++k) {
      if (mask[static_cast<int64_t>(k)].item<uint8_t>() == 0) continue;
      at::Tensor theirs = grads[k].defined() ? at::empty_like(grads[k]) : at::Tensor();
      if (!theirs.defined()) {
        throw PipelineError("internal: " + rank_name(from, dp.dp) + " has a gradient where this rank has none");
      }
      tx.recv(theirs, from, tree_tag(level, k), "gradient tree level " + std::to_string(level));
      grads[k].add_(theirs);  // left (lower microbatches) + right
    }
  }
  // Every replica takes index 0's sum.
  at::Tensor mask = dp.index == 0 ? defined_mask(grads) : at::empty({static_cast<int64_t>(grads.size())}, at::kByte);
  tx.group_broadcast(mask, dp.rank(0), "the gradient broadcast");
  for (size_t k = 0; k < grads.size(); ++k) {
    if (mask[static_cast<int64_t>(k)].item<uint8_t>() == 0) continue;
    if (!grads[k].defined()) {
      throw PipelineError("internal: the replicas of a stage disagree on which parameters have gradients");
    }
    tx.group_broadcast(grads[k], dp.rank(0), "the gradient broadcast");
    if (dp.index == 0) sent += static_cast<double>(grads[k].nbytes()) * (dp.dp - 1);
  }
  return sent;
}

double allreduce_over_replicas(std::vector<at::Tensor>& grads, const DataParallel& dp, Transport& tx) {
  double sent = 0;
  for (at::Tensor& g : grads) {
    if (!g.defined()) continue;
    tx.group_allreduce_sum(g, "the gradient all-reduce");
    sent += 2.0 * static_cast<double>(g.nbytes()) * (dp.dp - 1) / dp.dp;
  }
  return sent;
}

double sum_of_squares(const at::Tensor& g) {
  if (!g.is_cpu()) return g.detach().to(at::kDouble).pow(2).sum().item<double>();
  const at::Tensor c = g.detach().to(at::kFloat).contiguous();
  const float* p = c.data_ptr<float>();
  double s = 0;
  for (int64_t i = 0, n = c.numel(); i < n; ++i) s += static_cast<double>(p[i]) * static_cast<double>(p[i]);
  return s;
}

double sum_tied_gradients(model::MambaLMImpl& m, Transport* tx, int peer) {
  if (!m.config().tie_embeddings) return 0;
  const bool first = m.stage().is_first(), last = m.stage().is_last();
  if (first && last) {
    model::sync_tied_gradients(m, m);
    return 0;
  }
  if (!first && !last) return 0;
  at::Tensor& mine = first ? m.backbone->embedding->weight.mutable_grad() : m.lm_head->weight.mutable_grad();
  at::Tensor theirs = at::empty_like(mine);
  tx->isend(mine, peer, first ? kTagTieToLast : kTagTieToFirst, "the tied-embedding gradient");
  tx->recv(theirs, peer, first ? kTagTieToFirst : kTagTieToLast, "the tied-embedding gradient");
  tx->wait_sends();
  mine = first ? model::tied_gradient_sum(mine, theirs) : model::tied_gradient_sum(theirs, mine);
  return static_cast<double>(mine.nbytes());
}

double global_grad_norm(model::MambaLMImpl& m, const std::vector<std::string>& order, Transport* tx,
                        const std::function<bool(const std::string&)>& contributes) {
  at::Tensor sq = at::zeros({static_cast<int64_t>(order.size())}, at::kDouble);
  std::map<std::string, at::Tensor> grads;
  for (const auto& item : m.named_parameters()) grads[item.key()] = item.value().grad();
  for (size_t k = 0; k < order.size(); ++k) {
    auto it = grads.find(order[k]);
    if (it != grads.end() && it->second.defined() && contributes(order[k])) {
      sq[static_cast<int64_t>(k)] = sum_of_squares(it->second);
    }
  }
  if (tx) tx->allreduce_sum(sq, "the grad-norm reduction");
  double total = 0;
  for (int64_t k = 0; k < sq.numel(); ++k) total += sq[k].item<double>();
  return std::sqrt(total);
}

void clip_gradients(model::MambaLMImpl& m, double grad_norm, double clip) {
  if (!(clip > 0 && grad_norm > clip)) return;
  const double coef = clip / (grad_norm + 1e-6);
  c10::NoGradGuard no_grad;
  for (auto& p : m.parameters()) {
    if (p.grad().defined()) p.mutable_grad().mul_(coef);
  }
}

}  // namespace pmamba::pp
