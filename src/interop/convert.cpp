#include "src/interop/convert.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>

#include "src/ckpt/checkpoint.h"
#include "src/ckpt/errors.h"
#include "src/ckpt/format.h"
#include "src/ckpt/fs.h"
#include "src/ckpt/h5.h"
#include "src/ckpt/lock.h"
#include "src/ckpt/manifest.h"
#include "src/ckpt/resources.h"
#include "src/ckpt/shard.h"
#include "src/interop/errors.h"
#include "src/interop/safetensors.h"
#include "src/model/errors.h"
#include "src/model/fqn.h"
#include "src/model/partition.h"

namespace pmamba::interop {

namespace fs = ckpt::fs;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

const char* architecture_name(Architecture a) {
  switch (a) {
    case Architecture::kHfMamba: return "MambaForCausalLM";
    case Architecture::kHfMamba2: return "Mamba2ForCausalLM";
    case Architecture::kHfBamba: return "BambaForCausalLM";
    case Architecture::kMambaSsm: return "mamba_ssm MambaLMHeadModel";
  }
  return "?";
}

namespace {

constexpr const char* kConfigName = "config.json";
constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr int64_t kMaxConfigBytes = 1 << 20;
// Python's json writes float("inf") as the bare token Infinity, which is not JSON: a config
// text's bare Infinity / -Infinity / NaN become these strings before parsing, and back on output.
constexpr const char* kInf = "Infinity";
constexpr const char* kNegInf = "-Infinity";
constexpr const char* kNaN = "NaN";
constexpr const char* kInfPlaceholder = "@pmamba-infinity@";

// Python-flavoured JSON -> JSON: bare Infinity, -Infinity and NaN outside strings are quoted.
std::string quote_python_specials(const std::string& text) {
  std::string out;
  out.reserve(text.size() + 16);
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < text.size()) {
        out += text[++i];
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
      out += c;
      continue;
    }
    bool replaced = false;
    for (const char* token : {kNegInf, kInf, kNaN}) {
      const size_t n = std::char_traits<char>::length(token);
      if (text.compare(i, n, token) == 0) {
        out += '"';
        out += token;
        out += '"';
        i += n - 1;
        replaced = true;
        break;
      }
    }
    if (!replaced) out += c;
  }
  return out;
}

// ---- reading a source config ----

class Fields {
 public:
  Fields(const json& j, std::string where, std::string arch) : j_(j), where_(std::move(where)), arch_(std::move(arch)) {}

  [[noreturn]] void fail(const std::string& key, const std::string& why) const {
    throw ConvertError(where_ + ": " + key + " = " + value_text(key) + " " + why);
  }
  bool has(const std::string& key) const { return j_.contains(key) && !j_.at(key).is_null(); }
  std::string value_text(const std::string& key) const {
    return j_.contains(key) ? fs::printable(j_.at(key).dump(), 80) : std::string("(absent)");
  }

  int64_t integer(const std::string& key, std::optional<int64_t> fallback = std::nullopt) {
    used_.insert(key);
    if (!has(key)) {
      if (!fallback) throw ConvertError(where_ + ": the " + arch_ + " config has no '" + key + "', which pmamba needs");
      return *fallback;
    }
    const json& v = j_.at(key);
    if (!v.is_number_integer()) fail(key, "is not an integer");
    // Every size of a real model is far below this; the bound keeps products of two fields
    // (expand x hidden_size, heads x head_dim) inside int64.
    constexpr int64_t kLimit = int64_t{1} << 31;
    if (v.is_number_unsigned() ? v.get<uint64_t>() > static_cast<uint64_t>(kLimit) : std::abs(v.get<int64_t>()) > kLimit) {
      fail(key, "is out of range (|value| <= 2^31)");
    }
    return v.get<int64_t>();
  }
  double number(const std::string& key, double fallback) {
    used_.insert(key);
    if (!has(key)) return fallback;
    return to_number(j_.at(key), key);
  }
  double to_number(const json& v, const std::string& key) const {
    if (v.is_string()) {
      const std::string s = v.get<std::string>();
      if (s == kInf) return std::numeric_limits<double>::infinity();
      if (s == kNegInf) return -std::numeric_limits<double>::infinity();
    }
    if (!v.is_number()) fail(key, "is not a number");
    return v.get<double>();
  }
  bool boolean(const std::string& key, bool fallback) {
    used_.insert(key);
    if (!has(key)) return fallback;
    if (!j_.at(key).is_boolean()) fail(key, "is not true or false");
    return j_.at(key).get<bool>();
  }
  std::string text(const std::string& key, const std::string& fallback) {
    used_.insert(key);
    if (!has(key)) return fallback;
    if (!j_.at(key).is_string()) fail(key, "is not a string");
    return j_.at(key).get<std::string>();
  }
  const json* raw(const std::string& key) {
    used_.insert(key);
    return has(key) ? &j_.at(key) : nullptr;
  }
  /// A field that must hold one value (or be absent) because pmamba computes exactly that.
  template <typename T>
  void require(const std::string& key, const T& want, const std::string& why) {
    used_.insert(key);
    if (!has(key)) return;
    const json& v = j_.at(key);
    bool same = false;
    if constexpr (std::is_same_v<T, bool>) {
      same = v.is_boolean() && v.get<bool>() == want;
    } else if constexpr (std::is_arithmetic_v<T>) {
      same = v.is_number() && v.get<double>() == static_cast<double>(want);
    } else {
      same = v.is_string() && v.get<std::string>() == want;
    }
    if (!same) fail(key, "is not supported: " + why);
  }
  /// Everything not used, verbatim: the fields that do not change the math.
  ojson rest() const {
    ojson r = ojson::object();
    for (auto it = j_.begin(); it != j_.end(); ++it) {
      if (!used_.count(it.key())) r[it.key()] = ojson::parse(it.value().dump());
    }
    return r;
  }
  const std::string& where() const { return where_; }

 private:
  const json& j_;
  std::string where_, arch_;
  std::set<std::string> used_;
};

void require_silu(Fields& f) { f.require<std::string>("hidden_act", "silu", "pmamba's mixers use SiLU"); }

// The three sizes every transformers Mamba config has under the same names.
void read_sizes(Fields& f, model::MambaConfig& c) {
  c.d_model = f.integer("hidden_size");
  c.n_layer = f.integer("num_hidden_layers");
  c.vocab_size = f.integer("vocab_size");
}

