#include <c10/core/GradMode.h>
#include "src/model/init.h"

#include <ATen/ATen.h>
#include <xxhash.h>

#include <cmath>
#include <algorithm>
#include <functional>
#include <vector>

#include "src/model/errors.h"
#include "src/model/fqn.h"

namespace pmamba::model {

namespace {

uint64_t splitmix64(uint64_t x) { return mix64(x); }

double to_unit(uint64_t bits) { return static_cast<double>(bits >> 11) * 0x1.0p-53; }

constexpr double kPi = 3.14159265358979323846;

// Writes f(i) for every element i (row-major) into `param`, converting from float64 in
// blocks so that a large embedding needs no full-size temporary.
void fill(at::Tensor& param, const std::function<double(int64_t)>& f) {
  constexpr int64_t kBlock = 1 << 20;
  const int64_t n = param.numel();
  std::vector<double> values(static_cast<size_t>(std::min(n, kBlock)));
  c10::NoGradGuard no_grad;
  at::Tensor flat = param.view({-1});
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t len = std::min(kBlock, n - start);
    for (int64_t i = 0; i < len; ++i) values[static_cast<size_t>(i)] = f(start + i);
    flat.narrow(0, start, len).copy_(at::from_blob(values.data(), {len}, at::kDouble));
  }
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

FqnRng::FqnRng(uint64_t seed, const std::string& stream)
    : key_(XXH64(stream.data(), stream.size(), seed)) {}

double FqnRng::uniform(uint64_t i) const {
  return to_unit(splitmix64(key_ ^ splitmix64(2 * i)));
}

double FqnRng::normal(uint64_t i) const {
  const double u1 = 1.0 - to_unit(splitmix64(key_ ^ splitmix64(2 * i)));  // (0, 1]
  const double u2 = to_unit(splitmix64(key_ ^ splitmix64(2 * i + 1)));
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * kPi * u2);
}

void init_parameter(const std::string& fqn_in, at::Tensor& param, const MambaConfig& c,
                    uint64_t seed) {
  std::string fqn = fqn_in;
  if (fqn == kLmHeadFqn && c.tie_embeddings) fqn = kEmbeddingFqn;
  const FqnRng rng(seed, fqn);
  auto uniform_pm = [&](double bound, double scale = 1.0) {
    fill(param, [&](int64_t i) { return (-bound + 2.0 * bound * rng.uniform(i)) * scale; });
  };
  auto constant = [&](double v) { fill(param, [&](int64_t) { return v; }); };

  const double d = static_cast<double>(c.d_model), di = static_cast<double>(c.d_inner()),
               k = static_cast<double>(c.d_conv), r = static_cast<double>(c.dt_rank_value());
  const double rescale = 1.0 / std::sqrt(static_cast<double>(c.n_residuals_per_layer() * c.n_layer));
  const int64_t layer = layer_of(fqn);
  const LayerKind kind = layer >= 0 && layer < c.n_layer ? c.layer_kind(layer) : LayerKind::kMamba1;
  // Linear weights: nn.Linear's default kaiming_uniform(a = sqrt 5) = U(+-1/sqrt(fan_in)).
  const double linear_bound = param.dim() == 2 ? 1.0 / std::sqrt(static_cast<double>(param.size(1))) : 0.0;
  if (fqn == kEmbeddingFqn) {
    fill(param, [&](int64_t i) { return 0.02 * rng.normal(i); });
  } else if (fqn == kLmHeadFqn) {  // untied head: nn.Linear default, U(±1/sqrt(fan_in))
    uniform_pm(1.0 / std::sqrt(d));
  } else if (ends_with(fqn, "norm.weight") || ends_with(fqn, "norm2.weight") || ends_with(fqn, "norm_f.weight") ||
             ends_with(fqn, "mixer.D")) {
    constant(1.0);  // includes Mamba-2's gated mixer.norm.weight
  } else if (ends_with(fqn, "norm.bias") || ends_with(fqn, "norm2.bias") || ends_with(fqn, "norm_f.bias") ||
             ends_with(fqn, "in_proj.bias") || ends_with(fqn, "out_proj.bias")) {
    constant(0.0);  // mamba_ssm's _init_weights zeroes every Linear bias
  } else if (ends_with(fqn, "mixer.in_proj.weight")) {
    uniform_pm(1.0 / std::sqrt(d));
  } else if (ends_with(fqn, "mixer.conv1d.weight") || ends_with(fqn, "mixer.conv1d.bias")) {
    uniform_pm(1.0 / std::sqrt(k));  // Conv1d default with fan_in = (channels / groups) * K = K
  } else if (ends_with(fqn, "mixer.x_proj.weight")) {
    uniform_pm(1.0 / std::sqrt(di));
  } else if (ends_with(fqn, "mixer.dt_proj.weight")) {
    uniform_pm(c.dt_scale / std::sqrt(r));
  } else if (ends_with(fqn, "mixer.dt_proj.bias") || ends_with(fqn, "mixer.dt_bias")) {
    // dt log-uniform in [dt_min, dt_max], floored, stored as inverse softplus so that
    // softplus(bias) == dt at init (Mamba-1's dt_proj.bias, Mamba-2's dt_bias).
    const double lo = std::log(c.dt_min), hi = std::log(c.dt_max);
    fill(param, [&](int64_t i) {
      double dt = std::exp(lo + (hi - lo) * rng.uniform(i));
      dt = std::max(dt, c.dt_init_floor);
      return dt + std::log(-std::expm1(-dt));
    });
  } else if (ends_with(fqn, "mixer.A_log") && kind == LayerKind::kMamba2) {
    // Per-head scalar A ~ U(A_init_range), stored as log A.
    fill(param, [&](int64_t i) { return std::log(c.A_init_min + (c.A_init_max - c.A_init_min) * rng.uniform(i)); });
  } else if (ends_with(fqn, "mixer.A_log")) {
    const int64_t n = c.d_state;  // S4D-Real: A[:, j] = -(j + 1)
    fill(param, [&](int64_t i) { return std::log(static_cast<double>(i % n + 1)); });
  } else if (ends_with(fqn, "mixer.out_proj.weight") || ends_with(fqn, "mlp.fc2.weight")) {
    // Linear default, then rescaled by 1/sqrt(n_residuals_per_layer * n_layer)
    // (mamba_ssm's rescale_prenorm_residual).
    uniform_pm(linear_bound, rescale);
  } else if (ends_with(fqn, "mlp.fc1.weight")) {
    uniform_pm(linear_bound);
  } else {
    throw ConfigError("init: '" + fqn_in + "' is not a Mamba parameter");
  }
}

}  // namespace pmamba::model
