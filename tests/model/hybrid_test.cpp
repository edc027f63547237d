// Mamba-2 and hybrid models: config (pmamba's and mamba_ssm's JSON), the FQN table against
// mamba_ssm's shapes (hand-derived here from reference/scale-out.md §2, not from src/model),
// parameter counts of the presets, init distributions and the one-token step form.
#include <c10/core/GradMode.h>
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>

#include "src/model/config.h"
#include "src/model/errors.h"
#include "src/model/fqn.h"
#include "src/model/mamba.h"
#include "tests/test_util.h"

namespace pmamba::model {
namespace {

using ShapeMap = std::map<std::string, std::vector<int64_t>>;

ShapeMap table_of(const MambaConfig& c) {
  ShapeMap m;
  for (const auto& p : list_parameters(c)) m[p.fqn] = p.shape;
  return m;
}

ShapeMap module_table(const MambaConfig& c, const StageSpec& s) {
  MambaLM m(c, s);
  ShapeMap out;
  for (const auto& item : m->named_parameters()) out[item.key()] = item.value().sizes().vec();
  return out;
}

// tiny-hybrid by hand: d 32, E 64, N 16, G 2, P 8 -> H 8, conv channels E + 2GN = 128,
// in_proj rows 2E + 2GN + H = 200; attention 4 heads + 2 * 2 KV heads of 8 = 64 rows, biases
// on (MHA defaults); MLP hidden 64 rounded up to 128; vocab 64 (a multiple of 16).
ShapeMap tiny_hybrid_by_hand() {
  ShapeMap m;
  m["backbone.embedding.weight"] = {64, 32};
  for (int i = 0; i < 4; ++i) {
    const std::string p = "backbone.layers." + std::to_string(i) + ".";
    m[p + "norm.weight"] = {32};
    if (i == 2) {
      m[p + "mixer.in_proj.weight"] = {64, 32};
      m[p + "mixer.in_proj.bias"] = {64};
      m[p + "mixer.out_proj.weight"] = {32, 32};
      m[p + "mixer.out_proj.bias"] = {32};
    } else {
      m[p + "mixer.in_proj.weight"] = {200, 32};
      m[p + "mixer.conv1d.weight"] = {128, 1, 4};
      m[p + "mixer.conv1d.bias"] = {128};
      m[p + "mixer.dt_bias"] = {8};
      m[p + "mixer.A_log"] = {8};
      m[p + "mixer.D"] = {8};
      m[p + "mixer.norm.weight"] = {64};
      m[p + "mixer.out_proj.weight"] = {32, 64};
    }
    m[p + "norm2.weight"] = {32};
    m[p + "mlp.fc1.weight"] = {256, 32};
    m[p + "mlp.fc2.weight"] = {32, 128};
  }
  m["backbone.norm_f.weight"] = {32};
  m["lm_head.weight"] = {64, 32};
  return m;
}

TEST(HybridFqn, TinyHybridTableMatchesMambaSsmShapes) {
  const MambaConfig c = preset("tiny-hybrid");
  EXPECT_EQ(table_of(c), tiny_hybrid_by_hand());
  EXPECT_EQ(module_table(c, whole_model(c.n_layer)), tiny_hybrid_by_hand());
  // 3 Mamba-2 blocks of 21,528 + one attention block of 15,520 + embedding 2,048 + norm_f 32.
  EXPECT_EQ(count_parameters(c), 82184);
  EXPECT_EQ(c.layer_kind(2), LayerKind::kAttention);
  EXPECT_EQ(c.layer_kind(3), LayerKind::kMamba2);
}

TEST(HybridFqn, StagesRegisterOnlyTheirLayersWhateverTheKind) {
  const MambaConfig c = preset("tiny-hybrid");
  const auto stages = make_stages(c.n_layer, 0, "1,2,0,1");
  ShapeMap merged;
  for (const auto& s : stages) {
    for (const auto& [fqn, shape] : module_table(c, s)) {
      EXPECT_TRUE(merged.emplace(fqn, shape).second) << fqn << " registered twice";
      if (fqn == "lm_head.weight") continue;
      EXPECT_EQ(owner_stage(ParamInfo{fqn, shape, layer_of(fqn), false, ""}, stages), s.stage) << fqn;
    }
  }
  EXPECT_EQ(merged, tiny_hybrid_by_hand());
  // A stage holding only the attention layer.
  const auto only_attn = make_stages(c.n_layer, 0, "2,1,1");
  ShapeMap mid = module_table(c, only_attn[1]);
  EXPECT_EQ(mid.size(), 8u);
  EXPECT_TRUE(mid.count("backbone.layers.2.mixer.in_proj.bias"));
}

// The published configs, counted from their shapes (the issue's table, derived by hand from
// reference/scale-out.md §2): unique parameters, the tied head once.
TEST(HybridFqn, PresetsCountThePublishedParameters) {
  EXPECT_EQ(count_parameters(preset("mamba2-130m")), 128989632);
  EXPECT_EQ(count_parameters(preset("mamba2-370m")), 368346624);
  EXPECT_EQ(count_parameters(preset("mamba2-780m")), 780161280);
  EXPECT_EQ(count_parameters(preset("mamba2-1.3b")), 1343757312);
  EXPECT_EQ(count_parameters(preset("mamba2-2.7b")), 2702599680);
  EXPECT_EQ(count_parameters(preset("bamba-9b")), 9780235392);
}

TEST(HybridFqn, Bamba9bShapesAreTheModelCards) {
  const ShapeMap t = table_of(preset("bamba-9b"));
  // reference/scale-out.md §2.4: 128 heads of 64, conv_dim 8448, attention 32 + 2 * 8 heads of 128.
  EXPECT_EQ(t.at("backbone.layers.0.mixer.in_proj.weight"), (std::vector<int64_t>{16768, 4096}));
  EXPECT_EQ(t.at("backbone.layers.0.mixer.conv1d.weight"), (std::vector<int64_t>{8448, 1, 4}));
  EXPECT_EQ(t.at("backbone.layers.0.mixer.A_log"), (std::vector<int64_t>{128}));
  EXPECT_EQ(t.at("backbone.layers.9.mixer.in_proj.weight"), (std::vector<int64_t>{6144, 4096}));
  EXPECT_EQ(t.at("backbone.layers.27.mixer.out_proj.weight"), (std::vector<int64_t>{4096, 4096}));
  EXPECT_FALSE(t.count("backbone.layers.9.mixer.in_proj.bias"));
  EXPECT_FALSE(t.count("backbone.layers.9.mixer.conv1d.weight"));
  EXPECT_EQ(t.at("backbone.layers.31.mlp.fc1.weight"), (std::vector<int64_t>{28672, 4096}));
  EXPECT_EQ(t.at("backbone.layers.31.mlp.fc2.weight"), (std::vector<int64_t>{4096, 14336}));
  EXPECT_EQ(t.at("lm_head.weight"), (std::vector<int64_t>{128256, 4096}));
}

TEST(HybridFqn, NoWeightDecayOnDtBiasALogDNormsAndBiases) {
  std::map<std::string, bool> nwd;
  for (const auto& p : list_parameters(preset("tiny-hybrid"))) nwd[p.fqn] = p.no_weight_decay;
  for (const char* f : {"mixer.dt_bias", "mixer.A_log", "mixer.D", "mixer.norm.weight", "mixer.conv1d.bias",
                        "norm.weight", "norm2.weight"}) {
    EXPECT_TRUE(nwd.at(std::string("backbone.layers.0.") + f)) << f;
  }
  EXPECT_TRUE(nwd.at("backbone.layers.2.mixer.in_proj.bias"));
  EXPECT_TRUE(nwd.at("backbone.layers.2.mixer.out_proj.bias"));
  for (const char* f : {"0.mixer.in_proj.weight", "0.mixer.conv1d.weight", "0.mixer.out_proj.weight",
                        "2.mixer.in_proj.weight", "2.mixer.out_proj.weight", "1.mlp.fc1.weight", "1.mlp.fc2.weight"}) {
    EXPECT_FALSE(nwd.at(std::string("backbone.layers.") + f)) << f;
  }
}

// ---- config ----

TEST(HybridConfig, MambaSsmConfigJsonLoadsAsItIs) {
  // state-spaces/mamba2-130m's config.json.
  const MambaConfig c = config_from_json_string(
      R"({"d_model": 768, "d_intermediate": 0, "n_layer": 24, "vocab_size": 50277,
          "ssm_cfg": {"layer": "Mamba2"}, "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": true,
          "residual_in_fp32": true, "fused_add_norm": true, "pad_vocab_size_multiple": 16,
          "tie_embeddings": true})");
  EXPECT_EQ(c, preset("mamba2-130m"));
  EXPECT_EQ(c.d_state, 128);  // Mamba2's default, not Mamba-1's 16
  EXPECT_EQ(c.nheads(), 24);
  // state-spaces/mamba-130m's config.json: a Mamba-1 model, the same config (and digest) as the preset.
  const MambaConfig m1 = config_from_json_string(
      R"({"d_model": 768, "n_layer": 24, "vocab_size": 50277, "ssm_cfg": {}, "rms_norm": true,
          "residual_in_fp32": true, "fused_add_norm": true, "pad_vocab_size_multiple": 8})");
  EXPECT_EQ(m1, preset("mamba-130m"));
  EXPECT_EQ(config_digest(m1), config_digest(preset("mamba-130m")));
  // fms-fsdp's mamba_9.8b variant.
  const MambaConfig b = config_from_json_string(
      R"({"d_model": 4096, "d_intermediate": 14336, "n_layer": 32, "vocab_size": 128256,
          "ssm_cfg": {"layer": "Mamba2"}, "attn_layer_idx": [9, 18, 27],
          "attn_cfg": {"causal": true, "d_conv": 0, "head_dim": 128, "num_heads": 32, "num_heads_kv": 8,
                       "out_proj_bias": false, "qkv_proj_bias": false, "rotary_emb_dim": 64},
          "rms_norm": true, "residual_in_fp32": true, "fused_add_norm": true,
          "pad_vocab_size_multiple": 16, "tie_embeddings": false})");
  EXPECT_EQ(b, preset("bamba-9b"));
}