// Mamba-2 and Bamba: transformers uses the block norms' eps in each mixer's gated RMSNorm too,
// where mamba_ssm (and pmamba) use 1e-5, so only 1e-5 computes the same model.
double gated_norm_eps(Fields& f, const std::string& key) {
  const double eps = f.number(key, 1e-5);
  if (eps != 1e-5) {
    f.fail(key, "is not supported: transformers uses it in each Mamba-2 mixer's gated RMSNorm too, where mamba_ssm "
                "(and pmamba) use 1e-5");
  }
  return eps;
}

// The fields every transformers config carries that say nothing about the math; recorded
// silently. Anything else unknown is recorded with a note, so a user sees it was not applied.
const std::set<std::string>& generic_keys() {
  static const std::set<std::string> k = {
      "architectures", "model_type", "torch_dtype", "transformers_version", "pad_token_id", "bos_token_id",
      "eos_token_id", "use_cache", "initializer_range", "rescale_prenorm_residual", "time_step_init_scheme",
      "time_step_floor", "time_step_min", "time_step_max", "time_step_scale", "use_mambapy", "num_logits_to_keep",
      "max_position_embeddings", "_name_or_path", "output_hidden_states", "output_attentions", "return_dict",
      "tie_word_embeddings", "layer_norm_epsilon", "rms_norm_eps", "attention_dropout", "z_loss_coefficient",
      "n_layer", "d_model", "d_inner", "dt_rank", "residual_in_fp32", "rms_norm", "time_step_rank"};
  return k;
}

TranslatedConfig finish(Fields& f, TranslatedConfig t) {
  t.recorded = f.rest();
  for (auto it = t.recorded.begin(); it != t.recorded.end(); ++it) {
    if (!generic_keys().count(it.key())) {
      t.notes.push_back("config field '" + it.key() + "' = " + fs::printable(it.value().dump(), 60) +
                        " is not one pmamba knows; recorded, not applied");
    }
  }
  t.config.pad_vocab_size_multiple = 1;  // the source's vocabulary, exactly
  try {
    t.config.validate();
  } catch (const model::ConfigError& e) {
    throw ConvertError(f.where() + ": the translated config is not valid: " + e.what());
  }
  if (t.config.dt_rank == 0) t.config.dt_rank = t.config.dt_rank_value();
  return t;
}

TranslatedConfig from_hf_mamba(Fields& f) {
  TranslatedConfig t;
  t.architecture = Architecture::kHfMamba;
  model::MambaConfig& c = t.config;
  read_sizes(f, c);
  c.d_state = f.integer("state_size", 16);
  c.d_conv = f.integer("conv_kernel", 4);
  c.expand = f.integer("expand", 2);
  if (const json* r = f.raw("time_step_rank"); r && !(r->is_string() && r->get<std::string>() == "auto")) {
    c.dt_rank = f.integer("time_step_rank");
    if (c.dt_rank <= 0) f.fail("time_step_rank", "must be \"auto\" or a positive integer");
  }
  if (f.has("intermediate_size") && f.integer("intermediate_size") != c.expand * c.d_model) {
    f.fail("intermediate_size", "is not supported: pmamba's mixer width is expand x hidden_size = " +
                                    std::to_string(c.expand * c.d_model));
  }
  require_silu(f);
  c.bias = f.boolean("use_bias", false);
  c.conv_bias = f.boolean("use_conv_bias", true);
  c.norm_eps = f.number("layer_norm_epsilon", 1e-5);
  c.residual_in_fp32 = f.boolean("residual_in_fp32", true);
  c.tie_embeddings = f.boolean("tie_word_embeddings", true);
  // Initialisation only (pmamba's init reads them when a run starts from scratch).
  c.dt_min = f.number("time_step_min", c.dt_min);
  c.dt_max = f.number("time_step_max", c.dt_max);
  c.dt_init_floor = f.number("time_step_floor", c.dt_init_floor);
  c.dt_scale = f.number("time_step_scale", c.dt_scale);
  c.rms_norm = true;
  return finish(f, std::move(t));
}

void read_time_step_limit(Fields& f, model::MambaConfig& c) {
  const json* lim = f.raw("time_step_limit");
  if (!lim) return;
  if (!lim->is_array() || lim->size() != 2) f.fail("time_step_limit", "must be a list of two numbers");
  c.dt_limit_min = f.to_number((*lim)[0], "time_step_limit");
  c.dt_limit_max = f.to_number((*lim)[1], "time_step_limit");
}

TranslatedConfig from_hf_mamba2(Fields& f) {
  TranslatedConfig t;
  t.architecture = Architecture::kHfMamba2;
  model::MambaConfig& c = t.config;
  c.ssm_layer = model::SsmLayer::kMamba2;
  read_sizes(f, c);
  c.d_state = f.integer("state_size", 128);
  c.d_conv = f.integer("conv_kernel", 4);
  c.expand = f.integer("expand", 2);
  c.headdim = f.integer("head_dim", 64);
  const int64_t heads = f.integer("num_heads", 128);
  if (heads * c.headdim != c.expand * c.d_model) {
    f.fail("num_heads", "is not supported: num_heads x head_dim (" + std::to_string(heads) + " x " +
                            std::to_string(c.headdim) + ") must equal expand x hidden_size = " +
                            std::to_string(c.expand * c.d_model) + " (mamba_ssm's d_ssm = d_inner)");
  }
  c.ngroups = f.integer("n_groups", 8);
  c.chunk_size = f.integer("chunk_size", 256);
  require_silu(f);
  c.bias = f.boolean("use_bias", false);
  c.conv_bias = f.boolean("use_conv_bias", true);
  c.norm_eps = gated_norm_eps(f, "layer_norm_epsilon");
  c.residual_in_fp32 = f.boolean("residual_in_fp32", true);
  c.tie_embeddings = f.boolean("tie_word_embeddings", false);
  read_time_step_limit(f, c);
  c.dt_min = f.number("time_step_min", c.dt_min);
  c.dt_max = f.number("time_step_max", c.dt_max);
  c.dt_init_floor = f.number("time_step_floor", c.dt_init_floor);
  if (!f.boolean("rms_norm", true)) {
    t.notes.push_back("rms_norm is false, but transformers' Mamba2 applies its gated RMSNorm regardless; so does pmamba");
  }
  c.ssm_rmsnorm = true;
  c.rms_norm = true;
  if (c.ngroups > 1) {
    t.notes.push_back("n_groups = " + std::to_string(c.ngroups) +
                      ": pmamba computes mamba_ssm's grouped math; transformers 4.49 differs for n_groups > 1 "
                      "(an ungrouped gated norm, head h on group h % n_groups)");
  }
  return finish(f, std::move(t));
}

