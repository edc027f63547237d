#include "src/pp/plan.h"

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <thread>

#include "src/ckpt/errors.h"
#include "src/ckpt/fs.h"
#include "src/ckpt/resources.h"
#include "src/model/errors.h"
#include "src/model/fqn.h"
#include "src/pp/data.h"
#include "src/pp/device.h"
#include "src/pp/errors.h"
#include "src/pp/handshake.h"
#include "src/pp/schedule.h"
#include "src/pp/settings.h"

namespace pmamba::pp {

using ojson = nlohmann::ordered_json;

namespace {

void require(bool ok, const std::string& option, const std::string& must, const std::string& found) {
  if (!ok) throw UsageError(option + " must be " + must + ", found " + found);
}

void check_real(double v, const char* option, double lo, bool open_lo, double hi, bool open_hi) {
  const bool ok = std::isfinite(v) && (open_lo ? v > lo : v >= lo) && (open_hi ? v < hi : v <= hi);
  std::string range = std::string(open_lo ? "(" : "[") + format_real(lo) + ", " +
                      (std::isinf(hi) ? "inf" : format_real(hi)) + (open_hi ? ")" : "]");
  require(ok, option, "a finite number in " + range, format_real(v));
}

}  // namespace

model::MambaConfig load_config_file(const std::string& path) {
  std::string text;
  try {
    text = ckpt::fs::read_file(path, int64_t{1} << 20);
  } catch (const ckpt::Error& e) {
    throw model::ConfigError(std::string("config: cannot read '") + path + "': " + e.what());
  }
  try {
    return model::config_from_json_string(text);
  } catch (const model::ConfigError& e) {
    throw model::ConfigError(std::string(e.what()) + " (in '" + path + "')");
  }
}

void check_train_options(const TrainOptions& o) {
  const double inf = HUGE_VAL;
  require(o.pp >= 1 && o.pp <= 4096, "--pp", "in [1, 4096]", std::to_string(o.pp));
  require(o.dp >= 1 && o.dp <= 4096, "--dp", "in [1, 4096]", std::to_string(o.dp));
  require(static_cast<int64_t>(o.pp) * o.dp <= 4096, "--pp x --dp", "at most 4096 ranks", std::to_string(int64_t{o.pp} * o.dp));
  require(o.zero == 0 || o.zero == 1, "--zero", "0 or 1", std::to_string(o.zero));
  require(o.grad_reduce == "tree" || o.grad_reduce == "allreduce", "--grad-reduce", "tree or allreduce", "'" + o.grad_reduce + "'");
  require(o.microbatches >= 1 && o.microbatches <= (1 << 20), "--microbatches", "in [1, 1048576]", std::to_string(o.microbatches));
  require(o.microbatch_size >= 1 && o.microbatch_size <= (1 << 20), "--microbatch-size", "in [1, 1048576]",
          std::to_string(o.microbatch_size));
  require(o.steps >= 1, "--steps", ">= 1", std::to_string(o.steps));
  require(o.stop_after >= 0, "--stop-after", ">= 0 (0: run to --steps)", std::to_string(o.stop_after));
  require(o.warmup >= 0, "--warmup", ">= 0", std::to_string(o.warmup));
  require(o.ckpt_every >= 0, "--ckpt-every", ">= 0 (0: only at the end)", std::to_string(o.ckpt_every));
  require(o.ckpt_priority == "idle" || o.ckpt_priority == "normal", "--ckpt-priority", "idle or normal",
          "'" + o.ckpt_priority + "'");
  require(o.keep_last >= 0, "--keep-last", ">= 0 (0: keep every checkpoint)", std::to_string(o.keep_last));
  require(o.data.seq_len >= 0, "--seq-len", ">= 0 (0: the task's default)", std::to_string(o.data.seq_len));
  require(o.data.copy_tokens >= 0, "--copy-tokens", ">= 0", std::to_string(o.data.copy_tokens));
  require(o.data.copy_slots >= 0, "--copy-slots", ">= 0", std::to_string(o.data.copy_slots));
  require(o.data.task_vocab >= 0, "--task-vocab", ">= 0", std::to_string(o.data.task_vocab));
  require(o.eval_every >= 0, "--eval-every", ">= 0 (0: no validation)", std::to_string(o.eval_every));
  require(o.eval_samples >= 1 && o.eval_samples <= (int64_t{1} << 30), "--eval-samples", "in [1, 2^30]", std::to_string(o.eval_samples));
  require(o.log_every >= 1, "--log-every", ">= 1", std::to_string(o.log_every));
  check_real(o.data.eval_fraction, "--eval-fraction", 0, false, 1, true);
  check_real(o.lr, "--lr", 0, false, inf, false);
  check_real(o.min_lr, "--min-lr", 0, false, std::isfinite(o.lr) ? o.lr : inf, false);
  check_real(o.clip, "--clip", 0, false, inf, false);
  check_real(o.adamw.beta1, "--beta1", 0, false, 1, true);
  check_real(o.adamw.beta2, "--beta2", 0, false, 1, true);
  check_real(o.adamw.eps, "AdamW eps", 0, true, inf, false);
  check_real(o.adamw.weight_decay, "--weight-decay", 0, false, inf, false);
  check_timeout(o.timeout_s);
  ckpt::check_threads(o.threads);
  try {
    ckpt::Compression::parse(o.compression);
  } catch (const ckpt::UsageError& e) {
    throw UsageError(std::string("--compression: ") + e.what());
  }
  if (!ckpt::fs::valid_utf8(o.data.source)) {
    throw UsageError("--data '" + ckpt::fs::printable(o.data.source) +
                     "' is not valid UTF-8; checkpoints record the data source as JSON text");
  }
  if (o.resume == "auto" && o.ckpt_dir.empty()) {
    throw UsageError("--resume auto resumes the newest checkpoint in --ckpt-dir; give --ckpt-dir");
  }
  if (!o.metrics_path.empty()) {
    const std::string dir = ckpt::fs::parent(o.metrics_path);
    if (!ckpt::fs::is_dir(dir) || ::access(dir.c_str(), W_OK) != 0) {
      throw UsageError("--metrics '" + o.metrics_path + "': the directory '" + dir + "' does not exist or is not writable");
    }
  }
}

namespace {

// A resumed run is the same run: what its checkpoint recorded about it (settings.h: LR
// schedule, optimizer, clipping, seed, data, global batch) is kept, and how the batch is
// computed defaults to the checkpoint's and may change. The data is the same data: a file source
// is compared by content, so it may have moved but not changed. Checkpoints from `pmamba-ckpt
// init` record none of this: the command line decides.
void restore_run(TrainOptions& o, const ojson& t, const std::string& dir) {
  if (t.contains("data") && t.at("data").is_object() && t.at("data").contains("source")) {
    const ojson& data = t.at("data");
    const std::string was = data.at("source").get<std::string>();
    // A file given again under another name is the same data when its content is (checked
    // against the recorded content once the source is read).
    const bool moved = o.given.count("data") != 0 && o.data.source != was && data_kind(o.data.source) == data_kind(was) &&
                       (data_kind(was) == "text" || data_kind(was) == "tokens" || data_kind(was) == "indexed") &&
                       data.contains("content");
    if (!moved && o.given.count("data") != 0 && o.data.source != was) {
      throw UsageError("--data '" + o.data.source + "' differs from the run resumed from '" + dir + "' ('" + was +
                       "'); a resumed run keeps its settings: leave --data out, or start a new run");
    }
    if (!moved) o.data.source = was;
  }
  restore_run_settings(o, t, dir);
  if (t.contains("data") && t.at("data").is_object()) o.data.seed = t.at("data").value("seed", o.data.seed);
}

std::string content_text(const ojson& c) {
  if (c.is_object() && !c.contains("bytes")) return c.dump();  // indexed datasets, --eval-data
  if (!c.is_object()) return c.is_null() ? "unknown content" : c.dump();
  return std::to_string(c.value("bytes", int64_t{-1})) + " bytes with xxh3-64 " + c.value("xxh3_64", std::string("?"));
}

}  // namespace

void check_data_parallel(const TrainOptions& o) {
  if (o.microbatches % o.dp != 0) {
    throw UsageError("--microbatches " + std::to_string(o.microbatches) + " is the global count and must divide evenly over --dp " +
                     std::to_string(o.dp) + " replicas");
  }
  const int per = o.microbatches / o.dp;
  // A replica's range of microbatches must be a node of the fixed summation tree, which it is
  // exactly when its length is a power of two (one replica: the whole tree, always).
  if (o.dp > 1 && o.grad_reduce == "tree" && (per & (per - 1)) != 0) {
    std::string ok;
    for (int d = 1; d <= o.microbatches; ++d) {
      const int q = o.microbatches / d;
      if (o.microbatches % d == 0 && (d == 1 || (q & (q - 1)) == 0)) ok += (ok.empty() ? "" : ", ") + std::to_string(d);
    }
    throw UsageError("--grad-reduce tree with --microbatches " + std::to_string(o.microbatches) + " and --dp " +
                     std::to_string(o.dp) + " gives each replica " + std::to_string(per) +
                     " microbatches, which is not a power of two, so a replica's gradient would not be a node of the "
                     "summation tree that makes every --dp give the same bits; use --dp in {" + ok +
                     "} or --grad-reduce allreduce");
  }
}

std::vector<int64_t> stage_parameter_bytes(const model::MambaConfig& config, const std::vector<model::StageSpec>& stages) {
  std::vector<int64_t> bytes(stages.size(), 0);
  for (const auto& p : model::list_parameters(config)) {
    const int s = model::owner_stage(p, stages);
    bytes[static_cast<size_t>(s)] += p.numel() * 4;
  }
  return bytes;
}

TrainPlan plan_training(const TrainOptions& options, bool commits, int stage) {
  check_train_options(options);
  TrainPlan plan;
  plan.o = options;
  TrainOptions& o = plan.o;
  // Where the run resumes from, and where it writes: --resume DIR without --ckpt-dir keeps
  // writing into DIR's root.
  std::string resume_dir, resume_root;
  if (!o.init_from.empty() && !o.resume.empty() && o.resume != "auto") {
    throw UsageError("--init-from starts a new run from a checkpoint's weights and --resume '" + o.resume +
                     "' continues an existing run; give one of them (--resume auto with --init-from continues "
                     "the fine-tuning run in --ckpt-dir once it has a checkpoint)");
  }
  if (!o.resume.empty() && o.resume != "auto") {
    resume_dir = ckpt::resolve_checkpoint_dir(o.resume, &plan.note);
    resume_root = ckpt::parse_step_dir_name(ckpt::fs::basename(resume_dir)) >= 0 ? ckpt::fs::parent(resume_dir) : "";
    if (o.ckpt_dir.empty()) {
      if (resume_root.empty()) {
        throw UsageError("--resume '" + o.resume + "' is a checkpoint outside any root; give --ckpt-dir for the new checkpoints");
      }
      o.ckpt_dir = resume_root;
    }
  }
  const std::string& root = o.ckpt_dir;
  if (!root.empty()) {
    ckpt::check_output_location(root, resume_dir.empty() ? std::vector<std::string>{} : std::vector<std::string>{resume_dir},
                                resume_root);
    if (commits) {
      plan.created_root = !ckpt::fs::exists(root);
      const char* fd = std::getenv("PMAMBA_LOCK_FD");
      plan.lock = fd ? ckpt::RootLock::adopt(std::atoi(fd), root) : ckpt::RootLock::acquire(root, "pmamba-train");
    }
    // The metrics live with the run (the manifest records where; pmamba-report reads them).
    if (o.metrics_path.empty()) o.metrics_path = ckpt::fs::join(root, "metrics.jsonl");
  }
  try {
    if (o.resume == "auto") {
      if (!ckpt::committed_checkpoints(root).empty()) {
        resume_dir = ckpt::resolve_checkpoint_dir(root, &plan.note);
        resume_root = root;
      }
    }
    if (!resume_dir.empty()) plan.reader = std::make_unique<ckpt::CheckpointReader>(resume_dir);
    if (plan.reader && !plan.reader->manifest().has_optimizer) {
      throw UsageError("--resume: the checkpoint '" + plan.reader->dir() +
                       "' holds weights only (no optimizer state or data position to continue from); start a "
                       "new run from its weights with --init-from " + plan.reader->dir());
    }
    if (!plan.reader && !o.init_from.empty()) {
      plan.init = std::make_unique<ckpt::CheckpointReader>(o.init_from);
      const ckpt::Manifest& man = plan.init->manifest();
      plan.initialized_from = ojson{{"dir", ckpt::fs::absolute_path(plan.init->dir())},
                                    {"run_id", man.run_id.empty() ? ojson(nullptr) : ojson(man.run_id)},
                                    {"step", man.step}};
    }
    if (plan.reader) {
      const ckpt::Manifest& man = plan.reader->manifest();
      if (man.train.contains("initialized_from")) plan.initialized_from = man.train.at("initialized_from");
      plan.config = man.config;
      if (!o.preset.empty() || !o.config_path.empty()) {
        const model::MambaConfig asked = o.preset.empty() ? load_config_file(o.config_path) : model::preset(o.preset);
        if (asked != plan.config) {
          throw UsageError("the checkpoint '" + plan.reader->dir() + "' holds a different model than --preset/--config asks for");
        }
      }
      const ojson& t = man.train;
      plan.start_step = t.value("step", int64_t{0});
      plan.samples = t.value("samples_consumed", int64_t{0});
      plan.tokens = t.value("tokens_consumed", int64_t{0});
      restore_run(o, t, plan.reader->dir());
      check_train_options(o);  // the restored values too
      // A version-1 checkpoint has no run id: its continuation starts one.
      plan.run_id = man.run_id;
    } else if (plan.init) {
      // The model is the checkpoint's; --preset/--config, when given, must describe it.
      plan.config = plan.init->manifest().config;
      if (!o.preset.empty() || !o.config_path.empty()) {
        const model::MambaConfig asked = o.preset.empty() ? load_config_file(o.config_path) : model::preset(o.preset);
        if (asked != plan.config) {
          throw UsageError("--init-from '" + plan.init->dir() + "' holds the model " + model::describe(plan.config) +
                           ", not the one --preset/--config asks for (" + model::describe(asked) +
                           "); leave --preset/--config out to train the checkpoint's model");
        }
      }
      o.data.seed = o.data.seed ? o.data.seed : o.seed;
    } else {
      if (o.preset.empty() == o.config_path.empty()) throw UsageError("give exactly one of --preset or --config");
      plan.config = o.preset.empty() ? load_config_file(o.config_path) : model::preset(o.preset);
      o.data.seed = o.data.seed ? o.data.seed : o.seed;
    }
    if (plan.run_id.empty()) {
      const char* given = std::getenv("PMAMBA_RUN_ID");  // the launcher's plan drew it
      plan.run_id = given && ckpt::is_run_id(given) ? given : ckpt::new_run_id();
    }
    // A root belongs to one run: a new run does not write into another run's checkpoints, nor
    // does a resumed run into a third root that holds another run's.
    if (!root.empty() && !ckpt::committed_checkpoints(root).empty()) {
      const std::string owner = ckpt::root_run_id(root);
      const bool same = plan.reader && (owner == plan.run_id || (owner.empty() && root == resume_root));
      if (!same && !o.overwrite) {
        throw UsageError("--ckpt-dir '" + root + "' holds checkpoints of another run (" +
                         (owner.empty() ? std::string("a version-1 run") : "run " + owner) +
                         "): continue it with --resume auto, replace it with --overwrite (its checkpoints are "
                         "deleted after this run's first commit), or write elsewhere");
      }
    }
    parse_autocast(o.autocast);
    plan.stages = model::make_stages(plan.config.n_layer, o.pp, o.partition);
    check_data_parallel(o);
    check_schedule(make_schedule(o.schedule, o.pp, o.microbatches / o.dp));
    plan.data = make_data(o.data);
    const DataSource* data = plan.data.get();
    if (data->vocab_needed() > plan.config.vocab_size) {
      throw UsageError(data->describe() + " needs a vocabulary of " + std::to_string(data->vocab_needed()) +
                       " but the model has vocab_size " + std::to_string(plan.config.vocab_size));
    }
    if (o.eval_every > 0) {
      // Validation on what training reads says nothing about generalisation: refused.
      if (!data->held_out()) {
        throw UsageError("--eval-every needs held-out data, and " + o.data.source +
                         " has none: give --eval-fraction F (whole documents, or the end of a file, that training never "
                         "sees) or --eval-data PATH");
      }
      // Unless given, as many as the held-out set has, up to the default.
      if (o.given.count("eval-samples") == 0 && data->eval_size() >= 0) o.eval_samples = std::min(o.eval_samples, data->eval_size());
      if (data->eval_size() >= 0 && o.eval_samples > data->eval_size()) {
        throw UsageError("--eval-samples " + std::to_string(o.eval_samples) + " but the held-out set holds " +
                         std::to_string(data->eval_size()) + " (" + data->describe_eval() + "): give --eval-samples " +
                         std::to_string(data->eval_size()) + " or fewer, or hold out more");
      }
    }
    plan.data_content = data->content();
    if (plan.reader) {
      const ojson& t = plan.reader->manifest().train;
      if (t.contains("data") && t.at("data").contains("content") && t.at("data").at("content") != plan.data_content) {
        throw UsageError("the data " + o.data.source + " is not what the run resumed from '" + plan.reader->dir() +
                         "' trained on: it had " + content_text(t.at("data").at("content")) + ", now " +
                         content_text(plan.data_content) + "; resume with the same data, or start a new run");
      }
    }
    // What the machine must hold: each local rank's weights and gradients and its share of
    // the two AdamW moments (float32), before activations and the summation tree's partial sums.
    const std::vector<int64_t> per_stage = stage_parameter_bytes(plan.config, plan.stages);
    const int64_t moment_share = o.zero == 1 ? o.dp : 1;
    int64_t need = 0;
    for (size_t s = 0; s < per_stage.size(); ++s) {
      int64_t rank_bytes = 2 * per_stage[s] + 2 * per_stage[s] / moment_share;
      // --async-ckpt: the host copy of what the rank saves (its share of weights and moments).
      if (o.async_ckpt && !root.empty()) rank_bytes += 3 * per_stage[s] / o.dp;
      if (stage < 0) need += o.dp * rank_bytes;
      if (static_cast<int>(s) == stage) need += rank_bytes;
    }
    ckpt::require_memory(need, std::string("training this model (weights, gradients and AdamW state of ") +
                                   (stage < 0 ? "all its ranks" : "stage " + std::to_string(stage)) +
                                   " on this machine)");
    if (commits && !root.empty()) {
      int64_t raw = 0;
      for (int64_t b : per_stage) raw += 3 * b;  // weights and two moments
      const bool zstd = ckpt::Compression::parse(o.compression).zstd;
      const int64_t want = zstd ? raw / 2 : raw;  // float32 compresses by 1.1-1.2x at best
      const int64_t free = ckpt::fs::free_bytes(root);
      if (free >= 0 && free < want) {
        throw ckpt::ResourceError("--ckpt-dir '" + root + "' has " + ckpt::bytes_text(free) +
                                  " free but one checkpoint of this run needs about " + ckpt::bytes_text(want) +
                                  (zstd ? " (compressed)" : ""));
      }
    }
  } catch (...) {
    if (plan.created_root) {
      plan.reader.reset();
      plan.init.reset();
      try {
        if (ckpt::root_is_empty(root)) ckpt::fs::remove_tree(root);
      } catch (...) {
      }
    }
    throw;
  }
  return plan;
}

}  // namespace pmamba::pp
