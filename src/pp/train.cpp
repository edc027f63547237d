#include "src/pp/train.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <type_traits>
#include <nlohmann/json.hpp>

#include "kernels/threads.h"
#include "src/ckpt/checkpoint.h"
#include "src/ckpt/errors.h"
#include "src/ckpt/fs.h"
#include "src/model/fqn.h"
#include "src/model/mamba.h"
#include "src/pp/device.h"
#include "src/pp/errors.h"
#include "src/pp/handshake.h"
#include "src/pp/launch.h"
#include "src/pp/plan.h"
#include "src/pp/schedule.h"
#include "src/pp/signals.h"
#include "src/pp/state.h"
#include "src/pp/transport.h"

namespace pmamba::pp {

using ojson = nlohmann::ordered_json;

double learning_rate(const TrainOptions& o, int64_t step) {
  if (o.warmup > 0 && step <= o.warmup) return o.lr * static_cast<double>(step) / static_cast<double>(o.warmup);
  if (o.steps <= o.warmup) return o.lr;
  const double progress = std::min(1.0, static_cast<double>(step - o.warmup) / static_cast<double>(o.steps - o.warmup));
  return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1.0 + std::cos(M_PI * progress));
}

namespace {

constexpr int kTagBase = 1 << 24;
constexpr int kTagHandshakeDown = kTagBase, kTagHandshakeUp = kTagBase + 1;
constexpr int kTagTieToLast = kTagBase + 2, kTagTieToFirst = kTagBase + 3;
int act_tag(int mb) { return 2 * mb; }
int grad_tag(int mb) { return 2 * mb + 1; }

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}


// Sum of squares of a float tensor in float64, element by element in storage order: the same
// number whatever the thread count, on every stage and at PP = 1. On a GPU, the device's own
// reduction (its order depends only on the shape, which is the same at every PP degree).
double sum_of_squares(const at::Tensor& g) {
  if (!g.is_cpu()) return g.detach().to(at::kDouble).pow(2).sum().item<double>();
  const at::Tensor c = g.detach().to(at::kFloat).contiguous();
  const float* p = c.data_ptr<float>();
  double s = 0;
  for (int64_t i = 0, n = c.numel(); i < n; ++i) s += static_cast<double>(p[i]) * static_cast<double>(p[i]);
  return s;
}

// Everything one rank holds during a run.
class Rank {
 public:
  Rank(TrainPlan plan, DistEnv env) : plan_(std::move(plan)), o_(plan_.o), env_(std::move(env)) {}
  int run();

 private:
  int run_steps();
  void setup();
  void handshake();
  // Runs one step; returns true when a stop was requested (on any rank) by its end.
  bool step(int64_t step);
  // A stop requested on any rank (an OR over the world, so every rank stops after the same step).
  bool stop_requested_anywhere();
  void save(int64_t step);
  void stopped(int64_t step);
  void log(const ojson& metrics);
  ojson train_state() const;
  at::Tensor mb_slice(const at::Tensor& t, int mb) const {
    return t.narrow(0, static_cast<int64_t>(mb) * o_.microbatch_size, o_.microbatch_size);
  }

  TrainPlan plan_;
  TrainOptions& o_;
  DistEnv env_;
  c10::Device device_{c10::kCPU};
  std::string backend_ = "gloo";
  c10::ScalarType autocast_ = c10::ScalarType::Undefined;
  std::unique_ptr<Transport> tx_;
  int rank_ = 0, world_ = 1;
  model::MambaConfig config_;
  std::vector<model::StageSpec> stages_;
  model::StageSpec spec_;
  model::MambaLM model_{nullptr};
  std::unique_ptr<AdamW> opt_;
  std::unique_ptr<DataSource> data_;
  Schedule schedule_;
  std::vector<std::string> norm_order_;  // FQNs in the grad-norm vector, canonical order
  int64_t start_step_ = 0, samples_ = 0, tokens_ = 0;
  std::string run_id_;
  std::string resumed_from_;
  int64_t saved_step_ = -1;    // the step of the last checkpoint this run committed
  std::string saved_dir_;
  std::unique_ptr<std::ofstream> metrics_;
  std::unique_ptr<ProgressBar> bar_;  // a single process on a terminal (the local launcher draws its own)
  double last_ckpt_s_ = 0;
};

