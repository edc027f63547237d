// pmamba-generate: autoregressive generation from a checkpoint, at any pipeline degree.
//
// Each prompt is prefilled on its own with the full-sequence forward (MambaLM::prefill), which
// leaves every layer's conv and SSM state (and an attention layer's KV cache) after its last
// token; the prompts of a batch then decode together, one recurrent step per token. At --pp N
// the stages are processes, each holding its own layers' state and passing one token's
// activations per step to the next; the last stage chooses the tokens (sampler.h) and shares
// them with every stage (stage 0 embeds them next).
//
// Same tokens at every PP degree: every stage runs the same rows at every step (a row that has
// stopped keeps its place in the batch), prefill runs one prompt at a time, and each row's
// random stream depends only on (seed, prompt index). Prompts of unequal length decode in one
// batch for pure Mamba models; with attention layers a batch holds prompts of one length (their
// KV caches must line up), so unequal prompts form separate batches, in prompt order.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "src/gen/sampler.h"

namespace pmamba::gen {

struct GenerateOptions {
  // the model: a checkpoint, or (benchmarks, tests) a preset/config with random weights
  std::string ckpt;
  std::string preset;
  std::string config_path;
  uint64_t init_seed = 0;
  // prompts: exactly one of these
  std::string prompt_tokens;  // "1,2,3"
  std::string prompt_file;    // one prompt per line, ids separated by commas or spaces
  std::string prompt_text;    // UTF-8 bytes as ids (a byte-vocabulary model)
  int64_t max_new_tokens = 16;
  std::vector<int64_t> stop_tokens;  // a row stops after emitting one of these
  SamplingOptions sampling;
  int batch = 8;  // prompts decoded together
  // pipeline
  int pp = 1;
  std::string partition;
  bool inproc = false;  // chain the stages in this process instead of one process per stage
  std::string device = "auto";
  std::string backend = "auto";
  double timeout_s = 120;
  int threads = 0;
  bool json = false;
  // tests: emit these tokens instead of choosing (teacher forcing), and keep every step's logits
  std::vector<std::vector<int64_t>> forced;
  bool keep_logits = false;
};

struct PromptResult {
  std::vector<int64_t> prompt;
  std::vector<int64_t> tokens;  // generated, the stop token included when one ended the row
  std::string stop;             // "stop_token" | "max_new_tokens"
  std::vector<at::Tensor> logits;  // with keep_logits: (V) float32 before each generated token
};

struct GenerateResult {
  std::vector<PromptResult> rows;
  int64_t prefill_tokens = 0, decode_tokens = 0;  // decode: tokens chosen after a step (all rows)
  double prefill_s = 0, decode_s = 0;
  std::string partition;
};

/// Parses the prompts of `o` (exactly one source), checking every id against `vocab_size`.
/// Throws pp::UsageError naming the prompt (line) and the bad id.
std::vector<std::vector<int64_t>> read_prompts(const GenerateOptions& o, int64_t vocab_size);

/// Generation with every stage in this process (chained in order). Throws pp::UsageError,
/// model::ConfigError, ckpt errors.
GenerateResult generate(const GenerateOptions& o);

/// pmamba-generate's entry: pp 1 (or inproc) runs here; otherwise one process per stage
/// (spawned locally, or this process is one rank under torchrun/Slurm/mpirun). The last stage
/// prints. Returns the exit code.
int generate_main(const GenerateOptions& o, int argc, char** argv);

/// stdout: one line of comma-separated ids per prompt (or one JSON document with --json);
/// stderr: the timings and tokens/s.
void print_generate(const GenerateResult& r, const GenerateOptions& o, std::FILE* out, std::FILE* err);

}  // namespace pmamba::gen
