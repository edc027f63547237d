#include "src/pp/train.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <type_traits>
#include <nlohmann/json.hpp>
#include <torch/version.h>

#include "kernels/threads.h"
#include "src/ckpt/checkpoint.h"
#include "src/ckpt/errors.h"
#include "src/ckpt/fault.h"
#include "src/ckpt/format.h"
#include "src/ckpt/fs.h"
#include "src/model/fqn.h"
#include "src/model/mamba.h"
#include "src/pp/device.h"
#include "src/pp/errors.h"
#include "src/pp/eval.h"
#include "src/pp/executor.h"
#include "src/pp/grads.h"
#include "src/pp/handshake.h"
#include "src/pp/launch.h"
#include "src/pp/plan.h"
#include "src/pp/schedule.h"
#include "src/pp/settings.h"
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

constexpr int kTagHandshakeDown = 1 << 24, kTagHandshakeUp = (1 << 24) + 1;

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// CPU seconds (user + system) the whole process has used: during a synchronous save training
// is idle, so the difference across it is what the save costs the cores.
double process_cpu_s() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  auto sec = [](const timeval& t) { return static_cast<double>(t.tv_sec) + 1e-6 * static_cast<double>(t.tv_usec); };
  return sec(u.ru_utime) + sec(u.ru_stime);
}

// The background checkpoint writer runs on the CPU time training leaves idle, so that on a
// machine whose cores training keeps busy the write finishes later instead of slowing the steps
// (a GPU run's host threads mostly wait, and the writer gets them). Threads it starts (the
// shard writer's pool) inherit the policy. Best effort: nice 19 where SCHED_IDLE is refused.
void lower_priority_of_this_thread() {
  sched_param none{};
  if (pthread_setschedparam(pthread_self(), SCHED_IDLE, &none) == 0) return;
  ::setpriority(PRIO_PROCESS, static_cast<id_t>(::syscall(SYS_gettid)), 19);
}

// UTC wall-clock time with milliseconds, as ISO 8601 ("2026-12-02T01:23:45.678Z").
std::string utc_now() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  const int ms = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[96];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                tm.tm_min, tm.tm_sec, ms);
  return buf;
}

// Cuts a file after its last newline (nothing when it ends in one or does not exist).
void truncate_partial_line(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return;
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  if (text.empty() || text.back() == '\n') return;
  const size_t nl = text.rfind('\n');
  if (::truncate(path.c_str(), nl == std::string::npos ? 0 : static_cast<off_t>(nl + 1)) != 0) {
    throw UsageError("cannot cut the partial last line of the metrics file '" + path + "'");
  }
}

// Everything one rank holds during a run.
class Rank {
 public:
  Rank(TrainPlan plan, DistEnv env) : plan_(std::move(plan)), o_(plan_.o), env_(std::move(env)) {}
  ~Rank();
  Rank(const Rank&) = delete;
  Rank& operator=(const Rank&) = delete;
  int run();

 private:
  int run_steps();
  void setup();
  void handshake();
  // Runs one step; returns true when a stop was requested (on any rank) by its end.
  bool step(int64_t step);
  // A stop requested on any rank (an OR over the world, so every rank stops after the same step).
  bool stop_requested_anywhere();
  // A synchronous save: the whole protocol of DESIGN §3 inside this step.
  void save(int64_t step);
  // Its parts, in protocol order. begin_save: rank 0 creates the temporary step directory and
  // every rank learns its name (collective). commit_save: every rank reports its write, rank 0
  // builds the manifest and commits, every rank learns the outcome (collective); throws the
  // save's error, naming the step. `written` is this rank's record of its shard (used for the
  // manifest at world size 1, where this process wrote every shard).
  std::string begin_save(int64_t step);
  ckpt::ShardHeader shard_header(int64_t step, const ojson& train) const;
  ckpt::WriteOptions write_options() const;
  void commit_save(int64_t step, const std::string& tmp, const ojson& train, const std::string& error,
                   const ckpt::WrittenShard& written);
  // commit_save's three parts. writes_ok: whether every rank wrote its shard (collective).
  // commit_locally: rank 0's manifest and commit, with no collective, so it can run on a
  // background thread; never throws. conclude_save: every rank learns the outcome (collective)
  // and throws the save's error.
  struct CommitOutcome {
    std::string dir, note, error;
  };
  bool writes_ok(const std::string& error);
  CommitOutcome commit_locally(int64_t step, const std::string& tmp, const ojson& train,
                               const ckpt::WrittenShard& written) const;
  void conclude_save(int64_t step, const std::string& tmp, const std::string& write_error, bool wrote,
                     const CommitOutcome& outcome);
  // --async-ckpt: begin, snapshot and start the background write of this step's checkpoint
  // (no save may be in flight); and, on every rank at the same step, move the one in flight on:
  // once every write is done, rank 0 commits on a background thread; once that is done, every
  // rank concludes. `wait` (a checkpoint, a stop, the last step) does all that is left now.
  // Both add their timings to `metrics`.
  void start_async_save(int64_t step, ojson& metrics);
  void advance_async_save(bool wait, ojson& metrics);
  // Blocks until the snapshot of the save in flight has been taken (nothing may change the
  // saved state before); returns the seconds it waited.
  double wait_for_snapshot();
  void stopped(int64_t step);
  void log(const ojson& metrics);
  // Forward-only over the first --eval-samples held-out samples, on every rank; the scores, summed
  // in sample order, are the same at every PP and DP layout. Returns the eval_* metrics.
  ojson evaluate();
  // After the last step: time, final losses, the last checkpoint and how to go on (rank 0).
  void summary(int64_t step);
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
  DataParallel dp_;        // this rank's place among its stage's replicas
  int per_replica_ = 1;    // microbatches each replica runs (M / D)
  std::unique_ptr<GradientTree> tree_;  // --grad-reduce tree
  std::map<std::string, int> owner_;    // FQN -> the DP index that updates and saves it
  std::vector<std::pair<std::string, at::Tensor>> params_;  // the stage's parameters, in order
  void check_replicas(int64_t step);
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
  double last_ckpt_s_ = 0, last_ckpt_cpu_s_ = 0;
  // The asynchronous save in flight (--async-ckpt). `writer` writes this rank's shard of the
  // snapshot and then sets `done`. Only the main thread runs collectives: the first step whose
  // metrics reduction finds every rank's writer done checks that all of them wrote and starts
  // rank 0's `committer` (manifest, fsyncs, renames, latest, pruning), which sets `committed`;
  // the first step whose reduction finds that set concludes the save on every rank. A
  // checkpoint, a stop or the last step waits for whatever is left.
  struct PendingSave {
    int64_t step = -1;
    std::string tmp;
    ojson train;
    std::thread writer;
    std::atomic<bool> done{false};
    std::string error;   // set by the writer before `done`
    double write_s = 0;  // the writer's time
    ckpt::WrittenShard written;  // set by the writer before `done`
    bool committing = false;     // the writes were checked (every rank knows whether all wrote)
    bool wrote = false;          // ... and every rank wrote its shard
    std::thread committer;       // rank 0, once all wrote
    std::atomic<bool> committed{false};
    CommitOutcome outcome;       // set by the committer before `committed`
    double commit_work_s = 0;    // the committer's time
    double main_s = 0;           // time the training thread spent on this save after its snapshot
    // Set once the snapshot is in the host buffers (at once on a GPU stage; by the writer on the
    // CPU, which the next optimizer step waits for).
    std::mutex mu;
    std::condition_variable staged_cv;
    bool staged = false;
  };
  std::unique_ptr<PendingSave> pending_;
  StageSnapshot snapshot_;  // the host copy the writer reads; reused by every async save
  Schedule eval_schedule_;
  double run_t0_ = 0;
  int64_t first_step_ = 0;  // the step this process started after
  double last_loss_ = NAN, last_eval_loss_ = NAN;
  int64_t last_eval_step_ = -1;
};