void Rank::setup() {
  rank_ = env_.present ? env_.rank : 0;
  world_ = env_.present ? env_.world : 1;
  if (world_ != o_.pp) {
    throw UsageError("--pp is " + std::to_string(o_.pp) + " but the launcher started " + std::to_string(world_) +
                     " processes (" + env_.source + "); pmamba runs one process per pipeline stage");
  }
  if (o_.threads > 0) kernels::set_threads(o_.threads);
  device_ = resolve_device(o_.device, env_.local_rank);
  backend_ = resolve_backend(o_.backend, device_);
  make_current(device_);
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(o_.timeout_s * 1000));
  if (world_ > 1) tx_ = std::make_unique<Transport>(env_, timeout, backend_, device_);
  // Stage 0 commits, and its run id is the run's (under torchrun every rank planned its own).
  run_id_ = tx_ ? tx_->broadcast_string("run_id", plan_.run_id) : plan_.run_id;

  config_ = plan_.config;
  stages_ = plan_.stages;
  start_step_ = plan_.start_step;
  samples_ = plan_.samples;
  tokens_ = plan_.tokens;
  if (plan_.reader) resumed_from_ = plan_.reader->dir();
  autocast_ = parse_autocast(o_.autocast);  // after the resume, which may have supplied it
  spec_ = stages_[static_cast<size_t>(rank_)];
  model_ = model::MambaLM(config_, spec_, model::parse_boundary(o_.boundary));
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& item : model_->named_parameters()) named.emplace_back(item.key(), item.value());
  opt_ = std::make_unique<AdamW>(named, config_, o_.adamw);
  if (plan_.reader) {
    load_stage(*plan_.reader, *model_, opt_.get());
    plan_.reader.reset();  // its shards stay closed from here on
  } else {
    model_->init_parameters(o_.seed);
  }
  // Built, initialised and loaded in host memory; moved as a whole (set_data keeps the
  // parameter handles the optimizer holds).
  if (!device_.is_cpu()) {
    model_->to(device_);
    opt_->to(device_);
  }
  for (const auto& p : model::list_parameters(config_)) {
    if (p.tied_to.empty()) norm_order_.push_back(p.fqn);  // the tie is counted once
  }
  data_ = make_data(o_.data);
  schedule_ = make_schedule(o_.schedule, o_.pp, o_.microbatches);
  check_schedule(schedule_);
  if (!o_.metrics_path.empty() && spec_.is_last()) {
    metrics_ = std::make_unique<std::ofstream>(o_.metrics_path, start_step_ > 0 ? std::ios::app : std::ios::trunc);
    if (!*metrics_) throw UsageError("cannot write metrics to '" + o_.metrics_path + "'");
    // The header of this run's lines: which run they belong to and where it started.
    ojson h;
    h["run_id"] = run_id_;
    h["start_step"] = start_step_;
    h["resumed_from"] = resumed_from_.empty() ? ojson(nullptr) : ojson(resumed_from_);
    h["pp"] = o_.pp;
    h["partition"] = model::partition_string(stages_);
    *metrics_ << h.dump(-1, ' ', false, ojson::error_handler_t::replace) << "\n";
    metrics_->flush();
  }
}

