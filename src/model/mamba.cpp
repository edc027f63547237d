#include "src/model/mamba.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/version.h>

#include <cmath>
#include <sstream>

#include "kernels/causal_conv1d.h"
#include "kernels/selective_scan.h"
#include "kernels/ssd_scan.h"
#include "src/model/errors.h"
#include "src/model/fqn.h"
#include "src/model/init.h"

namespace pmamba::model {

BoundaryMode parse_boundary(const std::string& name) {
  if (name == "packed") return BoundaryMode::kPacked;
  if (name == "summed") return BoundaryMode::kSummed;
  throw ConfigError("unknown boundary mode '" + name + "' (expected packed or summed)");
}

const char* boundary_name(BoundaryMode mode) {
  return mode == BoundaryMode::kPacked ? "packed" : "summed";
}

at::Tensor combine_stream(const StreamState& s) {
  if (s.hidden.defined() && s.residual.defined()) return s.hidden + s.residual;
  return s.hidden.defined() ? s.hidden : s.residual;
}

// ---- building blocks ----

DenseImpl::DenseImpl(int64_t in_features, int64_t out_features, bool with_bias) {
  weight = register_parameter("weight", at::empty({out_features, in_features}));
  if (with_bias) bias = register_parameter("bias", at::empty({out_features}));
}

at::Tensor DenseImpl::forward(const at::Tensor& x) {
  // One row (a decode step at batch 1): a matrix-vector product reads the weight once, where
  // GEMM would first copy it into its packed layout (on the CPU that copy doubles the bytes
  // moved, and decoding is bound by them).
  if (x.numel() == x.size(-1) && x.is_cpu() && !c10::GradMode::is_enabled()) {
    at::Tensor y = at::mv(weight, x.reshape({-1}));  // (out)
    if (bias.defined()) y = y + bias;
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
    shape.back() = weight.size(0);
    return y.view(shape);
  }
  return at::linear(x, weight, bias);
}

NormImpl::NormImpl(int64_t dim, double eps_, bool rms_) : eps(eps_), rms(rms_) {
  weight = register_parameter("weight", at::empty({dim}));
  if (!rms) bias = register_parameter("bias", at::empty({dim}));
}

at::Tensor NormImpl::forward(const at::Tensor& x) {
  const at::Tensor xf = x.to(at::kFloat);  // (..., D)
  at::Tensor y;
  if (rms) {
    y = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
    return weight * y.to(weight.scalar_type());
  }
  y = at::layer_norm(xf, {xf.size(-1)}, {}, {}, eps);
  return weight * y.to(weight.scalar_type()) + bias;
}

EmbeddingImpl::EmbeddingImpl(int64_t num, int64_t dim) {
  weight = register_parameter("weight", at::empty({num, dim}));
}

at::Tensor EmbeddingImpl::forward(const at::Tensor& ids) { return at::embedding(weight, ids); }

ConvParamsImpl::ConvParamsImpl(int64_t channels, int64_t width, bool with_bias) {
  weight = register_parameter("weight", at::empty({channels, 1, width}));
  if (with_bias) bias = register_parameter("bias", at::empty({channels}));
}

// ---- mixer ----

namespace {

// The conv state step() expects after a prefill: the last K pre-conv inputs, oldest first,
// zeros before the first token (as mamba_ssm's F.pad(x, (K - L, 0))).
at::Tensor last_conv_inputs(const at::Tensor& x, int64_t width) {  // x (B, C, L) -> (B, C, K)
  const int64_t L = x.size(2);
  if (L >= width) return x.narrow(2, L - width, width).contiguous();
  return at::constant_pad_nd(x, {width - L, 0}, 0.0).contiguous();
}

}  // namespace

MixerImpl::MixerImpl(const MambaConfig& c)
    : d_inner_(c.d_inner()), d_state_(c.d_state), dt_rank_(c.dt_rank_value()) {
  in_proj = register_module("in_proj", Dense(c.d_model, 2 * d_inner_, c.bias));
  conv1d = register_module("conv1d", ConvParams(d_inner_, c.d_conv, c.conv_bias));
  x_proj = register_module("x_proj", Dense(d_inner_, dt_rank_ + 2 * d_state_, false));
  dt_proj = register_module("dt_proj", Dense(dt_rank_, d_inner_, true));
  A_log = register_parameter("A_log", at::empty({d_inner_, d_state_}));
  D = register_parameter("D", at::empty({d_inner_}));
  out_proj = register_module("out_proj", Dense(d_inner_, c.d_model, c.bias));
}

at::Tensor MixerImpl::forward(const at::Tensor& h, LayerCache* fill) {
  const int64_t E = d_inner_, N = d_state_, R = dt_rank_;
  const at::Tensor xz = in_proj->forward(h);          // (B, L, 2E)
  // Split rather than narrow: narrow's backward fills a zero tensor of the whole input per
  // part and sums them; split's concatenates the parts' gradients once.
  const std::vector<at::Tensor> xz_parts = at::split_with_sizes(xz, {E, E}, -1);
  const at::Tensor x = xz_parts[0].transpose(1, 2);  // (B, E, L)
  const at::Tensor z = xz_parts[1].transpose(1, 2);  // (B, E, L)
  const at::Tensor u = kernels::causal_conv1d(x, conv1d->weight.squeeze(1), conv1d->bias,
                                              /*silu=*/true);  // (B, E, L)
  const at::Tensor x_dbl = x_proj->forward(u.transpose(1, 2));   // (B, L, R + 2N)
  const std::vector<at::Tensor> dbc = at::split_with_sizes(x_dbl, {R, N, N}, -1);
  const at::Tensor dt = dbc[0];                  // (B, L, R)
  const at::Tensor Bm = dbc[1].transpose(1, 2);  // (B, N, L)
  const at::Tensor Cm = dbc[2].transpose(1, 2);  // (B, N, L)
  // dt_proj's bias goes into the scan (added inside the softplus), as mamba_ssm does.
  const at::Tensor delta = at::linear(dt, dt_proj->weight).transpose(1, 2);  // (B, E, L)
  const at::Tensor A = -at::exp(A_log.to(at::kFloat));                       // (E, N)
  kernels::ScanOptions opts;
  opts.delta_softplus = true;
  opts.return_last_state = fill != nullptr;
  kernels::ScanOutput scan = kernels::selective_scan(u, delta, A, Bm, Cm, D.to(at::kFloat), z,
                                                     dt_proj->bias.to(at::kFloat), opts);
  if (fill) {
    fill->conv_state = last_conv_inputs(x, conv1d->weight.size(2)).detach();  // (B, E, K)
    fill->ssm_state = scan.last_state.detach().to(at::kFloat).contiguous();   // (B, E, N)
  }
  return out_proj->forward(scan.out.transpose(1, 2));  // (B, L, D)
}

LayerCache MixerImpl::make_cache(int64_t batch) const {
  LayerCache cache;
  cache.conv_state = at::zeros({batch, d_inner_, conv1d->weight.size(2)},
                               conv1d->weight.options().requires_grad(false));
  cache.ssm_state = at::zeros({batch, d_inner_, d_state_}, at::kFloat);
  return cache;
}

at::Tensor MixerImpl::step(const at::Tensor& h, LayerCache& cache) {
  const int64_t E = d_inner_, N = d_state_, R = dt_rank_;
  const at::Tensor xz = in_proj->forward(h);  // (B, 2E)
  const at::Tensor x = xz.narrow(-1, 0, E);   // (B, E)
  const at::Tensor z = xz.narrow(-1, E, E);   // (B, E)
  const at::Tensor u = kernels::causal_conv1d_step(cache.conv_state, x,
                                                   conv1d->weight.squeeze(1), conv1d->bias,
                                                   /*silu=*/true);  // (B, E)
  const at::Tensor x_dbl = x_proj->forward(u);  // (B, R + 2N)
  const at::Tensor delta = at::linear(x_dbl.narrow(-1, 0, R), dt_proj->weight);  // (B, E)
  const at::Tensor A = -at::exp(A_log.to(at::kFloat));
  const at::Tensor y = kernels::selective_scan_step(
      cache.ssm_state, u, delta, A, x_dbl.narrow(-1, R, N), x_dbl.narrow(-1, R + N, N),
      D.to(at::kFloat), z, dt_proj->bias.to(at::kFloat), /*delta_softplus=*/true);  // (B, E)
  return out_proj->forward(y);  // (B, D)
}

// ---- Mamba-2 mixer ----

GatedNormImpl::GatedNormImpl(int64_t dim, int64_t groups_, double eps_) : groups(groups_), eps(eps_) {
  weight = register_parameter("weight", at::empty({dim}));
}

at::Tensor GatedNormImpl::forward(const at::Tensor& y, const at::Tensor& z) {
  const at::Tensor v = y.to(at::kFloat) * at::silu(z.to(at::kFloat));  // (..., E)
  std::vector<int64_t> grouped(v.sizes().begin(), v.sizes().end());
  grouped.back() = v.size(-1) / groups;
  grouped.insert(grouped.end() - 1, groups);
  const at::Tensor vg = v.reshape(grouped);  // (..., G, E / G)
  const at::Tensor normed = (vg * at::rsqrt(vg.pow(2).mean(-1, /*keepdim=*/true) + eps)).reshape(v.sizes());
  // mamba_ssm multiplies by the weight in fp32 and casts once at the end.
  return (normed * weight.to(at::kFloat)).to(y.scalar_type());
}

Mamba2MixerImpl::Mamba2MixerImpl(const MambaConfig& c)
    : d_inner_(c.d_inner()),
      d_state_(c.d_state),
      heads_(c.nheads()),
      headdim_(c.headdim),
      groups_(c.ngroups),
      chunk_size_(c.chunk_size),
      dt_lo_(c.dt_limit_min),
      dt_hi_(c.dt_limit_max),
      D_has_hdim_(c.D_has_hdim) {
  in_proj = register_module("in_proj", Dense(c.d_model, c.d_in_proj(), c.bias));
  conv1d = register_module("conv1d", ConvParams(c.conv_dim(), c.d_conv, c.conv_bias));
  dt_bias = register_parameter("dt_bias", at::empty({heads_}));
  A_log = register_parameter("A_log", at::empty({heads_}));
  D = register_parameter("D", at::empty({D_has_hdim_ ? d_inner_ : heads_}));
  if (c.ssm_rmsnorm) norm = register_module("norm", GatedNorm(d_inner_, groups_, 1e-5));
  out_proj = register_module("out_proj", Dense(d_inner_, c.d_model, c.bias));
}

at::Tensor Mamba2MixerImpl::time_step(const at::Tensor& dt) const {
  // softplus with threshold 20 (identity above), as mamba_ssm's kernels; clamp only when
  // dt_limit is not the default (0, inf), as mamba_ssm does.
  at::Tensor delta = at::softplus(dt.to(at::kFloat) + dt_bias.to(at::kFloat), 1.0, 20.0);
  if (dt_lo_ > 0.0 || !std::isinf(dt_hi_)) delta = at::clamp(delta, dt_lo_, dt_hi_);
  return delta;
}

at::Tensor Mamba2MixerImpl::gate(const at::Tensor& y, const at::Tensor& z) {
  if (norm) return norm->forward(y, z);
  return y * at::silu(z);
}

at::Tensor Mamba2MixerImpl::forward(const at::Tensor& h, LayerCache* fill) {
  const int64_t B = h.size(0), L = h.size(1), E = d_inner_, GN = groups_ * d_state_;
  const int64_t C = E + 2 * GN;
  const at::Tensor zxbcdt = in_proj->forward(h);  // (B, L, 2E + 2GN + H)
  const std::vector<at::Tensor> parts = at::split_with_sizes(zxbcdt, {E, C, heads_}, -1);  // as Mixer's xz
  const at::Tensor z = parts[0];                    // (B, L, E)
  const at::Tensor xBC = parts[1].transpose(1, 2);  // (B, C, L)
  const at::Tensor dt = parts[2];                   // (B, L, H)
  const at::Tensor conv = kernels::causal_conv1d(xBC, conv1d->weight.squeeze(1), conv1d->bias, /*silu=*/true)
                              .transpose(1, 2);  // (B, L, C)
  const std::vector<at::Tensor> xbc = at::split_with_sizes(conv, {E, GN, GN}, -1);
  const at::Tensor x = xbc[0].reshape({B, L, heads_, headdim_});    // (B, L, H, P)
  const at::Tensor Bm = xbc[1].reshape({B, L, groups_, d_state_});  // (B, L, G, N)
  const at::Tensor Cm = xbc[2].reshape({B, L, groups_, d_state_});  // (B, L, G, N)
  const at::Tensor A = -at::exp(A_log.to(at::kFloat));  // (H)
  const at::Tensor Dv = D_has_hdim_ ? D.to(at::kFloat).view({heads_, headdim_}) : D.to(at::kFloat);
  kernels::SsdOptions opts;
  opts.chunk_size = chunk_size_;
  opts.return_last_state = fill != nullptr;
  kernels::SsdOutput scan = kernels::ssd_scan(x, time_step(dt), A, Bm, Cm, Dv, opts);
  if (fill) {
    fill->conv_state = last_conv_inputs(xBC, conv1d->weight.size(2)).detach();  // (B, C, K)
    fill->ssm_state = scan.last_state.detach().to(at::kFloat).contiguous();     // (B, H, P, N)
  }
  const at::Tensor y = scan.out.reshape({B, L, E});
  return out_proj->forward(gate(y, z));  // (B, L, D)
}

LayerCache Mamba2MixerImpl::make_cache(int64_t batch) const {
  LayerCache cache;
  cache.conv_state = at::zeros({batch, conv1d->weight.size(0), conv1d->weight.size(2)},
                               conv1d->weight.options().requires_grad(false));
  cache.ssm_state = at::zeros({batch, heads_, headdim_, d_state_}, at::kFloat);
  return cache;
}

at::Tensor Mamba2MixerImpl::step(const at::Tensor& h, LayerCache& cache) {
  const int64_t B = h.size(0), E = d_inner_, GN = groups_ * d_state_;
  const int64_t C = E + 2 * GN;
  const at::Tensor zxbcdt = in_proj->forward(h);  // (B, 2E + 2GN + H)
  const at::Tensor z = zxbcdt.narrow(-1, 0, E);
  const at::Tensor conv = kernels::causal_conv1d_step(cache.conv_state, zxbcdt.narrow(-1, E, C),
                                                      conv1d->weight.squeeze(1), conv1d->bias,
                                                      /*silu=*/true);  // (B, C)
  const at::Tensor x = conv.narrow(-1, 0, E).reshape({B, heads_, headdim_});          // (B, H, P)
  const at::Tensor Bm = conv.narrow(-1, E, GN).reshape({B, groups_, d_state_});       // (B, G, N)
  const at::Tensor Cm = conv.narrow(-1, E + GN, GN).reshape({B, groups_, d_state_});  // (B, G, N)
  const at::Tensor A = -at::exp(A_log.to(at::kFloat));
  const at::Tensor Dv = D_has_hdim_ ? D.to(at::kFloat).view({heads_, headdim_}) : D.to(at::kFloat);
  const at::Tensor y = kernels::ssd_scan_step(cache.ssm_state, x, time_step(zxbcdt.narrow(-1, E + C, heads_)), A,
                                              Bm, Cm, Dv)
                           .reshape({B, E});
  return out_proj->forward(gate(y, z));  // (B, D)
}

// ---- attention ----

AttentionImpl::AttentionImpl(const MambaConfig& c)
    : heads_(c.attn.num_heads),
      heads_kv_(c.attn_heads_kv()),
      head_dim_(c.attn_head_dim()),
      rotary_dim_(c.attn.rotary_emb_dim),
      rotary_base_(c.attn.rotary_emb_base),
      scale_(c.attn_softmax_scale()) {
  in_proj = register_module("in_proj", Dense(c.d_model, (heads_ + 2 * heads_kv_) * head_dim_, c.attn.qkv_proj_bias));
  out_proj = register_module("out_proj", Dense(heads_ * head_dim_, c.d_model, c.attn.out_proj_bias));
}

at::Tensor AttentionImpl::rotate(const at::Tensor& x, int64_t offset) const {
  if (rotary_dim_ == 0) return x;
  const int64_t L = x.size(1), half = rotary_dim_ / 2;
  // flash_attn's RotaryEmbedding: inv_freq = 1 / base^(2i / dim) and angle = t * inv_freq, in fp32.
  const at::Tensor inv_freq =
      1.0 / at::pow(rotary_base_, at::arange(0, rotary_dim_, 2, at::kFloat) / static_cast<double>(rotary_dim_));
  const at::Tensor t = at::arange(offset, offset + L, at::kFloat);
  const at::Tensor angle = at::outer(t, inv_freq).view({1, L, 1, half});  // (1, L, 1, rd / 2)
  const at::Tensor cos = at::cos(angle), sin = at::sin(angle);
  const at::Tensor xf = x.to(at::kFloat);
  std::vector<int64_t> sizes = {half, half};
  if (rotary_dim_ < head_dim_) sizes.push_back(head_dim_ - rotary_dim_);
  const std::vector<at::Tensor> in = at::split_with_sizes(xf, sizes, -1);  // as Mixer's xz
  const at::Tensor &x1 = in[0], &x2 = in[1];
  std::vector<at::Tensor> parts = {x1 * cos - x2 * sin, x2 * cos + x1 * sin};
  if (in.size() > 2) parts.push_back(in[2]);
  return at::cat(parts, -1).to(x.scalar_type());
}

at::Tensor AttentionImpl::attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) const {
  const int64_t B = q.size(0), Lq = q.size(1), Lk = k.size(1);
  // Query head h reads key/value head h / (Hq / Hkv).
  const int64_t rep = heads_ / heads_kv_;
  const at::Tensor kh = (rep > 1 ? k.repeat_interleave(rep, 2) : k).permute({0, 2, 1, 3});  // (B, Hq, Lk, Dh)
  const at::Tensor vh = (rep > 1 ? v.repeat_interleave(rep, 2) : v).permute({0, 2, 1, 3});  // (B, Hq, Lk, Dh)
  const at::Tensor qh = q.permute({0, 2, 1, 3});                                            // (B, Hq, Lq, Dh)
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
  // The fused kernel where this LibTorch has one (2.1+, with `scale`). Its is_causal aligns the
  // mask top-left, which is this mask only when Lq == Lk; one query (a step) needs no mask.
  if (Lq == Lk || Lq == 1) {
    const at::Tensor out = at::scaled_dot_product_attention(qh, kh, vh, {}, 0.0, /*is_causal=*/Lq > 1, scale_);
    return out.permute({0, 2, 1, 3}).reshape({B, Lq, heads_ * head_dim_});
  }
#endif
  // LibTorch 1.13 has no scaled_dot_product_attention: matmul + softmax, in fp32.
  const at::Tensor scores = at::matmul(qh.to(at::kFloat), kh.to(at::kFloat).transpose(-1, -2)) * scale_;
  // (B, Hq, Lq, Lk); query i sits at position Lk - Lq + i.
  const at::Tensor masked =
      Lq > 1 ? scores.masked_fill(at::ones({Lq, Lk}, at::kBool).triu(Lk - Lq + 1), -INFINITY) : scores;
  const at::Tensor probs = at::softmax(masked, -1);
  const at::Tensor out = at::matmul(probs, vh.to(at::kFloat)).to(q.scalar_type());  // (B, Hq, Lq, Dh)
  return out.permute({0, 2, 1, 3}).reshape({B, Lq, heads_ * head_dim_});
}

