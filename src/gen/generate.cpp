#include "src/gen/generate.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "kernels/threads.h"
#include "src/ckpt/checkpoint.h"
#include "src/ckpt/fs.h"
#include "src/ckpt/resources.h"
#include "src/model/mamba.h"
#include "src/model/partition.h"
#include "src/pp/device.h"
#include "src/pp/errors.h"
#include "src/pp/handshake.h"
#include "src/pp/launch.h"
#include "src/pp/plan.h"
#include "src/pp/state.h"
#include "src/pp/transport.h"

namespace pmamba::gen {

using pp::UsageError;

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::vector<int64_t> parse_ids(const std::string& text, int64_t vocab, const std::string& where) {
  std::vector<int64_t> ids;
  std::string cur;
  auto flush = [&] {
    if (cur.empty()) return;
    size_t used = 0;
    int64_t v = -1;
    try {
      v = std::stoll(cur, &used);
    } catch (...) {
      used = 0;
    }
    if (used != cur.size() || v < 0 || v >= vocab) {
      throw UsageError(where + ": token '" + ckpt::fs::printable(cur) + "' is not an id in [0, " + std::to_string(vocab) +
                       ") (the model's vocabulary)");
    }
    ids.push_back(v);
    cur.clear();
  };
  for (char c : text) {
    if (c == ',' || c == ' ' || c == '\t' || c == '\r') {
      flush();
    } else {
      cur += c;
    }
  }
  flush();
  if (ids.empty()) throw UsageError(where + " is empty (a prompt needs at least one token)");
  return ids;
}

// Which prompts decode together (see generate.h): consecutive prompts, at most `batch`, and of
// one length when the model has attention layers.
std::vector<std::vector<size_t>> make_groups(const std::vector<std::vector<int64_t>>& prompts, int batch, bool attention) {
  std::vector<std::vector<size_t>> groups;
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (groups.empty() || static_cast<int>(groups.back().size()) >= batch ||
        (attention && prompts[groups.back().front()].size() != prompts[i].size())) {
      groups.emplace_back();
    }
    groups.back().push_back(i);
  }
  return groups;
}

model::InferenceCache merge_rows(std::vector<model::InferenceCache>& rows) {
  model::InferenceCache merged;
  for (auto& [layer, first] : rows.front()) {
    model::LayerCache m;
    std::vector<at::Tensor> conv, ssm, key, value;
    for (auto& row : rows) {
      const model::LayerCache& c = row.at(layer);
      if (c.conv_state.defined()) conv.push_back(c.conv_state);
      if (c.ssm_state.defined()) ssm.push_back(c.ssm_state);
      if (c.key.defined()) {
        TORCH_CHECK(c.offset == first.offset && c.key.size(1) == first.key.size(1),
                    "attention rows of one batch must have the same length");
        key.push_back(c.key);
        value.push_back(c.value);
      }
    }
    if (!conv.empty()) m.conv_state = at::cat(conv, 0);
    if (!ssm.empty()) m.ssm_state = at::cat(ssm, 0);
    if (!key.empty()) {
      m.key = at::cat(key, 0);
      m.value = at::cat(value, 0);
      m.offset = first.offset;
    }
    merged[layer] = std::move(m);
  }
  rows.clear();
  return merged;
}

/// The stages of one generation, wherever they run.
class Stages {
 public:
  virtual ~Stages() = default;
  /// True in the process that sees the logits and chooses the tokens.
  virtual bool decides() const = 0;
  /// Prefills one prompt into a row of its own; the last position's logits (V) where decides().
  virtual at::Tensor prefill(const std::vector<int64_t>& prompt) = 0;
  /// The prefilled rows become the batch (in prefill order).
  virtual void merge() = 0;
  /// One token per row (B) -> logits (B, V) where decides().
  virtual at::Tensor step(const at::Tensor& tokens) = 0;
  /// The decider's (B) int64 decision reaches every process.
  virtual void share(at::Tensor& decision) = 0;
};

