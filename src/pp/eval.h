// Evaluation: run a model (fresh from (config, seed) or from a checkpoint) as a chain of
// pipeline stages on given token sequences, report loss/accuracy and optionally write logits.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "src/model/config.h"
#include "src/model/mamba.h"
#include "src/pp/data.h"

namespace pmamba::pp {

struct EvalOptions {
  std::string preset;       // one of preset / config_path / ckpt
  std::string config_path;
  std::string ckpt;         // checkpoint root or step directory
  uint64_t seed = 0;
  int pp = 1;
  std::string partition;    // "" = balanced
  model::BoundaryMode boundary = model::BoundaryMode::kPacked;
  std::string tokens;       // "1,2,3" (one sequence)
  std::string tokens_file;  // one sequence per line, ids separated by commas or spaces
  std::string data;         // or a task/text source (see data.h): accuracy on its targets
  int64_t samples = 64;     // with data: how many samples
  int64_t first_sample = int64_t{1} << 40;  // with data: global index of the first (held out)
  DataOptions data_options;
  std::string logits_out;   // HDF5 file with dataset /logits (float32, (B, L, V))
  int threads = 0;          // 0 = leave LibTorch's setting
  std::string device = "auto";   // cpu | cuda | cuda:N | auto (see device.h)
  std::string backend = "auto";  // gloo | nccl | auto
  bool inproc = false;      // chain the stages in this process instead of one process per stage
  double timeout_s = 120;
};

struct EvalResult {
  at::Tensor logits;     // (B, L, V) float32
  double loss = 0;       // mean cross-entropy over the predictions that count (next token, or
                         // the task's targets with --data)
  double accuracy = 0;   // fraction of those predictions whose argmax is right
  int64_t predictions = 0;
  std::string partition;  // the layout that ran, e.g. "2,2"
};

/// Parses "1,2,3" / a tokens file into a (B, L) int64 tensor. Throws UsageError naming the
/// bad token, line, or a length mismatch between lines.
at::Tensor parse_tokens(const std::string& text);
at::Tensor read_tokens_file(const std::string& path);

/// Builds the stage models, chains them in this process, writes logits when asked.
/// Throws UsageError / model::ConfigError / ckpt errors.
EvalResult run_eval(const EvalOptions& options);

/// pmamba-eval's entry: with pp > 1 and not inproc, one process per stage (spawned locally, or
/// this process is one rank under torchrun/Slurm/mpirun) passing activations over c10d; the last
/// stage prints the result and writes the logits. Otherwise run_eval. Returns the exit code.
int eval_main(const EvalOptions& options, int argc, char** argv);

/// Prints what pmamba-eval reports for a result.
void print_eval(const EvalResult& result, const EvalOptions& options);

}  // namespace pmamba::pp
