#include "src/model/config.h"

#include <xxhash.h>

#include <nlohmann/json.hpp>
#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

#include "src/model/errors.h"

namespace pmamba::model {

int64_t MambaConfig::padded_vocab() const {
  const int64_t m = pad_vocab_size_multiple;
  return (vocab_size + m - 1) / m * m;
}

const char* layer_kind_name(LayerKind kind) {
  switch (kind) {
    case LayerKind::kMamba1: return "mamba1";
    case LayerKind::kMamba2: return "mamba2";
    case LayerKind::kAttention: return "attention";
  }
  return "?";
}

LayerKind MambaConfig::layer_kind(int64_t layer) const {
  if (std::binary_search(attn_layer_idx.begin(), attn_layer_idx.end(), layer)) return LayerKind::kAttention;
  return ssm_layer == SsmLayer::kMamba2 ? LayerKind::kMamba2 : LayerKind::kMamba1;
}

bool MambaConfig::is_plain_mamba1() const {
  return ssm_layer == SsmLayer::kMamba1 && d_intermediate == 0 && attn_layer_idx.empty();
}

int64_t MambaConfig::attn_head_dim() const {
  if (attn.head_dim > 0) return attn.head_dim;
  return attn.num_heads > 0 ? d_model / attn.num_heads : 0;
}

double MambaConfig::attn_softmax_scale() const {
  if (attn.softmax_scale > 0) return attn.softmax_scale;
  return 1.0 / std::sqrt(static_cast<double>(attn_head_dim()));
}

namespace {

template <typename T>
void require(bool ok, const char* field, T value, const char* expectation) {
  if (!ok) {
    std::ostringstream os;
    os << "config: " << field << " must be " << expectation << " but is " << value;
    throw ConfigError(os.str());
  }
}

// JSON cannot hold infinity; mamba_ssm clamps to dt_limit only when it differs from (0, inf),
// and a clamp at 1e308 is the same clamp, so that is how an infinite upper limit is written.
constexpr double kJsonInfinity = 1e308;

}  // namespace

void MambaConfig::validate() const {
  require(d_model > 0, "d_model", d_model, "> 0");
  require(n_layer > 0, "n_layer", n_layer, "> 0");
  require(vocab_size > 0, "vocab_size", vocab_size, "> 0");
  require(d_state > 0, "d_state", d_state, "> 0");
  require(d_conv > 0, "d_conv", d_conv, "> 0");
  require(expand > 0, "expand", expand, "> 0");
  require(dt_rank >= 0, "dt_rank", dt_rank, ">= 0 (0 means auto)");
  require(dt_min > 0, "dt_min", dt_min, "> 0");
  require(dt_max >= dt_min, "dt_max", dt_max, ">= dt_min");
  require(dt_init_floor >= 0, "dt_init_floor", dt_init_floor, ">= 0");
  require(dt_scale > 0, "dt_scale", dt_scale, "> 0");
  require(norm_eps > 0, "norm_eps", norm_eps, "> 0");
  require(pad_vocab_size_multiple > 0, "pad_vocab_size_multiple", pad_vocab_size_multiple, "> 0");
  // Keep every tensor's element count far from int64 overflow.
  require(d_model <= (int64_t{1} << 20), "d_model", d_model, "<= 1048576");
  require(n_layer <= 100000, "n_layer", n_layer, "<= 100000");
  require(vocab_size <= (int64_t{1} << 26), "vocab_size", vocab_size, "<= 67108864");
  require(d_state <= 4096, "d_state", d_state, "<= 4096");
  require(d_conv <= 64, "d_conv", d_conv, "<= 64");
  require(expand <= 64, "expand", expand, "<= 64");
  require(d_intermediate >= 0, "d_intermediate", d_intermediate, ">= 0");
  require(d_intermediate <= (int64_t{1} << 24), "d_intermediate", d_intermediate, "<= 16777216");
  for (size_t i = 0; i < attn_layer_idx.size(); ++i) {
    const int64_t l = attn_layer_idx[i];
    require(l >= 0 && l < n_layer, "attn_layer_idx entry", l, "a layer index in [0, n_layer)");
    require(i == 0 || l > attn_layer_idx[i - 1], "attn_layer_idx entry", l, "unique (listed once)");
  }
  const bool any_mamba2 = ssm_layer == SsmLayer::kMamba2 &&
                          static_cast<int64_t>(attn_layer_idx.size()) < n_layer;
  if (any_mamba2) {
    require(headdim > 0, "ssm_cfg.headdim", headdim, "> 0");
    require(d_inner() % headdim == 0, "ssm_cfg.headdim", headdim,
            "a divisor of d_inner = expand * d_model");
    require(ngroups > 0, "ssm_cfg.ngroups", ngroups, "> 0");
    require(nheads() % ngroups == 0, "ssm_cfg.ngroups", ngroups,
            "a divisor of the head count d_inner / headdim");
    require(chunk_size > 0 && chunk_size <= 65536, "ssm_cfg.chunk_size", chunk_size, "in [1, 65536]");
    require(A_init_min > 0, "ssm_cfg.A_init_range[0]", A_init_min, "> 0");
    require(A_init_max >= A_init_min && std::isfinite(A_init_max), "ssm_cfg.A_init_range[1]", A_init_max,
            "finite and >= A_init_range[0]");
    require(dt_limit_min >= 0, "ssm_cfg.dt_limit[0]", dt_limit_min, ">= 0");
    require(dt_limit_max > dt_limit_min, "ssm_cfg.dt_limit[1]", dt_limit_max, "> dt_limit[0]");
  }
  if (!attn_layer_idx.empty()) {
    // Bounded so that every attention shape stays far from int64 overflow.
    require(attn.num_heads > 0 && attn.num_heads <= 4096, "attn_cfg.num_heads", attn.num_heads, "in [1, 4096]");
    require(attn.head_dim >= 0 && attn.head_dim <= 4096, "attn_cfg.head_dim", attn.head_dim, "in [1, 4096] (or absent)");
    require(attn.num_heads_kv >= 0, "attn_cfg.num_heads_kv", attn.num_heads_kv, ">= 0 (0 means num_heads)");
    require(attn.num_heads % attn_heads_kv() == 0, "attn_cfg.num_heads_kv", attn_heads_kv(),
            "a divisor of num_heads");
    require(attn.head_dim > 0 || d_model % attn.num_heads == 0, "attn_cfg.num_heads", attn.num_heads,
            "a divisor of d_model when head_dim is not given");
    require(attn_head_dim() > 0, "attn_cfg.head_dim", attn_head_dim(), "> 0");
    require(attn.rotary_emb_dim >= 0 && attn.rotary_emb_dim % 2 == 0 && attn.rotary_emb_dim <= attn_head_dim(),
            "attn_cfg.rotary_emb_dim", attn.rotary_emb_dim, "even and <= head_dim");
    require(attn.rotary_emb_base > 0 && std::isfinite(attn.rotary_emb_base), "attn_cfg.rotary_emb_base",
            attn.rotary_emb_base, "finite and > 0");
    require(attn.softmax_scale >= 0, "attn_cfg.softmax_scale", attn.softmax_scale, "> 0 (or absent)");
    if (!attn.causal) {
      throw ConfigError(
          "config: attn_cfg.causal must be true but is false (mamba_ssm's MHA defaults to "
          "non-causal; pmamba trains causal language models, so set \"causal\": true)");
    }
  }
}

bool MambaConfig::operator==(const MambaConfig& o) const {
  return config_to_json_string(*this) == config_to_json_string(o);
}

nlohmann::json config_to_json(const MambaConfig& c) {
  nlohmann::json j;
  j["d_model"] = c.d_model;
  j["n_layer"] = c.n_layer;
  j["vocab_size"] = c.vocab_size;
  j["rms_norm"] = c.rms_norm;
  j["norm_eps"] = c.norm_eps;
  j["residual_in_fp32"] = c.residual_in_fp32;
  j["tie_embeddings"] = c.tie_embeddings;
  j["pad_vocab_size_multiple"] = c.pad_vocab_size_multiple;
  nlohmann::json ssm;
  ssm["d_state"] = c.d_state;
  ssm["d_conv"] = c.d_conv;
  ssm["expand"] = c.expand;
  ssm["dt_min"] = c.dt_min;
  ssm["dt_max"] = c.dt_max;
  ssm["dt_init_floor"] = c.dt_init_floor;
  ssm["conv_bias"] = c.conv_bias;
  ssm["bias"] = c.bias;
  if (c.ssm_layer == SsmLayer::kMamba1) {
    ssm["dt_rank"] = c.dt_rank_value();
    ssm["dt_scale"] = c.dt_scale;
  }
  if (c.is_plain_mamba1()) {  // the flat form of every pmamba config before Mamba-2
    j.update(ssm);
    return j;
  }
  if (c.ssm_layer == SsmLayer::kMamba2) {
    ssm["headdim"] = c.headdim;
    ssm["ngroups"] = c.ngroups;
    ssm["chunk_size"] = c.chunk_size;
    ssm["A_init_range"] = {c.A_init_min, c.A_init_max};
    if (c.dt_limit_min != 0.0 || !std::isinf(c.dt_limit_max)) {
      ssm["dt_limit"] = {c.dt_limit_min, std::isinf(c.dt_limit_max) ? kJsonInfinity : c.dt_limit_max};
    }
    ssm["D_has_hdim"] = c.D_has_hdim;
    ssm["rmsnorm"] = c.ssm_rmsnorm;
    ssm["norm_before_gate"] = false;
  }
  ssm["layer"] = c.ssm_layer == SsmLayer::kMamba2 ? "Mamba2" : "Mamba1";
  j["ssm_cfg"] = ssm;
  j["d_intermediate"] = c.d_intermediate;
  j["attn_layer_idx"] = c.attn_layer_idx;
  nlohmann::json attn = nlohmann::json::object();
  if (!c.attn_layer_idx.empty()) {
    attn["num_heads"] = c.attn.num_heads;
    attn["num_heads_kv"] = c.attn_heads_kv();
    attn["head_dim"] = c.attn_head_dim();
    attn["rotary_emb_dim"] = c.attn.rotary_emb_dim;
    attn["rotary_emb_base"] = c.attn.rotary_emb_base;
    attn["causal"] = c.attn.causal;
    attn["qkv_proj_bias"] = c.attn.qkv_proj_bias;
    attn["out_proj_bias"] = c.attn.out_proj_bias;
    if (c.attn.softmax_scale > 0) attn["softmax_scale"] = c.attn.softmax_scale;
  }
  j["attn_cfg"] = attn;
  return j;
}

namespace {

const char* type_name(bool is_bool, bool is_int) {
  return is_bool ? "a boolean" : is_int ? "an integer" : "a number";
}

// Reads j[key] into `out` when present; `where` prefixes the key in messages ("ssm_cfg.").
template <typename T>
bool read_field(const nlohmann::json& j, const char* key, T& out, bool required, const std::string& where = "") {
  auto it = j.find(key);
  if (it == j.end()) {
    if (required) throw ConfigError("config: required key '" + where + key + "' is missing");
    return false;
  }
  bool ok;
  if constexpr (std::is_same_v<T, bool>) {
    ok = it->is_boolean();
  } else if constexpr (std::is_integral_v<T>) {
    ok = it->is_number_integer();
  } else {
    ok = it->is_number();
  }
  if (!ok) {
    throw ConfigError("config: key '" + where + key + "' must be " +
                      type_name(std::is_same_v<T, bool>, std::is_integral_v<T>) + " but is " + it->dump());
  }
  out = it->get<T>();
  return true;
}

void check_keys(const nlohmann::json& j, const std::vector<std::string>& known, const std::string& where) {
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (std::find(known.begin(), known.end(), it.key()) == known.end()) {
      throw ConfigError("config: unknown key '" + where + it.key() + "'");
    }
  }
}

// A key whose only supported value is `allowed` (an option that changes the math).
void require_value(const nlohmann::json& j, const char* key, const nlohmann::json& allowed,
                   const std::string& where, const std::string& why) {
  auto it = j.find(key);
  if (it == j.end() || *it == allowed) return;
  throw ConfigError("config: " + where + key + " = " + it->dump() + " is not supported (" + why + ")");
}

void read_pair(const nlohmann::json& j, const char* key, double& lo, double& hi, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end()) return;
  if (!it->is_array() || it->size() != 2 || !(*it)[0].is_number() || !(*it)[1].is_number()) {
    throw ConfigError("config: key '" + where + key + "' must be a list of two numbers but is " + it->dump());
  }
  lo = (*it)[0].get<double>();
  hi = (*it)[1].get<double>();
}