class LocalStages : public Stages {
 public:
  LocalStages(std::vector<model::MambaLM> stages, c10::Device device) : stages_(std::move(stages)), device_(device) {}
  bool decides() const override { return true; }
  at::Tensor prefill(const std::vector<int64_t>& prompt) override {
    at::Tensor x = at::tensor(prompt, at::kLong).view({1, -1}).to(device_);
    rows_.resize(stages_.size());
    for (size_t s = 0; s < stages_.size(); ++s) {
      rows_[s].emplace_back();
      x = stages_[s]->prefill(x, rows_[s].back());
    }
    return x[0][x.size(1) - 1].to(at::kFloat).cpu();
  }
  void merge() override {
    batch_.clear();
    for (auto& r : rows_) batch_.push_back(merge_rows(r));
  }
  at::Tensor step(const at::Tensor& tokens) override {
    at::Tensor x = tokens.view({-1, 1}).to(device_);
    for (size_t s = 0; s < stages_.size(); ++s) x = stages_[s]->step(x, batch_[s]);
    return x.select(1, 0).to(at::kFloat).cpu();
  }
  void share(at::Tensor&) override {}

 private:
  std::vector<model::MambaLM> stages_;
  c10::Device device_;
  std::vector<std::vector<model::InferenceCache>> rows_;  // [stage][row]
  std::vector<model::InferenceCache> batch_;              // [stage]
};

constexpr int kTagPrefill = 7 << 20, kTagStep = (7 << 20) + 1;
constexpr int kTagHandshakeDown = (7 << 20) + 2, kTagHandshakeUp = (7 << 20) + 3;

class RankStages : public Stages {
 public:
  RankStages(model::MambaLM stage, pp::Transport& tx, c10::Device device)
      : stage_(std::move(stage)), tx_(tx), device_(device) {}
  bool decides() const override { return stage_->stage().is_last(); }
  at::Tensor prefill(const std::vector<int64_t>& prompt) override {
    rows_.emplace_back();
    const int64_t L = static_cast<int64_t>(prompt.size());
    const at::Tensor out = stage_->prefill(input(1, L, at::tensor(prompt, at::kLong).view({1, -1}), kTagPrefill, "prefill"),
                                           rows_.back());
    if (!decides()) return pass(out, kTagPrefill, "prefill");
    return out[0][L - 1].to(at::kFloat).cpu();
  }
  void merge() override { batch_ = merge_rows(rows_); }
  at::Tensor step(const at::Tensor& tokens) override {
    const int64_t B = tokens.size(0);
    const at::Tensor out = stage_->step(input(B, 1, tokens.view({-1, 1}), kTagStep, "step"), batch_);
    if (!decides()) return pass(out, kTagStep, "step");
    return out.select(1, 0).to(at::kFloat).cpu();
  }
  void share(at::Tensor& decision) override {
    if (!decides()) decision.zero_();
    at::Tensor d = decision.to(device_);
    tx_.allreduce_sum(d, "the chosen tokens");  // only the last stage's are non-zero
    decision.copy_(d.cpu());
  }

 private:
  at::Tensor input(int64_t B, int64_t L, const at::Tensor& ids, int tag, const char* what) {
    if (stage_->stage().is_first()) return ids.to(device_);
    at::Tensor t = at::empty(stage_->boundary_shape(B, L), at::TensorOptions().dtype(stage_->residual_dtype()).device(device_));
    tx_.recv(t, tx_.rank() - 1, tag, std::string(what) + " activations");
    return t;
  }
  at::Tensor pass(const at::Tensor& out, int tag, const char* what) {
    tx_.isend(out.contiguous(), tx_.rank() + 1, tag, std::string(what) + " activations");
    tx_.wait_sends();
    return at::Tensor();
  }
  model::MambaLM stage_;
  pp::Transport& tx_;
  c10::Device device_;
  std::vector<model::InferenceCache> rows_;
  model::InferenceCache batch_;
};

struct Prepared {
  std::unique_ptr<ckpt::CheckpointReader> reader;
  model::MambaConfig config;
  std::vector<model::StageSpec> stages;
  std::vector<std::vector<int64_t>> prompts;
};

