// Parameter initialisation that depends only on (seed, FQN).
//
// Each tensor draws from its own counter-based stream keyed by xxh64(FQN, seed): element i
// is a pure function of (seed, FQN, i). So a stage built alone holds bit-identical values to
// the same FQNs of the unsplit model, whatever the partition, thread count or LibTorch version.
// The distributions follow state-spaces/mamba (reference/mamba.md §5).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

#include "src/model/config.h"

namespace pmamba::model {

/// Fills `param` (already allocated with its final shape, any floating dtype) in place.
/// A tied lm_head.weight is filled from the embedding's stream, so it starts equal to it.
/// Throws ConfigError for an FQN that is not a Mamba parameter.
void init_parameter(const std::string& fqn, at::Tensor& param, const MambaConfig& config,
                    uint64_t seed);

/// splitmix64's finaliser: a bijective 64-bit mix (also used to derive data samples).
uint64_t mix64(uint64_t x);

/// Counter-based generator (exposed for tests).
class FqnRng {
 public:
  FqnRng(uint64_t seed, const std::string& stream);
  double uniform(uint64_t i) const;  // [0, 1), 53 bits
  double normal(uint64_t i) const;   // N(0, 1), Box-Muller on two derived uniforms

 private:
  uint64_t key_;
};

}  // namespace pmamba::model