void read_dt_rank(const nlohmann::json& j, MambaConfig& c, const std::string& where) {
  auto it = j.find("dt_rank");
  if (it != j.end() && it->is_string()) {
    if (*it != "auto") throw ConfigError("config: key '" + where + "dt_rank' must be an integer or \"auto\" but is " + it->dump());
    c.dt_rank = 0;
    return;
  }
  read_field(j, "dt_rank", c.dt_rank, false, where);
}

const std::vector<std::string> kFlatMixerKeys = {"d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max",
                                                 "dt_init_floor", "dt_scale", "conv_bias", "bias"};

void read_mamba1_fields(const nlohmann::json& j, MambaConfig& c, const std::string& where) {
  read_field(j, "d_state", c.d_state, false, where);
  read_field(j, "d_conv", c.d_conv, false, where);
  read_field(j, "expand", c.expand, false, where);
  read_dt_rank(j, c, where);
  read_field(j, "dt_min", c.dt_min, false, where);
  read_field(j, "dt_max", c.dt_max, false, where);
  read_field(j, "dt_init_floor", c.dt_init_floor, false, where);
  read_field(j, "dt_scale", c.dt_scale, false, where);
  read_field(j, "conv_bias", c.conv_bias, false, where);
  read_field(j, "bias", c.bias, false, where);
}

