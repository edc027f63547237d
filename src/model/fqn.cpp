#include "src/model/fqn.h"

#include "src/model/errors.h"

namespace pmamba::model {

int64_t ParamInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string layer_prefix(int64_t layer) {
  return "backbone.layers." + std::to_string(layer) + ".";
}

int64_t layer_of(const std::string& fqn) {
  static const std::string kPrefix = "backbone.layers.";
  if (fqn.compare(0, kPrefix.size(), kPrefix) != 0) return -1;
  size_t pos = kPrefix.size(), end = pos;
  while (end < fqn.size() && fqn[end] >= '0' && fqn[end] <= '9') ++end;
  if (end == pos || end >= fqn.size() || fqn[end] != '.' || end - pos > 9) return -1;
  if (fqn[pos] == '0' && end - pos > 1) return -1;  // "07" is not a canonical index
  return std::stoll(fqn.substr(pos, end - pos));
}

std::vector<ParamInfo> list_parameters(const MambaConfig& c) {
  c.validate();
  const int64_t d = c.d_model, di = c.d_inner(), n = c.d_state, r = c.dt_rank_value(),
                k = c.d_conv, v = c.padded_vocab();
  std::vector<ParamInfo> out;
  auto add = [&](std::string fqn, std::vector<int64_t> shape, int64_t layer, bool no_wd) {
    out.push_back(ParamInfo{std::move(fqn), std::move(shape), layer, no_wd, ""});
  };
  add(kEmbeddingFqn, {v, d}, -1, false);
  for (int64_t i = 0; i < c.n_layer; ++i) {
    const std::string p = layer_prefix(i);
    add(p + "norm.weight", {d}, i, true);
    if (!c.rms_norm) add(p + "norm.bias", {d}, i, true);
    switch (c.layer_kind(i)) {
      case LayerKind::kMamba1:
        add(p + "mixer.in_proj.weight", {2 * di, d}, i, false);
        if (c.bias) add(p + "mixer.in_proj.bias", {2 * di}, i, true);
        add(p + "mixer.conv1d.weight", {di, 1, k}, i, false);
        if (c.conv_bias) add(p + "mixer.conv1d.bias", {di}, i, true);
        add(p + "mixer.x_proj.weight", {r + 2 * n, di}, i, false);
        add(p + "mixer.dt_proj.weight", {di, r}, i, false);
        add(p + "mixer.dt_proj.bias", {di}, i, true);
        add(p + "mixer.A_log", {di, n}, i, true);
        add(p + "mixer.D", {di}, i, true);
        add(p + "mixer.out_proj.weight", {d, di}, i, false);
        if (c.bias) add(p + "mixer.out_proj.bias", {d}, i, true);
        break;
      case LayerKind::kMamba2: {
        const int64_t h = c.nheads(), conv = c.conv_dim();
        add(p + "mixer.in_proj.weight", {c.d_in_proj(), d}, i, false);  // rows [z, x, B, C, dt]
        if (c.bias) add(p + "mixer.in_proj.bias", {c.d_in_proj()}, i, true);
        add(p + "mixer.conv1d.weight", {conv, 1, k}, i, false);  // channels [x, B, C]
        if (c.conv_bias) add(p + "mixer.conv1d.bias", {conv}, i, true);
        add(p + "mixer.dt_bias", {h}, i, true);
        add(p + "mixer.A_log", {h}, i, true);
        add(p + "mixer.D", c.D_has_hdim ? std::vector<int64_t>{di} : std::vector<int64_t>{h}, i, true);
        if (c.ssm_rmsnorm) add(p + "mixer.norm.weight", {di}, i, true);
        add(p + "mixer.out_proj.weight", {d, di}, i, false);
        if (c.bias) add(p + "mixer.out_proj.bias", {d}, i, true);
        break;
      }
      case LayerKind::kAttention: {
        const int64_t hd = c.attn_head_dim(), qkv = (c.attn.num_heads + 2 * c.attn_heads_kv()) * hd;
        add(p + "mixer.in_proj.weight", {qkv, d}, i, false);  // rows [q, k, v]
        if (c.attn.qkv_proj_bias) add(p + "mixer.in_proj.bias", {qkv}, i, true);
        add(p + "mixer.out_proj.weight", {d, c.attn.num_heads * hd}, i, false);
        if (c.attn.out_proj_bias) add(p + "mixer.out_proj.bias", {d}, i, true);
        break;
      }
    }
    if (c.d_intermediate > 0) {
      add(p + "norm2.weight", {d}, i, true);
      if (!c.rms_norm) add(p + "norm2.bias", {d}, i, true);
      add(p + "mlp.fc1.weight", {2 * c.mlp_hidden(), d}, i, false);  // rows [value, gate]
      add(p + "mlp.fc2.weight", {d, c.mlp_hidden()}, i, false);
    }
  }
  add("backbone.norm_f.weight", {d}, -1, true);
  if (!c.rms_norm) add("backbone.norm_f.bias", {d}, -1, true);
  add(kLmHeadFqn, {v, d}, -1, false);
  if (c.tie_embeddings) out.back().tied_to = kEmbeddingFqn;
  return out;
}

bool stage_owns(const ParamInfo& p, const StageSpec& s) {
  if (p.layer >= 0) return s.owns_layer(p.layer);
  if (p.fqn == kEmbeddingFqn) return s.is_first();
  return s.is_last();  // norm_f, lm_head
}

int owner_stage(const ParamInfo& p, const std::vector<StageSpec>& stages) {
  for (const auto& s : stages) {
    if (stage_owns(p, s)) return s.stage;
  }
  throw ConfigError("no stage owns parameter '" + p.fqn + "'");
}

std::vector<ParamInfo> stage_parameters(const MambaConfig& config, const StageSpec& stage) {
  std::vector<ParamInfo> out;
  for (auto& p : list_parameters(config)) {
    if (stage_owns(p, stage)) out.push_back(std::move(p));
  }
  return out;
}

int64_t count_parameters(const MambaConfig& config) {
  int64_t total = 0;
  for (const auto& p : list_parameters(config)) {
    if (p.tied_to.empty()) total += p.numel();
  }
  return total;
}

}  // namespace pmamba::model