void Rank::setup() {
  rank_ = env_.present ? env_.rank : 0;
  world_ = env_.present ? env_.world : 1;
  if (world_ != o_.pp * o_.dp) {
    throw UsageError("--pp " + std::to_string(o_.pp) + " x --dp " + std::to_string(o_.dp) + " is " +
                     std::to_string(o_.pp * o_.dp) + " ranks but the launcher started " + std::to_string(world_) +
                     " processes (" + env_.source + "); pmamba runs one process per (stage, replica)");
  }
  // PP outermost: the DP ranks of one stage are consecutive.
  dp_.dp = o_.dp;
  dp_.index = rank_ % o_.dp;
  dp_.stage_rank0 = rank_ - dp_.index;
  per_replica_ = o_.microbatches / o_.dp;
  env_.dp = o_.dp;
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
  spec_ = stages_[static_cast<size_t>(rank_ / o_.dp)];
  model_ = model::MambaLM(config_, spec_, model::parse_boundary(o_.boundary));
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& item : model_->named_parameters()) named.emplace_back(item.key(), item.value());
  opt_ = std::make_unique<AdamW>(named, config_, o_.adamw);
  params_ = named;
  // Each FQN has one DP rank of its stage that saves it (and, with ZeRO-1, holds its AdamW
  // state and updates it): the one whose checkpoint file holds it.
  owner_ = ckpt::assign_parts(config_, spec_, o_.dp);
  if (o_.zero == 1) {
    std::set<std::string> mine;
    for (const auto& [fqn, d] : owner_) {
      if (d == dp_.index) mine.insert(fqn);
    }
    opt_->set_owned(mine);
  }
  if (o_.grad_reduce == "tree") {
    std::vector<at::Tensor> ps;
    for (const auto& item : named) ps.push_back(item.second);
    tree_ = std::make_unique<GradientTree>(ps);
  }
  if (plan_.reader) {
    load_stage(*plan_.reader, *model_, opt_.get());
    plan_.reader.reset();  // its shards stay closed from here on
  } else if (plan_.init) {
    load_stage(*plan_.init, *model_, nullptr);  // weights only: the optimizer starts fresh
    plan_.init.reset();
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
  data_ = std::move(plan_.data);  // read and checked by the plan: a corpus is mapped and hashed once
  if (!data_) data_ = make_data(o_.data);
  schedule_ = make_schedule(o_.schedule, o_.pp, per_replica_);
  check_schedule(schedule_);
  if (!o_.metrics_path.empty() && spec_.is_last() && dp_.index == 0) {
    // A run killed mid-line left a partial last line: cut it, so the resumed lines start clean.
    if (start_step_ > 0) truncate_partial_line(o_.metrics_path);
    metrics_ = std::make_unique<std::ofstream>(o_.metrics_path, start_step_ > 0 ? std::ios::app : std::ios::trunc);
    if (!*metrics_) throw UsageError("cannot write metrics to '" + o_.metrics_path + "'");
    // The header of this run's lines: which run they belong to and where it started.
    ojson h;
    h["run_id"] = run_id_;
    h["start_step"] = start_step_;
    h["resumed_from"] = resumed_from_.empty() ? ojson(nullptr) : ojson(resumed_from_);
    h["pp"] = o_.pp;
    h["dp"] = o_.dp;
    h["zero"] = o_.zero;
    h["grad_reduce"] = o_.grad_reduce;
    // Proof of the split: each replica's global microbatch range [begin, end).
    h["microbatches_per_rank"] = per_replica_;
    ojson ranges = ojson::array();
    for (int d = 0; d < o_.dp; ++d) ranges.push_back(ojson::array({d * per_replica_, (d + 1) * per_replica_}));
    h["microbatch_ranges"] = ranges;
    h["partition"] = model::partition_string(stages_);
    h["time"] = utc_now();
    h["versions"] = {{"pmamba", o_.version}, {"libtorch", TORCH_VERSION}};
    h["config"] = ojson::parse(model::config_to_json_string(config_));
    ojson options;
    write_run_settings(o_, options);
    options["data"] = data_to_json(o_.data);
    options["data_description"] = data_->describe();
    options["eval_every"] = o_.eval_every;
    options["eval_samples"] = o_.eval_samples;
    options["ckpt_dir"] = o_.ckpt_dir;
    h["options"] = options;
    *metrics_ << h.dump(-1, ' ', false, ojson::error_handler_t::replace) << "\n";
    metrics_->flush();
  }
}

