// The Mamba LM as a pipeline stage: MambaLM built from a StageSpec registers exactly the
// parameters that stage owns, under their global FQNs (mamba_ssm's MambaLMHeadModel names,
// reference/mamba.md §2 and reference/scale-out.md §2):
//   backbone.embedding.weight                (first stage only)
//   backbone.layers.{i}.norm.weight, backbone.layers.{i}.mixer.*   (i = global layer index)
//   backbone.layers.{i}.norm2.weight, backbone.layers.{i}.mlp.fc{1,2}.weight  (d_intermediate > 0)
//   backbone.norm_f.weight, lm_head.weight   (last stage only)
// backbone.layers is a ModuleDict keyed by the global index, run in ascending index order;
// each layer's mixer is Mamba-1, Mamba-2 or attention as config.layer_kind(i) says.
//
// Shape letters: B batch, L sequence, D d_model, E d_inner (= expand * D), N d_state,
// R dt_rank, K d_conv, V padded vocabulary; Mamba-2: H heads, P headdim, G ngroups,
// C conv_dim = E + 2 G N; attention: Hq query heads, Hkv key/value heads, Dh head_dim,
// T tokens in the KV cache.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/moduledict.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "src/model/config.h"
#include "src/model/partition.h"

namespace pmamba::model {

/// What crosses a stage boundary.
enum class BoundaryMode {
  kPacked,  // hidden and residual stacked: (2, B, L, D) in the residual dtype
  kSummed,  // hidden + residual: (B, L, D), half the bytes; the receiver needs only the sum
};
BoundaryMode parse_boundary(const std::string& name);  // "packed" | "summed", else ConfigError
const char* boundary_name(BoundaryMode mode);

/// The residual stream between blocks. The next consumer first forms
/// hidden + residual (or whichever of the two is defined).
struct StreamState {
  at::Tensor hidden;    // (B, L, D) mixer output, parameter dtype
  at::Tensor residual;  // (B, L, D) fp32 when residual_in_fp32
};

/// hidden + residual when both exist, else the one that does.
at::Tensor combine_stream(const StreamState& state);

/// Per-layer recurrent state for generation.
struct LayerCache {
  at::Tensor conv_state;  // last K pre-conv inputs, parameter dtype: Mamba-1 (B, E, K), Mamba-2 (B, C, K)
  at::Tensor ssm_state;   // fp32: Mamba-1 (B, E, N), Mamba-2 (B, H, P, N)
  at::Tensor key, value;  // attention: (B, capacity, Hkv, Dh); rows [0, offset) are the tokens seen
  int64_t offset = 0;     // attention: tokens seen, the rotary position of the next token
};
using InferenceCache = std::map<int64_t, LayerCache>;  // keyed by global layer index

// ---- building blocks ----

/// y = x W^T (+ b). weight (out, in), bias (out).
class DenseImpl : public torch::nn::Module {
 public:
  DenseImpl(int64_t in_features, int64_t out_features, bool with_bias);
  at::Tensor forward(const at::Tensor& x);
  at::Tensor weight, bias;
};
TORCH_MODULE(Dense);

/// RMSNorm (weight) or LayerNorm (weight, bias); statistics in fp32.
class NormImpl : public torch::nn::Module {
 public:
  NormImpl(int64_t dim, double eps, bool rms);
  at::Tensor forward(const at::Tensor& x);
  at::Tensor weight, bias;
  double eps;
  bool rms;
};
TORCH_MODULE(Norm);

class EmbeddingImpl : public torch::nn::Module {
 public:
  EmbeddingImpl(int64_t num, int64_t dim);
  at::Tensor forward(const at::Tensor& ids);  // (B, L) int64 -> (B, L, D)
  at::Tensor weight;
};
TORCH_MODULE(Embedding);

/// Parameter holder for the depthwise conv: weight (E, 1, K), bias (E).
class ConvParamsImpl : public torch::nn::Module {
 public:
  ConvParamsImpl(int64_t channels, int64_t width, bool with_bias);
  at::Tensor weight, bias;
};
TORCH_MODULE(ConvParams);

/// The S6 mixer (state-spaces/mamba `Mamba`).
class MixerImpl : public torch::nn::Module {
 public:
  explicit MixerImpl(const MambaConfig& config);
  /// (B, L, D) -> (B, L, D). With `fill` (a prefill) the layer's conv and SSM state after the
  /// last token is stored there, ready for step().
  at::Tensor forward(const at::Tensor& h, LayerCache* fill = nullptr);
  at::Tensor step(const at::Tensor& h, LayerCache& cache);  // (B, D) -> (B, D)
  LayerCache make_cache(int64_t batch) const;

