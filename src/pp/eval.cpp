#include "src/pp/eval.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>

#include "kernels/threads.h"
#include "src/ckpt/errors.h"
#include "src/ckpt/fs.h"
#include "src/ckpt/resources.h"
#include "src/ckpt/tensor_file.h"
#include "src/interop/safetensors.h"
#include "src/model/partition.h"
#include "src/pp/device.h"
#include "src/pp/errors.h"
#include "src/pp/executor.h"
#include "src/pp/handshake.h"
#include "src/pp/launch.h"
#include "src/pp/plan.h"
#include "src/pp/schedule.h"
#include "src/pp/state.h"
#include "src/pp/transport.h"

namespace pmamba::pp {

namespace {

std::vector<int64_t> parse_line(const std::string& line, const std::string& where) {
  std::vector<int64_t> ids;
  std::string token;
  std::string cleaned = line;
  for (char& ch : cleaned) {
    if (ch == ',' || ch == '\t') ch = ' ';
  }
  std::stringstream words(cleaned);
  while (words >> token) {
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(token, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != token.size() || used == 0 || v < 0) {
      throw UsageError("token '" + token + "' " + where + " is not a non-negative integer");
    }
    ids.push_back(v);
  }
  return ids;
}

at::Tensor to_batch(const std::vector<std::vector<int64_t>>& rows, const std::string& where) {
  if (rows.empty()) throw UsageError("no tokens given " + where);
  const size_t len = rows[0].size();
  for (size_t i = 0; i < rows.size(); ++i) {
    if (rows[i].size() != len) {
      throw UsageError("sequence " + std::to_string(i + 1) + " " + where + " has " +
                       std::to_string(rows[i].size()) + " tokens but sequence 1 has " +
                       std::to_string(len));
    }
  }
  at::Tensor t = at::empty({static_cast<int64_t>(rows.size()), static_cast<int64_t>(len)}, at::kLong);
  auto acc = t.accessor<int64_t, 2>();
  for (size_t i = 0; i < rows.size(); ++i)
    for (size_t j = 0; j < len; ++j) acc[i][j] = rows[i][j];
  return t;
}

}  // namespace

at::Tensor parse_tokens(const std::string& text) {
  std::vector<int64_t> ids = parse_line(text, "in --tokens");
  if (ids.empty()) throw UsageError("--tokens is empty (expected e.g. 1,2,3)");
  return to_batch({ids}, "in --tokens");
}

at::Tensor read_tokens_file(const std::string& path) {
  std::string text;
  try {
    text = ckpt::fs::read_file(path, int64_t{1} << 30);
  } catch (const ckpt::Error& e) {
    throw UsageError("cannot read tokens file '" + path + "': " + e.what());
  }
  std::vector<std::vector<int64_t>> rows;
  std::istringstream in(text);
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    auto ids = parse_line(line, "on line " + std::to_string(line_no) + " of '" + path + "'");
    if (!ids.empty()) rows.push_back(std::move(ids));
  }
  return to_batch(rows, "in '" + path + "'");
}

std::vector<SampleScore> score_samples(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& mask) {
  const at::Tensor y = logits.to(at::kFloat).cpu();  // (B, L, V)
  const at::Tensor m = mask.cpu().contiguous();
  const int64_t B = y.size(0), L = y.size(1), V = y.size(2);
  // The counted positions of the whole batch at once (row-wise operations only, so a row's
  // values do not depend on the others), then summed per sample in position order.
  const at::Tensor flat_mask = m.reshape({-1});
  const at::Tensor rows = y.reshape({B * L, V}).index({flat_mask});  // (P, V)
  const at::Tensor want = targets.cpu().reshape({-1}).index({flat_mask});  // (P)
  const at::Tensor right = rows.argmax(-1).eq(want).contiguous();
  std::vector<SampleScore> out(static_cast<size_t>(B));
  const bool* mk = m.data_ptr<bool>();
  for (int64_t r = 0; r < B; ++r) {
    for (int64_t t = 0; t < L; ++t) out[static_cast<size_t>(r)].count += mk[r * L + t] ? 1 : 0;
  }
  const int64_t P = want.numel();
  const bool* ok = right.data_ptr<bool>();
  constexpr int64_t kChunk = 1024;  // positions per float64 log-softmax: bounded memory at large V
  size_t sample = 0;
  int64_t left = B > 0 ? out[0].count : 0;
  for (int64_t p0 = 0; p0 < P; p0 += kChunk) {
    const int64_t n = std::min(kChunk, P - p0);
    const at::Tensor lp =
        rows.narrow(0, p0, n).to(at::kDouble).log_softmax(-1).gather(1, want.narrow(0, p0, n).unsqueeze(1)).contiguous();
    const double* v = lp.data_ptr<double>();
    for (int64_t i = 0; i < n; ++i) {
      while (left == 0) left = out[++sample].count;
      out[sample].loss -= v[i];  // in position order
      out[sample].correct += ok[p0 + i] ? 1 : 0;
      --left;
    }
  }
  return out;
}