// Before step 1 each boundary exchanges what both sides believe, in both directions, so a
// mismatch fails loudly on both sides instead of hanging or silently misreading tensors.
void Rank::handshake() {
  if (!tx_) return;
  using F = HeaderField;
  exchange_headers(*tx_,
                   {F::integer("magic", 0x706d616d6261),  // "pmamba"
                    F::integer("schema version", 2),
                    F::integer("boundary mode", model_->boundary() == model::BoundaryMode::kPacked ? 0 : 1),
                    F::integer("boundary dtype", static_cast<int64_t>(model_->residual_dtype())),
                    F::integer("microbatch size", o_.microbatch_size),
                    F::integer("sequence length", data_->seq_len()),
                    F::integer("d_model", config_.d_model),
                    F::integer("config digest", static_cast<int64_t>(model::config_digest(config_))),
                    F::text("schedule", o_.schedule),
                    F::integer("microbatches", o_.microbatches),
                    F::integer("pipeline stages", o_.pp),
                    F::text("partition", model::partition_string(stages_)),
                    F::integer("data seed", static_cast<int64_t>(o_.data.seed)),
                    F::integer("start step", start_step_),
                    F::integer("samples consumed", samples_),
                    // The data by kind, options and content, not by path: the same file may be
                    // mounted under other names on other hosts, and another file under the same one.
                    F::text("data options", [&] {
                      ojson d = data_to_json(o_.data, data_->content());
                      d["source"] = data_kind(o_.data.source);
                      return d.dump();
                    }()),
                    F::integer("autocast dtype", static_cast<int64_t>(autocast_)),
                    F::integer("init seed", static_cast<int64_t>(o_.seed)),
                    F::integer("--steps", o_.steps),
                    F::integer("--stop-after", o_.stop_after),
                    F::real("--lr", o_.lr),
                    F::real("--min-lr", o_.min_lr),
                    F::integer("--warmup", o_.warmup),
                    F::real("--clip", o_.clip),
                    F::real("--beta1", o_.adamw.beta1),
                    F::real("--beta2", o_.adamw.beta2),
                    F::real("AdamW eps", o_.adamw.eps),
                    F::real("--weight-decay", o_.adamw.weight_decay),
                    F::text("--ckpt-dir", o_.ckpt_dir),
                    F::integer("--overwrite", o_.overwrite ? 1 : 0),
                    F::integer("--ckpt-every", o_.ckpt_every),
                    F::integer("--keep-last", o_.keep_last),
                    F::text("--compression", o_.compression)},
                   kTagHandshakeDown, kTagHandshakeUp);
}

ojson Rank::train_state() const {
  ojson t;
  t["step"] = start_step_;
  t["seed"] = o_.seed;
  t["samples_consumed"] = samples_;
  t["tokens_consumed"] = tokens_;
  t["data"] = data_to_json(o_.data, data_->content());
  t["lr_schedule"] = ojson{{"lr", o_.lr}, {"min_lr", o_.min_lr}, {"warmup", o_.warmup}, {"steps", o_.steps}};
  t["optimizer"] = ojson{{"beta1", o_.adamw.beta1},
                         {"beta2", o_.adamw.beta2},
                         {"eps", o_.adamw.eps},
                         {"weight_decay", o_.adamw.weight_decay},
                         {"clip", o_.clip}};
  t["batch"] = ojson{{"samples_per_step", static_cast<int64_t>(o_.microbatches) * o_.microbatch_size},
                     {"microbatches", o_.microbatches},
                     {"microbatch_size", o_.microbatch_size},
                     {"schedule", o_.schedule},
                     {"autocast", o_.autocast}};
  return t;
}