at::Tensor AttentionImpl::forward(const at::Tensor& h, LayerCache* fill) {
  const int64_t B = h.size(0), L = h.size(1), dq = heads_ * head_dim_, dkv = heads_kv_ * head_dim_;
  const at::Tensor qkv = in_proj->forward(h);  // (B, L, (Hq + 2 Hkv) Dh)
  const std::vector<at::Tensor> qkv_parts = at::split_with_sizes(qkv, {dq, dkv, dkv}, -1);  // as Mixer's xz
  const at::Tensor q = rotate(qkv_parts[0].reshape({B, L, heads_, head_dim_}), 0);
  const at::Tensor k = rotate(qkv_parts[1].reshape({B, L, heads_kv_, head_dim_}), 0);
  const at::Tensor v = qkv_parts[2].reshape({B, L, heads_kv_, head_dim_});
  if (fill) {
    // Room for the prompt and as many tokens again (at least 16) before the first doubling.
    int64_t capacity = 16;
    while (capacity < 2 * L) capacity *= 2;
    const auto opts = k.options().requires_grad(false);
    fill->key = at::zeros({B, capacity, heads_kv_, head_dim_}, opts);
    fill->value = at::zeros({B, capacity, heads_kv_, head_dim_}, opts);
    fill->key.narrow(1, 0, L).copy_(k.detach());
    fill->value.narrow(1, 0, L).copy_(v.detach());
    fill->offset = L;
  }
  return out_proj->forward(attend(q, k, v));  // (B, L, D)
}