void read_ssm_cfg(const nlohmann::json& s, MambaConfig& c) {
  const std::string w = "ssm_cfg.";
  if (!s.is_object()) throw ConfigError("config: key 'ssm_cfg' must be an object but is " + s.dump());
  std::string layer = "Mamba1";
  if (auto it = s.find("layer"); it != s.end()) {
    if (!it->is_string()) throw ConfigError("config: key 'ssm_cfg.layer' must be a string but is " + it->dump());
    layer = it->get<std::string>();
  }
  if (layer == "Mamba1") {
    c.ssm_layer = SsmLayer::kMamba1;
    std::vector<std::string> known = kFlatMixerKeys;
    known.insert(known.end(), {"layer", "dt_init", "use_fast_path"});
    check_keys(s, known, w);
    require_value(s, "dt_init", "random", w, "pmamba initialises dt_proj.weight as \"random\"");
    read_mamba1_fields(s, c, w);
    return;
  }
  if (layer != "Mamba2") {
    throw ConfigError("config: ssm_cfg.layer = \"" + layer + "\" is not supported (expected \"Mamba1\" or \"Mamba2\")");
  }
  c.ssm_layer = SsmLayer::kMamba2;
  c.d_state = 128;  // mamba_ssm's Mamba2 defaults
  check_keys(s, {"layer", "d_state", "d_conv", "conv_init", "expand", "headdim", "d_ssm", "ngroups", "A_init_range",
                 "D_has_hdim", "rmsnorm", "norm_before_gate", "dt_min", "dt_max", "dt_init_floor", "dt_limit", "bias",
                 "conv_bias", "chunk_size", "use_mem_eff_path"},
             w);
  require_value(s, "conv_init", nullptr, w, "pmamba initialises conv1d with the Conv1d default");
  require_value(s, "norm_before_gate", false, w, "pmamba implements the gate before the norm, mamba_ssm's default");
  read_field(s, "d_state", c.d_state, false, w);
  read_field(s, "d_conv", c.d_conv, false, w);
  read_field(s, "expand", c.expand, false, w);
  read_field(s, "headdim", c.headdim, false, w);
  read_field(s, "ngroups", c.ngroups, false, w);
  read_field(s, "chunk_size", c.chunk_size, false, w);
  read_pair(s, "A_init_range", c.A_init_min, c.A_init_max, w);
  read_pair(s, "dt_limit", c.dt_limit_min, c.dt_limit_max, w);
  if (c.dt_limit_max >= kJsonInfinity) c.dt_limit_max = std::numeric_limits<double>::infinity();
  read_field(s, "D_has_hdim", c.D_has_hdim, false, w);
  read_field(s, "rmsnorm", c.ssm_rmsnorm, false, w);
  read_field(s, "dt_min", c.dt_min, false, w);
  read_field(s, "dt_max", c.dt_max, false, w);
  read_field(s, "dt_init_floor", c.dt_init_floor, false, w);
  read_field(s, "conv_bias", c.conv_bias, false, w);
  read_field(s, "bias", c.bias, false, w);
  if (auto it = s.find("d_ssm"); it != s.end() && !it->is_null()) {
    if (!it->is_number_integer() || it->get<int64_t>() != c.d_inner()) {
      throw ConfigError("config: ssm_cfg.d_ssm = " + it->dump() + " is not supported (pmamba needs d_ssm = d_inner = " +
                        std::to_string(c.d_inner()) + ")");
    }
  }
}