bool Rank::step(int64_t step) {
  const double t0 = now_s();
  const int m = o_.microbatches;
  const bool first = spec_.is_first(), last = spec_.is_last();
  // The global batch is a pure function of the data position; the stages that need it (inputs
  // on the first, targets on the last) build it themselves.
  Batch batch;
  double global_tokens = 0;
  if (first || last) {
    batch = data_->batch(samples_, static_cast<int64_t>(m) * o_.microbatch_size);
    global_tokens = static_cast<double>(batch.mask.sum().item<int64_t>());
    if (global_tokens == 0) throw UsageError("the batch has no target positions");
    if (!device_.is_cpu()) {
      batch.inputs = batch.inputs.to(device_);
      batch.targets = batch.targets.to(device_);
      batch.mask = batch.mask.to(device_);
    }
  }
  for (auto& p : model_->parameters()) p.mutable_grad().reset();

  // The pipeline phase (the schedule's actions) is what (p - 1) / (m + p - 1) describes; the
  // tied exchange, grad norm and optimizer after it are timed apart.
  const double pipe_t0 = now_s();
  std::vector<at::Tensor> inputs(m), outputs(m), grads_in(m), losses(m);
  std::vector<int64_t> correct(m, 0);
  double idle = 0, bytes_sent = 0;
  const auto shape = model_->boundary_shape(o_.microbatch_size, data_->seq_len());
  const auto boptions = at::TensorOptions().dtype(model_->residual_dtype()).device(device_);
  // Activation high-water mark of this stage over the pipeline phase, measured: memory in use
  // above the phase's start after each action, less the parameter gradients (the first
  // backward allocates them, the same under every schedule). What the schedule's live
  // microbatch count predicts, in bytes.
  const int64_t mem0 = memory_in_use(device_);
  int64_t act_peak = 0;
  auto sample_memory = [&]() {
    if (mem0 < 0) return;
    int64_t grads = 0;
    for (const auto& p : model_->parameters()) {
      if (p.grad().defined()) grads += static_cast<int64_t>(p.grad().nbytes());
    }
    act_peak = std::max(act_peak, memory_in_use(device_) - mem0 - grads);
  };
  for (const Action& a : schedule_.actions[static_cast<size_t>(rank_)]) {
    sample_memory();
    const int i = a.mb;
    switch (a.op) {
      case Op::kRecvAct: {
        at::Tensor t = at::empty(shape, boptions);
        const double w = now_s();
        tx_->recv(t, rank_ - 1, act_tag(i), "activation " + std::to_string(i));
        idle += now_s() - w;
        inputs[i] = t.requires_grad_(true);
        break;
      }
      case Op::kForward: {
        const at::Tensor x = first ? mb_slice(batch.inputs, i) : inputs[i];
        // Autocast covers the forward only: backward ops follow the dtypes the forward chose.
        AutocastGuard autocast(device_.type(), autocast_);
        at::Tensor y = model_->forward(x);
        if (last) {
          const at::Tensor mask = mb_slice(batch.mask, i).reshape({-1});
          // The loss in float32 whatever the logits' dtype (a no-op without autocast).
          const at::Tensor logits = y.reshape({-1, y.size(-1)}).index({mask}).to(at::kFloat);  // (P, V)
          const at::Tensor target = mb_slice(batch.targets, i).reshape({-1}).index({mask});
          // Summed per microbatch, divided by the global count: PP and PP = 1 see the same loss.
          losses[i] = at::cross_entropy_loss(logits, target, {}, at::Reduction::Sum) / global_tokens;
          correct[i] = logits.argmax(-1).eq(target).sum().item<int64_t>();
        } else {
          outputs[i] = y;
        }
        break;
      }
      case Op::kSendAct:
        bytes_sent += static_cast<double>(outputs[i].nbytes());
        tx_->isend(outputs[i].detach(), rank_ + 1, act_tag(i), "activation " + std::to_string(i));
        break;
      case Op::kRecvGrad: {
        at::Tensor t = at::empty(shape, boptions);
        const double w = now_s();
        tx_->recv(t, rank_ + 1, grad_tag(i), "gradient " + std::to_string(i));
        idle += now_s() - w;
        grads_in[i] = t;
        break;
      }
      case Op::kBackward:
        if (last) {
          losses[i].backward();
        } else {
          outputs[i].backward(grads_in[i]);
          outputs[i] = at::Tensor();
          grads_in[i] = at::Tensor();
        }
        break;
      case Op::kSendGrad:
        bytes_sent += static_cast<double>(inputs[i].grad().nbytes());
        tx_->isend(inputs[i].grad(), rank_ - 1, grad_tag(i), "gradient " + std::to_string(i));
        inputs[i] = at::Tensor();
        break;
    }
  }
  sample_memory();
  if (tx_) tx_->wait_sends();
  const double pipe_time = now_s() - pipe_t0;

  // Tied embedding: both ends form embedding_grad + head_grad in the same order.
  if (config_.tie_embeddings) {
    if (world_ == 1) {
      model::sync_tied_gradients(*model_, *model_);
    } else if (first || last) {
      at::Tensor& mine = first ? model_->backbone->embedding->weight.mutable_grad() : model_->lm_head->weight.mutable_grad();
      const int peer = first ? world_ - 1 : 0;
      at::Tensor theirs = at::empty_like(mine);
      tx_->isend(mine, peer, first ? kTagTieToLast : kTagTieToFirst, "the tied-embedding gradient");
      tx_->recv(theirs, peer, first ? kTagTieToFirst : kTagTieToLast, "the tied-embedding gradient");
      tx_->wait_sends();
      mine = first ? model::tied_gradient_sum(mine, theirs) : model::tied_gradient_sum(theirs, mine);
      bytes_sent += static_cast<double>(mine.nbytes());
    }
  }

  // Global grad norm: each stage fills the entries of the parameters it owns, the all-reduce
  // adds zeros to them (exact), and every rank sums the vector in canonical FQN order.
  at::Tensor sq = at::zeros({static_cast<int64_t>(norm_order_.size())}, at::kDouble);
  {
    std::map<std::string, at::Tensor> grads;
    for (const auto& item : model_->named_parameters()) grads[item.key()] = item.value().grad();
    for (size_t k = 0; k < norm_order_.size(); ++k) {
      auto it = grads.find(norm_order_[k]);
      if (it != grads.end() && it->second.defined()) sq[static_cast<int64_t>(k)] = sum_of_squares(it->second);
    }
  }
  if (tx_) tx_->allreduce_sum(sq, "the grad-norm reduction");
  double total = 0;
  for (int64_t k = 0; k < sq.numel(); ++k) total += sq[k].item<double>();
  const double grad_norm = std::sqrt(total);
  if (o_.clip > 0 && grad_norm > o_.clip) {
    const double coef = o_.clip / (grad_norm + 1e-6);
    c10::NoGradGuard no_grad;
    for (auto& p : model_->parameters()) {
      if (p.grad().defined()) p.mutable_grad().mul_(coef);
    }
  }
  const double lr = learning_rate(o_, step);
  opt_->step(lr);
  // Autocast keeps bfloat16 copies of the weights for the step; they are stale now.
  if (autocast_ != c10::ScalarType::Undefined) AutocastGuard::clear_cache();
  samples_ += static_cast<int64_t>(m) * o_.microbatch_size;
  tokens_ += static_cast<int64_t>(m) * o_.microbatch_size * data_->seq_len();
  start_step_ = step;
  const double step_time = now_s() - t0;

  // Metrics: the last stage knows the loss; bubble and traffic are summed over ranks.
  double loss = 0;
  int64_t n_correct = 0;
  if (last) {
    for (int i = 0; i < m; ++i) {
      loss += losses[i].item<double>();
      n_correct += correct[i];
    }
  }
  // bubble, bytes sent, stop requests, then each stage's activation peak
  at::Tensor shared = at::zeros({3 + world_}, at::kDouble);
  shared[0] = pipe_time > 0 ? idle / pipe_time : 0.0;
  shared[1] = bytes_sent;
  shared[2] = stop_signal() != 0 ? 1.0 : 0.0;
  shared[3 + rank_] = static_cast<double>(mem0 < 0 ? -1 : act_peak);
  if (tx_) tx_->allreduce_sum(shared, "the metrics reduction");
  // A stop requested anywhere is seen by every rank in this same reduction, so all of them
  // stop after this step and commit it together.
  const bool stop = shared[2].item<double>() > 0;
  last_ckpt_s_ = 0;
  const bool save_now = !o_.ckpt_dir.empty() &&
                        (stop || (o_.ckpt_every > 0 && step % o_.ckpt_every == 0) ||
                         step == (o_.stop_after > 0 ? std::min(o_.stop_after, o_.steps) : o_.steps));
  if (save_now) save(step);
  if (last) {
    ojson j;
    j["step"] = step;
    j["loss"] = loss;
    j["accuracy"] = static_cast<double>(n_correct) / global_tokens;
    j["lr"] = lr;
    j["grad_norm"] = grad_norm;
    j["tokens_per_s"] = static_cast<double>(m) * o_.microbatch_size * data_->seq_len() / step_time;
    j["step_time_s"] = step_time;
    j["pipe_time_s"] = pipe_time;
    j["bubble"] = shared[0].item<double>() / world_;
    j["bytes_sent"] = shared[1].item<double>();
    std::vector<int64_t> peaks;
    for (int r = 0; r < world_; ++r) peaks.push_back(static_cast<int64_t>(shared[3 + r].item<double>()));
    if (*std::min_element(peaks.begin(), peaks.end()) >= 0) j["act_peak_bytes"] = peaks;
    if (save_now) j["ckpt_time_s"] = last_ckpt_s_;
    log(j);
  }
  return stop;
}