Prepared prepare(const GenerateOptions& o) {
  ckpt::check_threads(o.threads);
  pp::check_timeout(o.timeout_s);
  check_sampling(o.sampling);
  if (o.pp < 1 || o.pp > 4096) throw UsageError("--pp must be in [1, 4096], found " + std::to_string(o.pp));
  if (o.max_new_tokens < 1 || o.max_new_tokens > (int64_t{1} << 24)) {
    throw UsageError("--max-new-tokens must be in [1, 16777216], found " + std::to_string(o.max_new_tokens));
  }
  if (o.batch < 1 || o.batch > 65536) throw UsageError("--batch must be in [1, 65536], found " + std::to_string(o.batch));
  if (o.threads > 0) kernels::set_threads(o.threads);
  const int sources = !o.preset.empty() + !o.config_path.empty() + !o.ckpt.empty();
  if (sources != 1) throw UsageError("give exactly one of --ckpt, --preset or --config");
  Prepared p;
  if (!o.ckpt.empty()) p.reader = std::make_unique<ckpt::CheckpointReader>(o.ckpt);
  p.config = p.reader ? p.reader->manifest().config
                      : o.preset.empty() ? pp::load_config_file(o.config_path) : model::preset(o.preset);
  p.stages = model::make_stages(p.config.n_layer, o.pp, o.partition);
  int64_t largest = 0;
  for (int64_t b : pp::stage_parameter_bytes(p.config, p.stages)) largest = std::max(largest, b);
  ckpt::require_memory(largest, "generating with this model (its largest stage's weights)");
  for (int64_t t : o.stop_tokens) {
    if (t < 0 || t >= p.config.vocab_size) {
      throw UsageError("--stop-token " + std::to_string(t) + " is not an id in [0, " + std::to_string(p.config.vocab_size) + ")");
    }
  }
  p.prompts = read_prompts(o, p.config.vocab_size);
  if (!o.forced.empty() && o.forced.size() != p.prompts.size()) {
    throw UsageError("forced tokens are given for " + std::to_string(o.forced.size()) + " prompts but there are " +
                     std::to_string(p.prompts.size()));
  }
  return p;
}

model::MambaLM build_stage(Prepared& p, const model::StageSpec& spec, const GenerateOptions& o, c10::Device device) {
  model::MambaLM stage(p.config, spec, model::BoundaryMode::kPacked);
  if (p.reader) {
    pp::load_stage(*p.reader, *stage, nullptr);
  } else {
    stage->init_parameters(o.init_seed);
  }
  if (!device.is_cpu()) stage->to(device);
  return stage;
}

// The loop every process runs: the decider chooses, every process follows the shared decision.
GenerateResult run(Stages& stages, const Prepared& p, const GenerateOptions& o) {
  c10::NoGradGuard no_grad;
  GenerateResult r;
  r.partition = model::partition_string(p.stages);
  r.rows.resize(p.prompts.size());
  for (size_t i = 0; i < p.prompts.size(); ++i) r.rows[i].prompt = p.prompts[i];
  const SamplingOptions& so = o.sampling;
  for (const std::vector<size_t>& group : make_groups(p.prompts, o.batch, !p.config.attn_layer_idx.empty())) {
    const int64_t B = static_cast<int64_t>(group.size());
    std::vector<RowRandom> random;
    std::vector<std::vector<int64_t>> context;
    std::vector<bool> done(group.size(), false);
    for (size_t i : group) {
      random.emplace_back(so.seed, i);
      context.push_back(p.prompts[i]);
    }
    // The decider chooses each live row's next token from its logits (V each). Every process
    // then applies the same shared decision, so all agree on which rows stopped and when.
    at::Tensor decision = at::zeros({B}, at::kLong);
    auto decide = [&](const std::vector<at::Tensor>& logits) {
      if (!stages.decides()) return;
      auto* d = decision.data_ptr<int64_t>();
      for (int64_t b = 0; b < B; ++b) {
        const size_t row = group[static_cast<size_t>(b)];
        PromptResult& out = r.rows[row];
        if (done[static_cast<size_t>(b)]) {
          d[b] = out.tokens.back();  // a stopped row keeps its place: it is fed its last token
          continue;
        }
        const size_t n = out.tokens.size();
        const int64_t tok = o.forced.empty() ? choose_token(logits[static_cast<size_t>(b)], context[static_cast<size_t>(b)], so,
                                                            random[static_cast<size_t>(b)])
                                             : o.forced[row].at(std::min(n, o.forced[row].size() - 1));
        if (o.keep_logits) out.logits.push_back(logits[static_cast<size_t>(b)].clone());
        d[b] = tok;
      }
    };
    // Says whether the group is finished.
    auto apply = [&]() {
      const auto* d = decision.data_ptr<int64_t>();
      bool all = true;
      for (int64_t b = 0; b < B; ++b) {
        if (done[static_cast<size_t>(b)]) continue;
        PromptResult& out = r.rows[group[static_cast<size_t>(b)]];
        out.tokens.push_back(d[b]);
        context[static_cast<size_t>(b)].push_back(d[b]);
        if (std::find(o.stop_tokens.begin(), o.stop_tokens.end(), d[b]) != o.stop_tokens.end()) {
          out.stop = "stop_token";
          done[static_cast<size_t>(b)] = true;
        } else if (static_cast<int64_t>(out.tokens.size()) >= o.max_new_tokens) {
          out.stop = "max_new_tokens";
          done[static_cast<size_t>(b)] = true;
        }
        all = all && done[static_cast<size_t>(b)];
      }
      return all;
    };
    double t0 = now_s();
    std::vector<at::Tensor> last;
    for (size_t i : group) {
      last.push_back(stages.prefill(p.prompts[i]));
      r.prefill_tokens += static_cast<int64_t>(p.prompts[i].size());
    }
    stages.merge();
    decide(last);
    stages.share(decision);
    bool finished = apply();
    r.prefill_s += now_s() - t0;
    t0 = now_s();
    while (!finished) {
      const at::Tensor logits = stages.step(decision.clone());  // (B, V) at the decider
      std::vector<at::Tensor> rows;
      if (stages.decides()) {
        for (int64_t b = 0; b < B; ++b) rows.push_back(logits[b]);
      }
      int64_t live = 0;
      for (bool d : done) live += d ? 0 : 1;
      decide(rows);
      stages.share(decision);
      finished = apply();
      r.decode_tokens += live;
    }
    r.decode_s += now_s() - t0;
  }
  return r;
}