namespace {

bool given(const EvalOptions& o, const char* name) { return o.given.count(name) != 0; }

void refuse_unless(bool ok, const char* option, const std::string& why) {
  if (!ok) throw UsageError(std::string("--") + option + " " + why);
}

struct Prepared {
  std::unique_ptr<ckpt::CheckpointReader> reader;
  model::MambaConfig config;
  std::vector<model::StageSpec> stages;
  // --tokens / --tokens-file: all sequences, their next-token targets and mask.
  Batch given_batch;
  // --data: the source, and which samples.
  DataOptions data;
  std::unique_ptr<DataSource> source;
  bool eval_set = true;  // evaluation samples (else training samples from `first`)
  int64_t first = 0, count = 0, batch_size = 1, seq_len = 0;
  nlohmann::ordered_json header;

  Batch batch(int64_t i0, int64_t n) const {
    if (!source) {
      return {given_batch.inputs.narrow(0, i0, n), given_batch.targets.narrow(0, i0, n), given_batch.mask.narrow(0, i0, n)};
    }
    return eval_set ? source->eval_batch(first + i0, n) : source->batch(first + i0, n);
  }
};

// The data options that run: the checkpoint's for its own source, each given option on top (a
// given value always wins), and options that cannot apply to the source refused.
DataOptions effective_data(const EvalOptions& o, const nlohmann::ordered_json& train, std::string* note) {
  DataOptions d;
  const bool recorded = train.is_object() && train.contains("data") && train.at("data").is_object();
  const std::string recorded_source = recorded ? train.at("data").value("source", std::string()) : std::string();
  d.source = o.data.empty() ? recorded_source : resolve_source(o.data);
  if (d.source.empty()) throw UsageError("give --tokens, --tokens-file or --data (this checkpoint records no training data)");
  if (recorded && d.source == recorded_source) {
    d = data_from_json(train.at("data"), d);
    *note = "the checkpoint's training data";
  }
  const DataOptions& g = o.data_options;
  if (given(o, "data-seed")) d.seed = g.seed;
  if (given(o, "seq-len")) d.seq_len = g.seq_len;
  if (given(o, "copy-tokens")) d.copy_tokens = g.copy_tokens;
  if (given(o, "copy-slots")) d.copy_slots = g.copy_slots;
  if (given(o, "task-vocab")) d.task_vocab = g.task_vocab;
  if (given(o, "eod-token")) d.eod_token = g.eod_token;
  if (given(o, "eval-fraction")) d.eval_fraction = g.eval_fraction;
  if (given(o, "eval-data")) d.eval_data = g.eval_data;
  const bool copy = d.source == "selective-copy", task = copy || d.source == "induction";
  refuse_unless(!given(o, "seq-len") || !copy, "seq-len",
                "does not apply to selective-copy: its length is --copy-slots + 2 x --copy-tokens");
  refuse_unless(!given(o, "copy-tokens") || copy, "copy-tokens", "applies to --data selective-copy only, not " + d.source);
  refuse_unless(!given(o, "copy-slots") || copy, "copy-slots", "applies to --data selective-copy only, not " + d.source);
  refuse_unless(!given(o, "task-vocab") || task, "task-vocab", "applies to selective-copy and induction only, not " + d.source);
  refuse_unless(!given(o, "eod-token") || data_kind(d.source) == "indexed", "eod-token",
                "applies to indexed datasets only, not " + d.source);
  return d;
}

Prepared prepare(const EvalOptions& o) {
  ckpt::check_threads(o.threads);
  check_timeout(o.timeout_s);
  if (o.pp < 1 || o.pp > 4096) throw UsageError("--pp must be in [1, 4096], found " + std::to_string(o.pp));
  if (o.samples < 1) throw UsageError("--samples must be >= 1, found " + std::to_string(o.samples));
  if (o.batch_size < 1) throw UsageError("--batch-size must be >= 1, found " + std::to_string(o.batch_size));
  if (given(o, "first-sample") && o.first_sample < 0) {
    throw UsageError("--first-sample must be >= 0, found " + std::to_string(o.first_sample));
  }
  if (o.data_options.seq_len < 0) throw UsageError("--seq-len must be >= 0, found " + std::to_string(o.data_options.seq_len));
  if (o.threads > 0) kernels::set_threads(o.threads);
  const int sources = !o.preset.empty() + !o.config_path.empty() + !o.ckpt.empty();
  if (sources != 1) throw UsageError("give exactly one of --preset, --config or --ckpt");
  Prepared p;
  if (!o.ckpt.empty()) p.reader = std::make_unique<ckpt::CheckpointReader>(o.ckpt);
  p.config = p.reader ? p.reader->manifest().config
                      : o.preset.empty() ? load_config_file(o.config_path) : model::preset(o.preset);
  p.stages = model::make_stages(p.config.n_layer, o.pp, o.partition);
  int64_t largest = 0;
  for (int64_t b : stage_parameter_bytes(p.config, p.stages)) largest = std::max(largest, b);
  ckpt::require_memory(largest, "evaluating this model (its largest stage's weights)");
  const int inputs = !o.tokens.empty() + !o.tokens_file.empty() + !o.data.empty();
  if (inputs > 1 || (inputs == 0 && !p.reader)) {
    throw UsageError(inputs > 1 ? "give one of --tokens, --tokens-file or --data"
                                : "give --tokens, --tokens-file or --data (or --ckpt, to evaluate on its training data's held-out set)");
  }
  nlohmann::ordered_json& h = p.header;
  if (p.reader) {
    h["checkpoint"] = p.reader->dir();
    h["step"] = p.reader->manifest().step;
    h["run_id"] = p.reader->manifest().run_id;
  } else {
    h["model"] = o.preset.empty() ? "config " + o.config_path : "preset " + o.preset;
    h["init_seed"] = o.seed;
  }
  const bool data_mode = o.tokens.empty() && o.tokens_file.empty();
  if (!data_mode) {
    for (const char* opt : {"samples", "all", "first-sample", "data-seed", "seq-len", "copy-tokens", "copy-slots", "task-vocab",
                            "eod-token", "eval-fraction", "eval-data"}) {
      refuse_unless(!given(o, opt), opt, "applies to --data, not to --tokens/--tokens-file (the sequences are given)");
    }
    const at::Tensor ids = o.tokens.empty() ? read_tokens_file(o.tokens_file) : parse_tokens(o.tokens);
    const int64_t len = ids.size(1);
    // Next-token targets: position t predicts token t + 1; the last position counts for nothing.
    p.given_batch.inputs = ids;
    p.given_batch.targets = at::zeros_like(ids);
    p.given_batch.mask = at::zeros(ids.sizes(), at::kBool);
    if (len > 1) {
      p.given_batch.targets.narrow(1, 0, len - 1).copy_(ids.narrow(1, 1, len - 1));
      p.given_batch.mask.narrow(1, 0, len - 1).fill_(true);
    }
    p.count = ids.size(0);
    p.seq_len = len;
    const int64_t max_id = ids.max().item<int64_t>();
    if (max_id >= p.config.vocab_size) {
      throw UsageError("token id " + std::to_string(max_id) + " is out of range for vocab_size " +
                       std::to_string(p.config.vocab_size));
    }
    h["input"] = o.tokens.empty() ? "tokens file " + o.tokens_file : std::string("--tokens");
  } else {
    std::string note;
    p.data = effective_data(o, p.reader ? p.reader->manifest().train : nlohmann::ordered_json(), &note);
    p.source = make_data(p.data);
    if (p.source->vocab_needed() > p.config.vocab_size) {
      throw UsageError(p.source->describe() + " needs a vocabulary of " + std::to_string(p.source->vocab_needed()) +
                       ", but the model has vocab_size " + std::to_string(p.config.vocab_size));
    }
    p.seq_len = p.source->seq_len();
    p.eval_set = !given(o, "first-sample");
    p.first = p.eval_set ? 0 : o.first_sample;
    const int64_t n = p.eval_set ? p.source->eval_size() : -1;
    if (o.all) {
      refuse_unless(!given(o, "samples"), "all", "and --samples: give one");
      refuse_unless(p.eval_set, "all", "evaluates the held-out set, not training samples from --first-sample");
      if (n < 0) throw UsageError("--all needs a bounded evaluation set; " + p.data.source + " generates samples without end: give --samples");
      p.count = n;
    } else {
      // Unless given, as many as a small held-out set has, up to the default.
      p.count = given(o, "samples") || n < 0 ? o.samples : std::min(o.samples, n);
      if (n >= 0 && p.count > n) {
        throw UsageError("--samples " + std::to_string(p.count) + " but the evaluation set holds " + std::to_string(n) + " (" +
                         p.source->describe_eval() + "): give --samples " + std::to_string(n) + " or fewer, or --all");
      }
    }
    h["data"] = data_to_json(p.data);
    h["data_description"] = p.source->describe();
    h["samples_from"] = p.eval_set ? p.source->describe_eval() : "training samples from global index " + std::to_string(p.first);
    h["held_out"] = p.eval_set && p.source->held_out();
    if (!note.empty()) h["data_from"] = note;
  }
  p.batch_size = std::min(o.batch_size, std::max<int64_t>(p.count, 1));
  if (!o.logits_out.empty()) {
    ckpt::require_memory(p.count * p.seq_len * p.config.vocab_size * 4, "keeping every logit for --logits-out");
  }
  h["samples"] = p.count;
  h["seq_len"] = p.seq_len;
  h["batch_size"] = p.batch_size;
  h["partition"] = model::partition_string(p.stages);
  h["boundary"] = model::boundary_name(o.boundary);
  return p;
}

model::MambaLM build_stage(Prepared& p, const model::StageSpec& spec, const EvalOptions& o, c10::Device device) {
  model::MambaLM stage(p.config, spec, o.boundary);
  if (p.reader) {
    load_stage(*p.reader, *stage, nullptr);
  } else {
    stage->init_parameters(o.seed);
  }
  if (!device.is_cpu()) stage->to(device);
  return stage;
}

// Folds one batch's logits into the result, in sample order.
void take_batch(EvalResult& r, std::vector<at::Tensor>* kept, const at::Tensor& logits, const Batch& b) {
  for (const SampleScore& s : score_samples(logits, b.targets, b.mask)) r.totals.add(s);
  if (kept) kept->push_back(logits.to(at::kFloat).cpu());
}

EvalResult finish(EvalResult r, std::vector<at::Tensor>& kept, const Prepared& p, const EvalOptions& o, double seconds) {
  r.partition = model::partition_string(p.stages);
  r.header = p.header;
  r.loss = r.totals.loss();
  r.accuracy = r.totals.accuracy();
  r.predictions = r.totals.predictions;
  r.samples = p.count;
  r.seq_len = p.seq_len;
  r.perplexity = std::exp(r.loss);
  if (p.source && p.source->bytes_per_token() > 0) r.bits_per_byte = r.loss / std::log(2.0) / p.source->bytes_per_token();
  r.seconds = seconds;
  r.tokens_per_s = seconds > 0 ? static_cast<double>(p.count * p.seq_len) / seconds : 0;
  if (!o.logits_out.empty()) {
    r.logits = kept.size() == 1 ? kept[0] : at::cat(kept, 0);
    kept.clear();
    const std::string& f = o.logits_out;
    const at::Tensor ids = p.source ? p.batch(0, p.count).inputs.contiguous() : p.given_batch.inputs.contiguous();
    if (f.size() > 12 && f.compare(f.size() - 12, 12, ".safetensors") == 0) {
      // For tools outside pmamba (numpy, transformers): logits and the ids they came from.
      interop::write_safetensors(f, {{"input_ids", at::kLong, ids.sizes().vec()}, {"logits", at::kFloat, r.logits.sizes().vec()}},
                                 [&](size_t i) { return i == 0 ? ids : r.logits; });
    } else {
      ckpt::write_tensor_file(f, {{"/logits", r.logits}});
    }
  }
  return r;
}

constexpr int kTagHandshakeDown = 1 << 24, kTagHandshakeUp = (1 << 24) + 1;

// What every stage of one evaluation must agree on: hand-launched ranks given another model,
// checkpoint, layout or input fail here, naming the difference, instead of in a tensor size
// mismatch or with a wrong loss. Each stage makes the samples itself (a pure function of the
// data settings), so the settings are compared, not the tokens.
void eval_handshake(Transport& tx, const Prepared& p, const EvalOptions& o, const model::MambaLM& stage) {
  using F = HeaderField;
  std::string input;
  if (p.source) {
    nlohmann::ordered_json d = data_to_json(p.data, p.source->content());
    d["eval_set"] = p.eval_set;
    d["first"] = p.first;
    input = d.dump();
  } else {
    const at::Tensor ids = p.given_batch.inputs.contiguous();
    input.assign(static_cast<const char*>(ids.data_ptr()), ids.numel() * ids.element_size());
  }
  exchange_headers(tx,
                   {F::integer("magic", 0x706d616d6265),  // "pmambe"
                    F::integer("schema version", 2),
                    F::integer("boundary mode", o.boundary == model::BoundaryMode::kPacked ? 0 : 1),
                    F::integer("boundary dtype", static_cast<int64_t>(stage->residual_dtype())),
                    F::integer("sequences", p.count),
                    F::integer("sequence length", p.seq_len),
                    F::integer("batch size", p.batch_size),
                    F::integer("d_model", p.config.d_model),
                    F::integer("config digest", static_cast<int64_t>(model::config_digest(p.config))),
                    F::integer("pipeline stages", o.pp),
                    F::text("partition", model::partition_string(p.stages)),
                    F::integer("checkpoint step", p.reader ? p.reader->manifest().step : -1),
                    F::integer("init seed", p.reader ? 0 : static_cast<int64_t>(o.seed)),
                    F::text("input tokens", input)},
                   kTagHandshakeDown, kTagHandshakeUp);
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

EvalResult run_eval(const EvalOptions& o) {
  Prepared p = prepare(o);
  const c10::Device device = resolve_device(o.device, 0);
  make_current(device);
  c10::NoGradGuard no_grad;
  std::vector<model::MambaLM> stages;
  for (const auto& spec : p.stages) stages.push_back(build_stage(p, spec, o, device));
  EvalResult r;
  std::vector<at::Tensor> kept;
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t i0 = 0; i0 < p.count; i0 += p.batch_size) {
    const Batch b = p.batch(i0, std::min(p.batch_size, p.count - i0));
    at::Tensor x = b.inputs.to(device);
    for (auto& stage : stages) x = stage->forward(x);
    take_batch(r, o.logits_out.empty() ? nullptr : &kept, x, b);
  }
  return finish(std::move(r), kept, p, o, seconds_since(t0));
}

namespace {

std::string header_text(const nlohmann::ordered_json& h) {
  std::string s;
  if (h.contains("checkpoint")) {
    s += "evaluating " + h["checkpoint"].get<std::string>() + " (step " + std::to_string(h["step"].get<int64_t>()) + ", run " +
         h["run_id"].get<std::string>() + ")\n";
  } else {
    s += "evaluating a fresh model (" + h["model"].get<std::string>() + ", init seed " + std::to_string(h["init_seed"].get<uint64_t>()) + ")\n";
  }
  if (h.contains("data")) {
    const auto& d = h["data"];
    s += "data " + h["data_description"].get<std::string>() + " (seed " + std::to_string(d["seed"].get<uint64_t>());
    if (h.contains("data_from")) s += "; settings from " + h["data_from"].get<std::string>() + ", given options on top";
    s += ")\n";
    s += "samples " + std::to_string(h["samples"].get<int64_t>()) + " of " + h["samples_from"].get<std::string>() + "\n";
  } else {
    s += "input " + h["input"].get<std::string>() + "\n";
  }
  return s;
}

}  // namespace

void print_eval(const EvalResult& r, const EvalOptions& o) {
  if (o.json) {
    nlohmann::ordered_json j = r.header;
    j["loss"] = r.loss;
    j["perplexity"] = r.perplexity;
    j["accuracy"] = r.accuracy;
    if (r.bits_per_byte >= 0) j["bits_per_byte"] = r.bits_per_byte;
    j["loss_sum"] = r.totals.loss_sum;
    j["predictions"] = r.predictions;
    j["correct"] = r.totals.correct;
    j["seconds"] = r.seconds;
    j["tokens_per_s"] = r.tokens_per_s;
    if (!o.logits_out.empty()) j["logits_out"] = o.logits_out;
    std::printf("%s\n", j.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace).c_str());
    std::fflush(stdout);
    return;
  }
  std::printf("%s", header_text(r.header).c_str());
  // The partition lists layers per stage ("4" is one stage of four layers, "2,2" two of two).
  std::printf("partition %s  boundary %s  sequences %lld  tokens %lld  batch %lld\n", r.partition.c_str(),
              model::boundary_name(o.boundary), static_cast<long long>(r.samples), static_cast<long long>(r.seq_len),
              static_cast<long long>(r.header.value("batch_size", int64_t{0})));
  if (r.predictions > 0) {
    std::printf("loss %.6f  accuracy %.4f  perplexity %.4f", r.loss, r.accuracy, r.perplexity);
    if (r.bits_per_byte >= 0) std::printf("  bits/byte %.4f", r.bits_per_byte);
    std::printf("  (%lld %s predictions)\n", static_cast<long long>(r.predictions),
                r.header.contains("data") ? "target" : "next-token");
  }
  std::printf("%.0f tokens/s  %.3f s\n", r.tokens_per_s, r.seconds);
  if (!o.logits_out.empty()) std::printf("logits -> %s\n", o.logits_out.c_str());
  std::fflush(stdout);
}

