// Entry points of the pmamba-bench subcommands (bench/RESULTS.md records their output).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

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

struct ScanBenchOptions {
  int64_t batch = 2, dim = 1536, len = 2048, dstate = 16;  // one mamba-130m layer
  int threads = 2;
  int repeats = 5;
  int ref_repeats = 1;
  bool models = true;  // also whole-model training tokens/s (tiny, small)
  std::string self;    // this executable (peak memory is measured in child processes)
};
int run_scan_bench(const ScanBenchOptions& options);
int run_scan_one(const ScanBenchOptions& options, const std::string& backend, bool backward);

struct SgemmBenchOptions {
  int threads = 2;
  int64_t size = 2048;              // the square product M = N = K
  std::vector<std::string> models;  // PRESET:TOKENS: that model's Linear shapes at M = TOKENS
};
int run_sgemm_bench(const SgemmBenchOptions& options);

}  // namespace pmamba::bench
