#include "src/pp/eval.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <chrono>
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

namespace {

struct Prepared {
  std::unique_ptr<ckpt::CheckpointReader> reader;
  model::MambaConfig config;
  std::vector<model::StageSpec> stages;
  at::Tensor ids;
  at::Tensor targets, mask;  // with --data
};

Prepared prepare(const EvalOptions& o) {
  ckpt::check_threads(o.threads);
  check_timeout(o.timeout_s);
  if (o.pp < 1 || o.pp > 4096) throw UsageError("--pp must be in [1, 4096], found " + std::to_string(o.pp));
  if (o.samples < 1) throw UsageError("--samples must be >= 1, found " + std::to_string(o.samples));
  if (o.first_sample < 0) throw UsageError("--first-sample must be >= 0, found " + std::to_string(o.first_sample));
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
  if (inputs != 1) throw UsageError("give exactly one of --tokens, --tokens-file or --data");
  if (!o.data.empty()) {
    DataOptions d = o.data_options;
    d.source = o.data;
    // A checkpoint trained on the same task supplies the task's options and seed (an explicit
    // --data-seed still wins); the default first sample lies far beyond any training position.
    const auto& train = p.reader ? p.reader->manifest().train : nlohmann::ordered_json();
    if (train.contains("data") && train.at("data").value("source", "") == o.data) {
      d = data_from_json(train.at("data"), d);
      if (o.data_options.seed) d.seed = o.data_options.seed;
    }
    const Batch b = make_data(d)->batch(o.first_sample, o.samples);
    p.ids = b.inputs;
    p.targets = b.targets;
    p.mask = b.mask;
  } else {
    p.ids = o.tokens.empty() ? read_tokens_file(o.tokens_file) : parse_tokens(o.tokens);
  }
  const int64_t max_id = p.ids.max().item<int64_t>();
  if (max_id >= p.config.vocab_size) {
    throw UsageError("token id " + std::to_string(max_id) + " is out of range for vocab_size " +
                     std::to_string(p.config.vocab_size));
  }
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

EvalResult finish(const at::Tensor& logits, const Prepared& p, const EvalOptions& o) {
  EvalResult r;
  r.logits = logits.to(at::kFloat).cpu();
  r.partition = model::partition_string(p.stages);
  const int64_t len = p.ids.size(1);
  if (p.mask.defined()) {
    const at::Tensor m = p.mask.reshape({-1});
    const at::Tensor pred = r.logits.reshape({-1, r.logits.size(2)}).index({m});
    const at::Tensor target = p.targets.reshape({-1}).index({m});
    r.loss = at::cross_entropy_loss(pred.to(at::kDouble), target).item<double>();
    r.accuracy = pred.argmax(-1).eq(target).to(at::kDouble).mean().item<double>();
    r.predictions = target.numel();
  } else if (len > 1) {
    const at::Tensor pred = r.logits.narrow(1, 0, len - 1).reshape({-1, r.logits.size(2)});
    const at::Tensor target = p.ids.narrow(1, 1, len - 1).reshape({-1});
    r.loss = at::cross_entropy_loss(pred.to(at::kDouble), target).item<double>();
    r.accuracy = pred.argmax(-1).eq(target).to(at::kDouble).mean().item<double>();
    r.predictions = target.numel();
  }
  if (!o.logits_out.empty()) {
    const std::string& f = o.logits_out;
    if (f.size() > 12 && f.compare(f.size() - 12, 12, ".safetensors") == 0) {
      // For tools outside pmamba (numpy, transformers): logits and the ids they came from.
      const at::Tensor ids = p.ids.contiguous();
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
// mismatch or with a wrong loss.
void eval_handshake(Transport& tx, const Prepared& p, const EvalOptions& o, const model::MambaLM& stage) {
  using F = HeaderField;
  const at::Tensor ids = p.ids.contiguous();
  const std::string input_bytes(static_cast<const char*>(ids.data_ptr()), ids.numel() * ids.element_size());
  const at::Tensor targets = p.targets.defined() ? p.targets.contiguous() : at::zeros({0}, at::kLong);
  const std::string target_bytes(static_cast<const char*>(targets.data_ptr()), targets.numel() * targets.element_size());
  exchange_headers(tx,
                   {F::integer("magic", 0x706d616d6265),  // "pmambe"
                    F::integer("schema version", 1),
                    F::integer("boundary mode", o.boundary == model::BoundaryMode::kPacked ? 0 : 1),
                    F::integer("boundary dtype", static_cast<int64_t>(stage->residual_dtype())),
                    F::integer("sequences", p.ids.size(0)),
                    F::integer("sequence length", p.ids.size(1)),
                    F::integer("d_model", p.config.d_model),
                    F::integer("config digest", static_cast<int64_t>(model::config_digest(p.config))),
                    F::integer("pipeline stages", o.pp),
                    F::text("partition", model::partition_string(p.stages)),
                    F::integer("checkpoint step", p.reader ? p.reader->manifest().step : -1),
                    F::integer("init seed", p.reader ? 0 : static_cast<int64_t>(o.seed)),
                    F::text("input tokens", input_bytes),
                    F::text("targets", target_bytes)},
                   kTagHandshakeDown, kTagHandshakeUp);
}

}  // namespace

EvalResult run_eval(const EvalOptions& o) {
  Prepared p = prepare(o);
  const c10::Device device = resolve_device(o.device, 0);
  make_current(device);
  c10::NoGradGuard no_grad;
  at::Tensor x = p.ids.to(device);
  for (const auto& spec : p.stages) x = build_stage(p, spec, o, device)->forward(x);
  return finish(x, p, o);
}

void print_eval(const EvalResult& r, const EvalOptions& o) {
  // The partition lists layers per stage ("4" is one stage of four layers, "2,2" two of two).
  std::printf("partition %s  boundary %s  sequences %lld  tokens %lld\n", r.partition.c_str(), model::boundary_name(o.boundary),
              static_cast<long long>(r.logits.size(0)), static_cast<long long>(r.logits.size(1)));
  if (r.predictions > 0) {
    std::printf("loss %.6f  accuracy %.4f  (%lld %s predictions)\n", r.loss, r.accuracy,
                static_cast<long long>(r.predictions), o.data.empty() ? "next-token" : "target");
  }
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
    // One microbatch (the whole input) through a forward-only schedule on the stage executor.
    const Schedule schedule = make_forward_only(o.pp, 1);
    const at::Tensor ids = p.ids.to(device);
    StageStep st;
    st.model = stage.get();
    st.actions = &schedule.actions[static_cast<size_t>(env.rank)];
    st.training = false;
    st.tx = &tx;
    st.prev = env.rank - 1;
    st.next = env.rank + 1;
    st.device = device;
    st.rows = p.ids.size(0);
    st.seq_len = p.ids.size(1);
    st.input = [&](int) { return ids; };
    const StageResult r = run_stage(st);
    if (spec.is_last()) print_eval(finish(r.outputs[0], p, o), o);
    tx.barrier("the end of evaluation");
  } catch (const std::exception& e) {
    // So the other stages say why, not just that this one went away.
    tx.report_failure(e.what(), dynamic_cast<const PeerFailure*>(&e) == nullptr);
    throw;
  }
  return 0;
}

}  // namespace pmamba::pp