int eval_main(const EvalOptions& o, int argc, char** argv) {
  const DistEnv env = dist_env_from_environment();
  if (!env.present && (o.pp == 1 || o.inproc)) {
    print_eval(run_eval(o), o);
    return 0;
  }
  if (!env.present) {
    prepare(o);  // fail on bad arguments before starting processes
    resolve_backend(o.backend, resolve_device(o.device, 0));
    LaunchOptions l;
    l.ranks = o.pp;
    l.argv.assign(argv, argv + argc);
    l.grace = std::chrono::milliseconds(static_cast<int64_t>(o.timeout_s * 1000) + 10000);
    if (o.json) l.raw_stdout_rank = o.pp - 1;  // one JSON document, unprefixed
    return launch_local(l);
  }
  if (env.world != o.pp) {
    throw UsageError("--pp is " + std::to_string(o.pp) + " but the launcher started " + std::to_string(env.world) + " processes");
  }
  Prepared p = prepare(o);
  const c10::Device device = resolve_device(o.device, env.local_rank);
  make_current(device);
  Transport tx(env, std::chrono::milliseconds(static_cast<int64_t>(o.timeout_s * 1000)), resolve_backend(o.backend, device),
               device);
  const model::StageSpec& spec = p.stages[static_cast<size_t>(env.rank)];
  try {
    model::MambaLM stage = build_stage(p, spec, o, device);
    eval_handshake(tx, p, o, stage);
    // Each batch is one microbatch through a forward-only schedule on the stage executor.
    const Schedule schedule = make_forward_only(o.pp, 1);
    EvalResult r;
    std::vector<at::Tensor> kept;
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t i0 = 0; i0 < p.count; i0 += p.batch_size) {
      const int64_t n = std::min(p.batch_size, p.count - i0);
      Batch b;
      if (spec.is_first() || spec.is_last()) b = p.batch(i0, n);
      const at::Tensor ids = b.inputs.defined() ? b.inputs.to(device) : at::Tensor();
      StageStep st;
      st.model = stage.get();
      st.actions = &schedule.actions[static_cast<size_t>(env.rank)];
      st.training = false;
      st.tx = &tx;
      st.prev = env.rank - 1;
      st.next = env.rank + 1;
      st.device = device;
      st.rows = n;
      st.seq_len = p.seq_len;
      st.input = [&](int) { return ids; };
      const StageResult sr = run_stage(st);
      if (spec.is_last()) take_batch(r, o.logits_out.empty() ? nullptr : &kept, sr.outputs[0], b);
    }
    if (spec.is_last()) print_eval(finish(std::move(r), kept, p, o, seconds_since(t0)), o);
    tx.barrier("the end of evaluation");
  } catch (const std::exception& e) {
    // So the other stages say why, not just that this one went away.
    tx.report_failure(e.what(), dynamic_cast<const PeerFailure*>(&e) == nullptr);
    throw;
  }
  return 0;
}

}  // namespace pmamba::pp