void read_attn_cfg(const nlohmann::json& a, MambaConfig& c) {
  const std::string w = "attn_cfg.";
  if (!a.is_object()) throw ConfigError("config: key 'attn_cfg' must be an object but is " + a.dump());
  check_keys(a, {"num_heads", "num_heads_kv", "head_dim", "mlp_dim", "qkv_proj_bias", "out_proj_bias", "softmax_scale",
                 "causal", "d_conv", "rotary_emb_dim", "rotary_emb_base", "rotary_emb_interleaved"},
             w);
  require_value(a, "mlp_dim", 0, w, "the MLP inside mamba_ssm's MHA; use d_intermediate for a gated MLP");
  require_value(a, "d_conv", 0, w, "the convolution inside mamba_ssm's MHA");
  require_value(a, "rotary_emb_interleaved", false, w, "pmamba implements non-interleaved (GPT-NeoX) rotary");
  read_field(a, "num_heads", c.attn.num_heads, true, w);
  read_field(a, "num_heads_kv", c.attn.num_heads_kv, false, w);
  read_field(a, "head_dim", c.attn.head_dim, false, w);
  read_field(a, "rotary_emb_dim", c.attn.rotary_emb_dim, false, w);
  read_field(a, "rotary_emb_base", c.attn.rotary_emb_base, false, w);
  read_field(a, "causal", c.attn.causal, false, w);
  read_field(a, "qkv_proj_bias", c.attn.qkv_proj_bias, false, w);
  read_field(a, "out_proj_bias", c.attn.out_proj_bias, false, w);
  if (auto it = a.find("softmax_scale"); it != a.end() && !it->is_null()) {
    read_field(a, "softmax_scale", c.attn.softmax_scale, false, w);
    require(c.attn.softmax_scale > 0, "attn_cfg.softmax_scale", c.attn.softmax_scale, "> 0 (or null)");
  }
  // Store the derived values so a config and its JSON round trip compare equal.
  if (c.attn.num_heads > 0 && c.attn.num_heads_kv == 0) c.attn.num_heads_kv = c.attn.num_heads;
  if (c.attn.num_heads > 0 && c.attn.head_dim == 0 && c.d_model % c.attn.num_heads == 0) {
    c.attn.head_dim = c.d_model / c.attn.num_heads;
  }
}

}  // namespace