LayerCache AttentionImpl::make_cache(int64_t batch) const {
  LayerCache cache;
  const auto opts = in_proj->weight.options().requires_grad(false);
  cache.key = at::zeros({batch, 16, heads_kv_, head_dim_}, opts);
  cache.value = at::zeros({batch, 16, heads_kv_, head_dim_}, opts);
  return cache;
}

at::Tensor AttentionImpl::step(const at::Tensor& h, LayerCache& cache) {
  const int64_t B = h.size(0), dq = heads_ * head_dim_, dkv = heads_kv_ * head_dim_;
  const at::Tensor qkv = in_proj->forward(h).unsqueeze(1);  // (B, 1, (Hq + 2 Hkv) Dh)
  const at::Tensor q = rotate(qkv.narrow(-1, 0, dq).reshape({B, 1, heads_, head_dim_}), cache.offset);
  const at::Tensor k = rotate(qkv.narrow(-1, dq, dkv).reshape({B, 1, heads_kv_, head_dim_}), cache.offset);
  const at::Tensor v = qkv.narrow(-1, dq + dkv, dkv).reshape({B, 1, heads_kv_, head_dim_});
  // The buffers grow by doubling, so a token costs one row's write rather than a copy of the
  // whole cache.
  const int64_t t = cache.offset;
  if (t == cache.key.size(1)) {
    for (at::Tensor* buf : {&cache.key, &cache.value}) {
      at::Tensor grown = at::zeros({B, 2 * t, heads_kv_, head_dim_}, buf->options());
      grown.narrow(1, 0, t).copy_(*buf);
      *buf = grown;
    }
  }
  cache.key.narrow(1, t, 1).copy_(k);
  cache.value.narrow(1, t, 1).copy_(v);
  cache.offset = t + 1;
  const at::Tensor seen_k = cache.key.narrow(1, 0, t + 1), seen_v = cache.value.narrow(1, 0, t + 1);
  return out_proj->forward(attend(q, seen_k, seen_v).squeeze(1));  // (B, D)
}