TranslatedConfig from_hf_bamba(Fields& f) {
  TranslatedConfig t;
  t.architecture = Architecture::kHfBamba;
  model::MambaConfig& c = t.config;
  c.ssm_layer = model::SsmLayer::kMamba2;
  read_sizes(f, c);
  c.d_intermediate = f.integer("intermediate_size", 14336);
  if (c.d_intermediate <= 0 || c.d_intermediate % 128 != 0) {
    f.fail("intermediate_size", "is not supported: mamba_ssm's GatedMLP rounds its width up to a multiple of 128, so "
                                "only multiples of 128 compute the same MLP");
  }
  require_silu(f);
  c.norm_eps = gated_norm_eps(f, "rms_norm_eps");
  c.tie_embeddings = f.boolean("tie_word_embeddings", false);
  c.expand = f.integer("mamba_expand", 2);
  c.d_state = f.integer("mamba_d_state", 256);
  c.d_conv = f.integer("mamba_d_conv", 4);
  c.ngroups = f.integer("mamba_n_groups", 1);
  c.chunk_size = f.integer("mamba_chunk_size", 256);
  c.conv_bias = f.boolean("mamba_conv_bias", true);
  c.bias = f.boolean("mamba_proj_bias", false);
  const int64_t heads = f.integer("mamba_n_heads", 128);
  if (heads <= 0 || (c.expand * c.d_model) % heads != 0) {
    f.fail("mamba_n_heads", "must divide mamba_expand x hidden_size = " + std::to_string(c.expand * c.d_model));
  }
  const json* dh = f.raw("mamba_d_head");
  if (dh && !(dh->is_string() && dh->get<std::string>() == "auto")) {
    c.headdim = f.integer("mamba_d_head");
  } else {
    c.headdim = c.expand * c.d_model / heads;
  }
  if (heads * c.headdim != c.expand * c.d_model) {
    f.fail("mamba_d_head", "does not fit: mamba_n_heads x mamba_d_head must equal mamba_expand x hidden_size");
  }
  // Attention.
  if (const json* idx = f.raw("attn_layer_indices")) {
    if (!idx->is_array()) f.fail("attn_layer_indices", "must be a list of layer indices");
    for (const auto& v : *idx) {
      const bool index = v.is_number_integer() && (v.is_number_unsigned() ? v.get<uint64_t>() <= (uint64_t{1} << 30)
                                                                           : std::abs(v.get<int64_t>()) <= (int64_t{1} << 30));
      if (!index) f.fail("attn_layer_indices", "must hold layer indices");
      c.attn_layer_idx.push_back(v.get<int64_t>());
    }
    std::sort(c.attn_layer_idx.begin(), c.attn_layer_idx.end());
  }
  const int64_t q_heads = f.integer("num_attention_heads", 32);
  const int64_t kv_heads = f.integer("num_key_value_heads", q_heads);
  f.require<bool>("attention_bias", false, "pmamba's Bamba attention has no q/k/v/o biases");
  f.require<bool>("mlp_bias", false, "pmamba's gated MLP has no biases");
  if (f.has("rope_scaling")) f.fail("rope_scaling", "is not supported (plain rotary only)");
  f.raw("rope_scaling");
  const double theta = f.number("rope_theta", 10000.0);
  const double factor = f.number("partial_rotary_factor", 0.5);
  const bool has_head_dim = f.has("head_dim");
  const int64_t given_head_dim = has_head_dim ? f.integer("head_dim") : 0;
  if (!c.attn_layer_idx.empty()) {  // the attention fields matter only when there is attention
    int64_t head_dim = given_head_dim;
    if (!has_head_dim) {
      if (q_heads <= 0 || c.d_model % q_heads != 0) {
        f.fail("num_attention_heads", "must divide hidden_size when the config gives no head_dim");
      }
      head_dim = c.d_model / q_heads;
    }
    if (!(factor >= 0 && factor <= 1)) f.fail("partial_rotary_factor", "must be in [0, 1]");
    const auto rotary = static_cast<int64_t>(static_cast<double>(head_dim) * factor);  // as transformers' int()
    if (rotary % 2 != 0) {
      f.fail("partial_rotary_factor", "gives an odd rotary width " + std::to_string(rotary) + " of head_dim " +
                                          std::to_string(head_dim));
    }
    c.attn.num_heads = q_heads;
    c.attn.num_heads_kv = kv_heads;
    c.attn.head_dim = head_dim;
    c.attn.rotary_emb_dim = rotary;
    c.attn.rotary_emb_base = theta;
    c.attn.causal = true;
    c.attn.qkv_proj_bias = false;
    c.attn.out_proj_bias = false;
  }
  // transformers keeps Bamba's residual in the model dtype; in float32 the two are the same.
  c.residual_in_fp32 = true;
  c.rms_norm = true;
  c.ssm_rmsnorm = true;
  if (c.ngroups > 1) {
    t.notes.push_back("mamba_n_groups = " + std::to_string(c.ngroups) +
                      ": pmamba computes mamba_ssm's grouped math; transformers 4.49 differs for n_groups > 1");
  }
  if (f.number("attention_dropout", 0.0) != 0.0) {
    t.notes.push_back("attention_dropout is ignored: pmamba trains without dropout");
  }
  return finish(f, std::move(t));
}

}  // namespace

TranslatedConfig translate_config(const json& j, const std::string& where) {
  if (!j.is_object()) throw ConvertError(where + ": expected a JSON object");
  if (!j.contains("model_type") && j.contains("d_model")) {
    TranslatedConfig t;
    t.architecture = Architecture::kMambaSsm;
    try {
      t.config = model::config_from_json(j);
    } catch (const model::ConfigError& e) {
      throw ConvertError(where + " (a mamba_ssm config): " + e.what());
    }
    return t;
  }
  if (!j.contains("model_type") || !j.at("model_type").is_string()) {
    throw ConvertError(where + ": neither a transformers config (no model_type) nor a mamba_ssm one (no d_model)");
  }
  const std::string type = j.at("model_type").get<std::string>();
  if (type == "mamba") {
    Fields f(j, where, "MambaForCausalLM");
    return from_hf_mamba(f);
  }
  if (type == "mamba2") {
    Fields f(j, where, "Mamba2ForCausalLM");
    return from_hf_mamba2(f);
  }
  if (type == "bamba") {
    Fields f(j, where, "BambaForCausalLM");
    return from_hf_bamba(f);
  }
  throw ConvertError(where + ": model_type '" + fs::printable(type) +
                     "' is not one pmamba imports (mamba, mamba2 or bamba; or a mamba_ssm config.json)");
}