MambaConfig config_from_json(const nlohmann::json& j) {
  if (!j.is_object()) throw ConfigError("config: expected a JSON object but found " + j.dump());
  std::vector<std::string> known = {"d_model", "n_layer", "vocab_size", "rms_norm", "norm_eps",
                                    "residual_in_fp32", "tie_embeddings", "pad_vocab_size_multiple",
                                    // mamba_ssm's MambaConfig
                                    "d_intermediate", "ssm_cfg", "attn_layer_idx", "attn_cfg", "fused_add_norm"};
  known.insert(known.end(), kFlatMixerKeys.begin(), kFlatMixerKeys.end());
  check_keys(j, known, "");
  MambaConfig c;
  read_field(j, "d_model", c.d_model, true);
  read_field(j, "n_layer", c.n_layer, true);
  read_field(j, "vocab_size", c.vocab_size, true);
  read_field(j, "rms_norm", c.rms_norm, false);
  read_field(j, "norm_eps", c.norm_eps, false);
  read_field(j, "residual_in_fp32", c.residual_in_fp32, false);
  read_field(j, "tie_embeddings", c.tie_embeddings, false);
  read_field(j, "pad_vocab_size_multiple", c.pad_vocab_size_multiple, false);
  bool fused = false;
  read_field(j, "fused_add_norm", fused, false);  // a kernel choice: the math is the same
  read_field(j, "d_intermediate", c.d_intermediate, false);
  if (auto it = j.find("ssm_cfg"); it != j.end()) {
    for (const auto& k : kFlatMixerKeys) {
      if (j.contains(k)) {
        throw ConfigError("config: key '" + k + "' is given at the top level and ssm_cfg is present; put it in ssm_cfg");
      }
    }
    read_ssm_cfg(*it, c);
  } else {
    read_mamba1_fields(j, c, "");
  }
  if (auto it = j.find("attn_layer_idx"); it != j.end()) {
    if (!it->is_array()) throw ConfigError("config: key 'attn_layer_idx' must be a list of layer indices but is " + it->dump());
    for (const auto& v : *it) {
      if (!v.is_number_integer()) throw ConfigError("config: attn_layer_idx entry " + v.dump() + " is not an integer");
      c.attn_layer_idx.push_back(v.get<int64_t>());
    }
    std::sort(c.attn_layer_idx.begin(), c.attn_layer_idx.end());
  }
  if (auto it = j.find("attn_cfg"); it != j.end()) {
    if (!c.attn_layer_idx.empty() || !it->empty()) read_attn_cfg(*it, c);
  }
  if (!c.attn_layer_idx.empty() && j.find("attn_cfg") == j.end()) {
    throw ConfigError("config: attn_layer_idx lists attention layers but attn_cfg is missing (num_heads is required)");
  }
  c.validate();
  if (c.dt_rank == 0) c.dt_rank = c.dt_rank_value();
  return c;
}