// ---- gated MLP ----

GatedMlpImpl::GatedMlpImpl(const MambaConfig& c) : hidden_(c.mlp_hidden()) {
  fc1 = register_module("fc1", Dense(c.d_model, 2 * hidden_, false));
  fc2 = register_module("fc2", Dense(hidden_, c.d_model, false));
}

at::Tensor GatedMlpImpl::forward(const at::Tensor& x) {
  const at::Tensor y = fc1->forward(x);  // (..., 2h): [value, gate]
  return fc2->forward(y.narrow(-1, 0, hidden_) * at::silu(y.narrow(-1, hidden_, hidden_)));
}

// ---- block ----

BlockImpl::BlockImpl(const MambaConfig& c, int64_t layer) : residual_in_fp32_(c.residual_in_fp32) {
  // Registration order follows mamba_ssm's Block: mixer, then norm.
  switch (c.layer_kind(layer)) {
    case LayerKind::kMamba1: mixer = register_module("mixer", Mixer(c)); break;
    case LayerKind::kMamba2: mixer2 = register_module("mixer", Mamba2Mixer(c)); break;
    case LayerKind::kAttention: attention = register_module("mixer", Attention(c)); break;
  }
  norm = register_module("norm", Norm(c.d_model, c.norm_eps, c.rms_norm));
  if (c.d_intermediate > 0) {
    norm2 = register_module("norm2", Norm(c.d_model, c.norm_eps, c.rms_norm));
    mlp = register_module("mlp", GatedMlp(c));
  }
}

