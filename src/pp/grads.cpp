#include "src/pp/grads.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cmath>
#include <map>

#include "src/pp/transport.h"

namespace pmamba::pp {

namespace {

constexpr int kTagTieToLast = (1 << 24) + 2, kTagTieToFirst = (1 << 24) + 3;

}  // namespace

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