TranslatedConfig translate_config_text(const std::string& text, const std::string& where) {
  json j;
  try {
    j = parse_json_strict(quote_python_specials(text), where);
  } catch (const SafetensorsError& e) {
    throw ConvertError(e.what());
  }
  return translate_config(j, where);
}

Architecture hf_architecture_for(const model::MambaConfig& c) {
  auto refuse = [&](const std::string& why) -> Architecture {
    throw ConvertError("this model has no transformers class: " + why + " (" + model::describe(c) +
                       "); export it with --format mamba_ssm");
  };
  if (!c.rms_norm) return refuse("transformers' Mamba models use RMSNorm, this one LayerNorm");
  if (c.ssm_layer == model::SsmLayer::kMamba1) {
    if (!c.is_plain_mamba1()) return refuse("Mamba-1 layers with attention or an MLP");
    return Architecture::kHfMamba;
  }
  if (!c.ssm_rmsnorm) return refuse("a Mamba-2 mixer without its gated RMSNorm");
  if (c.D_has_hdim) return refuse("D per channel (D_has_hdim)");
  if (c.norm_eps != 1e-5) return refuse("norm_eps other than 1e-5 (transformers shares it with the gated norm)");
  if (c.d_intermediate == 0) {
    if (!c.attn_layer_idx.empty()) return refuse("attention layers without an MLP (Bamba has one in every block)");
    return Architecture::kHfMamba2;
  }
  if (c.mlp_hidden() != c.d_intermediate) return refuse("d_intermediate not a multiple of 128");
  if (c.dt_limit_min != 0.0 || !std::isinf(c.dt_limit_max)) return refuse("a dt_limit (Bamba fixes (0, inf))");
  if (!c.attn_layer_idx.empty()) {
    if (c.attn.qkv_proj_bias || c.attn.out_proj_bias) return refuse("attention projection biases");
    if (c.attn.softmax_scale > 0 && c.attn.softmax_scale != 1.0 / std::sqrt(static_cast<double>(c.attn_head_dim()))) {
      return refuse("an attention softmax_scale other than 1/sqrt(head_dim)");
    }
    const double factor = static_cast<double>(c.attn.rotary_emb_dim) / static_cast<double>(c.attn_head_dim());
    if (static_cast<int64_t>(static_cast<double>(c.attn_head_dim()) * factor) != c.attn.rotary_emb_dim) {
      return refuse("a rotary width that partial_rotary_factor cannot express");
    }
  }
  return Architecture::kHfBamba;
}

ojson export_config(const model::MambaConfig& c, Architecture arch, const ojson& recorded, const std::string& torch_dtype) {
  if (arch == Architecture::kMambaSsm) {
    if (c.norm_eps != 1e-5) {
      throw ConvertError("mamba_ssm's MambaConfig has no norm_eps (its norms use 1e-5) but this model has " +
                         model::config_to_json(c).at("norm_eps").dump());
    }
    json nested = model::config_to_json(c);
    nested.erase("norm_eps");
    if (!nested.contains("ssm_cfg")) {  // the flat Mamba-1 form -> mamba_ssm's nested one
      json ssm;
      for (const char* k : {"d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init_floor", "dt_scale",
                            "conv_bias", "bias"}) {
        ssm[k] = nested.at(k);
        nested.erase(k);
      }
      ssm["layer"] = "Mamba1";
      nested["ssm_cfg"] = ssm;
      nested["d_intermediate"] = 0;
      nested["attn_layer_idx"] = json::array();
      nested["attn_cfg"] = json::object();
    }
    ojson out;
    for (const char* k : {"d_model", "d_intermediate", "n_layer", "vocab_size", "ssm_cfg", "attn_layer_idx", "attn_cfg",
                          "rms_norm", "residual_in_fp32"}) {
      out[k] = ojson::parse(nested.at(k).dump());
    }
    out["fused_add_norm"] = true;
    out["pad_vocab_size_multiple"] = c.pad_vocab_size_multiple;
    out["tie_embeddings"] = c.tie_embeddings;
    return out;
  }
  const Architecture want = hf_architecture_for(c);
  if (want != arch) {
    throw ConvertError(std::string("this model is a ") + architecture_name(want) + ", not a " + architecture_name(arch));
  }
  ojson j;
  j["architectures"] = ojson::array({architecture_name(arch)});
  // Recorded fields of an import of the same class come back (token ids, init settings, ...).
  const bool same_class = recorded.is_object() && recorded.contains("model_type");
  auto keep = [&](const char* key, const ojson& fallback) {
    j[key] = same_class && recorded.contains(key) ? recorded.at(key) : fallback;
  };
  // HF has no vocabulary padding: the embedding's rows are its vocabulary.
  const int64_t vocab = c.padded_vocab();
  if (arch == Architecture::kHfMamba) {
    keep("bos_token_id", 0);
    keep("eos_token_id", 0);
    j["conv_kernel"] = c.d_conv;
    j["expand"] = c.expand;
    j["hidden_act"] = "silu";
    j["hidden_size"] = c.d_model;
    keep("initializer_range", 0.1);
    j["intermediate_size"] = c.d_inner();
    j["layer_norm_epsilon"] = c.norm_eps;
    j["model_type"] = "mamba";
    j["num_hidden_layers"] = c.n_layer;
    keep("pad_token_id", 0);
    keep("rescale_prenorm_residual", false);
    j["residual_in_fp32"] = c.residual_in_fp32;
    j["state_size"] = c.d_state;
    j["tie_word_embeddings"] = c.tie_embeddings;
    j["time_step_floor"] = c.dt_init_floor;
    keep("time_step_init_scheme", "random");
    j["time_step_max"] = c.dt_max;
    j["time_step_min"] = c.dt_min;
    j["time_step_rank"] = c.dt_rank_value();
    j["time_step_scale"] = c.dt_scale;
    j["torch_dtype"] = torch_dtype;
    j["use_bias"] = c.bias;
    keep("use_cache", true);
    j["use_conv_bias"] = c.conv_bias;
    keep("use_mambapy", false);
    j["vocab_size"] = vocab;
  } else if (arch == Architecture::kHfMamba2) {
    keep("bos_token_id", 0);
    j["chunk_size"] = c.chunk_size;
    j["conv_kernel"] = c.d_conv;
    keep("eos_token_id", 2);
    j["expand"] = c.expand;
    j["head_dim"] = c.headdim;
    j["hidden_act"] = "silu";
    j["hidden_size"] = c.d_model;
    keep("initializer_range", 0.1);
    j["layer_norm_epsilon"] = c.norm_eps;
    j["model_type"] = "mamba2";
    j["n_groups"] = c.ngroups;
    j["num_heads"] = c.nheads();
    j["num_hidden_layers"] = c.n_layer;
    keep("pad_token_id", 1);
    keep("rescale_prenorm_residual", false);
    j["residual_in_fp32"] = c.residual_in_fp32;
    j["rms_norm"] = true;
    j["state_size"] = c.d_state;
    j["tie_word_embeddings"] = c.tie_embeddings;
    j["time_step_floor"] = c.dt_init_floor;
    j["time_step_limit"] = ojson::array({c.dt_limit_min, std::isinf(c.dt_limit_max) ? ojson(kInfPlaceholder)
                                                                                    : ojson(c.dt_limit_max)});
    j["time_step_max"] = c.dt_max;
    j["time_step_min"] = c.dt_min;
    keep("time_step_rank", (c.d_model + 15) / 16);
    j["torch_dtype"] = torch_dtype;
    j["use_bias"] = c.bias;
    keep("use_cache", true);
    j["use_conv_bias"] = c.conv_bias;
    j["vocab_size"] = vocab;
  } else {
    const bool attn = !c.attn_layer_idx.empty();
    const int64_t heads = attn ? c.attn.num_heads : 1;
    const int64_t head_dim = attn ? c.attn_head_dim() : c.d_model;
    j["attention_bias"] = false;
    keep("attention_dropout", 0.0);
    j["attn_layer_indices"] = c.attn_layer_idx;
    keep("bos_token_id", 1);
    keep("eos_token_id", 2);
    if (attn && head_dim != c.d_model / heads) j["head_dim"] = head_dim;
    j["hidden_act"] = "silu";
    j["hidden_size"] = c.d_model;
    keep("initializer_range", 0.02);
    j["intermediate_size"] = c.d_intermediate;
    j["mamba_chunk_size"] = c.chunk_size;
    j["mamba_conv_bias"] = c.conv_bias;
    j["mamba_d_conv"] = c.d_conv;
    j["mamba_d_head"] = c.headdim;
    j["mamba_d_state"] = c.d_state;
    j["mamba_expand"] = c.expand;
    j["mamba_n_groups"] = c.ngroups;
    j["mamba_n_heads"] = c.nheads();
    j["mamba_proj_bias"] = c.bias;
    keep("max_position_embeddings", 262144);
    j["mlp_bias"] = false;
    j["model_type"] = "bamba";
    j["num_attention_heads"] = heads;
    j["num_hidden_layers"] = c.n_layer;
    j["num_key_value_heads"] = attn ? c.attn_heads_kv() : heads;
    keep("num_logits_to_keep", 1);
    keep("pad_token_id", 0);
    j["partial_rotary_factor"] = attn ? static_cast<double>(c.attn.rotary_emb_dim) / static_cast<double>(head_dim) : 0.5;
    j["rms_norm_eps"] = c.norm_eps;
    j["rope_scaling"] = nullptr;
    j["rope_theta"] = attn ? c.attn.rotary_emb_base : 10000.0;
    j["tie_word_embeddings"] = c.tie_embeddings;
    j["torch_dtype"] = torch_dtype;
    keep("use_cache", true);
    j["vocab_size"] = vocab;
  }
  return j;
}

