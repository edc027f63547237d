// The one-pass AdamW: the same bits whichever FQNs are updated together (ZeRO-1 updates only
// a rank's own) and whatever the thread count; a missing gradient is a zero one; and the
// update is AdamW's (against LibTorch's own torch::optim::AdamW, to float rounding).
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/optim/adamw.h>

#include <map>
#include <string>
#include <vector>

#include "src/model/config.h"
#include "src/model/fqn.h"
#include "src/pp/optim.h"
#include "tests/test_util.h"

namespace pmamba::pp {
namespace {

using Named = std::vector<std::pair<std::string, at::Tensor>>;

model::MambaConfig config() {
  model::MambaConfig c = model::preset("tiny");
  c.tie_embeddings = false;  // every FQN its own state, so per-FQN runs cover all of them
  return c;
}

// Parameters of every FQN of the config, random, with random gradients (some undefined).
Named make_params(const model::MambaConfig& c, uint64_t seed, bool drop_some_grads) {
  at::manual_seed(seed);
  Named out;
  int k = 0;
  for (const auto& p : model::list_parameters(c)) {
    at::Tensor t = at::randn(p.shape);
    if (!(drop_some_grads && k % 5 == 3)) t.mutable_grad() = at::randn(p.shape) * 0.01;
    out.emplace_back(p.fqn, t);
    ++k;
  }
  return out;
}

Named clone(const Named& in) {
  Named out;
  for (const auto& [fqn, t] : in) {
    at::Tensor c = t.clone();
    if (t.grad().defined()) c.mutable_grad() = t.grad().clone();
    out.emplace_back(fqn, c);
  }
  return out;
}

void steps(AdamW& opt, int n) {
  for (int s = 0; s < n; ++s) opt.step(1e-2 * (s + 1));
}

void expect_same_bits(const Named& a, const AdamW& oa, const Named& b, const AdamW& ob) {
  for (size_t i = 0; i < a.size(); ++i) {
    const std::string& fqn = a[i].first;
    EXPECT_TRUE(test::bitwise_equal(a[i].second, b[i].second)) << fqn;
    EXPECT_TRUE(test::bitwise_equal(oa.state(fqn).exp_avg, ob.state(fqn).exp_avg)) << fqn;
    EXPECT_TRUE(test::bitwise_equal(oa.state(fqn).exp_avg_sq, ob.state(fqn).exp_avg_sq)) << fqn;
  }
}

TEST(AdamW, UpdatingAllFqnsTogetherGivesEachFqnsOwnUpdate) {
  const model::MambaConfig c = config();
  const Named base = make_params(c, 1, true);
  Named together = clone(base);
  AdamW all(together, c, {});
  steps(all, 3);
  // One optimizer per FQN, each owning only that FQN (as ZeRO-1 ranks do).
  Named alone = clone(base);
  for (const auto& [fqn, t] : alone) {
    AdamW one(alone, c, {});
    one.set_owned({fqn});
    steps(one, 3);
    EXPECT_TRUE(test::bitwise_equal(one.state(fqn).exp_avg, all.state(fqn).exp_avg)) << fqn;
  }
  for (size_t i = 0; i < base.size(); ++i)
    EXPECT_TRUE(test::bitwise_equal(together[i].second, alone[i].second)) << base[i].first;
}

TEST(AdamW, ResultsDoNotDependOnTheThreadCount) {
  const model::MambaConfig c = config();
  const Named base = make_params(c, 2, false);
  const int before = at::get_num_threads();
  Named a = clone(base), b = clone(base);
  AdamW oa(a, c, {}), ob(b, c, {});
  at::set_num_threads(1);
  steps(oa, 2);
  at::set_num_threads(2);
  steps(ob, 2);
  at::set_num_threads(before);
  expect_same_bits(a, oa, b, ob);
}

TEST(AdamW, MissingGradientIsAZeroGradient) {
  const model::MambaConfig c = config();
  Named a = make_params(c, 3, false), b = clone(a);
  AdamW oa(a, c, {}), ob(b, c, {});
  steps(oa, 1);
  steps(ob, 1);  // both have moments now
  for (auto& [fqn, t] : a) t.mutable_grad().reset();
  for (auto& [fqn, t] : b) t.mutable_grad() = at::zeros_like(t);
  steps(oa, 2);
  steps(ob, 2);
  expect_same_bits(a, oa, b, ob);
}

TEST(AdamW, MatchesLibTorchsAdamW) {
  const model::MambaConfig c = config();
  AdamWOptions o;
  Named mine = make_params(c, 4, false);
  std::map<std::string, bool> no_decay;
  for (const auto& p : model::list_parameters(c)) no_decay[p.fqn] = p.no_weight_decay;
  std::vector<at::Tensor> decay_group, plain_group;
  Named theirs = clone(mine);
  for (auto& [fqn, t] : theirs) (no_decay[fqn] ? plain_group : decay_group).push_back(t);
  auto opts = [&](double wd) {
    return std::make_unique<torch::optim::AdamWOptions>(
        torch::optim::AdamWOptions(1e-2).betas({o.beta1, o.beta2}).eps(o.eps).weight_decay(wd));
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay_group, opts(o.weight_decay));
  groups.emplace_back(plain_group, opts(0.0));
  torch::optim::AdamW ref(groups, torch::optim::AdamWOptions(1e-2));
  AdamW opt(mine, c, o);
  for (int s = 0; s < 4; ++s) {
    opt.step(1e-2);
    ref.step();
  }
  for (size_t i = 0; i < mine.size(); ++i) {
    const double scale = theirs[i].second.abs().max().item<double>();
    EXPECT_LE(test::max_abs_diff(mine[i].second, theirs[i].second), 1e-6 * scale) << mine[i].first;
  }
}

}  // namespace
}  // namespace pmamba::pp
