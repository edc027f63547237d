// The split == unsplit matrix: for every layer count, PP degree, partition (balanced and
// uneven, including an embedding-only first stage and a head-only last stage), boundary mode,
// tie and residual_in_fp32 setting, the chained stage models give logits and (after one
// backward pass and the tied-gradient sync) gradients that are bitwise equal to the unsplit
// model's.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "src/model/errors.h"
#include "src/model/mamba.h"
#include "tests/test_util.h"

namespace pmamba::model {
namespace {

struct RunResult {
  at::Tensor logits;
  at::Tensor loss;
  std::map<std::string, at::Tensor> grads;
};

RunResult run_chain(const MambaConfig& c, const std::vector<StageSpec>& stages, BoundaryMode mode,
                    const at::Tensor& ids, const at::Tensor& targets, uint64_t seed) {
  std::vector<MambaLM> models;
  for (const auto& s : stages) {
    models.emplace_back(c, s, mode);
    models.back()->init_parameters(seed);
  }
  const size_t n = models.size();
  std::vector<at::Tensor> inputs(n), outputs(n);
  for (size_t k = 0; k < n; ++k) {
    inputs[k] = k == 0 ? ids : outputs[k - 1].detach().requires_grad_(true);
    outputs[k] = models[k]->forward(inputs[k]);
  }
  RunResult r;
  r.logits = outputs.back();
  r.loss = at::cross_entropy_loss(r.logits.reshape({-1, r.logits.size(-1)}), targets.reshape({-1}),
                                  {}, at::Reduction::Sum) /
           static_cast<double>(targets.numel());
  r.loss.backward();
  for (size_t k = n - 1; k-- > 0;) outputs[k].backward(inputs[k + 1].grad());
  sync_tied_gradients(*models.front(), *models.back());
  for (auto& m : models) {
    for (const auto& item : m->named_parameters()) {
      EXPECT_TRUE(item.value().grad().defined()) << item.key() << " got no gradient";
      r.grads[item.key()] = item.value().grad();
    }
  }
  return r;
}

// Logits, loss and every gradient, byte for byte.
void expect_bitwise_equal(const RunResult& got, const RunResult& ref) {
  EXPECT_TRUE(test::bitwise_equal(got.logits, ref.logits)) << "max |diff| " << test::max_abs_diff(got.logits, ref.logits);
  EXPECT_TRUE(test::bitwise_equal(got.loss, ref.loss));
  ASSERT_EQ(got.grads.size(), ref.grads.size());
  for (const auto& [fqn, g] : ref.grads) {
    ASSERT_TRUE(got.grads.count(fqn)) << fqn;
    EXPECT_TRUE(test::bitwise_equal(got.grads.at(fqn), g))
        << fqn << " max |diff| " << test::max_abs_diff(got.grads.at(fqn), g);
  }
}

std::vector<std::vector<int64_t>> layouts(int64_t n_layer, int pp) {
  std::set<std::vector<int64_t>> out;
  out.insert(balanced_partition(n_layer, pp));
  if (pp >= 2) {
    auto first_empty = balanced_partition(n_layer, pp - 1);  // embedding-only first stage
    first_empty.insert(first_empty.begin(), 0);
    out.insert(first_empty);
    auto last_empty = balanced_partition(n_layer, pp - 1);  // head-only last stage
    last_empty.push_back(0);
    out.insert(last_empty);
    std::vector<int64_t> front_heavy(pp, 1);  // uneven: everything left over on stage 0
    if (n_layer >= pp) {
      front_heavy[0] = n_layer - (pp - 1);
      out.insert(front_heavy);
    }
  }
  if (pp >= 3 && pp - 2 <= n_layer) {  // both ends without layers
    auto both = balanced_partition(n_layer, pp - 2);
    both.insert(both.begin(), 0);
    both.push_back(0);
    out.insert(both);
  }
  return {out.begin(), out.end()};
}

class SplitMatrix : public ::testing::TestWithParam<std::tuple<int, BoundaryMode>> {};

TEST_P(SplitMatrix, ChainedStagesAreBitwiseEqualToUnsplit) {
  const auto [n_layer, mode] = GetParam();
  int cases = 0;
  for (const bool tie : {true, false}) {
    for (const bool fp32_residual : {true, false}) {
      MambaConfig c = preset("tiny");
      c.n_layer = n_layer;
      c.tie_embeddings = tie;
      c.residual_in_fp32 = fp32_residual;
      at::manual_seed(n_layer * 10 + tie * 2 + fp32_residual);
      const at::Tensor ids = at::randint(0, c.vocab_size, {2, 9}, at::kLong);
      const at::Tensor targets = at::randint(0, c.vocab_size, {2, 9}, at::kLong);
      const uint64_t seed = 100 + n_layer;
      const RunResult ref = run_chain(c, {whole_model(n_layer)}, mode, ids, targets, seed);
      for (int pp = 1; pp <= std::min<int64_t>(4, n_layer + 1); ++pp) {
        for (const auto& counts : layouts(n_layer, pp)) {
          const auto stages = make_stages(n_layer, counts);
          SCOPED_TRACE("n_layer " + std::to_string(n_layer) + " layout " + partition_string(stages) +
                       " boundary " + boundary_name(mode) + " tie " + std::to_string(tie) +
                       " residual_in_fp32 " + std::to_string(fp32_residual));
          expect_bitwise_equal(run_chain(c, stages, mode, ids, targets, seed), ref);
          ++cases;
        }
      }
    }
  }
  EXPECT_GT(cases, 0);
}

INSTANTIATE_TEST_SUITE_P(
    Layers, SplitMatrix,
    ::testing::Combine(::testing::Values(1, 2, 3, 5, 8),
                       ::testing::Values(BoundaryMode::kPacked, BoundaryMode::kSummed)),
    [](const ::testing::TestParamInfo<SplitMatrix::ParamType>& info) {
      return "NLayer" + std::to_string(std::get<0>(info.param)) +
             (std::get<1>(info.param) == BoundaryMode::kPacked ? "Packed" : "Summed");
    });

// ---- Mamba-2 and hybrids: every layer kind, any split ----

struct HybridCase {
  const char* name;
  MambaConfig config;
};

MambaConfig hybrid(int64_t n_layer, int64_t ngroups, std::vector<int64_t> attn, int64_t d_intermediate) {
  MambaConfig c = preset("tiny-hybrid");
  c.n_layer = n_layer;
  c.ngroups = ngroups;
  c.attn_layer_idx = std::move(attn);
  c.d_intermediate = d_intermediate;
  return c;
}

std::vector<HybridCase> hybrid_cases() {
  std::vector<HybridCase> v;
  v.push_back({"Groups1AttnFirstMlp", hybrid(3, 1, {0}, 64)});
  v.push_back({"Groups2AttnMiddleNoMlp", hybrid(3, 2, {1}, 0)});
  MambaConfig last = hybrid(4, 2, {3}, 96);
  last.attn.qkv_proj_bias = false;
  last.attn.out_proj_bias = false;
  v.push_back({"Groups2AttnLastMlpNoBias", last});
  MambaConfig m2 = hybrid(2, 2, {}, 64);  // Mamba-2 only, D per channel, no gated norm
  m2.D_has_hdim = true;
  m2.ssm_rmsnorm = false;
  v.push_back({"Mamba2OnlyDHdimNoNorm", m2});
  return v;
}

class HybridSplitMatrix : public ::testing::TestWithParam<std::tuple<int, BoundaryMode>> {};

TEST_P(HybridSplitMatrix, ChainedStagesAreBitwiseEqualToUnsplit) {
  const auto [index, mode] = GetParam();
  const HybridCase hc = hybrid_cases()[static_cast<size_t>(index)];
  int cases = 0;
  for (const bool tie : {true, false}) {
    MambaConfig c = hc.config;
    c.tie_embeddings = tie;
    c.residual_in_fp32 = tie;  // both settings of each, without doubling the cases
    const int64_t n_layer = c.n_layer;
    at::manual_seed(index * 10 + tie);
    const at::Tensor ids = at::randint(0, c.vocab_size, {2, 12}, at::kLong);  // L 12: one and a half chunks
    const at::Tensor targets = at::randint(0, c.vocab_size, {2, 12}, at::kLong);
    const uint64_t seed = 300 + index;
    const RunResult ref = run_chain(c, {whole_model(n_layer)}, mode, ids, targets, seed);
    for (int pp = 1; pp <= std::min<int64_t>(4, n_layer + 1); ++pp) {
      for (const auto& counts : layouts(n_layer, pp)) {
        const auto stages = make_stages(n_layer, counts);
        SCOPED_TRACE(std::string(hc.name) + " layout " + partition_string(stages) + " boundary " +
                     boundary_name(mode) + " tie " + std::to_string(tie));
        expect_bitwise_equal(run_chain(c, stages, mode, ids, targets, seed), ref);
        ++cases;
      }
    }
  }
  EXPECT_GT(cases, 4);
}

INSTANTIATE_TEST_SUITE_P(
    Kinds, HybridSplitMatrix,
    ::testing::Combine(::testing::Values(0, 1, 2, 3), ::testing::Values(BoundaryMode::kPacked, BoundaryMode::kSummed)),
    [](const ::testing::TestParamInfo<HybridSplitMatrix::ParamType>& info) {
      return std::string(hybrid_cases()[static_cast<size_t>(std::get<0>(info.param))].name) +
             (std::get<1>(info.param) == BoundaryMode::kPacked ? "Packed" : "Summed");
    });

// The acceptance layouts on its config: Mamba-2 with ngroups 2 and chunk_size 8, L 20,
// attention at layer 1, d_intermediate 96, 4 layers.
TEST(HybridSplitMatrix, AcceptanceLayoutsAreBitwiseEqualToUnsplit) {
  const MambaConfig c = hybrid(4, 2, {1}, 96);
  at::manual_seed(77);
  const at::Tensor ids = at::randint(0, c.vocab_size, {1, 20}, at::kLong);
  const at::Tensor targets = at::randint(0, c.vocab_size, {1, 20}, at::kLong);
  for (const auto& [layout, mode] : std::vector<std::pair<std::string, BoundaryMode>>{
           {"1,2,0,1", BoundaryMode::kPacked}, {"1,1,2", BoundaryMode::kSummed}, {"0,1,1,1,1", BoundaryMode::kPacked}}) {
    SCOPED_TRACE(layout);
    const RunResult ref = run_chain(c, {whole_model(c.n_layer)}, mode, ids, targets, 3);
    expect_bitwise_equal(run_chain(c, make_stages(c.n_layer, 0, layout), mode, ids, targets, 3), ref);
  }
}

TEST(SplitMatrix, TiedGradientsStayEqualAfterSync) {
  const MambaConfig c = preset("tiny");
  MambaLM m(c, whole_model(c.n_layer));
  m->init_parameters(3);
  const at::Tensor ids = at::randint(0, c.vocab_size, {2, 5}, at::kLong);
  m->forward(ids).sum().backward();
  EXPECT_FALSE(test::bitwise_equal(m->backbone->embedding->weight.grad(), m->lm_head->weight.grad()));
  const at::Tensor expect = m->backbone->embedding->weight.grad() + m->lm_head->weight.grad();
  sync_tied_gradients(*m, *m);
  EXPECT_TRUE(test::bitwise_equal(m->backbone->embedding->weight.grad(), expect));
  EXPECT_TRUE(test::bitwise_equal(m->lm_head->weight.grad(), expect));
}

TEST(SplitMatrix, ReceiverRejectsWrongBoundaryTensorNamingTheStage) {
  const MambaConfig c = preset("tiny");
  const auto stages = make_stages(c.n_layer, 2, "");
  MambaLM second(c, stages[1], BoundaryMode::kPacked);
  try {
    second->forward(at::zeros({2, 5, c.d_model}));
    FAIL() << "no error";
  } catch (const BoundaryError& e) {
    EXPECT_NE(std::string(e.what()).find("stage 1 (packed boundary) expects a tensor of shape (2, B, L, 32)"),
              std::string::npos)
        << e.what();
  }
  MambaLM summed(c, stages[1], BoundaryMode::kSummed);
  EXPECT_THROW(summed->forward(at::zeros({2, 5, c.d_model}, at::kDouble)), BoundaryError);
}

}  // namespace
}  // namespace pmamba::model
