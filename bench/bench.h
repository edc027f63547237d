// Entry points of the pmamba-bench subcommands (bench/RESULTS.md records their output).
#pragma once

#include <string>

namespace pmamba::bench {

struct CkptBenchOptions {
  std::string preset = "mamba-130m";
  std::string dir;  // scratch directory on the disk under test
  int threads = 2;
  int repeats = 3;
  bool keep = false;
  std::string self;  // path of this executable (loads run in child processes)
};
int run_ckpt_bench(const CkptBenchOptions& options);
/// One load in this process ("raw", "pmamba-none", "pmamba-zstd:1", "torch"); prints JSON.
int run_ckpt_load(const CkptBenchOptions& options, const std::string& what);

/// Writes a committed checkpoint of `preset` with non-trivial AdamW state (as after training)
/// at `pp` stages.
void write_trained_checkpoint(const std::string& root, const std::string& preset, int pp,
                              const std::string& compression, int threads);

struct ReshardBenchOptions {
  std::string preset = "mamba-130m";
  std::string dir;
  int threads = 2;
  int repeats = 3;
  std::string reshard_bin;  // path of pmamba-reshard
};
int run_reshard_bench(const ReshardBenchOptions& options);

}  // namespace pmamba::bench