TEST(HybridConfig, PlainMambaOneKeepsTheFlatForm) {
  const nlohmann::json j = config_to_json(preset("tiny"));
  EXPECT_FALSE(j.contains("ssm_cfg"));
  EXPECT_FALSE(j.contains("d_intermediate"));
  EXPECT_EQ(j.size(), 18u);  // the keys every pmamba checkpoint before Mamba-2 carries
}

TEST(HybridConfig, NestedFormRoundTripsEveryField) {
  MambaConfig c = preset("tiny-hybrid");
  c.A_init_min = 2;
  c.A_init_max = 8;
  c.dt_limit_min = 1e-3;
  c.D_has_hdim = true;
  c.attn.rotary_emb_base = 500000;
  c.attn.softmax_scale = 0.25;
  c.attn.qkv_proj_bias = false;
  const std::string text = config_to_json_string(c);
  const nlohmann::json j = nlohmann::json::parse(text);
  EXPECT_EQ(j.at("ssm_cfg").at("layer"), "Mamba2");
  EXPECT_EQ(j.at("attn_layer_idx"), nlohmann::json::array({2}));
  const MambaConfig back = config_from_json_string(text);
  EXPECT_EQ(back, c);
  EXPECT_EQ(back.dt_limit_min, 1e-3);
  EXPECT_TRUE(std::isinf(back.dt_limit_max));
  EXPECT_EQ(back.attn.softmax_scale, 0.25);
  EXPECT_EQ(config_digest(back), config_digest(c));
  c.ngroups = 4;
  EXPECT_NE(config_digest(back), config_digest(c));
}