std::vector<NameMapping> name_mappings(const model::MambaConfig& c, Architecture arch) {
  std::vector<NameMapping> out;
  for (const model::ParamInfo& p : model::list_parameters(c)) {
    if (!p.tied_to.empty()) continue;
    NameMapping m;
    m.fqn = p.fqn;
    m.shape = p.shape;
    const int64_t rows = p.shape.empty() ? 1 : p.shape[0];
    auto one = [&](const std::string& name) { m.parts.push_back({name, rows}); };
    if (arch == Architecture::kMambaSsm) {
      one(p.fqn);
    } else if (arch != Architecture::kHfBamba) {
      one(p.fqn == model::kEmbeddingFqn ? "backbone.embeddings.weight" : p.fqn);
    } else if (p.fqn == model::kEmbeddingFqn) {
      one("model.embed_tokens.weight");
    } else if (p.fqn == "backbone.norm_f.weight") {
      one("model.final_layernorm.weight");
    } else if (p.fqn == model::kLmHeadFqn) {
      one("lm_head.weight");
    } else {
      const std::string prefix = model::layer_prefix(p.layer);  // "backbone.layers.{i}."
      const std::string leaf = p.fqn.substr(prefix.size());
      const std::string hf = "model.layers." + std::to_string(p.layer) + ".";
      const bool attention = c.layer_kind(p.layer) == model::LayerKind::kAttention;
      if (leaf == "norm.weight") {
        one(hf + "input_layernorm.weight");
      } else if (leaf == "norm2.weight") {
        one(hf + "pre_ff_layernorm.weight");
      } else if (leaf == "mlp.fc1.weight") {
        const int64_t h = c.mlp_hidden();
        m.parts.push_back({hf + "feed_forward.up_proj.weight", h});  // the value half comes first
        m.parts.push_back({hf + "feed_forward.gate_proj.weight", h});
      } else if (leaf == "mlp.fc2.weight") {
        one(hf + "feed_forward.down_proj.weight");
      } else if (attention && leaf == "mixer.in_proj.weight") {
        const int64_t q = c.attn.num_heads * c.attn_head_dim(), kv = c.attn_heads_kv() * c.attn_head_dim();
        m.parts.push_back({hf + "self_attn.q_proj.weight", q});
        m.parts.push_back({hf + "self_attn.k_proj.weight", kv});
        m.parts.push_back({hf + "self_attn.v_proj.weight", kv});
      } else if (attention && leaf == "mixer.out_proj.weight") {
        one(hf + "self_attn.o_proj.weight");
      } else if (!attention && leaf.rfind("mixer.", 0) == 0) {
        one(hf + "mamba." + leaf.substr(6));
      } else {
        throw ConvertError("no BambaForCausalLM name for '" + p.fqn + "' (" + model::describe(c) + ")");
      }
    }
    out.push_back(std::move(m));
  }
  return out;
}