std::vector<pp::HeaderField> handshake_fields(const Prepared& p, const GenerateOptions& o) {
  using F = pp::HeaderField;
  std::string prompts;
  for (const auto& pr : p.prompts) {
    for (int64_t id : pr) prompts += std::to_string(id) + ",";
    prompts += ";";
  }
  std::string stops;
  for (int64_t t : o.stop_tokens) stops += std::to_string(t) + ",";
  return {F::integer("magic", 0x706d616d6267),  // "pmambg"
          F::integer("schema version", 1),
          F::integer("config digest", static_cast<int64_t>(model::config_digest(p.config))),
          F::integer("pipeline stages", o.pp),
          F::text("partition", model::partition_string(p.stages)),
          F::integer("checkpoint step", p.reader ? p.reader->manifest().step : -1),
          F::integer("init seed", p.reader ? 0 : static_cast<int64_t>(o.init_seed)),
          F::text("prompts", prompts),
          F::integer("max new tokens", o.max_new_tokens),
          F::text("stop tokens", stops),
          F::integer("batch", o.batch),
          F::real("temperature", o.sampling.temperature),
          F::integer("top-k", o.sampling.top_k),
          F::real("top-p", o.sampling.top_p),
          F::real("min-p", o.sampling.min_p),
          F::real("repetition penalty", o.sampling.repetition_penalty),
          F::integer("seed", static_cast<int64_t>(o.sampling.seed))};
}

}  // namespace

std::vector<std::vector<int64_t>> read_prompts(const GenerateOptions& o, int64_t vocab) {
  const int sources = !o.prompt_tokens.empty() + !o.prompt_file.empty() + !o.prompt_text.empty();
  if (sources != 1) throw UsageError("give exactly one of --prompt-tokens, --prompt-file or --prompt");
  std::vector<std::vector<int64_t>> prompts;
  if (!o.prompt_tokens.empty()) {
    prompts.push_back(parse_ids(o.prompt_tokens, vocab, "--prompt-tokens"));
  } else if (!o.prompt_text.empty()) {
    if (vocab < 256) {
      throw UsageError("--prompt gives text as bytes, which needs a byte-vocabulary model (vocab_size >= 256) but this "
                       "model's vocab_size is " + std::to_string(vocab) + "; use --prompt-tokens");
    }
    std::vector<int64_t> ids;
    for (unsigned char c : o.prompt_text) ids.push_back(c);
    prompts.push_back(ids);
  } else {
    const std::string text = ckpt::fs::read_file(o.prompt_file, 64 << 20);
    std::istringstream in(text);
    std::string line;
    int n = 0;
    while (std::getline(in, line)) {
      ++n;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;  // blank lines separate nothing
      prompts.push_back(parse_ids(line, vocab, o.prompt_file + " line " + std::to_string(n)));
    }
    if (prompts.empty()) throw UsageError(o.prompt_file + " holds no prompt (one per line, ids by commas or spaces)");
  }
  return prompts;
}

