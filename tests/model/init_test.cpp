#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "src/model/errors.h"
#include "src/model/fqn.h"
#include "src/model/init.h"
#include "src/model/mamba.h"
#include "tests/test_util.h"

namespace pmamba::model {
namespace {

std::map<std::string, at::Tensor> params_of(MambaLM& m) {
  std::map<std::string, at::Tensor> out;
  for (const auto& item : m->named_parameters()) out[item.key()] = item.value();
  return out;
}

TEST(Init, StageModelsHoldTheUnsplitValuesBitForBit) {
  MambaConfig c = preset("tiny");
  c.n_layer = 5;
  MambaLM whole(c, whole_model(c.n_layer));
  whole->init_parameters(1234);
  const auto ref = params_of(whole);
  for (const std::string layout : {"1,4", "0,2,3", "2,1,1,1", "0,1,1,1,2,0"}) {
    for (const auto& spec : make_stages(c.n_layer, 0, layout)) {
      MambaLM stage(c, spec);
      stage->init_parameters(1234);
      for (const auto& [fqn, value] : params_of(stage)) {
        ASSERT_TRUE(ref.count(fqn)) << fqn;
        EXPECT_TRUE(test::bitwise_equal(value, ref.at(fqn))) << layout << " " << fqn;
      }
    }
  }
}

TEST(Init, SeedChangesEveryRandomTensor) {
  const MambaConfig c = preset("tiny");
  MambaLM a(c, whole_model(c.n_layer)), b(c, whole_model(c.n_layer));
  a->init_parameters(1);
  b->init_parameters(2);
  const auto pa = params_of(a), pb = params_of(b);
  for (const auto& [fqn, value] : pa) {
    const bool deterministic = fqn.find("norm") != std::string::npos ||
                               fqn.find("A_log") != std::string::npos ||
                               (fqn.size() >= 2 && fqn.compare(fqn.size() - 2, 2, ".D") == 0);
    EXPECT_EQ(test::bitwise_equal(value, pb.at(fqn)), deterministic) << fqn;
  }
}

TEST(Init, TiedHeadStartsEqualToEmbeddingUntiedDoesNot) {
  MambaConfig c = preset("tiny");
  MambaLM tied(c, whole_model(c.n_layer));
  tied->init_parameters(5);
  EXPECT_TRUE(test::bitwise_equal(tied->lm_head->weight, tied->backbone->embedding->weight));
  c.tie_embeddings = false;
  MambaLM untied(c, whole_model(c.n_layer));
  untied->init_parameters(5);
  EXPECT_FALSE(test::bitwise_equal(untied->lm_head->weight, untied->backbone->embedding->weight));
}

TEST(Init, FollowsReferenceDistributions) {
  MambaConfig c = preset("tiny");
  c.d_model = 64;
  c.vocab_size = 512;
  c.n_layer = 4;
  MambaLM m(c, whole_model(c.n_layer));
  m->init_parameters(9);
  const auto p = params_of(m);
  const at::Tensor emb = p.at("backbone.embedding.weight");
  EXPECT_NEAR(emb.std().item<double>(), 0.02, 0.001);
  EXPECT_NEAR(emb.mean().item<double>(), 0.0, 0.001);
  // A_log rows are log(1..N): A = -(1..N).
  const at::Tensor A = -at::exp(p.at("backbone.layers.0.mixer.A_log"));
  EXPECT_NEAR(A[3][0].item<double>(), -1.0, 1e-6);
  EXPECT_NEAR(A[3][c.d_state - 1].item<double>(), -static_cast<double>(c.d_state), 1e-4);
  // softplus(dt bias) is the initial dt, inside [dt_min, dt_max].
  const at::Tensor dt = at::softplus(p.at("backbone.layers.2.mixer.dt_proj.bias"));
  EXPECT_GE(dt.min().item<double>(), c.dt_min * 0.999);
  EXPECT_LE(dt.max().item<double>(), c.dt_max * 1.001);
  // out_proj bound 1/sqrt(Di)/sqrt(n_layer); in_proj bound 1/sqrt(d).
  const double out_bound = 1.0 / std::sqrt(double(c.d_inner())) / std::sqrt(double(c.n_layer));
  EXPECT_LE(p.at("backbone.layers.1.mixer.out_proj.weight").abs().max().item<double>(), out_bound);
  EXPECT_GT(p.at("backbone.layers.1.mixer.out_proj.weight").abs().max().item<double>(), 0.9 * out_bound);
  EXPECT_LE(p.at("backbone.layers.1.mixer.in_proj.weight").abs().max().item<double>(),
            1.0 / std::sqrt(double(c.d_model)));
  EXPECT_TRUE(p.at("backbone.layers.1.mixer.D").eq(1).all().item<bool>());
  EXPECT_TRUE(p.at("backbone.norm_f.weight").eq(1).all().item<bool>());
}

TEST(Init, RejectsUnknownFqn) {
  at::Tensor t = at::empty({3});
  PMAMBA_EXPECT_THROW_WITH(init_parameter("backbone.layers.0.mixer.foo", t, preset("tiny"), 0),
                           ConfigError, "backbone.layers.0.mixer.foo");
}

TEST(Init, GeneratorIsAPureFunctionOfSeedStreamAndIndex) {
  const FqnRng a(7, "x"), b(7, "x"), c(8, "x"), d(7, "y");
  EXPECT_EQ(a.uniform(12345), b.uniform(12345));
  EXPECT_NE(a.uniform(12345), c.uniform(12345));
  EXPECT_NE(a.uniform(12345), d.uniform(12345));
  double sum = 0, sq = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    const double z = a.normal(i);
    sum += z;
    sq += z * z;
  }
  EXPECT_NEAR(sum / n, 0.0, 0.01);
  EXPECT_NEAR(sq / n, 1.0, 0.02);
}

}  // namespace
}  // namespace pmamba::model