// Before step 1 each boundary exchanges what both sides believe, in both directions, so a
// mismatch fails loudly on both sides instead of hanging or silently misreading tensors.
void Rank::handshake() {
  if (!tx_) return;
  using F = HeaderField;
  std::vector<HeaderField> fields = {
      F::integer("magic", 0x706d616d6261),  // "pmamba"
      F::integer("schema version", 2),
      F::integer("boundary mode", model_->boundary() == model::BoundaryMode::kPacked ? 0 : 1),
      F::integer("boundary dtype", static_cast<int64_t>(model_->residual_dtype())),
      F::integer("sequence length", data_->seq_len()),
      F::integer("d_model", config_.d_model),
      F::integer("config digest", static_cast<int64_t>(model::config_digest(config_))),
      F::text("partition", model::partition_string(stages_)),
      F::integer("data seed", static_cast<int64_t>(o_.data.seed)),
      F::integer("start step", start_step_),
      F::integer("samples consumed", samples_),
      // The data by kind, options and content, not by path: the same file may be mounted
      // under other names on other hosts, and another file under the same one.
      F::text("data options", [&] {
        ojson d = data_to_json(o_.data, data_->content());
        d["source"] = data_kind(o_.data.source);
        return d.dump();
      }()),
      F::integer("autocast dtype", static_cast<int64_t>(autocast_))};
  for (HeaderField& f : run_setting_fields(o_)) fields.push_back(std::move(f));
  exchange_headers(*tx_, fields,
                   kTagHandshakeDown, kTagHandshakeUp);
}

