// pmamba-bench: the benchmarks behind bench/RESULTS.md. Each subcommand prints one JSON line
// on stdout (progress on stderr).
#include <CLI/CLI.hpp>

#include "bench/bench.h"
#include "tools/tool_main.h"

int main(int argc, char** argv) {
  CLI::App app{"pmamba benchmarks; each prints one JSON line", "pmamba-bench"};
  app.require_subcommand(1);
  pmamba::bench::CkptBenchOptions ck;
  auto* ckpt = app.add_subcommand("ckpt", "checkpoint save/load vs raw I/O and torch::save/load");
  ckpt->add_option("--preset", ck.preset, "model size (default mamba-130m: ~1.55 GB with AdamW state)");
  ckpt->add_option("--dir", ck.dir, "scratch directory on the disk to measure");
  ckpt->add_option("--threads", ck.threads, "threads for torch and for (de)compression");
  ckpt->add_option("--repeats", ck.repeats, "repetitions (medians are reported)");
  ckpt->add_flag("--keep", ck.keep, "keep the files written");
  std::string what;
  auto* load = app.add_subcommand("ckpt-load", "one timed load (used by `ckpt`)");
  load->add_option("--what", what)->required();
  load->add_option("--dir", ck.dir)->required();
  load->add_option("--preset", ck.preset);
  load->add_option("--threads", ck.threads);
  ck.self = argv[0];
  return pmamba::tools::run_tool(app, argc, argv, [&]() -> int {
    if (*ckpt) return pmamba::bench::run_ckpt_bench(ck);
    if (*load) return pmamba::bench::run_ckpt_load(ck, what);
    return 2;
  });
}
