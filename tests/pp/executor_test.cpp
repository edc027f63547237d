// The stage executor and the replica reduction with real c10d groups in one process: each rank
// is a thread with its own Transport (a TCPStore on loopback, ProcessGroupGloo), so these run
// the code the trainer runs without spawning processes.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <chrono>
#include <cmath>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "src/model/config.h"
#include "src/model/mamba.h"
#include "src/model/partition.h"
#include "src/pp/executor.h"
#include "src/pp/grads.h"
#include "src/pp/schedule.h"
#include "src/pp/transport.h"
#include "tests/test_util.h"

namespace pmamba::pp {
namespace {

// Runs body(rank, transport) on `world` threads joined by one rendezvous; rethrows the first failure.
void with_ranks(int world, int dp, const std::function<void(int, Transport&)>& body) {
  at::set_num_threads(1);
  const int port = free_port();
  std::vector<std::thread> threads;
  std::vector<std::string> errors(static_cast<size_t>(world));
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      try {
        DistEnv e;
        e.present = true;
        e.source = "test";
        e.rank = r;
        e.world = world;
        e.master_port = port;
        e.dp = dp;
        Transport tx(e, std::chrono::milliseconds(30000));
        body(r, tx);
        tx.barrier("the end of the test");
      } catch (const std::exception& ex) {
        errors[static_cast<size_t>(r)] = ex.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < world; ++r) EXPECT_EQ(errors[static_cast<size_t>(r)], "") << "rank " << r;
}

// Values of very different magnitudes, so that any other summation order gives other bits.
at::Tensor leaf(int i, int64_t n) {
  std::mt19937 rng(1000 + i);
  std::uniform_real_distribution<float> mant(-1.f, 1.f);
  std::uniform_int_distribution<int> expo(-20, 20);
  at::Tensor t = at::empty({n});
  for (int64_t k = 0; k < n; ++k) t[k] = std::ldexp(mant(rng), expo(rng));
  return t;
}

// The tree of DESIGN.md §4a, level by level, element-wise.
at::Tensor canonical_tree(std::vector<at::Tensor> level) {
  while (level.size() > 1) {
    std::vector<at::Tensor> up;
    for (size_t j = 0; j < level.size(); j += 2) up.push_back(j + 1 < level.size() ? level[j] + level[j + 1] : level[j]);
    level = up;
  }
  return level[0];
}

TEST(ReplicaReduction, FollowsTheTreeAtEveryDegreeAndEveryRankGetsTheSameBits) {
  const int64_t n = 4096;
  for (int d : {2, 3, 4, 5}) {
    const int per = 2, m = d * per;
    std::vector<at::Tensor> leaves;
    for (int i = 0; i < m; ++i) leaves.push_back(leaf(i, n));
    const at::Tensor want = canonical_tree(leaves);
    std::vector<at::Tensor> got(static_cast<size_t>(d));
    with_ranks(d, d, [&](int r, Transport& tx) {
      std::vector<int> group;
      for (int j = 0; j < d; ++j) group.push_back(j);
      tx.join_group(group);
      at::Tensor w = at::zeros({n}).requires_grad_(true);
      GradientTree tree({w});
      for (int i = r * per; i < (r + 1) * per; ++i) {
        w.mutable_grad() = leaves[static_cast<size_t>(i)].clone();
        tree.push();
      }
      std::vector<at::Tensor> grads = tree.take();
      reduce_over_replicas(grads, DataParallel{d, r, 0}, tx);
      got[static_cast<size_t>(r)] = grads[0];
    });
    for (int r = 0; r < d; ++r) {
      ASSERT_TRUE(got[static_cast<size_t>(r)].defined()) << "d=" << d << " rank " << r;
      EXPECT_TRUE(test::bitwise_equal(got[static_cast<size_t>(r)], want)) << "d=" << d << " rank " << r;
    }
  }
}

TEST(StageExecutor, TwoStagesOverGlooGiveTheUnsplitModelsOutputsAndGradients) {
  model::MambaConfig c = model::preset("tiny");
  const auto stages = model::make_stages(c.n_layer, 2, "1,3");
  const int m = 3;
  const int64_t rows = 2, len = 12;
  at::manual_seed(5);
  const at::Tensor ids = at::randint(0, c.vocab_size, {m * rows, len}, at::kLong);
  auto mb = [&](int i) { return ids.narrow(0, i * rows, rows); };
  auto loss_of = [&](const at::Tensor& y) { return y.to(at::kFloat).pow(2).mean(); };
  // Unsplit: per-microbatch gradients folded along the tree, and the outputs.
  model::MambaLM whole(c, model::make_stages(c.n_layer, 1, "")[0]);
  whole->init_parameters(9);
  std::vector<at::Tensor> outputs_whole;
  std::map<std::string, at::Tensor> grads_whole;
  {
    std::vector<at::Tensor> ps;
    for (auto& p : whole->parameters()) ps.push_back(p);
    GradientTree tree(ps);
    for (int i = 0; i < m; ++i) {
      const at::Tensor y = whole->forward(mb(i));
      outputs_whole.push_back(y.detach().clone());
      loss_of(y).backward();
      tree.push();
    }
    const std::vector<at::Tensor> g = tree.take();
    size_t k = 0;
    for (const auto& item : whole->named_parameters()) grads_whole[item.key()] = g[k++];
  }
  const Schedule train = make_1f1b(2, m), forward = make_forward_only(2, m);
  std::vector<at::Tensor> outputs_split;
  std::map<std::string, at::Tensor> grads_split;
  std::mutex mu;
  with_ranks(2, 1, [&](int r, Transport& tx) {
    model::MambaLM stage(c, stages[static_cast<size_t>(r)]);
    stage->init_parameters(9);
    std::vector<at::Tensor> ps;
    for (auto& p : stage->parameters()) ps.push_back(p);
    GradientTree tree(ps);
    StageStep st;
    st.model = stage.get();
    st.tx = &tx;
    st.prev = r - 1;
    st.next = r + 1;
    st.rows = rows;
    st.seq_len = len;
    st.input = mb;
    st.actions = &forward.actions[static_cast<size_t>(r)];
    st.training = false;
    const StageResult f = run_stage(st);
    st.actions = &train.actions[static_cast<size_t>(r)];
    st.training = true;
    st.loss = [&](int, const at::Tensor& y, int64_t* correct) {
      *correct = 0;
      return loss_of(y);
    };
    st.after_backward = [&](int) { tree.push(); };
    run_stage(st);
    const std::vector<at::Tensor> g = tree.take();
    std::lock_guard<std::mutex> lock(mu);
    if (r == 1) outputs_split = f.outputs;
    size_t k = 0;
    for (const auto& item : stage->named_parameters()) grads_split[item.key()] = g[k++];
  });
  ASSERT_EQ(outputs_split.size(), static_cast<size_t>(m));
  for (int i = 0; i < m; ++i) EXPECT_TRUE(test::bitwise_equal(outputs_split[static_cast<size_t>(i)], outputs_whole[static_cast<size_t>(i)])) << i;
  // Every gradient, the tie's two halves included (neither side has summed them yet).
  EXPECT_EQ(grads_split.size(), grads_whole.size());
  for (const auto& [fqn, g] : grads_whole) {
    ASSERT_TRUE(grads_split.count(fqn)) << fqn;
    EXPECT_TRUE(test::bitwise_equal(grads_split.at(fqn), g)) << fqn;
  }
}

}  // namespace
}  // namespace pmamba::pp