at::Tensor BlockImpl::mix(const at::Tensor& h, LayerCache* fill) {
  if (mixer) return mixer->forward(h, fill);
  if (mixer2) return mixer2->forward(h, fill);
  return attention->forward(h, fill);
}

at::Tensor BlockImpl::mix_step(const at::Tensor& h, LayerCache& cache) {
  if (mixer) return mixer->step(h, cache);
  if (mixer2) return mixer2->step(h, cache);
  return attention->step(h, cache);
}

LayerCache BlockImpl::make_cache(int64_t batch) const {
  if (mixer) return mixer->make_cache(batch);
  if (mixer2) return mixer2->make_cache(batch);
  return attention->make_cache(batch);
}

StreamState BlockImpl::finish(const at::Tensor& h, at::Tensor residual) {
  if (!mlp) return StreamState{h, residual};
  residual = h + residual;  // (B, L, D)
  if (residual_in_fp32_) residual = residual.to(at::kFloat);
  return StreamState{mlp->forward(norm2->forward(residual.to(norm2->weight.scalar_type()))), residual};
}

StreamState BlockImpl::forward(const StreamState& in, LayerCache* fill) {
  at::Tensor residual = combine_stream(in);  // (B, L, D)
  if (residual_in_fp32_) residual = residual.to(at::kFloat);
  const at::Tensor h = norm->forward(residual.to(norm->weight.scalar_type()));
  return finish(mix(h, fill), residual);
}