GenerateResult generate(const GenerateOptions& o) {
  Prepared p = prepare(o);
  const c10::Device device = pp::resolve_device(o.device, 0);
  pp::make_current(device);
  std::vector<model::MambaLM> stages;
  for (const auto& spec : p.stages) stages.push_back(build_stage(p, spec, o, device));
  p.reader.reset();
  LocalStages local(std::move(stages), device);
  return run(local, p, o);
}

void print_generate(const GenerateResult& r, const GenerateOptions& o, std::FILE* out, std::FILE* err) {
  if (o.json) {
    nlohmann::ordered_json j;
    j["prompts"] = nlohmann::ordered_json::array();
    for (size_t i = 0; i < r.rows.size(); ++i) {
      j["prompts"].push_back({{"index", i}, {"prompt", r.rows[i].prompt}, {"tokens", r.rows[i].tokens}, {"stop", r.rows[i].stop}});
    }
    std::fprintf(out, "%s\n", j.dump().c_str());
  } else {
    for (const PromptResult& row : r.rows) {
      std::string line;
      for (size_t i = 0; i < row.tokens.size(); ++i) line += (i ? "," : "") + std::to_string(row.tokens[i]);
      std::fprintf(out, "%s\n", line.c_str());
    }
  }
  std::fflush(out);
  const int64_t generated = r.decode_tokens + static_cast<int64_t>(r.rows.size());
  std::fprintf(err,
               "generated %lld tokens for %zu prompts (partition %s): prefill %lld tokens in %.3f s, decode %lld tokens in "
               "%.3f s (%.1f tokens/s), %.1f tokens/s overall\n",
               static_cast<long long>(generated), r.rows.size(), r.partition.c_str(), static_cast<long long>(r.prefill_tokens),
               r.prefill_s, static_cast<long long>(r.decode_tokens), r.decode_s,
               r.decode_s > 0 ? static_cast<double>(r.decode_tokens) / r.decode_s : 0.0,
               r.prefill_s + r.decode_s > 0 ? static_cast<double>(generated) / (r.prefill_s + r.decode_s) : 0.0);
  std::fflush(err);
}

int generate_main(const GenerateOptions& o, int argc, char** argv) {
  const pp::DistEnv env = pp::dist_env_from_environment();
  if (!env.present && (o.pp == 1 || o.inproc)) {
    print_generate(generate(o), o, stdout, stderr);
    return 0;
  }
  if (!env.present) {
    prepare(o);  // fail on bad arguments before starting processes
    pp::resolve_backend(o.backend, pp::resolve_device(o.device, 0));
    pp::LaunchOptions l;
    l.ranks = o.pp;
    l.argv.assign(argv, argv + argc);
    l.grace = std::chrono::milliseconds(static_cast<int64_t>(o.timeout_s * 1000) + 10000);
    l.tool = "pmamba-generate";
    l.raw_stdout_rank = o.pp - 1;  // the tokens, exactly as at --pp 1
    return pp::launch_local(l);
  }
  if (env.world != o.pp) {
    throw UsageError("--pp is " + std::to_string(o.pp) + " but the launcher started " + std::to_string(env.world) + " processes");
  }
  Prepared p = prepare(o);
  const c10::Device device = pp::resolve_device(o.device, env.local_rank);
  pp::make_current(device);
  pp::Transport tx(env, std::chrono::milliseconds(static_cast<int64_t>(o.timeout_s * 1000)),
                   pp::resolve_backend(o.backend, device), device);
  const model::StageSpec& spec = p.stages[static_cast<size_t>(env.rank)];
  try {
    model::MambaLM stage = build_stage(p, spec, o, device);
    p.reader.reset();
    pp::exchange_headers(tx, handshake_fields(p, o), kTagHandshakeDown, kTagHandshakeUp);
    RankStages ranks(stage, tx, device);
    const GenerateResult r = run(ranks, p, o);
    if (spec.is_last()) print_generate(r, o, stdout, stderr);
    tx.barrier("the end of generation");
  } catch (const std::exception& e) {
    tx.report_failure(e.what(), dynamic_cast<const pp::PeerFailure*>(&e) == nullptr);
    throw;
  }
  return 0;
}

}  // namespace pmamba::gen
