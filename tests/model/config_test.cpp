#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "src/model/config.h"
#include "src/model/errors.h"
#include "src/model/partition.h"
#include "tests/test_util.h"

namespace pmamba::model {
namespace {

TEST(MambaConfig, JsonRoundTripKeepsEveryField) {
  MambaConfig c = preset("tiny");
  c.d_state = 5;
  c.d_conv = 3;
  c.expand = 3;
  c.dt_rank = 7;
  c.dt_min = 2e-3;
  c.dt_max = 0.2;
  c.dt_init_floor = 3e-4;
  c.conv_bias = false;
  c.bias = true;
  c.rms_norm = false;
  c.norm_eps = 1e-6;
  c.residual_in_fp32 = false;
  c.tie_embeddings = false;
  c.pad_vocab_size_multiple = 16;
  const MambaConfig back = config_from_json_string(config_to_json_string(c));
  EXPECT_EQ(back, c);
  EXPECT_EQ(back.d_state, 5);
  EXPECT_EQ(back.dt_rank, 7);
  EXPECT_FALSE(back.rms_norm);
  EXPECT_EQ(back.pad_vocab_size_multiple, 16);
  EXPECT_EQ(config_digest(back), config_digest(c));
  c.d_state = 6;
  EXPECT_NE(config_digest(back), config_digest(c));
}

TEST(MambaConfig, TinyPresetMatchesSpec) {
  const MambaConfig c = preset("tiny");
  EXPECT_EQ(c.d_model, 32);
  EXPECT_EQ(c.n_layer, 4);
  EXPECT_EQ(c.vocab_size, 64);
  EXPECT_EQ(c.d_state, 8);
  EXPECT_EQ(c.d_conv, 4);
  EXPECT_EQ(c.expand, 2);
  EXPECT_EQ(c.dt_rank_value(), 2);
}

TEST(MambaConfig, PublishedPresetsPadVocabulary) {
  const MambaConfig c = preset("mamba-130m");
  EXPECT_EQ(c.d_model, 768);
  EXPECT_EQ(c.n_layer, 24);
  EXPECT_EQ(c.vocab_size, 50277);
  EXPECT_EQ(c.padded_vocab(), 50280);
  EXPECT_EQ(c.dt_rank_value(), 48);
  EXPECT_EQ(preset("mamba-2.8b").dt_rank_value(), 160);
}

TEST(MambaConfig, MissingOptionalKeysTakeDefaults) {
  const MambaConfig c = config_from_json_string(R"({"d_model": 64, "n_layer": 2, "vocab_size": 100})");
  EXPECT_EQ(c.d_state, 16);
  EXPECT_EQ(c.dt_rank, 4);
  EXPECT_TRUE(c.tie_embeddings);
  EXPECT_EQ(c.padded_vocab(), 104);
}

TEST(MambaConfig, RejectsNonPositiveDModelNamingTheValue) {
  PMAMBA_EXPECT_THROW_WITH(
      config_from_json_string(R"({"d_model": 0, "n_layer": 2, "vocab_size": 100})"),
      ConfigError, "d_model must be > 0 but is 0");
  PMAMBA_EXPECT_THROW_WITH(
      config_from_json_string(R"({"d_model": -3, "n_layer": 2, "vocab_size": 100})"),
      ConfigError, "but is -3");
}

TEST(MambaConfig, RejectsUnknownPreset) {
  PMAMBA_EXPECT_THROW_WITH(preset("mamba-7b"), ConfigError, "unknown preset 'mamba-7b'");
}

TEST(MambaConfig, RejectsUnknownKeyAndWrongType) {
  PMAMBA_EXPECT_THROW_WITH(
      config_from_json_string(R"({"d_model": 8, "n_layer": 2, "vocab_size": 10, "d_stat": 4})"),
      ConfigError, "unknown key 'd_stat'");
  PMAMBA_EXPECT_THROW_WITH(
      config_from_json_string(R"({"d_model": "8", "n_layer": 2, "vocab_size": 10})"),
      ConfigError, "'d_model' must be an integer");
  PMAMBA_EXPECT_THROW_WITH(config_from_json_string(R"({"n_layer": 2, "vocab_size": 10})"),
                           ConfigError, "required key 'd_model'");
  PMAMBA_EXPECT_THROW_WITH(config_from_json_string("{not json"), ConfigError, "not valid JSON");
}

TEST(Partition, BalancedPutsExtraLayersFirst) {
  EXPECT_EQ(balanced_partition(8, 3), (std::vector<int64_t>{3, 3, 2}));
  EXPECT_EQ(balanced_partition(3, 4), (std::vector<int64_t>{1, 1, 1, 0}));
  EXPECT_EQ(balanced_partition(4, 1), (std::vector<int64_t>{4}));
}

TEST(Partition, ExplicitLayoutBecomesStageSpecs) {
  const auto stages = make_stages(12, 3, "3,5,4");
  ASSERT_EQ(stages.size(), 3u);
  EXPECT_EQ(stages[0], (StageSpec{0, 3, 0, 3}));
  EXPECT_EQ(stages[1], (StageSpec{1, 3, 3, 8}));
  EXPECT_EQ(stages[2], (StageSpec{2, 3, 8, 12}));
  EXPECT_EQ(partition_string(stages), "3,5,4");
  const auto edge = make_stages(4, 3, "0,4,0");
  EXPECT_EQ(edge[0].num_layers(), 0);
  EXPECT_TRUE(edge[2].is_last());
}

TEST(Partition, RejectsSumThatDoesNotMatchNLayer) {
  PMAMBA_EXPECT_THROW_WITH(make_stages(12, 3, "3,5,5"), ConfigError,
                           "3,5,5 sums to 13 layers but the model has n_layer = 12");
}

TEST(Partition, RejectsMoreStagesThanAllowed) {
  PMAMBA_EXPECT_THROW_WITH(balanced_partition(3, 5), ConfigError,
                           "5 stages is more than allowed for 3 layers");
  PMAMBA_EXPECT_THROW_WITH(make_stages(2, 4, "0,1,1,0"), ConfigError, "more than allowed");
  PMAMBA_EXPECT_THROW_WITH(balanced_partition(3, 0), ConfigError, "must be >= 1 but is 0");
}

TEST(Partition, RejectsMalformedListNamingTheToken) {
  PMAMBA_EXPECT_THROW_WITH(parse_partition("3,x,4"), ConfigError, "'x'");
  PMAMBA_EXPECT_THROW_WITH(parse_partition("3,-1"), ConfigError, "'-1'");
  PMAMBA_EXPECT_THROW_WITH(parse_partition("3,4,"), ConfigError, "trailing comma");
  PMAMBA_EXPECT_THROW_WITH(make_stages(8, 2, "4,2,2"), ConfigError, "lists 3 stages but --pp is 2");
}

}  // namespace
}  // namespace pmamba::model
