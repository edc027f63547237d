#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cstring>
#include <random>

#include "src/ckpt/manifest.h"
#include "src/pp/grads.h"
#include "src/pp/optim.h"
#include "src/pp/schedule.h"

namespace pmamba::pp {
namespace {

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// The tree as DESIGN.md §4a defines it, level by level: pair (2j, 2j + 1), carry an unpaired
// last block up unchanged.
float canonical_tree(std::vector<float> level) {
  while (level.size() > 1) {
    std::vector<float> up;
    for (size_t j = 0; j < level.size(); j += 2) up.push_back(j + 1 < level.size() ? level[j] + level[j + 1] : level[j]);
    level = up;
  }
  return level[0];
}

// Microbatch gradients of very different magnitudes, so that every summation order gives other bits.
std::vector<float> leaves(int m, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> mant(-1.f, 1.f);
  std::uniform_int_distribution<int> expo(-20, 20);
  std::vector<float> v;
  for (int i = 0; i < m; ++i) v.push_back(std::ldexp(mant(rng), expo(rng)));
  return v;
}

float fold(GradientTree& tree, at::Tensor& w, const std::vector<float>& xs, size_t begin, size_t end) {
  for (size_t i = begin; i < end; ++i) {
    w.mutable_grad() = at::full({1}, xs[i]);
    tree.push();
    EXPECT_FALSE(w.grad().defined()) << "push() must take the gradient out of .grad";
  }
  return tree.take()[0].item<float>();
}

TEST(GradientTree, FoldsMicrobatchesAlongTheCanonicalTree) {
  at::Tensor w = at::zeros({1}).requires_grad_(true);
  GradientTree tree({w});
  int differs_from_sequential = 0;
  for (int m = 1; m <= 40; ++m) {
    const std::vector<float> xs = leaves(m, 100 + m);
    const float got = fold(tree, w, xs, 0, xs.size());
    EXPECT_EQ(bits(got), bits(canonical_tree(xs))) << "m=" << m;
    float seq = 0;
    for (float x : xs) seq += x;
    differs_from_sequential += bits(seq) != bits(got);
  }
  // Otherwise the test could not tell the tree from autograd's left-to-right accumulation.
  EXPECT_GT(differs_from_sequential, 10);
}

TEST(GradientTree, ReplicaSubtreesCombinedAlongTheTreeGiveTheSameBits) {
  // M = 8 over D in {1, 2, 4, 8} and M = 12 over D in {3, 6, 12}: each replica folds its range
  // (a tree node), and the nodes are combined along the same tree (as reduce_over_replicas does).
  for (auto [m, d] : std::vector<std::pair<int, int>>{{8, 1}, {8, 2}, {8, 4}, {8, 8}, {12, 3}, {12, 6}, {12, 12}, {24, 3}}) {
    const std::vector<float> xs = leaves(m, 7 * m + d);
    std::vector<float> nodes;
    const int per = m / d;
    for (int r = 0; r < d; ++r) {
      at::Tensor w = at::zeros({1}).requires_grad_(true);
      GradientTree tree({w});
      nodes.push_back(fold(tree, w, xs, static_cast<size_t>(r * per), static_cast<size_t>((r + 1) * per)));
    }
    EXPECT_EQ(bits(canonical_tree(nodes)), bits(canonical_tree(xs))) << "m=" << m << " d=" << d;
  }
}

TEST(GradientTree, ParametersWithoutAGradientAreCarriedNotAddedToZero) {
  at::Tensor a = at::zeros({1}).requires_grad_(true), b = at::zeros({1}).requires_grad_(true);
  GradientTree tree({a, b});
  a.mutable_grad() = at::full({1}, -0.0f);  // -0 + 0 would be +0
  tree.push();
  tree.push();  // no gradient for either
  const std::vector<at::Tensor> sum = tree.take();
  ASSERT_TRUE(sum[0].defined());
  EXPECT_EQ(bits(sum[0].item<float>()), bits(-0.0f));
  EXPECT_FALSE(sum[1].defined());
}

TEST(ZeroOwners, AreDeterministicAndBalancedByBytes) {
  const std::vector<std::pair<std::string, int64_t>> sizes = {{"a", 100}, {"b", 10}, {"c", 10}, {"d", 50}, {"e", 45}};
  const auto one = ckpt::assign_balanced(sizes, 2);
  EXPECT_EQ(one, ckpt::assign_balanced(sizes, 2));
  EXPECT_EQ(one.at("a"), 0);
  EXPECT_EQ(one.at("b"), 1);
  EXPECT_EQ(one.at("c"), 1);
  EXPECT_EQ(one.at("d"), 1);
  EXPECT_EQ(one.at("e"), 1);  // 100 vs 70: the lighter rank takes it
  for (const auto& [fqn, d] : ckpt::assign_balanced(sizes, 1)) EXPECT_EQ(d, 0) << fqn;
}

TEST(Schedule, ForwardOnlyHasNoBackwardsAndPassesTheChecks) {
  const Schedule s = make_forward_only(3, 2);
  EXPECT_NO_THROW(check_schedule(s));
  for (const auto& stage : s.actions) {
    for (const Action& a : stage) EXPECT_TRUE(a.op == Op::kRecvAct || a.op == Op::kForward || a.op == Op::kSendAct);
  }
  Schedule bad = s;
  bad.actions[1].push_back({Op::kBackward, 0});
  EXPECT_THROW(check_schedule(bad), ScheduleError);
}

}  // namespace
}  // namespace pmamba::pp