uint64_t parse_size(const std::string& text) {
  size_t i = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i;
  std::string unit = text.substr(i);
  for (char& ch : unit) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  static const std::map<std::string, uint64_t> units = {
      {"", 1},          {"B", 1},           {"KB", 1000},       {"MB", 1000000},    {"GB", 1000000000},
      {"KIB", 1 << 10}, {"MIB", 1 << 20},   {"GIB", 1ull << 30}, {"TB", 1000000000000ull}};
  auto it = units.find(unit);
  if (i == 0 || i > 15 || it == units.end()) {
    throw ConvertError("size '" + fs::printable(text) + "' is not a size (e.g. 5GB, 500MB, 20KB, 1GiB or a byte count)");
  }
  const uint64_t n = std::stoull(text.substr(0, i));
  if (n == 0) throw ConvertError("size '" + fs::printable(text) + "' must be more than 0");
  if (n > UINT64_MAX / it->second) throw ConvertError("size '" + fs::printable(text) + "' is too large");
  return n * it->second;
}

// ---------------------------------------------------------------------------------------------
// import

namespace {

at::ScalarType target_dtype(const std::string& dtype, at::ScalarType stored) {
  if (dtype == "keep") return stored;
  if (dtype == "float32") return at::kFloat;
  if (dtype == "bfloat16") return at::kBFloat16;
  throw ConvertError("--dtype must be keep, float32 or bfloat16, not '" + fs::printable(dtype) + "'");
}

const char* torch_dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    case at::kDouble: return "float64";
    default: return "float32";
  }
}

/// Every tensor of a source folder: name -> (file, entry).
class SourceTensors {
 public:
  SourceTensors(const std::string& dir) {
    const std::string index = fs::join(dir, kIndexName), single = fs::join(dir, kSingleFile);
    if (fs::exists(index) && fs::exists(single)) {
      throw ConvertError("'" + dir + "' has both " + kSingleFile + " and " + kIndexName + "; which one is the model is ambiguous");
    }
    if (fs::exists(index)) {
      const SafetensorsIndex idx = read_safetensors_index(index);
      std::map<std::string, std::set<std::string>> listed;  // file -> names the index puts there
      for (const auto& [name, file] : idx.weight_map) listed[file].insert(name);
      for (const auto& [file, names] : listed) {
        const std::string path = fs::join(dir, file);
        if (!fs::is_file(path)) {
          throw ConvertError(index + " names the shard '" + file + "' (for '" + *names.begin() + "'), which is missing");
        }
        files_.push_back(std::make_unique<SafetensorsFile>(path));
        const SafetensorsFile& f = *files_.back();
        for (const TensorInfo& t : f.tensors()) {
          if (!names.count(t.name)) {
            throw ConvertError(path + " holds '" + t.name + "' but " + kIndexName + " puts it " +
                               (idx.weight_map.count(t.name) ? "in '" + idx.weight_map.at(t.name) + "'" : "nowhere"));
          }
          add(t.name, f);
        }
        for (const std::string& n : names) {
          if (!f.find(n)) throw ConvertError(kIndexName + std::string(" puts '") + n + "' in " + path + ", which does not hold it");
        }
      }
      return;
    }
    if (!fs::exists(single)) {
      const bool bin = fs::exists(fs::join(dir, "pytorch_model.bin")) || fs::exists(fs::join(dir, "pytorch_model.bin.index.json"));
      throw ConvertError(
          "'" + dir + "' has no " + kSingleFile + " or " + kIndexName +
          (bin ? std::string("; it has pytorch_model.bin, a Python pickle pmamba does not read. Convert it once with: "
                             "python3 -c \"import torch, safetensors.torch as st; sd = torch.load('") +
                     fs::join(dir, "pytorch_model.bin") +
                     "', map_location='cpu'); st.save_file({k: v.contiguous().clone() for k, v in sd.items()}, '" + single +
                     "', metadata={'format': 'pt'})\""
               : std::string()));
    }
    files_.push_back(std::make_unique<SafetensorsFile>(single));
    for (const TensorInfo& t : files_.back()->tensors()) add(t.name, *files_.back());
  }

  const std::map<std::string, std::pair<const SafetensorsFile*, const TensorInfo*>>& all() const { return by_name_; }
  const TensorInfo* find(const std::string& name, const SafetensorsFile** file) const {
    auto it = by_name_.find(name);
    if (it == by_name_.end()) return nullptr;
    if (file) *file = it->second.first;
    return it->second.second;
  }

 private:
  void add(const std::string& name, const SafetensorsFile& f) {
    if (by_name_.count(name)) {
      throw ConvertError("'" + name + "' is stored twice: in " + by_name_.at(name).first->path() + " and " + f.path());
    }
    by_name_[name] = {&f, f.find(name)};
  }
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::pair<const SafetensorsFile*, const TensorInfo*>> by_name_;
};

std::string shape_text(const std::vector<int64_t>& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + (s.size() == 1 ? ",)" : ")");
}

std::string read_config(const std::string& dir) {
  const std::string path = fs::join(dir, kConfigName);
  if (!fs::is_file(path)) throw ConvertError("'" + dir + "' has no " + kConfigName + " (is it a model folder?)");
  return fs::read_file(path, kMaxConfigBytes);
}

void check_empty_output(const std::string& out, const std::string& what) {
  if (out.empty()) throw ConvertError("no output " + what + " given");
  if (fs::exists(out) && (!fs::is_dir(out) || !fs::list_dir(out).empty())) {
    throw ConvertError("the output '" + out + "' already exists and is not an empty directory; give a new " + what);
  }
}

}  // namespace

