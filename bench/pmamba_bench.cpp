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
  pmamba::bench::ReshardBenchOptions rs;
  auto* reshard = app.add_subcommand("reshard", "pmamba-reshard PP 4 -> 3 and 4 -> 1 vs cp -r");
  reshard->add_option("--preset", rs.preset, "model size (default mamba-130m)");
  reshard->add_option("--dir", rs.dir, "scratch directory on the disk to measure");
  reshard->add_option("--threads", rs.threads, "threads");
  reshard->add_option("--repeats", rs.repeats, "repetitions (medians are reported)");
  {
    std::string self = argv[0];
    const size_t slash = self.rfind('/');
    rs.reshard_bin = (slash == std::string::npos ? std::string() : self.substr(0, slash + 1)) + "pmamba-reshard";
  }
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
    if (*reshard) return pmamba::bench::run_reshard_bench(rs);
    return 2;
  });
}
