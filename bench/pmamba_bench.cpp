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
  pmamba::bench::ScanBenchOptions sc;
  bool no_models = false;
  auto* scan = app.add_subcommand("scan", "fused CPU selective scan vs the reference, and model training tokens/s");
  scan->add_option("--batch", sc.batch);
  scan->add_option("--dim", sc.dim);
  scan->add_option("--len", sc.len);
  scan->add_option("--dstate", sc.dstate);
  scan->add_option("--threads", sc.threads, "intra-op threads (default 2)");
  scan->add_option("--repeats", sc.repeats, "fast-path repetitions (median)");
  scan->add_option("--ref-repeats", sc.ref_repeats, "reference repetitions (median)");
  scan->add_flag("--no-models", no_models, "skip the whole-model training measurement");
  bool json_always = true;  // accepted for symmetry with the other tools; output is JSON anyway
  scan->add_flag("--json", json_always, "one JSON line on stdout (always)");
  std::string one_backend = "fast";
  bool one_bwd = false;
  auto* scan_one = app.add_subcommand("scan-one", "one timed scan in this process (used by `scan`)");
  scan_one->add_option("--backend", one_backend);
  scan_one->add_flag("--bwd", one_bwd);
  scan_one->add_option("--batch", sc.batch);
  scan_one->add_option("--dim", sc.dim);
  scan_one->add_option("--len", sc.len);
  scan_one->add_option("--dstate", sc.dstate);
  scan_one->add_option("--threads", sc.threads);
  sc.self = argv[0];
  pmamba::bench::SgemmBenchOptions sg;
  auto* sgemm = app.add_subcommand("sgemm", "float32 matmul rate: 2048^3 and a model's Linear shapes (fwd + 2 bwd)");
  sgemm->add_option("--threads", sg.threads, "intra-op and BLAS threads (default 2)");
  sgemm->add_option("--size", sg.size, "the square product's M = N = K");
  sgemm->add_option("--model", sg.models, "PRESET:TOKENS (repeatable): that model's Linear shapes at M = TOKENS");
  sgemm->add_flag("--json", json_always, "one JSON line on stdout (always)");
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
    if (*sgemm) return pmamba::bench::run_sgemm_bench(sg);
    if (*scan_one) return pmamba::bench::run_scan_one(sc, one_backend, one_bwd);
    if (*scan) {
      sc.models = !no_models;
      return pmamba::bench::run_scan_bench(sc);
    }
    return 2;
  });
}