StreamState BlockImpl::step(const StreamState& in, LayerCache& cache) {
  at::Tensor residual = combine_stream(in);  // (B, 1, D)
  if (residual_in_fp32_) residual = residual.to(at::kFloat);
  const at::Tensor h = norm->forward(residual.to(norm->weight.scalar_type()));
  return finish(mix_step(h.squeeze(1), cache).unsqueeze(1), residual);
}

// ---- backbone and LM ----

BackboneImpl::BackboneImpl(const MambaConfig& c, const StageSpec& stage) {
  if (stage.is_first()) embedding = register_module("embedding", Embedding(c.padded_vocab(), c.d_model));
  layers = register_module("layers", torch::nn::ModuleDict());
  for (int64_t i = stage.layer_begin; i < stage.layer_end; ++i) {
    Block block(c, i);
    layers->update({{std::to_string(i), block.ptr()}});
    ordered_layers.emplace_back(i, block);
  }
  if (stage.is_last()) norm_f = register_module("norm_f", Norm(c.d_model, c.norm_eps, c.rms_norm));
}

MambaLMImpl::MambaLMImpl(const MambaConfig& config, const StageSpec& stage,
                         BoundaryMode boundary)
    : config_(config), stage_(stage), boundary_(boundary) {
  config_.validate();
  if (stage.num_stages < 1 || stage.stage < 0 || stage.stage >= stage.num_stages ||
      stage.layer_begin < 0 || stage.layer_end < stage.layer_begin ||
      stage.layer_end > config.n_layer) {
    std::ostringstream os;
    os << "stage spec {stage " << stage.stage << " of " << stage.num_stages << ", layers ["
       << stage.layer_begin << ", " << stage.layer_end << ")} does not fit a model with "
       << config.n_layer << " layers";
    throw ConfigError(os.str());
  }
  backbone = register_module("backbone", Backbone(config_, stage_));
  if (stage.is_last()) {
    lm_head = register_module("lm_head", Dense(config_.d_model, config_.padded_vocab(), false));
  }
}

