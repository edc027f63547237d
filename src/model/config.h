// MambaConfig: the hyper-parameters of a Mamba-1 language model (state-spaces/mamba's
// MambaConfig + Mamba mixer defaults), its JSON form, and named presets.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace pmamba::model {

struct MambaConfig {
  int64_t d_model = 0;
  int64_t n_layer = 0;
  int64_t vocab_size = 0;
  int64_t d_state = 16;
  int64_t d_conv = 4;
  int64_t expand = 2;
  int64_t dt_rank = 0;  // 0 = "auto" = ceil(d_model / 16)
  double dt_min = 1e-3;
  double dt_max = 0.1;
  double dt_init_floor = 1e-4;
  double dt_scale = 1.0;
  bool conv_bias = true;
  bool bias = false;      // in_proj / out_proj biases
  bool rms_norm = true;   // false = LayerNorm with bias
  double norm_eps = 1e-5;
  bool residual_in_fp32 = true;
  bool tie_embeddings = true;
  int64_t pad_vocab_size_multiple = 8;

  int64_t d_inner() const { return expand * d_model; }
  int64_t dt_rank_value() const { return dt_rank > 0 ? dt_rank : (d_model + 15) / 16; }
  /// vocab_size rounded up to pad_vocab_size_multiple: the row count of embedding and lm_head.
  int64_t padded_vocab() const;

  /// Throws ConfigError naming the first bad field and its value.
  void validate() const;

  bool operator==(const MambaConfig& other) const;
  bool operator!=(const MambaConfig& other) const { return !(*this == other); }
};

/// Every field, always (a checkpoint's config must be complete).
nlohmann::json config_to_json(const MambaConfig& config);
/// d_model, n_layer and vocab_size are required; other fields default. Unknown keys and
/// wrongly typed values throw ConfigError naming the key. The result is validated.
MambaConfig config_from_json(const nlohmann::json& j);
std::string config_to_json_string(const MambaConfig& config);  // compact, keys sorted
MambaConfig config_from_json_string(const std::string& text);
/// xxh3-64 of config_to_json_string: equal configs have equal digests.
uint64_t config_digest(const MambaConfig& config);

/// Presets: "tiny" (tests and examples), "small" (~12M params, byte vocabulary, CPU
/// benchmarks), and the published sizes "mamba-130m" ... "mamba-2.8b".
MambaConfig preset(const std::string& name);
std::vector<std::string> preset_names();

}  // namespace pmamba::model