TEST(HybridConfig, RefusesMathChangingOptionsByName) {
  const std::string head = R"({"d_model": 32, "n_layer": 2, "vocab_size": 64, )";
  auto load = [&](const std::string& rest) { return config_from_json_string(head + rest + "}"); };
  PMAMBA_EXPECT_THROW_WITH(load(R"("ssm_cfg": {"layer": "Mamba2", "headdim": 8, "norm_before_gate": true})"),
                           ConfigError, "ssm_cfg.norm_before_gate = true is not supported");
  PMAMBA_EXPECT_THROW_WITH(load(R"("ssm_cfg": {"layer": "Mamba2", "headdim": 8, "d_ssm": 32})"), ConfigError,
                           "ssm_cfg.d_ssm = 32 is not supported");
  PMAMBA_EXPECT_THROW_WITH(load(R"("ssm_cfg": {"layer": "Mamba3"})"), ConfigError, "ssm_cfg.layer = \"Mamba3\"");
  PMAMBA_EXPECT_THROW_WITH(load(R"("ssm_cfg": {"layer": "Mamba2", "headdim": 12})"), ConfigError,
                           "ssm_cfg.headdim must be a divisor of d_inner");
  PMAMBA_EXPECT_THROW_WITH(load(R"("ssm_cfg": {"layer": "Mamba2", "headdim": 16, "ngroups": 3})"), ConfigError,
                           "ssm_cfg.ngroups must be a divisor of the head count");
  PMAMBA_EXPECT_THROW_WITH(load(R"("ssm_cfg": {"layer": "Mamba2", "headdim": 8, "chunk_size": 0})"), ConfigError,
                           "ssm_cfg.chunk_size must be in [1, 65536] but is 0");
  PMAMBA_EXPECT_THROW_WITH(load(R"("attn_layer_idx": [0], "attn_cfg": {"num_heads": 100000, "causal": true})"),
                           ConfigError, "attn_cfg.num_heads must be in [1, 4096] but is 100000");
  PMAMBA_EXPECT_THROW_WITH(load(R"("ssm_cfg": {"layer": "Mamba2", "headdm": 8})"), ConfigError,
                           "unknown key 'ssm_cfg.headdm'");
  PMAMBA_EXPECT_THROW_WITH(load(R"("d_state": 8, "ssm_cfg": {"layer": "Mamba2"})"), ConfigError,
                           "'d_state' is given at the top level and ssm_cfg is present");
  const std::string attn = R"("attn_layer_idx": [1], "attn_cfg": {"num_heads": 4)";
  PMAMBA_EXPECT_THROW_WITH(load(attn + "}"), ConfigError, "attn_cfg.causal must be true");
  PMAMBA_EXPECT_THROW_WITH(load(attn + R"(, "causal": true, "mlp_dim": 64})"), ConfigError,
                           "attn_cfg.mlp_dim = 64 is not supported");
  PMAMBA_EXPECT_THROW_WITH(load(attn + R"(, "causal": true, "d_conv": 4})"), ConfigError,
                           "attn_cfg.d_conv = 4 is not supported");
  PMAMBA_EXPECT_THROW_WITH(load(attn + R"(, "causal": true, "rotary_emb_dim": 8, "rotary_emb_interleaved": true})"),
                           ConfigError, "attn_cfg.rotary_emb_interleaved = true is not supported");
  PMAMBA_EXPECT_THROW_WITH(load(attn + R"(, "causal": true, "num_heads_kv": 3})"), ConfigError,
                           "attn_cfg.num_heads_kv must be a divisor of num_heads");
  PMAMBA_EXPECT_THROW_WITH(load(R"("attn_layer_idx": [2], "attn_cfg": {"num_heads": 4, "causal": true})"),
                           ConfigError, "attn_layer_idx entry must be a layer index in [0, n_layer) but is 2");
  PMAMBA_EXPECT_THROW_WITH(load(R"("attn_layer_idx": [1, 1], "attn_cfg": {"num_heads": 4, "causal": true})"),
                           ConfigError, "unique");
  PMAMBA_EXPECT_THROW_WITH(load(R"("attn_layer_idx": [1])"), ConfigError, "attn_cfg is missing");
}

