// Pipeline-parallel training of a Mamba LM: microbatches through a GPipe or 1F1B schedule over
// c10d, tied-embedding gradient sum between the first and last stage, a grad norm reduced
// across stages in the single-process order, clipping, AdamW, warmup + cosine LR, per-stage
// checkpoints committed by rank 0, and resume at any PP degree and partition.
//
// On CPU, PP = k and PP = 1 with the same schedule and microbatches give bitwise-identical
// losses, gradient norms and weights, in float32 and under bf16 autocast (tests/cli/train_equiv_test.sh
// checks it). On CUDA each rank uses the device of its local rank.
#pragma once

#include <cstdint>
#include <set>
#include <string>

#include "src/pp/data.h"
#include "src/pp/optim.h"

namespace pmamba::pp {

struct TrainOptions {
  // model
  std::string preset;
  std::string config_path;
  uint64_t seed = 0;
  std::string boundary = "packed";
  // pipeline
  int pp = 1;
  std::string partition;
  std::string schedule = "1f1b";
  int microbatches = 4;       // global: all data-parallel replicas together
  int microbatch_size = 4;
  // data parallelism (DESIGN.md §4a)
  int dp = 1;                          // replicas of the pipeline; world = pp x dp
  int zero = 0;                        // 1: each FQN's AdamW state on one DP rank of its stage
  std::string grad_reduce = "tree";    // tree (bitwise at every dp) | allreduce (the backend's)
  // data
  DataOptions data;
  // optimisation
  int64_t steps = 100;      // length of the LR schedule
  int64_t stop_after = 0;   // end the run after this step (0 = run to `steps`)
  double lr = 1e-3;
  double min_lr = 1e-4;
  int64_t warmup = 10;
  double clip = 1.0;        // clip the global grad norm (0 = no clipping)
  AdamWOptions adamw;
  // checkpoints
  std::string ckpt_dir;
  int64_t ckpt_every = 0;   // 0 = only at the end when ckpt_dir is set
  int keep_last = 0;
  std::string resume;       // "" | "auto" | a checkpoint path
  std::string init_from;    // a new run starting from this checkpoint's weights (fresh optimizer, step 0)
  bool overwrite = false;   // a new run may replace another run's checkpoints in ckpt_dir
  std::string compression = "zstd:1";
  bool async_ckpt = false;  // snapshot at the checkpoint step, write in a background thread, commit later
  std::string ckpt_priority = "idle";  // the background save's threads: idle (SCHED_IDLE) | normal
  // runtime
  std::string device = "auto";    // cpu | cuda | cuda:N | auto (see device.h)
  std::string backend = "auto";   // gloo | nccl | auto
  std::string autocast = "none";  // none | bf16: forward matmuls in bfloat16, weights and optimizer in float32
  int threads = 0;
  double timeout_s = 120;
  std::string metrics_path;  // JSON lines (written by the last stage); default CKPT_DIR/metrics.jsonl
  // validation on the held-out set (data.h), forward-only through every stage
  int64_t eval_every = 0;    // every K steps (0 = never)
  int64_t eval_samples = 64;
  int64_t log_every = 1;     // a console line every N steps (the metrics file gets every step)
  std::string version;  // pmamba's, as the tool reports it (recorded in the metrics header)
  bool print_schedule = false;
  bool quiet = false;
  // Long names (no dashes) of the options given on the command line. On resume the others take
  // the checkpoint's values, and a given one that contradicts the checkpoint is an error.
  std::set<std::string> given;
};

/// Entry point of pmamba-train. Without launcher variables it plans the run (plan.h: options,
/// the checkpoint root's lock, resume, layout, data, memory and disk) and then either trains in
/// this process (pp 1) or starts pp local ranks of this program and forwards their output;
/// with them (torchrun, Slurm, Open MPI) it runs as one rank. A stop signal (signals.h) ends the
/// run after the step in progress, with a checkpoint of it. Returns the exit code. Throws
/// UsageError / PipelineError / ckpt errors.
int run_train(const TrainOptions& options, int argc, char** argv);

/// Learning rate at 1-based `step`: linear warmup to lr, then cosine decay to min_lr at `steps`.
double learning_rate(const TrainOptions& options, int64_t step);

}  // namespace pmamba::pp