ImportResult import_model(const ImportOptions& o) {
  ckpt::h5::Silence quiet;
  if (!fs::is_dir(o.src)) throw ConvertError("the source '" + o.src + "' is not a directory (a model folder with config.json)");
  target_dtype(o.dtype, at::kFloat);  // spelling, before anything is read
  TranslatedConfig t = translate_config_text(read_config(o.src), fs::join(o.src, kConfigName));
  const model::MambaConfig& c = t.config;
  std::vector<model::StageSpec> stages;
  try {
    stages = model::make_stages(c.n_layer, o.pp, o.partition);
  } catch (const model::ConfigError& e) {
    throw ConvertError(std::string("cannot split this model that way: ") + e.what());
  }
  const ckpt::Compression compression = ckpt::Compression::parse(o.compression);
  ckpt::check_threads(o.threads);
  SourceTensors src(o.src);
  const std::string arch = architecture_name(t.architecture);

  // Every check that can fail on the source runs before a byte is written.
  ImportResult r;
  r.architecture = t.architecture;
  r.config = c;
  r.notes = t.notes;
  const std::vector<NameMapping> maps = name_mappings(c, t.architecture);
  std::set<std::string> used;
  int64_t total = 0;
  for (const NameMapping& m : maps) {
    for (const NamePart& part : m.parts) {
      const SafetensorsFile* file = nullptr;
      const TensorInfo* info = src.find(part.name, &file);
      if (!info) {
        throw ConvertError("'" + o.src + "' has no tensor '" + part.name + "', which a " + arch + " with this config has (pmamba's '" +
                           m.fqn + "')");
      }
      std::vector<int64_t> want = m.shape;
      if (!want.empty()) want[0] = part.rows;
      if (info->shape != want) {
        throw ConvertError(file->path() + ": '" + part.name + "' has shape " + shape_text(info->shape) + " but the config (" +
                           model::describe(c) + ") needs " + shape_text(want));
      }
      if (!at::isFloatingType(info->scalar_type)) {
        throw ConvertError(file->path() + ": '" + part.name + "' has dtype " + info->dtype + "; weights must be floating point");
      }
      used.insert(part.name);
      total += static_cast<int64_t>(info->end - info->begin);
    }
  }
  // A tied head is not stored by transformers; a source that has it anyway must hold the tie.
  const std::string head_name = t.architecture == Architecture::kHfBamba ? "lm_head.weight" : model::kLmHeadFqn;
  const std::string emb_name = maps.front().parts.front().name;
  if (c.tie_embeddings && src.find(head_name, nullptr)) {
    const SafetensorsFile *hf = nullptr, *ef = nullptr;
    const TensorInfo* hi = src.find(head_name, &hf);
    src.find(emb_name, &ef);
    if (!hi || hi->shape != maps.front().shape || !ef->read(emb_name).equal(hf->read(head_name))) {
      throw ConvertError("the config ties the embeddings but '" + head_name + "' in " + hf->path() + " differs from '" + emb_name +
                         "'; set tie_word_embeddings to false to import an untied head");
    }
    used.insert(head_name);
    r.notes.push_back("'" + head_name + "' equals the tied embedding; stored once");
  }
  for (const auto& [name, where] : src.all()) {
    if (!used.count(name)) {
      throw ConvertError(where.first->path() + " holds '" + name + "', which is not a tensor of a " + arch + " with this config (" +
                         model::describe(c) + ")");
    }
  }

  check_empty_output(o.out, "checkpoint root");
  ckpt::check_output_location(o.out, {});
  const bool created = !fs::exists(o.out);
  ckpt::RootLock lock = ckpt::RootLock::acquire(o.out, "pmamba-convert");
  auto remove_created = [&] {
    if (!created) return;
    try {
      fs::remove_tree(o.out);
    } catch (...) {
    }
  };
  ojson train;
  train["step"] = 0;
  train["imported_from"] = ojson{{"source", fs::absolute_path(o.src)},
                                 {"architecture", arch},
                                 {"dtype", o.dtype},
                                 {"config", t.recorded}};
  std::string tmp;
  try {
    tmp = ckpt::begin_step_dir(o.out, 0);
    ckpt::ShardHeader header;
    header.step = 0;
    header.config_json = model::config_to_json_string(c);
    header.train_json = train.dump();
    ckpt::WriteOptions w;
    w.compression = compression;
    w.threads = o.threads;
    std::map<std::string, const NameMapping*> by_fqn;
    for (const NameMapping& m : maps) by_fqn[m.fqn] = &m;
    uint64_t embedding_digest = 0;
    int64_t done = 0;
    // One buffer for every unsplit tensor: on a VM that hands idle memory back to its host, a
    // fresh allocation per tensor costs a slow first touch each time.
    int64_t largest = 0;
    for (const auto& [name, where] : src.all()) largest = std::max(largest, static_cast<int64_t>(where.second->end - where.second->begin));
    ckpt::ScratchBuffer scratch;
    for (const model::StageSpec& spec : stages) {
      header.stage = spec.stage;
      header.num_stages = spec.num_stages;
      header.layer_begin = spec.layer_begin;
      header.layer_end = spec.layer_end;
      ckpt::ShardWriter writer(tmp, header, w);
      for (const model::ParamInfo& p : model::stage_parameters(c, spec)) {
        if (!p.tied_to.empty()) {
          ckpt::AliasToSave a;
          a.fqn = p.fqn;
          a.alias_of = p.tied_to;
          a.target_file = spec.is_first() ? "" : ckpt::shard_file_name(0, spec.num_stages);
          a.digests[ckpt::Slot::kParam] = embedding_digest;
          writer.add_alias(a);
          continue;
        }
        const NameMapping& m = *by_fqn.at(p.fqn);
        // One pmamba tensor at a time: its parts are read, joined and written, then dropped.
        std::vector<at::Tensor> parts;
        for (const NamePart& part : m.parts) {
          const SafetensorsFile* file = nullptr;
          const TensorInfo* info = src.find(part.name, &file);
          if (m.parts.size() == 1) {
            at::Tensor t = scratch.view(info->shape, info->scalar_type, largest, "importing '" + part.name + "'");
            file->read(part.name, t);
            parts.push_back(t);
          } else {
            parts.push_back(file->read(part.name));
          }
          done += static_cast<int64_t>(info->end - info->begin);
        }
        at::Tensor joined = parts.size() == 1 ? parts[0] : at::cat(parts, 0);
        parts.clear();
        joined = joined.to(target_dtype(o.dtype, joined.scalar_type())).contiguous();
        if (p.fqn == model::kEmbeddingFqn) embedding_digest = ckpt::tensor_digest(joined);
        writer.add(ckpt::TensorToSave{p.fqn, ckpt::Slot::kParam, joined});
        ++r.tensors;
        if (o.progress) o.progress(done, total);
      }
      writer.finish();
    }
    const ckpt::Manifest m = ckpt::build_manifest(tmp, ckpt::new_run_id(), c, stages, 0, compression, /*has_optimizer=*/false, train);
    r.out_dir = ckpt::commit_step_dir(o.out, tmp, m, ckpt::CommitOptions{}).dir;
  } catch (...) {
    if (!tmp.empty()) ckpt::abort_step_dir(tmp);
    lock = ckpt::RootLock();
    remove_created();
    throw;
  }
  r.source_bytes = total;
  return r;
}

