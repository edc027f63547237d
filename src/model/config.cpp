#include "src/model/config.h"

#include <xxhash.h>

#include <nlohmann/json.hpp>
#include <sstream>

#include "src/model/errors.h"

namespace pmamba::model {

int64_t MambaConfig::padded_vocab() const {
  const int64_t m = pad_vocab_size_multiple;
  return (vocab_size + m - 1) / m * m;
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
}

bool MambaConfig::operator==(const MambaConfig& o) const {
  return config_to_json_string(*this) == config_to_json_string(o);
}

nlohmann::json config_to_json(const MambaConfig& c) {
  nlohmann::json j;
  j["d_model"] = c.d_model;
  j["n_layer"] = c.n_layer;
  j["vocab_size"] = c.vocab_size;
  j["d_state"] = c.d_state;
  j["d_conv"] = c.d_conv;
  j["expand"] = c.expand;
  j["dt_rank"] = c.dt_rank_value();
  j["dt_min"] = c.dt_min;
  j["dt_max"] = c.dt_max;
  j["dt_init_floor"] = c.dt_init_floor;
  j["dt_scale"] = c.dt_scale;
  j["conv_bias"] = c.conv_bias;
  j["bias"] = c.bias;
  j["rms_norm"] = c.rms_norm;
  j["norm_eps"] = c.norm_eps;
  j["residual_in_fp32"] = c.residual_in_fp32;
  j["tie_embeddings"] = c.tie_embeddings;
  j["pad_vocab_size_multiple"] = c.pad_vocab_size_multiple;
  return j;
}

namespace {

template <typename T>
void read_field(const nlohmann::json& j, const char* key, T& out, bool required) {
  auto it = j.find(key);
  if (it == j.end()) {
    if (required) throw ConfigError(std::string("config: required key '") + key + "' is missing");
    return;
  }
  try {
    if constexpr (std::is_same_v<T, bool>) {
      if (!it->is_boolean()) throw ConfigError("");
    } else if constexpr (std::is_integral_v<T>) {
      if (!it->is_number_integer()) throw ConfigError("");
    } else {
      if (!it->is_number()) throw ConfigError("");
    }
    out = it->get<T>();
  } catch (const std::exception&) {
    throw ConfigError(std::string("config: key '") + key + "' must be " +
                      (std::is_same_v<T, bool> ? "a boolean"
                       : std::is_integral_v<T> ? "an integer"
                                               : "a number") +
                      " but is " + it->dump());
  }
}

}  // namespace

MambaConfig config_from_json(const nlohmann::json& j) {
  if (!j.is_object()) throw ConfigError("config: expected a JSON object but found " + j.dump());
  static const char* kKeys[] = {"d_model", "n_layer", "vocab_size", "d_state", "d_conv",
                                "expand", "dt_rank", "dt_min", "dt_max", "dt_init_floor",
                                "dt_scale", "conv_bias", "bias", "rms_norm", "norm_eps",
                                "residual_in_fp32", "tie_embeddings", "pad_vocab_size_multiple"};
  for (auto it = j.begin(); it != j.end(); ++it) {
    bool known = false;
    for (const char* k : kKeys) known = known || it.key() == k;
    if (!known) throw ConfigError("config: unknown key '" + it.key() + "'");
  }
  MambaConfig c;
  read_field(j, "d_model", c.d_model, true);
  read_field(j, "n_layer", c.n_layer, true);
  read_field(j, "vocab_size", c.vocab_size, true);
  read_field(j, "d_state", c.d_state, false);
  read_field(j, "d_conv", c.d_conv, false);
  read_field(j, "expand", c.expand, false);
  read_field(j, "dt_rank", c.dt_rank, false);
  read_field(j, "dt_min", c.dt_min, false);
  read_field(j, "dt_max", c.dt_max, false);
  read_field(j, "dt_init_floor", c.dt_init_floor, false);
  read_field(j, "dt_scale", c.dt_scale, false);
  read_field(j, "conv_bias", c.conv_bias, false);
  read_field(j, "bias", c.bias, false);
  read_field(j, "rms_norm", c.rms_norm, false);
  read_field(j, "norm_eps", c.norm_eps, false);
  read_field(j, "residual_in_fp32", c.residual_in_fp32, false);
  read_field(j, "tie_embeddings", c.tie_embeddings, false);
  read_field(j, "pad_vocab_size_multiple", c.pad_vocab_size_multiple, false);
  c.validate();
  if (c.dt_rank == 0) c.dt_rank = c.dt_rank_value();
  return c;
}

std::string config_to_json_string(const MambaConfig& config) {
  return config_to_json(config).dump();  // nlohmann::json objects keep keys sorted
}

MambaConfig config_from_json_string(const std::string& text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw ConfigError(std::string("config: not valid JSON: ") + e.what());
  }
  return config_from_json(j);
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
  return {"tiny", "small", "mamba-130m", "mamba-370m", "mamba-790m", "mamba-1.4b", "mamba-2.8b"};
}

}  // namespace pmamba::model
