// Evaluation: run a model (fresh from (config, seed) or from a checkpoint) as a chain of
// pipeline stages on given token sequences, report loss/accuracy and optionally write logits.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <set>
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
  std::string data;         // or a data source as --data takes (data.h); "" with --ckpt: its training data
  int64_t samples = 64;     // with data: how many samples
  bool all = false;         // with data: every evaluation sample once (a bounded held-out set)
  int64_t first_sample = -1;  // -1: evaluation samples from 0; else training samples from this global index
  int64_t batch_size = 32;  // samples per forward pass
  DataOptions data_options;
  std::string logits_out;   // HDF5 file with dataset /logits (float32, (B, L, V)), or .safetensors
  bool json = false;        // print the result as one JSON object
  int threads = 0;          // 0 = leave LibTorch's setting
  std::string device = "auto";   // cpu | cuda | cuda:N | auto (see device.h)
  std::string backend = "auto";  // gloo | nccl | auto
  bool inproc = false;      // chain the stages in this process instead of one process per stage
  double timeout_s = 120;
  // Long names of the options given on the command line: each overrides what the checkpoint
  // recorded, and one that cannot apply to the input is refused.
  std::set<std::string> given;
};

/// One sample's score: the cross-entropy summed over its counted positions in position order
/// (float64 from the float32 logits), how many of them the argmax gets right, how many count.
struct SampleScore {
  double loss = 0;
  int64_t correct = 0;
  int64_t count = 0;
};

/// Scores of each sample of logits (B, L, V) against targets (B, L) at mask (B, L). A sample's
/// score depends on its own logits only, so the totals summed in sample order are the same for
/// any batching that gives the same logits.
std::vector<SampleScore> score_samples(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& mask);

/// Scores summed in sample order: the sums are float64 and the order is fixed.
struct EvalTotals {
  double loss_sum = 0;
  int64_t correct = 0, predictions = 0, samples = 0;
  void add(const SampleScore& s) {
    loss_sum += s.loss;
    correct += s.correct;
    predictions += s.count;
    ++samples;
  }
  double loss() const { return predictions ? loss_sum / static_cast<double>(predictions) : 0; }
  double accuracy() const { return predictions ? static_cast<double>(correct) / static_cast<double>(predictions) : 0; }
};

struct EvalResult {
  at::Tensor logits;     // (B, L, V) float32, only with logits_out
  EvalTotals totals;
  double loss = 0;       // mean cross-entropy over the predictions that count (next token, or
                         // the task's targets with --data)
  double accuracy = 0;   // fraction of those predictions whose argmax is right
  double perplexity = 0;
  double bits_per_byte = -1;  // byte data only
  int64_t predictions = 0, samples = 0, seq_len = 0;
  double seconds = 0, tokens_per_s = 0;
  std::string partition;  // the layout that ran, e.g. "2,2"
  nlohmann::ordered_json header;  // the effective settings (what ran, on what)
};

/// Parses "1,2,3" / a tokens file into a (B, L) int64 tensor. Throws UsageError naming the
/// bad token, line, or a length mismatch between lines.
at::Tensor parse_tokens(const std::string& text);
at::Tensor read_tokens_file(const std::string& path);

/// Builds the stage models, chains them in this process over the samples batch by batch (memory
/// bounded by one batch, unless the logits are kept), writes logits when asked.
/// Throws UsageError / model::ConfigError / ckpt errors.
EvalResult run_eval(const EvalOptions& options);

/// pmamba-eval's entry: with pp > 1 and not inproc, one process per stage (spawned locally, or
/// this process is one rank under torchrun/Slurm/mpirun) passing activations over c10d; the last
/// stage prints the result and writes the logits. Otherwise run_eval. Returns the exit code.
int eval_main(const EvalOptions& options, int argc, char** argv);

/// Prints what pmamba-eval reports for a result: the header of effective settings, then the
/// scores (or one JSON object with options.json).
void print_eval(const EvalResult& result, const EvalOptions& options);

}  // namespace pmamba::pp