TEST(HybridConfig, RejectsANulByteAndWhatFollowsIt) {
  const std::string text = config_to_json_string(preset("tiny-hybrid"));
  PMAMBA_EXPECT_THROW_WITH(config_from_json_string(text + std::string(1, '\0') + "junk"), ConfigError,
                           "a NUL byte at offset " + std::to_string(text.size()));
}

TEST(HybridConfig, AcceptsKeysThatDoNotChangeTheMath) {
  const MambaConfig c = config_from_json_string(
      R"({"d_model": 32, "n_layer": 2, "vocab_size": 64, "fused_add_norm": false,
          "ssm_cfg": {"layer": "Mamba2", "headdim": 8, "use_mem_eff_path": false, "d_ssm": null,
                      "conv_init": null}})");
  EXPECT_EQ(c.ssm_layer, SsmLayer::kMamba2);
  const MambaConfig m1 = config_from_json_string(
      R"({"d_model": 32, "n_layer": 2, "vocab_size": 64, "ssm_cfg": {"layer": "Mamba1", "use_fast_path": true,
          "dt_rank": "auto", "dt_init": "random"}})");
  EXPECT_EQ(m1.dt_rank, 2);
  EXPECT_TRUE(m1.is_plain_mamba1());
}

TEST(HybridConfig, GatedMlpHiddenRoundsUpToAMultipleOf128) {
  MambaConfig c = preset("tiny-hybrid");
  c.d_intermediate = 96;
  EXPECT_EQ(c.mlp_hidden(), 128);
  c.d_intermediate = 129;
  EXPECT_EQ(c.mlp_hidden(), 256);
}

// ---- init ----