std::string config_to_json_string(const MambaConfig& config) {
  return config_to_json(config).dump();  // nlohmann::json objects keep keys sorted
}

MambaConfig config_from_json_string(const std::string& text) {
  // nlohmann's lexer takes a NUL byte for the end of the input: refuse it rather than ignore
  // whatever follows.
  if (const size_t nul = text.find('\0'); nul != std::string::npos) {
    throw ConfigError("config: not valid JSON: a NUL byte at offset " + std::to_string(nul));
  }
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw ConfigError(std::string("config: not valid JSON: ") + e.what());
  }
  return config_from_json(j);
}

std::string describe(const MambaConfig& c) {
  std::ostringstream os;
  os << "d_model " << c.d_model << ", n_layer " << c.n_layer;
  if (c.is_plain_mamba1()) {
    os << ", vocab " << c.vocab_size << " (padded " << c.padded_vocab() << "), d_state " << c.d_state << ", d_conv "
       << c.d_conv << ", expand " << c.expand << ", dt_rank " << c.dt_rank_value();
  } else {
    const int64_t n_attn = static_cast<int64_t>(c.attn_layer_idx.size());
    os << " (" << (c.n_layer - n_attn) << (c.ssm_layer == SsmLayer::kMamba2 ? " mamba2" : " mamba1");
    if (n_attn > 0) {
      os << ", " << n_attn << " attention at ";
      for (size_t i = 0; i < c.attn_layer_idx.size(); ++i) os << (i ? "," : "") << c.attn_layer_idx[i];
    }
    os << "), vocab " << c.vocab_size << " (padded " << c.padded_vocab() << "), d_state " << c.d_state << ", d_conv "
       << c.d_conv << ", expand " << c.expand;
    if (c.ssm_layer == SsmLayer::kMamba2) {
      os << ", headdim " << c.headdim << " (" << c.nheads() << " heads), ngroups " << c.ngroups << ", chunk_size "
         << c.chunk_size;
    } else {
      os << ", dt_rank " << c.dt_rank_value();
    }
    if (n_attn > 0) {
      os << ", attention " << c.attn.num_heads << " heads / " << c.attn_heads_kv() << " kv x " << c.attn_head_dim()
         << " (rotary " << c.attn.rotary_emb_dim << ")";
    }
    if (c.d_intermediate > 0) os << ", mlp " << c.mlp_hidden();
  }
  os << (c.tie_embeddings ? ", tied embeddings" : ", untied");
  return os.str();
}

uint64_t config_digest(const MambaConfig& config) {
  const std::string s = config_to_json_string(config);
  return XXH3_64bits(s.data(), s.size());
}

