// Next-token choice for generation, one row at a time, in transformers' order
// (reference/scale-out.md §5): repetition penalty, temperature, top-k, top-p, min-p, then a draw.
//
// Every row has its own random stream seeded by (seed, prompt index), so a row's tokens do not
// depend on which other prompts share its batch, on the batch size or on the pipeline degree,
// and the draw is pmamba's own (splitmix64 + an inverse CDF in float64 over the vocabulary in id
// order), so it does not depend on the LibTorch version either.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace pmamba::gen {

struct SamplingOptions {
  double temperature = 0.0;          // 0: greedy (argmax, the lowest id on a tie); > 0: sample
  int64_t top_k = 0;                 // 0: off
  double top_p = 1.0;                // 1: off
  double min_p = 0.0;                // 0: off
  double repetition_penalty = 1.0;   // 1: off; > 1 discourages ids already in the row's context
  uint64_t seed = 0;
};

/// Throws pp::UsageError naming the option when a value is out of range.
void check_sampling(const SamplingOptions& o);

/// One row's deterministic random stream (splitmix64).
class RowRandom {
 public:
  RowRandom(uint64_t seed, uint64_t row);
  double uniform();  // in [0, 1), 53 random bits
 private:
  uint64_t state_;
};

/// The processed scores of one row: `logits` (V) float32, `context` the ids seen so far
/// (prompt and generated). Tokens removed by top-k / top-p / min-p are -inf. (Exposed for tests.)
at::Tensor process_scores(const at::Tensor& logits, const std::vector<int64_t>& context, const SamplingOptions& o);

/// The next token of one row.
int64_t choose_token(const at::Tensor& logits, const std::vector<int64_t>& context, const SamplingOptions& o,
                     RowRandom& random);

}  // namespace pmamba::gen