  Dense in_proj{nullptr}, x_proj{nullptr}, dt_proj{nullptr}, out_proj{nullptr};
  ConvParams conv1d{nullptr};
  at::Tensor A_log, D;

 private:
  int64_t d_inner_, d_state_, dt_rank_;
};
TORCH_MODULE(Mixer);

/// mamba_ssm's RMSNormGated (norm_before_gate false): v = y * silu(z), normalised per group
/// of E / G channels, times weight; fp32 inside, y's dtype out.
class GatedNormImpl : public torch::nn::Module {
 public:
  GatedNormImpl(int64_t dim, int64_t groups, double eps);
  at::Tensor forward(const at::Tensor& y, const at::Tensor& z);  // (..., E), (..., E) -> (..., E)
  at::Tensor weight;
  int64_t groups;
  double eps;
};
TORCH_MODULE(GatedNorm);

/// The Mamba-2 (SSD) mixer, mamba_ssm's `Mamba2` with d_ssm = d_inner.
class Mamba2MixerImpl : public torch::nn::Module {
 public:
  explicit Mamba2MixerImpl(const MambaConfig& config);
  at::Tensor forward(const at::Tensor& h, LayerCache* fill = nullptr);  // (B, L, D) -> (B, L, D); as Mixer
  at::Tensor step(const at::Tensor& h, LayerCache& cache);  // (B, D) -> (B, D)
  LayerCache make_cache(int64_t batch) const;

  Dense in_proj{nullptr}, out_proj{nullptr};
  ConvParams conv1d{nullptr};
  GatedNorm norm{nullptr};  // absent when ssm_cfg.rmsnorm is false
  at::Tensor dt_bias, A_log, D;

 private:
  at::Tensor time_step(const at::Tensor& dt) const;  // softplus(dt + dt_bias), clamped; fp32
  at::Tensor gate(const at::Tensor& y, const at::Tensor& z);
  int64_t d_inner_, d_state_, heads_, headdim_, groups_, chunk_size_;
  double dt_lo_, dt_hi_;
  bool D_has_hdim_;
};
TORCH_MODULE(Mamba2Mixer);

/// Causal grouped-query attention with rotary embeddings (mamba_ssm's MHA, d_conv 0, mlp_dim 0).
class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const MambaConfig& config);
  /// (B, L, D) -> (B, L, D); with `fill` the keys and values of the L tokens are cached.
  at::Tensor forward(const at::Tensor& h, LayerCache* fill = nullptr);
  at::Tensor step(const at::Tensor& h, LayerCache& cache);  // (B, D) -> (B, D)
  LayerCache make_cache(int64_t batch) const;

  Dense in_proj{nullptr}, out_proj{nullptr};

 private:
  /// Rotary (GPT-NeoX rotate_half) on the first rotary_dim dims; x (B, L, heads, Dh),
  /// positions offset .. offset + L - 1.
  at::Tensor rotate(const at::Tensor& x, int64_t offset) const;
  /// q (B, Lq, Hq, Dh) over k, v (B, Lk, Hkv, Dh); query i sits at position Lk - Lq + i and sees
  /// keys 0 .. its position. -> (B, Lq, Hq * Dh)
  at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) const;
  int64_t heads_, heads_kv_, head_dim_, rotary_dim_;
  double rotary_base_, scale_;
};
TORCH_MODULE(Attention);

/// mamba_ssm's GatedMLP: fc2(value * silu(gate)), fc1's rows are [value, gate].
class GatedMlpImpl : public torch::nn::Module {
 public:
  explicit GatedMlpImpl(const MambaConfig& config);
  at::Tensor forward(const at::Tensor& x);  // (..., D) -> (..., D)
  Dense fc1{nullptr}, fc2{nullptr};

 private:
  int64_t hidden_;
};
TORCH_MODULE(GatedMlp);