ojson Rank::train_state() const {
  ojson t;
  t["step"] = start_step_;
  t["seed"] = nullptr;  // (the table below fills it; listed here to keep the keys in this order)
  t["samples_consumed"] = samples_;
  t["tokens_consumed"] = tokens_;
  t["data"] = data_to_json(o_.data, data_->content());
  write_run_settings(o_, t);
  if (!plan_.initialized_from.is_null()) t["initialized_from"] = plan_.initialized_from;
  if (!o_.metrics_path.empty()) {
    // Relative to the root when inside it, so a moved run directory still finds its metrics.
    const std::string root = ckpt::fs::absolute_path(o_.ckpt_dir), m = ckpt::fs::absolute_path(o_.metrics_path);
    t["metrics"] = ckpt::fs::within(m, root) ? m.substr(root.size() + 1) : m;
  }
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
  StageStep ss;
  ss.model = model_.get();
  ss.actions = &schedule_.actions[static_cast<size_t>(spec_.stage)];
  ss.tx = tx_.get();
  ss.prev = rank_ - o_.dp;  // the same replica, one stage up or down
  ss.next = rank_ + o_.dp;
  ss.device = device_;
  ss.autocast = autocast_;
  ss.rows = o_.microbatch_size;
  ss.seq_len = data_->seq_len();
  // This replica's share of the global batch: global microbatches [g0, g0 + M / D).
  const int g0 = dp_.index * per_replica_;
  ss.first_index = g0;
  ss.input = [&](int i) { return mb_slice(batch.inputs, g0 + i); };
  if (tree_) {
    ss.after_backward = [&](int) { tree_->push(); };
    ss.gradient_bytes = [&] { return tree_->bytes(); };
  }
  ss.loss = [&](int i, const at::Tensor& y, int64_t* correct) {
    i += g0;
    const at::Tensor mask = mb_slice(batch.mask, i).reshape({-1});
    // The loss in float32 whatever the logits' dtype (a no-op without autocast).
    const at::Tensor logits = y.reshape({-1, y.size(-1)}).index({mask}).to(at::kFloat);  // (P, V)
    const at::Tensor target = mb_slice(batch.targets, i).reshape({-1}).index({mask});
    *correct = logits.argmax(-1).eq(target).sum().item<int64_t>();
    // Summed per microbatch, divided by the global count: PP and PP = 1 see the same loss.
    return at::cross_entropy_loss(logits, target, {}, at::Reduction::Sum) / global_tokens;
  };
  const StageResult res = run_stage(ss);
  const std::vector<at::Tensor>& losses = res.losses;
  const std::vector<int64_t>& correct = res.correct;
  const double idle = res.idle_s, pipe_time = res.pipe_s;
  const int64_t act_peak = res.activation_peak;
  double bytes_sent = res.bytes_sent;

  // (1) The step's gradient over all M microbatches: along the tree (inside this rank, then
  // across the stage's replicas), or the backend's all-reduce.
  const double reduce_t0 = now_s();
  {
    std::vector<at::Tensor> grads;
    if (tree_) {
      grads = tree_->take();
    } else {
      for (auto& [fqn, p] : params_) grads.push_back(p.grad());
    }
    if (o_.dp > 1) {
      bytes_sent += tree_ ? reduce_over_replicas(grads, dp_, *tx_) : allreduce_over_replicas(grads, dp_, *tx_);
    }
    for (size_t k = 0; k < params_.size(); ++k) params_[k].second.mutable_grad() = grads[k];
  }
  const double reduce_time = now_s() - reduce_t0;
  // (2) The tie, between the two ends of this replica's pipeline. (3) Each FQN's square sum
  // once (DP index 0 holds what every replica holds). (4) Clip.
  const int last_rank = (o_.pp - 1) * o_.dp + dp_.index;
  bytes_sent += sum_tied_gradients(*model_, tx_.get(), first ? last_rank : dp_.index);
  const double grad_norm = global_grad_norm(*model_, norm_order_, tx_.get(), [&](const std::string&) { return dp_.index == 0; });
  clip_gradients(*model_, grad_norm, o_.clip);
  const double lr = learning_rate(o_, step);
  // (5) AdamW; with ZeRO-1 each parameter's owner updates it and sends it to the other replicas.
  // An async save's snapshot must hold the state as it was before this update.
  const double snapshot_wait = wait_for_snapshot();
  opt_->step(lr);
  if (o_.zero == 1 && o_.dp > 1) {
    c10::NoGradGuard no_grad;
    for (auto& [fqn, p] : params_) {
      if (opt_->is_follower(fqn)) continue;
      at::Tensor data = p.detach();
      tx_->group_broadcast(data, dp_.rank(owner_.at(fqn)), "the parameter broadcast");
      if (owner_.at(fqn) == dp_.index) bytes_sent += static_cast<double>(data.nbytes()) * (o_.dp - 1);
    }
    opt_->sync_follower();
  }
  if (ckpt::fault_injected("corrupt-replica", rank_) && step == start_step_ + 1) {
    c10::NoGradGuard no_grad;
    at::Tensor w = params_.front().second.detach().view({-1});  // flips one bit of one weight
    w.view(at::kInt)[0].bitwise_xor_(1);
  }
  // Autocast keeps bfloat16 copies of the weights for the step; they are stale now.
  if (autocast_ != c10::ScalarType::Undefined) AutocastGuard::clear_cache();
  samples_ += static_cast<int64_t>(m) * o_.microbatch_size;
  tokens_ += static_cast<int64_t>(m) * o_.microbatch_size * data_->seq_len();
  start_step_ = step;
  const double step_time = now_s() - t0;

  // Metrics: the last stage knows the loss; bubble and traffic are summed over ranks.
  // bubble, bytes sent, stop requests, each rank's activation peak, then each global
  // microbatch's loss and correct count (from the replica that ran it; zeros elsewhere add
  // exactly), so the loss is summed in global-index order at every layout; last, how many
  // ranks have finished the background write of an async save in flight, and whether rank 0
  // has finished committing it.
  const int64_t loss_at = 3 + world_, correct_at = loss_at + m, written_at = correct_at + m,
                committed_at = written_at + 1;
  at::Tensor shared = at::zeros({3 + world_ + 2 * m + 2}, at::kDouble);
  if (last) {
    for (int i = 0; i < per_replica_; ++i) {
      shared[loss_at + g0 + i] = losses[static_cast<size_t>(i)].item<double>();
      shared[correct_at + g0 + i] = static_cast<double>(correct[static_cast<size_t>(i)]);
    }
  }
  shared[0] = pipe_time > 0 ? idle / pipe_time : 0.0;
  shared[1] = bytes_sent;
  shared[2] = stop_signal() != 0 ? 1.0 : 0.0;
  shared[3 + rank_] = static_cast<double>(act_peak);
  shared[written_at] = pending_ && !pending_->committing && pending_->done.load(std::memory_order_acquire) ? 1.0 : 0.0;
  shared[committed_at] = rank_ == 0 && pending_ && pending_->committing &&
                                 pending_->committed.load(std::memory_order_acquire) ? 1.0 : 0.0;
  if (tx_) tx_->allreduce_sum(shared, "the metrics reduction");
  // A stop requested anywhere is seen by every rank in this same reduction, so all of them
  // stop after this step and commit it together.
  const bool stop = shared[2].item<double>() > 0;
  double loss = 0;
  int64_t n_correct = 0;
  for (int i = 0; i < m; ++i) {
    loss += shared[loss_at + i].item<double>();
    n_correct += static_cast<int64_t>(shared[correct_at + i].item<double>());
  }
  const bool final_step = step == (o_.stop_after > 0 ? std::min(o_.stop_after, o_.steps) : o_.steps);
  last_loss_ = loss;
  // Validation after the step's update, before its checkpoint (every rank takes part).
  ojson eval;
  if (o_.eval_every > 0 && step % o_.eval_every == 0) {
    eval = evaluate();
    last_eval_loss_ = eval["eval_loss"].get<double>();
    last_eval_step_ = step;
  }
  if (o_.dp > 1 && (stop || final_step || (o_.ckpt_every > 0 && step % o_.ckpt_every == 0))) check_replicas(step);
  last_ckpt_s_ = 0;
  const bool save_now = !o_.ckpt_dir.empty() &&
                        (stop || (o_.ckpt_every > 0 && step % o_.ckpt_every == 0) ||
                         final_step);
  // An async save in flight moves on once every writer is done and again once rank 0's commit
  // is; a new checkpoint (at most one in flight), a stop and the end of the run wait for it
  // first. Every rank decides the same from the same reduction, so all of them take each part
  // at the same step.
  ojson ckpt_metrics = ojson::object();
  if (snapshot_wait > 0) ckpt_metrics["ckpt_snapshot_wait_s"] = snapshot_wait;
  if (pending_ && (save_now || (!pending_->committing && shared[written_at].item<double>() >= world_) ||
                   (pending_->committing && shared[committed_at].item<double>() > 0))) {
    advance_async_save(save_now, ckpt_metrics);
  }
  // The stop and the last step save synchronously: the run would wait for the write anyway.
  const bool async_now = save_now && o_.async_ckpt && !stop && !final_step;
  if (async_now) {
    start_async_save(step, ckpt_metrics);
  } else if (save_now) {
    save(step);
  }
  if (last && dp_.index == 0) {
    ojson j;
    j["step"] = step;
    j["loss"] = loss;
    j["accuracy"] = static_cast<double>(n_correct) / global_tokens;
    j["lr"] = lr;
    j["grad_norm"] = grad_norm;
    j["tokens_per_s"] = static_cast<double>(m) * o_.microbatch_size * data_->seq_len() / step_time;
    j["step_time_s"] = step_time;
    j["pipe_time_s"] = pipe_time;
    j["reduce_time_s"] = reduce_time;  // this rank's: the tree (or all-reduce) over microbatches and replicas
    j["bubble"] = shared[0].item<double>() / world_;
    j["bytes_sent"] = shared[1].item<double>();
    std::vector<int64_t> peaks;
    for (int r = 0; r < world_; ++r) peaks.push_back(static_cast<int64_t>(shared[3 + r].item<double>()));
    if (*std::min_element(peaks.begin(), peaks.end()) >= 0) j["act_peak_bytes"] = peaks;
    if (save_now && !async_now) {
      j["ckpt_time_s"] = last_ckpt_s_;
      j["ckpt_cpu_s"] = last_ckpt_cpu_s_;
    }
    for (auto& [k, v] : ckpt_metrics.items()) j[k] = v;
    for (auto& [k, v] : eval.items()) j[k] = v;
    log(j);
  }
  return stop;
}

