// MambaConfig: the hyper-parameters of a mamba_ssm MambaLMHeadModel (state-spaces/mamba's
// MambaConfig with its ssm_cfg / attn_cfg), its JSON forms, and named presets.
//
// One config describes the whole family: every layer is a Mamba-1 or Mamba-2 mixer
// (ssm_cfg.layer) unless its index is in attn_layer_idx (then an attention mixer), and every
// block gets a gated MLP when d_intermediate > 0. A plain Mamba-1 config serialises to the
// flat form pmamba has always written (so its digest, and every existing checkpoint, is
// unchanged); anything else serialises to mamba_ssm's nested form.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace pmamba::model {

enum class SsmLayer { kMamba1, kMamba2 };
enum class LayerKind { kMamba1, kMamba2, kAttention };
const char* layer_kind_name(LayerKind kind);  // "mamba1" | "mamba2" | "attention"

/// mamba_ssm's MHA options (attn_cfg). Zeros mean "derived": num_heads_kv = num_heads,
/// head_dim = d_model / num_heads, softmax_scale = 1 / sqrt(head_dim).
struct AttnConfig {
  int64_t num_heads = 0;
  int64_t num_heads_kv = 0;
  int64_t head_dim = 0;
  int64_t rotary_emb_dim = 0;  // rotary on the first rotary_emb_dim dims of each q/k head
  double rotary_emb_base = 10000.0;
  bool causal = false;          // mamba_ssm's default; pmamba refuses false (a causal LM)
  bool qkv_proj_bias = true;
  bool out_proj_bias = true;
  double softmax_scale = 0.0;
};

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

  // ---- Mamba-2 and hybrids (mamba_ssm's ssm_cfg for layer "Mamba2", d_intermediate, attention).
  // d_state, d_conv, expand, dt_min/max/init_floor, conv_bias and bias above are shared by both
  // mixers; a JSON Mamba-2 ssm_cfg defaults d_state to 128 (mamba_ssm's Mamba2 default).
  SsmLayer ssm_layer = SsmLayer::kMamba1;
  int64_t headdim = 64;
  int64_t ngroups = 1;
  int64_t chunk_size = 256;
  double A_init_min = 1.0, A_init_max = 16.0;    // A_init_range
  double dt_limit_min = 0.0, dt_limit_max = std::numeric_limits<double>::infinity();  // dt_limit
  bool D_has_hdim = false;
  bool ssm_rmsnorm = true;       // ssm_cfg.rmsnorm: the gated RMSNorm before out_proj
  int64_t d_intermediate = 0;    // > 0: a gated MLP after the mixer in every block
  std::vector<int64_t> attn_layer_idx;  // ascending, unique
  AttnConfig attn;

  int64_t d_inner() const { return expand * d_model; }
  LayerKind layer_kind(int64_t layer) const;
  /// A config pmamba has always had: Mamba-1 layers only, no MLP (the flat JSON form).
  bool is_plain_mamba1() const;
  // Mamba-2 sizes (mamba_ssm's Mamba2 with d_ssm = d_inner).
  int64_t nheads() const { return d_inner() / headdim; }
  int64_t conv_dim() const { return d_inner() + 2 * ngroups * d_state; }
  int64_t d_in_proj() const { return 2 * d_inner() + 2 * ngroups * d_state + nheads(); }
  /// GatedMLP hidden size: d_intermediate rounded up to a multiple of 128.
  int64_t mlp_hidden() const { return (d_intermediate + 127) / 128 * 128; }
  int64_t n_residuals_per_layer() const { return d_intermediate > 0 ? 2 : 1; }
  // Attention sizes with the zeros resolved.
  int64_t attn_heads_kv() const { return attn.num_heads_kv > 0 ? attn.num_heads_kv : attn.num_heads; }
  int64_t attn_head_dim() const;
  double attn_softmax_scale() const;
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
/// Reads pmamba's flat form or mamba_ssm's config.json (nested ssm_cfg / attn_cfg, as
/// MambaLMHeadModel.save_pretrained writes it). d_model, n_layer and vocab_size are required;
/// other fields default. Unknown keys, wrongly typed values and options that change the math
/// but are unsupported throw ConfigError naming the key; keys mamba_ssm writes that do not
/// change the math (fused_add_norm, use_fast_path, use_mem_eff_path, ...) are accepted and
/// ignored. The result is validated.
MambaConfig config_from_json(const nlohmann::json& j);
std::string config_to_json_string(const MambaConfig& config);  // compact, keys sorted
MambaConfig config_from_json_string(const std::string& text);
/// One line for humans: sizes, layer kinds (which layers are attention), vocabulary, ties.
std::string describe(const MambaConfig& config);
/// xxh3-64 of config_to_json_string: equal configs have equal digests.
uint64_t config_digest(const MambaConfig& config);

/// Presets: "tiny" (tests and examples), "small" (~12M params, byte vocabulary, CPU
/// benchmarks), the published sizes "mamba-130m" ... "mamba-2.8b" and "mamba2-130m" ...
/// "mamba2-2.7b", "bamba-9b" (fms-fsdp's mamba_9.8b), "tiny-hybrid" (Mamba-2 + attention +
/// MLP, for tests) and "small-mamba2" (~10M params, benchmarks).
MambaConfig preset(const std::string& name);
std::vector<std::string> preset_names();

}  // namespace pmamba::model