void MambaLMImpl::init_parameters(uint64_t seed) {
  for (auto& item : named_parameters(/*recurse=*/true)) {
    init_parameter(item.key(), item.value(), config_, seed);
  }
}

at::ScalarType MambaLMImpl::residual_dtype() const {
  if (config_.residual_in_fp32) return at::kFloat;
  // Any parameter's dtype is the model dtype; a stage always owns at least one module with
  // parameters except a middle stage with zero layers, which forwards the tensor unchanged.
  for (const auto& p : parameters()) return p.scalar_type();
  return at::kFloat;
}

std::vector<int64_t> MambaLMImpl::boundary_shape(int64_t batch, int64_t len) const {
  if (boundary_ == BoundaryMode::kPacked) return {2, batch, len, config_.d_model};
  return {batch, len, config_.d_model};
}

at::Tensor MambaLMImpl::encode_boundary(const StreamState& s) const {
  const at::ScalarType dt = residual_dtype();
  if (boundary_ == BoundaryMode::kSummed) return combine_stream(s).to(dt);  // (B, L, D)
  // Before the first layer there is no residual yet. -0.0 is the exact additive identity
  // (x + -0.0 == x for every x, including -0.0), so the receiver's hidden + residual
  // reproduces the unsplit model's "residual = hidden" bit for bit.
  const at::Tensor h = s.hidden.defined() ? s.hidden.to(dt) : at::full_like(s.residual, -0.0, dt);
  const at::Tensor r = s.residual.defined() ? s.residual.to(dt) : at::full_like(h, -0.0);
  return at::stack({h, r}, 0);  // (2, B, L, D)
}