TEST(HybridInit, FollowsMambaSsmDistributions) {
  MambaConfig c = preset("tiny-hybrid");
  c.d_model = 64;
  c.headdim = 16;  // H = 8
  c.attn.head_dim = 16;
  MambaLM m(c, whole_model(c.n_layer));
  m->init_parameters(11);
  std::map<std::string, at::Tensor> p;
  for (const auto& item : m->named_parameters()) p[item.key()] = item.value();
  const at::Tensor A = at::exp(p.at("backbone.layers.0.mixer.A_log"));
  EXPECT_GE(A.min().item<double>(), 1.0);
  EXPECT_LE(A.max().item<double>(), 16.0);
  EXPECT_GT(A.max().item<double>() - A.min().item<double>(), 1.0);  // drawn, not constant
  const at::Tensor dt = at::softplus(p.at("backbone.layers.1.mixer.dt_bias"));
  EXPECT_GE(dt.min().item<double>(), c.dt_min * 0.999);
  EXPECT_LE(dt.max().item<double>(), c.dt_max * 1.001);
  EXPECT_TRUE(p.at("backbone.layers.1.mixer.D").eq(1).all().item<bool>());
  EXPECT_TRUE(p.at("backbone.layers.1.mixer.norm.weight").eq(1).all().item<bool>());
  EXPECT_TRUE(p.at("backbone.layers.1.norm2.weight").eq(1).all().item<bool>());
  EXPECT_TRUE(p.at("backbone.layers.2.mixer.in_proj.bias").eq(0).all().item<bool>());
  EXPECT_TRUE(p.at("backbone.layers.2.mixer.out_proj.bias").eq(0).all().item<bool>());
  // Residual projections: U(+-1/sqrt(fan_in)) / sqrt(2 * n_layer) (two residuals per block with an MLP).
  auto check_bound = [&](const std::string& fqn, double fan_in) {
    const double bound = 1.0 / std::sqrt(fan_in) / std::sqrt(2.0 * c.n_layer);
    const double got = p.at(fqn).abs().max().item<double>();
    EXPECT_LE(got, bound) << fqn;
    EXPECT_GT(got, 0.9 * bound) << fqn;
  };
  check_bound("backbone.layers.0.mixer.out_proj.weight", 2.0 * c.d_model);
  check_bound("backbone.layers.2.mixer.out_proj.weight", 4.0 * 16);
  check_bound("backbone.layers.3.mlp.fc2.weight", 128);
  const double fc1 = p.at("backbone.layers.3.mlp.fc1.weight").abs().max().item<double>();
  EXPECT_LE(fc1, 1.0 / std::sqrt(double(c.d_model)));
  EXPECT_GT(fc1, 0.9 / std::sqrt(double(c.d_model)));
}

// ---- the one-token step form ----

TEST(HybridStep, OneTokenAtATimeReproducesFullSequenceLogits) {
  for (const bool groups2 : {false, true}) {
    MambaConfig c = preset("tiny-hybrid");
    c.ngroups = groups2 ? 2 : 1;
    c.attn_layer_idx = {0, 2};
    SCOPED_TRACE("ngroups " + std::to_string(c.ngroups));
    for (const std::string layout : {"4", "1,2,1", "0,1,3"}) {
      SCOPED_TRACE(layout);
      std::vector<MambaLM> stages;
      for (const auto& s : make_stages(c.n_layer, 0, layout)) {
        stages.emplace_back(c, s, BoundaryMode::kPacked);
        stages.back()->init_parameters(7);
      }
      at::manual_seed(3);
      const at::Tensor ids = at::randint(0, c.vocab_size, {2, 19}, at::kLong);  // > 2 chunks of 8
      c10::NoGradGuard no_grad;
      at::Tensor full = ids;
      for (auto& s : stages) full = s->forward(full);
      std::vector<InferenceCache> caches;
      for (auto& s : stages) caches.push_back(s->make_cache(ids.size(0)));
      std::vector<at::Tensor> outs;
      for (int64_t t = 0; t < ids.size(1); ++t) {
        at::Tensor x = ids.narrow(1, t, 1);
        for (size_t k = 0; k < stages.size(); ++k) x = stages[k]->step(x, caches[k]);
        outs.push_back(x);
      }
      const at::Tensor stepped = at::cat(outs, 1);
      ASSERT_EQ(stepped.sizes(), full.sizes());
      EXPECT_LE(test::max_abs_diff(stepped, full), 1e-5);
      EXPECT_GT(full.abs().max().item<double>(), 0.01);
      for (const auto& [index, cache] : caches.back()) {
        if (index == 2) {
          EXPECT_EQ(cache.offset, ids.size(1));  // the KV cache saw every token
        }
      }
    }
  }
}

}  // namespace
}  // namespace pmamba::model