// Replicas that disagree (a bug, a bit flip) must not go on silently: every rank publishes a
// digest of its parameters and each stage's replicas are compared, on every rank, so all of
// them stop with the same message.
void Rank::check_replicas(int64_t step) {
  std::vector<uint64_t> digests;
  for (auto& [fqn, p] : params_) digests.push_back(ckpt::tensor_digest(p.detach().cpu()));
  at::Tensor all = at::zeros({world_}, at::kLong);
  all[rank_] = static_cast<int64_t>(ckpt::bytes_digest(digests.data(), digests.size() * sizeof(uint64_t)));
  tx_->allreduce_sum(all, "the replica check");
  for (int stage = 0; stage < o_.pp; ++stage) {
    const int r0 = stage * o_.dp;
    for (int j = 1; j < o_.dp; ++j) {
      const int64_t a = all[r0].item<int64_t>(), b = all[r0 + j].item<int64_t>();
      if (a == b) continue;
      throw PipelineError("the replicas of stage " + std::to_string(stage) + " differ after step " + std::to_string(step) +
                          ": " + rank_name(r0, o_.dp) + " has parameter digest " + ckpt::digest_hex(static_cast<uint64_t>(a)) +
                          ", " + rank_name(r0 + j, o_.dp) + " has " + ckpt::digest_hex(static_cast<uint64_t>(b)) +
                          "; replicas must stay bit-identical (a bug or a hardware fault); stopping before it spreads");
    }
  }
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

std::string Rank::begin_save(int64_t step) {
  std::string tmp;
  // Stage 0's failure to begin is its own; the others see its report while they wait here.
  if (rank_ == 0) tmp = ckpt::begin_step_dir(o_.ckpt_dir, step);
  if (tx_) tmp = tx_->broadcast_string("ckpt/" + std::to_string(step), tmp);
  return tmp;
}

ckpt::ShardHeader Rank::shard_header(int64_t step, const ojson& train) const {
  ckpt::ShardHeader h;
  h.stage = spec_.stage;
  h.num_stages = spec_.num_stages;
  h.layer_begin = spec_.layer_begin;
  h.layer_end = spec_.layer_end;
  h.step = step;
  h.part = dp_.index;
  h.parts = o_.dp;
  h.config_json = model::config_to_json_string(config_);
  h.train_json = train.dump();
  return h;
}

ckpt::WriteOptions Rank::write_options() const {
  ckpt::WriteOptions w;
  w.compression = ckpt::Compression::parse(o_.compression);
  w.threads = o_.threads;
  return w;
}

void Rank::save(int64_t step) {
  const double t0 = now_s(), c0 = process_cpu_s();
  const std::string tmp = begin_save(step);
  const ojson train = train_state();
  std::string error;
  ckpt::WrittenShard written;
  // Each FQN is written once, by its owner: with D replicas a stage is spread over D files,
  // one per DP rank (the content, and so `pmamba-ckpt diff`, does not depend on the layout).
  try {
    const ckpt::StageData d = collect_stage(*model_, opt_.get(), &stages_, o_.dp, dp_.index);
    ckpt::write_shard(tmp, shard_header(step, train), d.tensors, d.aliases, write_options(), &written);
  } catch (const std::exception& e) {
    error = e.what();
  }
  commit_save(step, tmp, train, error, written);
  last_ckpt_s_ = now_s() - t0;
  last_ckpt_cpu_s_ = process_cpu_s() - c0;
}

void Rank::commit_save(int64_t step, const std::string& tmp, const ojson& train, const std::string& write_error,
                       const ckpt::WrittenShard& written) {
  const bool wrote = writes_ok(write_error);
  CommitOutcome outcome;
  if (wrote && rank_ == 0) outcome = commit_locally(step, tmp, train, written);
  conclude_save(step, tmp, write_error, wrote, outcome);
}

bool Rank::writes_ok(const std::string& error) {
  // Every stage reports; rank 0 commits only when all shards are in place.
  at::Tensor failed = at::tensor({error.empty() ? 0 : 1}, at::kInt);
  if (tx_) tx_->allreduce_sum(failed, "the checkpoint write");
  return failed.item<int>() == 0;
}

Rank::CommitOutcome Rank::commit_locally(int64_t step, const std::string& tmp, const ojson& train,
                                         const ckpt::WrittenShard& written) const {
  CommitOutcome out;
  try {
    const ckpt::Compression compression = ckpt::Compression::parse(o_.compression);
    // One process wrote every shard: the manifest comes from its record of what it wrote
    // instead of reopening the file (ckpt::build_manifest checks the record as a reader would).
    const ckpt::Manifest man =
        world_ == 1 ? ckpt::build_manifest(tmp, run_id_, config_, stages_, step, compression, true, train,
                                           std::vector<ckpt::WrittenShard>{written})
                    : ckpt::build_manifest(tmp, run_id_, config_, stages_, step, compression, true, train, o_.dp);
    const ckpt::CommitResult c = ckpt::commit_step_dir(o_.ckpt_dir, tmp, man, ckpt::CommitOptions{o_.keep_last, o_.overwrite});
    out.dir = c.dir;
    out.note = c.latest_error;
  } catch (const std::exception& e) {
    out.error = e.what();
  } catch (...) {
    out.error = "unknown error while committing";
  }
  return out;
}

void Rank::conclude_save(int64_t step, const std::string& tmp, const std::string& write_error, bool wrote,
                         const CommitOutcome& outcome) {
  const std::string error = write_error.empty() ? outcome.error : write_error;
  at::Tensor commit_failed = at::tensor({outcome.error.empty() ? 0 : 1}, at::kInt);
  if (tx_) tx_->allreduce_sum(commit_failed, "the checkpoint commit");
  if (!wrote || commit_failed.item<int>() != 0) {
    if (rank_ == 0) ckpt::abort_step_dir(tmp);
    if (error.empty()) throw PeerFailure("checkpoint of step " + std::to_string(step) + " failed on another stage");
    throw ckpt::IoError("checkpoint of step " + std::to_string(step) + " failed: " + error);
  }
  saved_step_ = step;
  if (rank_ == 0) saved_dir_ = outcome.dir;
  if (!outcome.note.empty()) {
    // Committed all the same: readers find the newest committed step directory.
    std::fprintf(stderr, "pmamba-train: committed %s, but `latest` was not updated (%s)\n", saved_dir_.c_str(),
                 outcome.note.c_str());
  }
}

void Rank::start_async_save(int64_t step, ojson& metrics) {
  const double t0 = now_s();
  auto p = std::make_unique<PendingSave>();
  p->step = step;
  p->tmp = begin_save(step);
  p->train = train_state();
  // On the CPU the snapshot itself is taken by the background thread, while the next step's
  // forward and backward passes only read the state; that step's optimizer waits for it
  // (wait_for_snapshot). A GPU stage copies here, on the training thread's stream.
  const bool deferred = device_.is_cpu();
  try {
    // The copy is what makes it safe to go on training; the digests of a tie are taken with it.
    const ckpt::StageData* d = deferred ? nullptr : &snapshot_.take(*model_, opt_.get(), &stages_, o_.dp, dp_.index);
    if (!deferred) p->staged = true;
    PendingSave* ps = p.get();
    ps->writer = std::thread([this, ps, d, h = shard_header(step, p->train), w = write_options(), rank = rank_] {
      const double t = now_s();
      if (o_.ckpt_priority == "idle") lower_priority_of_this_thread();
      const ckpt::StageData* data = d;
      if (!data) {
        try {
          // The test that the next update waits for the copy: it starts 1 s late.
          if (ckpt::fault_injected("slow-snapshot", rank)) std::this_thread::sleep_for(std::chrono::seconds(1));
          data = &snapshot_.take(*model_, opt_.get(), &stages_, o_.dp, dp_.index);
        } catch (const std::exception& e) {
          ps->error = e.what();
        } catch (...) {
          ps->error = "unknown error while taking the checkpoint snapshot";
        }
        {
          std::lock_guard<std::mutex> lock(ps->mu);
          ps->staged = true;
        }
        ps->staged_cv.notify_all();
      }
      if (data) {
        try {
          // The overlap tests' slow disk: the write takes at least 1 s.
          if (ckpt::fault_injected("slow-write", rank)) std::this_thread::sleep_for(std::chrono::seconds(1));
          ckpt::write_shard(ps->tmp, h, data->tensors, data->aliases, w, &ps->written);
        } catch (const std::exception& e) {
          ps->error = e.what();
        } catch (...) {
          ps->error = "unknown error in the background checkpoint write";
        }
      }
      ps->write_s = now_s() - t;
      ps->done.store(true, std::memory_order_release);
    });
  } catch (const std::exception& e) {
    // The snapshot or the thread could not be made: reported at the commit, as a failed write.
    p->error = e.what();
    p->staged = true;
    p->done.store(true, std::memory_order_release);
  }
  pending_ = std::move(p);
  metrics["ckpt_snapshot_s"] = now_s() - t0;
}

double Rank::wait_for_snapshot() {
  if (!pending_) return 0;
  PendingSave& p = *pending_;
  std::unique_lock<std::mutex> lock(p.mu);
  if (p.staged) return 0;
  const double t0 = now_s();
  p.staged_cv.wait(lock, [&p] { return p.staged; });
  return now_s() - t0;
}

void Rank::advance_async_save(bool wait, ojson& metrics) {
  const double t0 = now_s();
  PendingSave& p = *pending_;
  if (!p.committing) {
    if (p.writer.joinable()) p.writer.join();
    p.wrote = writes_ok(p.error);
    p.committing = true;
    if (p.wrote && rank_ == 0) {
      // The commit is rank 0's alone: it runs beside training, and the ranks learn its outcome
      // from a later step's reduction.
      try {
        p.committer = std::thread([this, &p] {
          const double t = now_s();
          if (o_.ckpt_priority == "idle") lower_priority_of_this_thread();
          if (ckpt::fault_injected("slow-commit")) std::this_thread::sleep_for(std::chrono::seconds(1));
          p.outcome = commit_locally(p.step, p.tmp, p.train, p.written);
          p.commit_work_s = now_s() - t;
          p.committed.store(true, std::memory_order_release);
        });
      } catch (const std::exception& e) {
        p.outcome.error = std::string("cannot start the commit thread: ") + e.what();
        p.committed.store(true, std::memory_order_release);
      }
    } else {
      p.committed.store(true, std::memory_order_release);
    }
    metrics["ckpt_written"] = p.step;
    if (p.wrote && !wait) {
      p.main_s += now_s() - t0;
      return;
    }
  }
  if (p.committer.joinable()) p.committer.join();
  std::unique_ptr<PendingSave> done = std::move(pending_);
  done->main_s += now_s() - t0;
  metrics["ckpt_committed"] = done->step;
  metrics["ckpt_commit_s"] = done->main_s;
  metrics["ckpt_write_s"] = done->write_s;
  if (rank_ == 0 && done->wrote) metrics["ckpt_commit_work_s"] = done->commit_work_s;
  conclude_save(done->step, done->tmp, done->error, done->wrote, done->outcome);
}

Rank::~Rank() {
  // A run that failed with a save in flight: its threads end before the snapshot they read
  // goes away, and a step directory that was not committed is removed (one whose commit
  // finished is a whole checkpoint, and stays).
  if (!pending_) return;
  if (pending_->writer.joinable()) pending_->writer.join();
  if (pending_->committer.joinable()) pending_->committer.join();
  const bool committed = pending_->committed.load() && pending_->wrote && pending_->outcome.error.empty();
  if (rank_ == 0 && !committed) ckpt::abort_step_dir(pending_->tmp);
}

ojson Rank::evaluate() {
  const double t0 = now_s();
  const int64_t n = o_.eval_samples, mbs = o_.microbatch_size;
  // Microbatches of the training size, as many per replica on every replica; rows past the
  // last sample count for nothing.
  const int per = static_cast<int>(((n + mbs - 1) / mbs + o_.dp - 1) / o_.dp);
  if (eval_schedule_.actions.empty()) eval_schedule_ = make_forward_only(o_.pp, per);
  const int64_t rows = static_cast<int64_t>(per) * o_.dp * mbs;
  const bool first = spec_.is_first(), last = spec_.is_last();
  Batch batch;
  at::Tensor inputs;
  if (first || last) {
    batch = data_->eval_batch(0, rows);
    if (rows > n) batch.mask.narrow(0, n, rows - n).fill_(false);
    inputs = device_.is_cpu() ? batch.inputs : batch.inputs.to(device_);
  }
  const int g0 = dp_.index * per;
  StageStep ss;
  ss.model = model_.get();
  ss.actions = &eval_schedule_.actions[static_cast<size_t>(spec_.stage)];
  ss.training = false;
  ss.tx = tx_.get();
  ss.prev = rank_ - o_.dp;
  ss.next = rank_ + o_.dp;
  ss.device = device_;
  ss.autocast = autocast_;
  ss.rows = mbs;
  ss.seq_len = data_->seq_len();
  ss.first_index = g0;
  ss.input = [&](int i) { return mb_slice(inputs, g0 + i); };
  const StageResult res = run_stage(ss);
  // Each sample's (loss, correct, count) from the replica that ran it, zeros elsewhere: the
  // sum over ranks is exact, and the totals are summed in sample order below.
  at::Tensor shared = at::zeros({3 * n}, at::kDouble);
  if (last) {
    double* sh = shared.data_ptr<double>();
    for (int i = 0; i < per; ++i) {
      const int g = g0 + i;
      const std::vector<SampleScore> sc = score_samples(res.outputs[static_cast<size_t>(i)], mb_slice(batch.targets, g),
                                                        mb_slice(batch.mask, g));
      for (int64_t r = 0; r < mbs; ++r) {
        const int64_t k = static_cast<int64_t>(g) * mbs + r;
        if (k >= n) break;
        sh[3 * k] = sc[static_cast<size_t>(r)].loss;
        sh[3 * k + 1] = static_cast<double>(sc[static_cast<size_t>(r)].correct);
        sh[3 * k + 2] = static_cast<double>(sc[static_cast<size_t>(r)].count);
      }
    }
  }
  if (tx_) tx_->allreduce_sum(shared, "the validation reduction");
  EvalTotals tot;
  const double* sh = shared.data_ptr<double>();
  for (int64_t k = 0; k < n; ++k) {
    tot.add(SampleScore{sh[3 * k], static_cast<int64_t>(sh[3 * k + 1]), static_cast<int64_t>(sh[3 * k + 2])});
  }
  if (tot.predictions == 0) throw UsageError("the validation samples have no target positions");
  ojson e;
  e["eval_loss"] = tot.loss();
  e["eval_ppl"] = std::exp(tot.loss());
  e["eval_accuracy"] = tot.accuracy();
  if (data_->bytes_per_token() > 0) e["eval_bits_per_byte"] = tot.loss() / std::log(2.0) / data_->bytes_per_token();
  e["eval_samples"] = n;
  e["eval_predictions"] = tot.predictions;
  e["eval_time_s"] = now_s() - t0;
  return e;
}

void Rank::log(const ojson& metrics) {
  ojson j = metrics;
  j["time"] = utc_now();
  if (metrics_) {
    *metrics_ << j.dump(-1, ' ', false, ojson::error_handler_t::replace) << "\n";
    metrics_->flush();
  }
  if (o_.quiet) return;
  const int64_t step = j["step"].get<int64_t>();
  const int64_t total = o_.stop_after > 0 ? std::min(o_.stop_after, o_.steps) : o_.steps;
  // Every --log-every steps, and always at the last step and where something else happened.
  const bool line = step % o_.log_every == 0 || step == total || j.contains("eval_loss") || j.contains("ckpt_time_s") ||
                    j.contains("ckpt_snapshot_s") || j.contains("ckpt_committed");
  if (bar_ && line) bar_->clear();
  if (line) {
    std::string ckpt;
    char buf[96];
    if (j.contains("ckpt_committed")) {  // an async save, committed at this step
      std::snprintf(buf, sizeof buf, "  committed step %lld", static_cast<long long>(j["ckpt_committed"].get<int64_t>()));
      ckpt += buf;
    }
    if (j.contains("ckpt_time_s")) ckpt += "  ckpt " + std::to_string(j["ckpt_time_s"].get<double>()).substr(0, 5) + " s";
    if (j.contains("ckpt_snapshot_s")) {
      std::snprintf(buf, sizeof buf, "  ckpt snapshot %.3f s (writing)", j["ckpt_snapshot_s"].get<double>());
      ckpt += buf;
    }
    std::printf("step %lld/%lld  loss %.4f  acc %.3f  lr %.2e  gnorm %.3f  %.0f tok/s  %.3f s  bubble %.2f%s\n",
                static_cast<long long>(step), static_cast<long long>(total), j["loss"].get<double>(),
                j["accuracy"].get<double>(), j["lr"].get<double>(), j["grad_norm"].get<double>(),
                j["tokens_per_s"].get<double>(), j["step_time_s"].get<double>(), j["bubble"].get<double>(), ckpt.c_str());
    if (j.contains("eval_loss")) {
      std::printf("eval step %lld  eval_loss %.4f  ppl %.3f  acc %.3f%s  (%lld samples, %.2f s)\n", static_cast<long long>(step),
                  j["eval_loss"].get<double>(), j["eval_ppl"].get<double>(), j["eval_accuracy"].get<double>(),
                  j.contains("eval_bits_per_byte")
                      ? ("  bits/byte " + format_real(std::round(j["eval_bits_per_byte"].get<double>() * 1e4) / 1e4)).c_str()
                      : "",
                  static_cast<long long>(j["eval_samples"].get<int64_t>()), j["eval_time_s"].get<double>());
    }
    std::fflush(stdout);
  }
  if (bar_) {
    char extra[96];
    std::snprintf(extra, sizeof extra, "loss %.4f  %.0f tok/s", j["loss"].get<double>(), j["tokens_per_s"].get<double>());
    bar_->draw(static_cast<double>(step), static_cast<double>(total), extra);
  }
}

void Rank::summary(int64_t step) {
  if (rank_ != 0 || o_.quiet) return;
  const double took = now_s() - run_t0_;
  const int64_t ran = step - first_step_;
  std::string s = "pmamba-train: done: " + std::to_string(ran) + " step" + (ran == 1 ? "" : "s") + " in " + clock_text(took);
  if (ran > 0 && took > 0) {
    char rate[64];
    std::snprintf(rate, sizeof rate, " (%.0f tokens/s)", static_cast<double>(ran) * o_.microbatches * o_.microbatch_size * data_->seq_len() / took);
    s += rate;
  }
  char buf[160];
  if (std::isfinite(last_loss_)) {
    std::snprintf(buf, sizeof buf, "; final loss %.4f", last_loss_);
    s += buf;
  }
  if (std::isfinite(last_eval_loss_)) {
    std::snprintf(buf, sizeof buf, ", eval loss %.4f (step %lld)", last_eval_loss_, static_cast<long long>(last_eval_step_));
    s += buf;
  }
  std::printf("%s\n", s.c_str());
  if (!o_.ckpt_dir.empty() && !saved_dir_.empty()) {
    std::printf("  last checkpoint  %s\n", saved_dir_.c_str());
    if (step < o_.steps) {
      std::string cmd = "pmamba-train --resume auto --ckpt-dir " + o_.ckpt_dir;
      if (o_.pp > 1) cmd += " --pp " + std::to_string(o_.pp);
      if (o_.dp > 1) cmd += " --dp " + std::to_string(o_.dp);
      std::printf("  resume with      %s\n", cmd.c_str());
    } else {
      std::printf("  the run is complete (step %lld of --steps %lld); train on from its weights with\n"
                  "                   pmamba-train --init-from %s --ckpt-dir NEW_DIR ...\n",
                  static_cast<long long>(step), static_cast<long long>(o_.steps), saved_dir_.c_str());
    }
    std::printf("  evaluate with    pmamba-eval --ckpt %s\n", o_.ckpt_dir.c_str());
    if (!o_.metrics_path.empty()) std::printf("  report with      pmamba-report %s\n", o_.ckpt_dir.c_str());
  }
  std::fflush(stdout);
}

int Rank::run_steps() {
  setup();
  // The local launcher printed it before starting the stages, unless a resume may change it.
  if (o_.print_schedule && rank_ == 0 && (!std::getenv("PMAMBA_LOCAL_LAUNCH") || !o_.resume.empty())) {
    std::printf("%s", print_schedule(schedule_).c_str());
  }
  handshake();
  // After the handshake, so that ranks started with another layout fail there, naming it.
  if (o_.dp > 1) {
    std::vector<int> group;
    for (int j = 0; j < o_.dp; ++j) group.push_back(dp_.rank(j));
    tx_->join_group(group);
  }
  if (world_ == 1 && !o_.quiet && ::isatty(2) && !std::getenv("PMAMBA_LOCAL_LAUNCH")) bar_ = std::make_unique<ProgressBar>();
  const int64_t stop = o_.stop_after > 0 ? std::min(o_.stop_after, o_.steps) : o_.steps;
  if (spec_.is_last() && dp_.index == 0 && !o_.quiet) {
    std::string where = device_.str();
    if (world_ > 1) where += " over " + backend_;
    if (o_.dp > 1) {
      where += ", " + std::to_string(o_.dp) + " data-parallel replicas (" + std::to_string(per_replica_) +
               " microbatches each, gradients by " + o_.grad_reduce + (o_.zero ? ", ZeRO-1" : "") + ")";
    }
    if (autocast_ != c10::ScalarType::Undefined) where += ", bf16 autocast";
    std::printf("training %s: %d stage%s (partition %s, %s, %s boundary) on %s, %d x %d samples per step, %s; %s\n",
                o_.preset.empty() ? "model" : o_.preset.c_str(), o_.pp, o_.pp == 1 ? "" : "s",
                model::partition_string(stages_).c_str(), o_.schedule.c_str(), o_.boundary.c_str(), where.c_str(),
                o_.microbatches, o_.microbatch_size, data_->describe().c_str(),
                !resumed_from_.empty() ? ("resumed from " + resumed_from_ + " at step " + std::to_string(start_step_)).c_str()
                : plan_.initialized_from.is_null()
                    ? "fresh start"
                    : ("new run from the weights of " + plan_.initialized_from.value("dir", std::string())).c_str());
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
  run_t0_ = now_s();
  first_step_ = start_step_;
  int64_t done = start_step_;
  for (int64_t s = start_step_ + 1; s <= stop; ++s) {
    done = s;
    if (step(s)) {
      stopped(s);
      break;
    }
  }
  if (tx_) tx_->barrier("the end of training");
  bar_.reset();
  summary(done);
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
    TrainPlan plan = plan_training(o, env.rank == 0, env.rank / std::max(1, o.dp));
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
  if (o.pp * o.dp == 1) {
    Rank r(std::move(plan), env);
    return r.run();
  }
  resolve_backend(o.backend, resolve_device(o.device, 0));
  if (o.print_schedule && o.resume.empty()) std::printf("%s", print_schedule(make_schedule(o.schedule, o.pp, o.microbatches / o.dp)).c_str());
  LaunchOptions l;
  l.ranks = o.pp * o.dp;
  l.argv.assign(argv, argv + argc);
  l.timeout = std::chrono::milliseconds(static_cast<int64_t>(o.timeout_s * 1000));
  l.progress_bar = !o.quiet && ::isatty(2);
  l.lock_fd = plan.lock.fd();
  l.env["PMAMBA_RUN_ID"] = plan.run_id;
  l.tool = "pmamba-train";
  l.dp = o.dp;
  plan.reader.reset();
  plan.data.reset();  // the ranks read the data themselves; a text file is held in memory
  return launch_local(l);
}

}  // namespace pmamba::pp