StreamState MambaLMImpl::decode_boundary(const at::Tensor& t) const {
  const bool packed = boundary_ == BoundaryMode::kPacked;
  const int64_t rank = packed ? 4 : 3;
  auto fail = [&](const std::string& what) {
    std::ostringstream os;
    os << "stage " << stage_.stage << " (" << boundary_name(boundary_)
       << " boundary) expects a tensor of shape " << (packed ? "(2, B, L, " : "(B, L, ")
       << config_.d_model << ") and dtype " << residual_dtype() << " but received " << what;
    throw BoundaryError(os.str());
  };
  if (!t.defined()) fail("no tensor");
  std::ostringstream found;
  found << "shape " << t.sizes() << " dtype " << t.scalar_type();
  if (t.dim() != rank || t.size(-1) != config_.d_model || (packed && t.size(0) != 2) ||
      t.scalar_type() != residual_dtype()) {
    fail(found.str());
  }
  if (!packed) return StreamState{at::Tensor(), t};
  // unbind's backward stacks the two gradients without any addition, so it stays exact.
  std::vector<at::Tensor> parts = t.unbind(0);
  return StreamState{parts[0], parts[1]};
}

at::Tensor MambaLMImpl::run(const at::Tensor& input, InferenceCache* cache, Mode mode) {
  StreamState s;
  if (stage_.is_first()) {
    TORCH_CHECK(input.dim() == 2 && input.scalar_type() == at::kLong,
                "stage 0 expects token ids of shape (B, L) and dtype int64 but received shape ",
                input.sizes(), " dtype ", input.scalar_type());
    s.hidden = backbone->embedding->forward(input);  // (B, L, D)
  } else {
    s = decode_boundary(input);
  }
  for (auto& [index, block] : backbone->ordered_layers) {
    if (mode == Mode::kStep) {
      auto it = cache->find(index);
      TORCH_CHECK(it != cache->end(), "inference cache has no entry for layer ", index);
      s = block->step(s, it->second);
    } else {
      s = block->forward(s, mode == Mode::kPrefill ? &(*cache)[index] : nullptr);
    }
  }
  if (!stage_.is_last()) return encode_boundary(s);
  const at::Tensor x = backbone->norm_f->forward(combine_stream(s).to(lm_head->weight.scalar_type()));
  return lm_head->forward(x);  // (B, L, V)
}

at::Tensor MambaLMImpl::forward(const at::Tensor& input) { return run(input, nullptr, Mode::kForward); }

at::Tensor MambaLMImpl::prefill(const at::Tensor& input, InferenceCache& cache) {
  return run(input, &cache, Mode::kPrefill);
}

at::Tensor MambaLMImpl::step(const at::Tensor& input, InferenceCache& cache) {
  const int64_t len = stage_.is_first() ? input.size(-1) : input.size(-2);
  TORCH_CHECK(len == 1, "step() takes one token at a time but received length ", len);
  return run(input, &cache, Mode::kStep);
}

InferenceCache MambaLMImpl::make_cache(int64_t batch) const {
  InferenceCache cache;
  for (const auto& [index, block] : backbone->ordered_layers) {
    cache[index] = block->make_cache(batch);
  }
  return cache;
}

at::Tensor tied_gradient_sum(const at::Tensor& embedding_grad, const at::Tensor& head_grad) {
  if (!embedding_grad.defined()) return head_grad.clone();
  if (!head_grad.defined()) return embedding_grad.clone();
  return embedding_grad + head_grad;
}

void sync_tied_gradients(MambaLMImpl& first, MambaLMImpl& last) {
  if (!first.config().tie_embeddings) return;
  TORCH_CHECK(first.stage().is_first() && last.stage().is_last(),
              "sync_tied_gradients needs the first and the last stage");
  at::Tensor& eg = first.backbone->embedding->weight.mutable_grad();
  at::Tensor& hg = last.lm_head->weight.mutable_grad();
  if (!eg.defined() && !hg.defined()) return;
  const at::Tensor sum = tied_gradient_sum(eg, hg);
  eg = sum;
  hg = sum.clone();
}

}  // namespace pmamba::model