namespace {

MambaConfig published(int64_t d_model, int64_t n_layer) {
  MambaConfig c;
  c.d_model = d_model;
  c.n_layer = n_layer;
  c.vocab_size = 50277;  // GPT-NeoX-20B tokenizer; padded to 50280
  c.dt_rank = c.dt_rank_value();
  return c;
}

// mamba_ssm's published Mamba-2 checkpoints: ssm_cfg {"layer": "Mamba2"} with the Mamba2
// defaults, vocabulary padded to a multiple of 16.
MambaConfig published2(int64_t d_model, int64_t n_layer) {
  MambaConfig c;
  c.d_model = d_model;
  c.n_layer = n_layer;
  c.vocab_size = 50277;
  c.pad_vocab_size_multiple = 16;
  c.ssm_layer = SsmLayer::kMamba2;
  c.d_state = 128;
  return c;
}

}  // namespace

MambaConfig preset(const std::string& name) {
  MambaConfig c;
  if (name == "tiny") {
    c.d_model = 32;
    c.n_layer = 4;
    c.vocab_size = 64;
    c.d_state = 8;
  } else if (name == "small") {
    c.d_model = 384;
    c.n_layer = 12;
    c.vocab_size = 256;
  } else if (name == "mamba-130m") {
    c = published(768, 24);
  } else if (name == "mamba-370m") {
    c = published(1024, 48);
  } else if (name == "mamba-790m") {
    c = published(1536, 48);
  } else if (name == "mamba-1.4b") {
    c = published(2048, 48);
  } else if (name == "mamba-2.8b") {
    c = published(2560, 64);
  } else if (name == "mamba2-130m") {
    c = published2(768, 24);
  } else if (name == "mamba2-370m") {
    c = published2(1024, 48);
  } else if (name == "mamba2-780m") {
    c = published2(1536, 48);
  } else if (name == "mamba2-1.3b") {
    c = published2(2048, 48);
  } else if (name == "mamba2-2.7b") {
    c = published2(2560, 64);
  } else if (name == "bamba-9b") {
    // fms-fsdp's "mamba_9.8b" variant (the Bamba-9B architecture).
    c = published2(4096, 32);
    c.vocab_size = 128256;
    c.tie_embeddings = false;
    c.d_intermediate = 14336;
    c.attn_layer_idx = {9, 18, 27};
    c.attn.num_heads = 32;
    c.attn.num_heads_kv = 8;
    c.attn.head_dim = 128;
    c.attn.rotary_emb_dim = 64;
    c.attn.causal = true;
    c.attn.qkv_proj_bias = false;
    c.attn.out_proj_bias = false;
  } else if (name == "tiny-hybrid") {
    c.d_model = 32;
    c.n_layer = 4;
    c.vocab_size = 64;
    c.pad_vocab_size_multiple = 16;
    c.ssm_layer = SsmLayer::kMamba2;
    c.d_state = 16;
    c.headdim = 8;
    c.ngroups = 2;
    c.chunk_size = 8;
    c.d_intermediate = 64;
    c.attn_layer_idx = {2};
    c.attn.num_heads = 4;
    c.attn.num_heads_kv = 2;
    c.attn.head_dim = 8;
    c.attn.rotary_emb_dim = 4;
    c.attn.causal = true;
  } else if (name == "small-mamba2") {
    c.d_model = 384;
    c.n_layer = 10;
    c.vocab_size = 256;
    c.pad_vocab_size_multiple = 16;
    c.ssm_layer = SsmLayer::kMamba2;
    c.d_state = 64;
    c.chunk_size = 64;
  } else {
    std::string known;
    for (const auto& n : preset_names()) known += (known.empty() ? "" : ", ") + n;
    throw ConfigError("unknown preset '" + name + "' (known: " + known + ")");
  }
  c.dt_rank = c.dt_rank_value();
  c.validate();
  return c;
}

std::vector<std::string> preset_names() {
  return {"tiny",        "small",       "mamba-130m",  "mamba-370m",  "mamba-790m",   "mamba-1.4b",
          "mamba-2.8b",  "mamba2-130m", "mamba2-370m", "mamba2-780m", "mamba2-1.3b",  "mamba2-2.7b",
          "bamba-9b",    "tiny-hybrid", "small-mamba2"};
}

}  // namespace pmamba::model
