#include <c10/core/GradMode.h>
#include "src/pp/optim.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "kernels/cpu/adamw_fast.h"
#include "src/model/fqn.h"
#include <c10/util/Exception.h>

namespace pmamba::pp {

AdamW::AdamW(std::vector<std::pair<std::string, at::Tensor>> params, const model::MambaConfig& config,
             AdamWOptions options)
    : params_(std::move(params)), options_(options) {
  std::map<std::string, bool> rule;
  for (const auto& p : model::list_parameters(config)) rule[p.fqn] = p.no_weight_decay;
  for (const auto& [fqn, p] : params_) {
    auto it = rule.find(fqn);
    TORCH_CHECK(it != rule.end(), "AdamW: '", fqn, "' is not a parameter of this config");
    no_decay_[fqn] = it->second;
  }
  bool has_embedding = false, has_head = false;
  for (const auto& [fqn, p] : params_) {
    has_embedding = has_embedding || fqn == model::kEmbeddingFqn;
    has_head = has_head || fqn == model::kLmHeadFqn;
  }
  if (config.tie_embeddings && has_embedding && has_head) {
    follower_ = model::kLmHeadFqn;
    leader_ = model::kEmbeddingFqn;
  }
  for (const auto& [fqn, p] : params_) {
    if (fqn != follower_) state_[fqn] = ParamState{};  // moments allocated on first use or load
  }
}

ParamState& AdamW::state(const std::string& fqn) {
  auto it = state_.find(fqn == follower_ ? leader_ : fqn);
  TORCH_CHECK(it != state_.end(), "AdamW has no state for '", fqn, "'");
  return it->second;
}

const ParamState& AdamW::state(const std::string& fqn) const {
  return const_cast<AdamW*>(this)->state(fqn);
}

void AdamW::step(double lr) {
  c10::NoGradGuard no_grad;
  std::vector<kernels::cpu::AdamWSpan> spans;
  std::vector<at::Tensor> keep;  // float32 copies of gradients that were not float32 already
  for (auto& [fqn, p] : params_) {
    if (fqn == follower_ || !owns(fqn)) continue;
    ParamState& s = state_.at(fqn);
    if (!s.exp_avg.defined()) s.exp_avg = at::zeros(p.sizes(), p.options().dtype(at::kFloat));
    if (!s.exp_avg_sq.defined()) s.exp_avg_sq = at::zeros(p.sizes(), p.options().dtype(at::kFloat));
    s.step += 1;
    const double bc1 = 1.0 - std::pow(options_.beta1, static_cast<double>(s.step));
    const double bc2 = 1.0 - std::pow(options_.beta2, static_cast<double>(s.step));
    const double decay = !no_decay_.at(fqn) && options_.weight_decay != 0 ? 1.0 - lr * options_.weight_decay : 1.0;
    at::Tensor g = p.grad().defined() ? p.grad().to(at::kFloat).contiguous() : at::Tensor();
    if (p.is_cpu() && p.scalar_type() == at::kFloat && p.is_contiguous() && s.exp_avg.is_contiguous() &&
        s.exp_avg_sq.is_contiguous()) {
      if (g.defined()) keep.push_back(g);
      spans.push_back({p.data_ptr<float>(), g.defined() ? g.data_ptr<float>() : nullptr, s.exp_avg.data_ptr<float>(),
                       s.exp_avg_sq.data_ptr<float>(), p.numel(), static_cast<float>(decay),
                       static_cast<float>(lr / bc1), static_cast<float>(std::sqrt(bc2))});
      continue;
    }
    // On a GPU: the same formula in tensor operations (not bitwise the CPU's: other kernels).
    if (!g.defined()) g = at::zeros_like(s.exp_avg);
    if (decay != 1.0) p.mul_(decay);
    s.exp_avg.mul_(options_.beta1).add_(g, 1.0 - options_.beta1);
    s.exp_avg_sq.mul_(options_.beta2).addcmul_(g, g, 1.0 - options_.beta2);
    p.addcdiv_(s.exp_avg, (s.exp_avg_sq.sqrt() / std::sqrt(bc2)).add_(options_.eps), -lr / bc1);
  }
  if (!spans.empty()) {
    kernels::cpu::adamw_update(spans, {static_cast<float>(options_.beta1), static_cast<float>(options_.beta2),
                                       static_cast<float>(options_.eps)});
  }
  sync_follower();
}

void AdamW::sync_follower() {
  if (follower_.empty()) return;
  c10::NoGradGuard no_grad;
  at::Tensor leader, follower;
  for (auto& [fqn, p] : params_) {
    if (fqn == leader_) leader = p;
    if (fqn == follower_) follower = p;
  }
  follower.copy_(leader);
}

void AdamW::set_owned(std::set<std::string> owned) {
  sharded_ = true;
  owned_ = std::move(owned);
}

bool AdamW::owns(const std::string& fqn) const {
  if (!sharded_) return true;
  return owned_.count(fqn == follower_ ? leader_ : fqn) != 0;
}

void AdamW::to(c10::Device device) {
  for (auto& [fqn, s] : state_) {
    if (s.exp_avg.defined()) s.exp_avg = s.exp_avg.to(device);
    if (s.exp_avg_sq.defined()) s.exp_avg_sq = s.exp_avg_sq.to(device);
  }
}

}  // namespace pmamba::pp
