#include <gtest/gtest.h>

#include <map>
#include <set>

#include "src/model/fqn.h"
#include "src/model/mamba.h"

namespace pmamba::model {
namespace {

using ShapeMap = std::map<std::string, std::vector<int64_t>>;

// Written from reference/mamba.md §2 (state-spaces/mamba MambaLMHeadModel), independently of
// src/model: d = d_model, Di = expand * d, N = d_state, R = dt_rank, K = d_conv, V = padded vocab.
ShapeMap reference_table(int64_t d, int64_t n_layer, int64_t vocab, int64_t N, int64_t K,
                         int64_t expand, bool bias, bool rms, bool conv_bias) {
  const int64_t Di = expand * d, R = (d + 15) / 16, V = (vocab + 7) / 8 * 8;
  ShapeMap m;
  m["backbone.embedding.weight"] = {V, d};
  for (int64_t i = 0; i < n_layer; ++i) {
    const std::string p = "backbone.layers." + std::to_string(i) + ".";
    m[p + "norm.weight"] = {d};
    if (!rms) m[p + "norm.bias"] = {d};
    m[p + "mixer.in_proj.weight"] = {2 * Di, d};
    if (bias) m[p + "mixer.in_proj.bias"] = {2 * Di};
    m[p + "mixer.conv1d.weight"] = {Di, 1, K};
    if (conv_bias) m[p + "mixer.conv1d.bias"] = {Di};
    m[p + "mixer.x_proj.weight"] = {R + 2 * N, Di};
    m[p + "mixer.dt_proj.weight"] = {Di, R};
    m[p + "mixer.dt_proj.bias"] = {Di};
    m[p + "mixer.A_log"] = {Di, N};
    m[p + "mixer.D"] = {Di};
    m[p + "mixer.out_proj.weight"] = {d, Di};
    if (bias) m[p + "mixer.out_proj.bias"] = {d};
  }
  m["backbone.norm_f.weight"] = {d};
  if (!rms) m["backbone.norm_f.bias"] = {d};
  m["lm_head.weight"] = {V, d};
  return m;
}

ShapeMap model_table(const MambaConfig& c, const StageSpec& s) {
  MambaLM m(c, s);
  ShapeMap out;
  for (const auto& item : m->named_parameters()) {
    EXPECT_TRUE(out.emplace(item.key(), item.value().sizes().vec()).second) << item.key();
  }
  return out;
}

struct Variant {
  const char* name;
  MambaConfig config;
  bool bias, rms, conv_bias;
};

std::vector<Variant> variants() {
  std::vector<Variant> v;
  MambaConfig tiny = preset("tiny");
  v.push_back({"tiny", tiny, false, true, true});
  MambaConfig odd = tiny;
  odd.d_model = 24;
  odd.n_layer = 3;
  odd.vocab_size = 50;
  odd.d_state = 3;
  odd.d_conv = 2;
  odd.expand = 3;
  odd.dt_rank = 0;
  v.push_back({"odd", odd, false, true, true});
  MambaConfig biased = tiny;
  biased.bias = true;
  biased.rms_norm = false;
  biased.conv_bias = false;
  biased.tie_embeddings = false;
  v.push_back({"biased-layernorm-untied", biased, true, false, false});
  return v;
}

TEST(Fqn, UnsplitModelMatchesReferenceTable) {
  for (const auto& v : variants()) {
    SCOPED_TRACE(v.name);
    const MambaConfig& c = v.config;
    const ShapeMap expected = reference_table(c.d_model, c.n_layer, c.vocab_size, c.d_state,
                                              c.d_conv, c.expand, v.bias, v.rms, v.conv_bias);
    EXPECT_EQ(model_table(c, whole_model(c.n_layer)), expected);
    ShapeMap listed;
    for (const auto& p : list_parameters(c)) listed[p.fqn] = p.shape;
    EXPECT_EQ(listed, expected);
  }
}

TEST(Fqn, StagesPartitionTheFqnsExactlyOnce) {
  for (const auto& v : variants()) {
    const MambaConfig& c = v.config;
    const ShapeMap whole = model_table(c, whole_model(c.n_layer));
    for (int pp = 1; pp <= c.n_layer + 1; ++pp) {
      std::vector<std::vector<int64_t>> layouts = {balanced_partition(c.n_layer, pp)};
      if (pp >= 2) {  // embedding-only first stage, head-only last stage
        auto first = balanced_partition(c.n_layer, pp - 1);
        first.insert(first.begin(), 0);
        layouts.push_back(first);
        auto last = balanced_partition(c.n_layer, pp - 1);
        last.push_back(0);
        layouts.push_back(last);
      }
      for (const auto& counts : layouts) {
        const auto stages = make_stages(c.n_layer, counts);
        SCOPED_TRACE(std::string(v.name) + " layout " + partition_string(stages));
        ShapeMap uni;
        for (const auto& s : stages) {
          const ShapeMap part = model_table(c, s);
          for (const auto& [fqn, shape] : part) {
            EXPECT_TRUE(uni.emplace(fqn, shape).second) << fqn << " held by two stages";
            int owner = -1;
            for (const auto& p : list_parameters(c)) {
              if (p.fqn == fqn) owner = owner_stage(p, stages);
            }
            EXPECT_EQ(owner, s.stage) << fqn;
          }
        }
        EXPECT_EQ(uni, whole);
      }
    }
  }
}

TEST(Fqn, LayerKeysAreGlobalIndices) {
  const MambaConfig c = preset("tiny");
  const auto stages = make_stages(c.n_layer, 2, "1,3");
  const ShapeMap second = model_table(c, stages[1]);
  EXPECT_TRUE(second.count("backbone.layers.1.mixer.A_log"));
  EXPECT_TRUE(second.count("backbone.layers.3.mixer.A_log"));
  EXPECT_FALSE(second.count("backbone.layers.0.mixer.A_log"));
  EXPECT_EQ(layer_of("backbone.layers.17.mixer.D"), 17);
  EXPECT_EQ(layer_of("backbone.norm_f.weight"), -1);
  EXPECT_EQ(layer_of("backbone.layers.07.mixer.D"), -1);
}

// Parameter counts of the published models, reference/mamba.md §1 (tie counted once).
TEST(Fqn, CountsPublishedModelsWithoutAllocating) {
  EXPECT_EQ(count_parameters(preset("mamba-130m")), 129135360);
  EXPECT_EQ(count_parameters(preset("mamba-370m")), 371516416);
  EXPECT_EQ(count_parameters(preset("mamba-790m")), 793204224);
  EXPECT_EQ(count_parameters(preset("mamba-1.4b")), 1372178432);
  EXPECT_EQ(count_parameters(preset("mamba-2.8b")), 2768345600);
}

TEST(Fqn, NoWeightDecayRuleFollowsNames) {
  for (const auto& p : list_parameters(preset("tiny"))) {
    const bool expect = p.fqn.find("A_log") != std::string::npos ||
                        p.fqn.find(".D") == p.fqn.size() - 2 || p.fqn.find("norm") != std::string::npos ||
                        p.fqn.find("bias") != std::string::npos;
    EXPECT_EQ(p.no_weight_decay, expect) << p.fqn;
  }
}

}  // namespace
}  // namespace pmamba::model
