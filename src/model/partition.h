// Pipeline stage layout: which global layer indices each stage owns.
//
// Stage 0 also owns backbone.embedding; the last stage owns backbone.norm_f and lm_head.
// A stage may own zero layers (e.g. a first stage holding only the embedding, or a last
// stage holding only norm_f + lm_head), so up to n_layer + 1 stages are allowed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace pmamba::model {

struct StageSpec {
  int stage = 0;
  int num_stages = 1;
  int64_t layer_begin = 0;  // first owned global layer index
  int64_t layer_end = 0;    // one past the last; == layer_begin when the stage owns no layers

  bool is_first() const { return stage == 0; }
  bool is_last() const { return stage == num_stages - 1; }
  int64_t num_layers() const { return layer_end - layer_begin; }
  bool owns_layer(int64_t i) const { return i >= layer_begin && i < layer_end; }
  bool operator==(const StageSpec& o) const {
    return stage == o.stage && num_stages == o.num_stages && layer_begin == o.layer_begin &&
           layer_end == o.layer_end;
  }
};

/// The single stage that owns the whole model.
StageSpec whole_model(int64_t n_layer);

/// Layer counts per stage, as even as possible; the first n_layer % num_stages stages get one
/// more (the last stage also runs norm_f + lm_head, the heaviest non-layer work).
/// Throws ConfigError when num_stages < 1 or > n_layer + 1.
std::vector<int64_t> balanced_partition(int64_t n_layer, int num_stages);

/// Parses "3,5,4" (non-negative integers, comma-separated). Throws ConfigError naming the
/// bad token.
std::vector<int64_t> parse_partition(const std::string& text);

/// Checks counts against n_layer (sum, non-negative, at most n_layer + 1 stages) and returns
/// one StageSpec per stage. Throws ConfigError naming the problem.
std::vector<StageSpec> make_stages(int64_t n_layer, const std::vector<int64_t>& counts);

/// `partition` empty = balanced; otherwise parsed and, when num_stages > 0, its length must
/// equal num_stages.
std::vector<StageSpec> make_stages(int64_t n_layer, int num_stages, const std::string& partition);

/// "3,5,4"
std::string partition_string(const std::vector<StageSpec>& stages);

}  // namespace pmamba::model
