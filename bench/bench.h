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

}  // namespace pmamba::bench