// ---------------------------------------------------------------------------------------------
// export

namespace {

std::string shard_name(size_t i, size_t n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", i + 1, n);
  return buf;
}

std::string dump_config(const ojson& j) {
  // transformers writes 2-space indented JSON with a final newline; float("inf") as Infinity.
  std::string text = j.dump(2) + "\n";
  const std::string quoted = std::string("\"") + kInfPlaceholder + "\"";
  for (size_t at = text.find(quoted); at != std::string::npos; at = text.find(quoted, at)) {
    text.replace(at, quoted.size(), kInf);
  }
  return text;
}

}  // namespace

ExportResult export_model(const ExportOptions& o) {
  ckpt::h5::Silence quiet;
  Architecture arch = Architecture::kHfMamba;
  if (o.format == "mamba_ssm") {
    arch = Architecture::kMambaSsm;
  } else if (o.format != "hf") {
    throw ConvertError("--format must be hf or mamba_ssm, not '" + fs::printable(o.format) + "'");
  }
  target_dtype(o.dtype, at::kFloat);
  if (o.max_shard_bytes == 0) throw ConvertError("--max-shard-size must be more than 0");
  ckpt::CheckpointReader in(o.ckpt);
  const ckpt::Manifest& man = in.manifest();
  const model::MambaConfig& c = man.config;
  if (o.format == "hf") arch = hf_architecture_for(c);
  const ojson recorded = man.train.contains("imported_from") && man.train.at("imported_from").contains("config")
                             ? man.train.at("imported_from").at("config")
                             : ojson::object();

  // The output tensors in canonical order, each with its source FQN and row range.
  struct Out {
    TensorSpec spec;
    std::string fqn;
    int64_t row0 = 0, rows = 0;
    bool whole = true;
  };
  std::vector<Out> outs;
  std::set<at::ScalarType> dtypes;
  for (const NameMapping& m : name_mappings(c, arch)) {
    const ckpt::TensorEntry& e = man.resolve(m.fqn);
    const at::ScalarType stored = ckpt::dtype_from_name(e.slots.at(ckpt::Slot::kParam).dtype);
    const at::ScalarType dt = target_dtype(o.dtype, stored);
    dtypes.insert(dt);
    int64_t row = 0;
    for (const NamePart& part : m.parts) {
      Out x;
      x.spec.name = part.name;
      x.spec.dtype = dt;
      x.spec.shape = m.shape;
      if (!x.spec.shape.empty()) x.spec.shape[0] = part.rows;
      x.fqn = m.fqn;
      x.row0 = row;
      x.rows = part.rows;
      x.whole = m.parts.size() == 1;
      row += part.rows;
      outs.push_back(std::move(x));
    }
  }
  // Files: tensors in order, a new file when the next would pass the limit (as transformers'
  // shard_checkpoint: a tensor larger than the limit gets a file of its own).
  std::vector<std::vector<size_t>> groups(1);
  uint64_t in_group = 0, total = 0;
  for (size_t i = 0; i < outs.size(); ++i) {
    int64_t numel = 1;
    for (int64_t d : outs[i].spec.shape) numel *= d;
    const uint64_t bytes = static_cast<uint64_t>(numel) * at::elementSize(outs[i].spec.dtype);
    if (!groups.back().empty() && in_group + bytes > o.max_shard_bytes) {
      groups.emplace_back();
      in_group = 0;
    }
    groups.back().push_back(i);
    in_group += bytes;
    total += bytes;
  }

  check_empty_output(o.out, "folder");
  ckpt::check_output_location(o.out, {o.ckpt});  // not inside the checkpoint, nor any other
  const bool created = !fs::exists(o.out);
  fs::make_dirs(o.out);
  ExportResult r;
  r.out = o.out;
  r.architecture = arch;
  try {
    SafetensorsIndex index;
    int64_t done = 0;
    at::Tensor cached;  // the FQN last read: the parts of a split tensor come one after another
    std::string cached_fqn;
    // Read into one reused buffer (a fresh allocation per tensor is a slow first touch on a VM
    // that hands idle memory back).
    int64_t largest = 0;
    for (const auto& e : man.tensors) {
      for (const auto& [slot, d] : e.slots) {
        if (slot == ckpt::Slot::kParam) largest = std::max(largest, d.raw_bytes);
      }
    }
    ckpt::ScratchBuffer scratch;
    for (size_t g = 0; g < groups.size(); ++g) {
      const std::string file = groups.size() == 1 ? kSingleFile : shard_name(g, groups.size());
      std::vector<TensorSpec> specs;
      for (size_t i : groups[g]) specs.push_back(outs[i].spec);
      write_safetensors(fs::join(o.out, file), specs, [&](size_t k) {
        const Out& x = outs[groups[g][k]];
        if (cached_fqn != x.fqn) {
          cached = at::Tensor();  // the previous one goes before the next is read
          const ckpt::StoredDataset& d = man.resolve(x.fqn).slots.at(ckpt::Slot::kParam);
          cached = scratch.view(d.shape, ckpt::dtype_from_name(d.dtype), largest, "exporting '" + x.fqn + "'");
          in.read(x.fqn, ckpt::Slot::kParam, cached);
          cached_fqn = x.fqn;
        }
        at::Tensor t = x.whole ? cached : cached.narrow(0, x.row0, x.rows);
        done += static_cast<int64_t>(t.numel()) * static_cast<int64_t>(at::elementSize(x.spec.dtype));
        if (o.progress) o.progress(done, static_cast<int64_t>(total));
        ++r.tensors;
        return t.to(x.spec.dtype);
      });
      r.files.push_back(file);
      for (size_t i : groups[g]) index.weight_map[outs[i].spec.name] = file;
    }
    cached = at::Tensor();
    scratch.release();
    index.total_size = total;
    if (groups.size() > 1) write_safetensors_index(fs::join(o.out, kIndexName), index);
    const std::string dtype_text = dtypes.size() == 1 ? torch_dtype_name(*dtypes.begin()) : "float32";
    fs::write_file_atomic(fs::join(o.out, kConfigName), dump_config(export_config(c, arch, recorded, dtype_text)));
    r.bytes = static_cast<int64_t>(total);
  } catch (...) {
    try {
      if (created) {
        fs::remove_tree(o.out);
      } else {
        for (const std::string& f : fs::list_dir(o.out)) fs::remove_file(fs::join(o.out, f));
      }
    } catch (...) {
    }
    throw;
  }
  return r;
}

}  // namespace pmamba::interop