bool Rank::stop_requested_anywhere() {
  at::Tensor flag = at::tensor({stop_signal() != 0 ? 1 : 0}, at::kInt);
  if (tx_) tx_->allreduce_sum(flag, "the stop check");
  return flag.item<int>() > 0;
}

// After a stop request: one line from the stage that committed, saying where the run stopped.
void Rank::stopped(int64_t step) {
  if (rank_ != 0) return;
  const int sig = stop_signal();
  const std::string why = sig ? "stopped by " + signal_name(sig) : "stopped (another stage received a stop signal)";
  std::string where;
  if (o_.ckpt_dir.empty()) {
    where = "no --ckpt-dir was given, so nothing was saved";
  } else if (saved_step_ == step) {
    where = "committed " + saved_dir_;
  } else {
    where = "its newest checkpoint is " + (resumed_from_.empty() ? o_.ckpt_dir : resumed_from_);
  }
  std::printf("pmamba-train: %s after step %lld: %s\n", why.c_str(), static_cast<long long>(step), where.c_str());
  std::fflush(stdout);
}

void Rank::save(int64_t step) {
  const double t0 = now_s();
  std::string tmp;
  std::string error;
  // Stage 0's failure to begin is its own; the others see its report while they wait here.
  if (rank_ == 0) tmp = ckpt::begin_step_dir(o_.ckpt_dir, step);
  if (tx_) tmp = tx_->broadcast_string("ckpt/" + std::to_string(step), tmp);
  const ojson train = train_state();
  try {
    ckpt::ShardHeader h;
    h.stage = spec_.stage;
    h.num_stages = spec_.num_stages;
    h.layer_begin = spec_.layer_begin;
    h.layer_end = spec_.layer_end;
    h.step = step;
    h.config_json = model::config_to_json_string(config_);
    h.train_json = train.dump();
    ckpt::WriteOptions w;
    w.compression = ckpt::Compression::parse(o_.compression);
    w.threads = o_.threads;
    const ckpt::StageData d = collect_stage(*model_, opt_.get());
    ckpt::write_shard(tmp, h, d.tensors, d.aliases, w);
  } catch (const std::exception& e) {
    error = e.what();
  }
  // Every stage reports; rank 0 commits only when all shards are in place.
  at::Tensor failed = at::tensor({error.empty() ? 0 : 1}, at::kInt);
  if (tx_) tx_->allreduce_sum(failed, "the checkpoint write");
  std::string note;
  if (failed.item<int>() == 0 && rank_ == 0) {
    try {
      const ckpt::Manifest man = ckpt::build_manifest(tmp, run_id_, config_, stages_, step,
                                                      ckpt::Compression::parse(o_.compression), true, train);
      const ckpt::CommitResult c = ckpt::commit_step_dir(o_.ckpt_dir, tmp, man, ckpt::CommitOptions{o_.keep_last, o_.overwrite});
      saved_dir_ = c.dir;
      note = c.latest_error;
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  at::Tensor commit_failed = at::tensor({error.empty() ? 0 : 1}, at::kInt);
  if (tx_) tx_->allreduce_sum(commit_failed, "the checkpoint commit");
  if (failed.item<int>() != 0 || commit_failed.item<int>() != 0) {
    if (rank_ == 0) ckpt::abort_step_dir(tmp);
    if (error.empty()) throw PeerFailure("checkpoint of step " + std::to_string(step) + " failed on another stage");
    throw ckpt::IoError("checkpoint of step " + std::to_string(step) + " failed: " + error);
  }
  saved_step_ = step;
  if (!note.empty()) {
    // Committed all the same: readers find the newest committed step directory.
    std::fprintf(stderr, "pmamba-train: committed %s, but `latest` was not updated (%s)\n", saved_dir_.c_str(),
                 note.c_str());
  }
  last_ckpt_s_ = now_s() - t0;
}

void Rank::log(const ojson& j) {
  if (metrics_) {
    *metrics_ << j.dump() << "\n";
    metrics_->flush();
  }
  if (o_.quiet) return;
  const int64_t total = o_.stop_after > 0 ? std::min(o_.stop_after, o_.steps) : o_.steps;
  if (bar_) bar_->clear();
  std::printf("step %lld/%lld  loss %.4f  acc %.3f  lr %.2e  gnorm %.3f  %.0f tok/s  %.3f s  bubble %.2f%s\n",
              static_cast<long long>(j["step"].get<int64_t>()), static_cast<long long>(total), j["loss"].get<double>(),
              j["accuracy"].get<double>(), j["lr"].get<double>(), j["grad_norm"].get<double>(),
              j["tokens_per_s"].get<double>(), j["step_time_s"].get<double>(), j["bubble"].get<double>(),
              j.contains("ckpt_time_s") ? ("  ckpt " + std::to_string(j["ckpt_time_s"].get<double>()).substr(0, 5) + " s").c_str()
                                        : "");
  std::fflush(stdout);
  if (bar_) bar_->draw(static_cast<double>(j["step"].get<int64_t>()), static_cast<double>(total));
}

int Rank::run_steps() {
  setup();
  // The local launcher printed it before starting the stages, unless a resume may change it.
  if (o_.print_schedule && rank_ == 0 && (!std::getenv("PMAMBA_LOCAL_LAUNCH") || !o_.resume.empty())) {
    std::printf("%s", print_schedule(schedule_).c_str());
  }
  handshake();
  if (world_ == 1 && !o_.quiet && ::isatty(2) && !std::getenv("PMAMBA_LOCAL_LAUNCH")) bar_ = std::make_unique<ProgressBar>();
  const int64_t stop = o_.stop_after > 0 ? std::min(o_.stop_after, o_.steps) : o_.steps;
  if (spec_.is_last() && !o_.quiet) {
    std::string where = device_.str();
    if (o_.pp > 1) where += " over " + backend_;
    if (autocast_ != c10::ScalarType::Undefined) where += ", bf16 autocast";
    std::printf("training %s: %d stage%s (partition %s, %s, %s boundary) on %s, %d x %d samples per step, %s; %s\n",
                o_.preset.empty() ? "model" : o_.preset.c_str(), o_.pp, o_.pp == 1 ? "" : "s",
                model::partition_string(stages_).c_str(), o_.schedule.c_str(), o_.boundary.c_str(), where.c_str(),
                o_.microbatches, o_.microbatch_size, data_->describe().c_str(),
                resumed_from_.empty() ? "fresh start" : ("resumed from " + resumed_from_ + " at step " + std::to_string(start_step_)).c_str());
    std::fflush(stdout);
  }
  // A stop requested while the run was starting: the state it starts from is what is saved
  // (step 0 of a fresh run; a resumed run's is committed already, unless it writes elsewhere).
  if (stop_requested_anywhere()) {
    const bool have = !resumed_from_.empty() && ckpt::fs::absolute_path(ckpt::fs::parent(resumed_from_)) ==
                                                    ckpt::fs::absolute_path(o_.ckpt_dir);
    if (!o_.ckpt_dir.empty() && !have) save(start_step_);
    stopped(start_step_);
    if (tx_) tx_->barrier("the end of training");
    return 0;
  }
  for (int64_t s = start_step_ + 1; s <= stop; ++s) {
    if (step(s)) {
      stopped(s);
      break;
    }
  }
  if (tx_) tx_->barrier("the end of training");
  return 0;
}

int Rank::run() {
  try {
    return run_steps();
  } catch (const std::exception& e) {
    if (tx_) tx_->report_failure(e.what(), dynamic_cast<const PeerFailure*>(&e) == nullptr);
    throw;
  }
}

}  // namespace

int run_train(const TrainOptions& o, int argc, char** argv) {
  const DistEnv env = dist_env_from_environment();
  if (env.present) {
    // One rank of a launched job: the stage that commits (rank 0) holds the root's lock (its
    // own, or the one the local launcher handed it).
    check_master_address(env);
    TrainPlan plan = plan_training(o, env.rank == 0, env.rank);
    if (env.rank == 0 && plan.o.ckpt_dir.empty() && !std::getenv("PMAMBA_LOCAL_LAUNCH")) {
      std::printf("pmamba-train: note: no --ckpt-dir: this run saves no checkpoint\n");
      std::fflush(stdout);
    }
    Rank r(std::move(plan), env);
    return r.run();
  }
  // On its own: everything that can be refused is refused here, once, before any stage starts.
  TrainPlan plan = plan_training(o, true, -1);
  if (plan.o.ckpt_dir.empty()) std::printf("pmamba-train: note: no --ckpt-dir: this run saves no checkpoint\n");
  if (!plan.note.empty()) std::printf("pmamba-train: note: %s\n", plan.note.c_str());
  std::fflush(stdout);
  if (o.pp == 1) {
    Rank r(std::move(plan), env);
    return r.run();
  }
  resolve_backend(o.backend, resolve_device(o.device, 0));
  if (o.print_schedule && o.resume.empty()) std::printf("%s", print_schedule(make_schedule(o.schedule, o.pp, o.microbatches)).c_str());
  LaunchOptions l;
  l.ranks = o.pp;
  l.argv.assign(argv, argv + argc);
  l.timeout = std::chrono::milliseconds(static_cast<int64_t>(o.timeout_s * 1000));
  l.progress_bar = !o.quiet && ::isatty(2);
  l.lock_fd = plan.lock.fd();
  l.env["PMAMBA_RUN_ID"] = plan.run_id;
  l.tool = "pmamba-train";
  plan.reader.reset();
  return launch_local(l);
}

}  // namespace pmamba::pp