/// Pre-norm residual block (mamba_ssm's Block): r = h + r; h = mixer(norm(r)); with an MLP
/// also r = h + r; h = mlp(norm2(r)).
class BlockImpl : public torch::nn::Module {
 public:
  BlockImpl(const MambaConfig& config, int64_t layer);
  StreamState forward(const StreamState& in, LayerCache* fill = nullptr);
  StreamState step(const StreamState& in, LayerCache& cache);  // L == 1
  LayerCache make_cache(int64_t batch) const;

  Norm norm{nullptr};
  // Exactly one of the three is set, registered as "mixer".
  Mixer mixer{nullptr};
  Mamba2Mixer mixer2{nullptr};
  Attention attention{nullptr};
  Norm norm2{nullptr};    // d_intermediate > 0 only
  GatedMlp mlp{nullptr};  // d_intermediate > 0 only

 private:
  at::Tensor mix(const at::Tensor& h, LayerCache* fill);
  at::Tensor mix_step(const at::Tensor& h, LayerCache& cache);
  StreamState finish(const at::Tensor& h, at::Tensor residual);
  bool residual_in_fp32_;
};
TORCH_MODULE(Block);

class BackboneImpl : public torch::nn::Module {
 public:
  BackboneImpl(const MambaConfig& config, const StageSpec& stage);
  Embedding embedding{nullptr};    // first stage only
  torch::nn::ModuleDict layers;    // global index -> Block
  Norm norm_f{nullptr};            // last stage only
  std::vector<std::pair<int64_t, Block>> ordered_layers;  // ascending global index
};
TORCH_MODULE(Backbone);

/// One pipeline stage of the LM (the whole model when the stage is whole_model()).
/// Input: token ids (B, L) int64 on the first stage, else the boundary tensor.
/// Output: logits (B, L, V) on the last stage, else the boundary tensor.
class MambaLMImpl : public torch::nn::Module {
 public:
  MambaLMImpl(const MambaConfig& config, const StageSpec& stage,
              BoundaryMode boundary = BoundaryMode::kPacked);

  at::Tensor forward(const at::Tensor& input);
  /// One token for generation: input (B, 1) ids or a boundary tensor with L == 1.
  at::Tensor step(const at::Tensor& input, InferenceCache& cache);
  InferenceCache make_cache(int64_t batch) const;
  /// The full-sequence forward of a prompt (B, L) (or its boundary tensor) that also leaves
  /// every layer's state after the last token in `cache` (replacing what it held), so step()
  /// continues from there. Same output as forward(), bit for bit.
  at::Tensor prefill(const at::Tensor& input, InferenceCache& cache);

  /// Fills every parameter from (seed, FQN); see init.h.
  void init_parameters(uint64_t seed);

  const MambaConfig& config() const { return config_; }
  const StageSpec& stage() const { return stage_; }
  BoundaryMode boundary() const { return boundary_; }
  at::ScalarType residual_dtype() const;
  /// Shape of the boundary tensor for a (B, L) microbatch.
  std::vector<int64_t> boundary_shape(int64_t batch, int64_t len) const;

  /// Encodes/decodes the boundary tensor. decode throws BoundaryError naming the stage when
  /// the tensor's rank, D or dtype disagree with this stage's expectations.
  at::Tensor encode_boundary(const StreamState& state) const;
  StreamState decode_boundary(const at::Tensor& t) const;

  Backbone backbone{nullptr};
  Dense lm_head{nullptr};  // last stage only

 private:
  enum class Mode { kForward, kPrefill, kStep };
  at::Tensor run(const at::Tensor& input, InferenceCache* cache, Mode mode);

  MambaConfig config_;
  StageSpec stage_;
  BoundaryMode boundary_;
};
TORCH_MODULE(MambaLM);

/// The tied-gradient sum, in a fixed operand order (embedding first) so every place that
/// forms it (PP=1, chained stages, the pipeline runtime) produces the same bits.
at::Tensor tied_gradient_sum(const at::Tensor& embedding_grad, const at::Tensor& head_grad);

/// For a tied config: sets both embedding and lm_head gradients to their sum. `first` and
/// `last` may be the same module (PP=1). No-op when the config is untied.
void sync_tied_gradients(MambaLMImpl& first, MambaLMImpl& last);

}  // namespace pmamba::model
