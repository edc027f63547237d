// Reshard benchmark: a mamba-130m-sized checkpoint with AdamW state, PP 4 -> 3 and 4 -> 1,
// compressed and not, against `cp -r` of the same checkpoint on the same disk. Each contender
// runs as a child process so its peak RSS (ru_maxrss) is its own.
#include <ATen/Parallel.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <map>
#include <nlohmann/json.hpp>

#include "bench/bench.h"
#include "bench/bench_util.h"
#include "kernels/threads.h"
#include "src/ckpt/checkpoint.h"
#include "src/ckpt/fs.h"
#include "src/model/fqn.h"

namespace pmamba::bench {

namespace {

struct ChildResult {
  double seconds = 0;
  double peak_mb = 0;
  int status = 0;
};

// Runs argv through a small Python launcher: a child forked from this (large) process would
// inherit its resident pages into ru_maxrss, while the launcher's RUSAGE_CHILDREN covers only
// the command itself.
ChildResult run_child(const std::vector<std::string>& argv) {
  std::string cmd =
      "python3 -c 'import resource,subprocess,sys; r=subprocess.run(sys.argv[1:]); "
      "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)'";
  for (const auto& a : argv) cmd += " '" + a + "'";
  const double t0 = now_s();
  FILE* pipe = ::popen(cmd.c_str(), "r");
  ChildResult r;
  long long rc = -1, maxrss = 0;
  if (!pipe || std::fscanf(pipe, "%lld %lld", &rc, &maxrss) != 2) rc = -1;
  if (pipe) ::pclose(pipe);
  r.seconds = now_s() - t0;
  r.peak_mb = static_cast<double>(maxrss) / 1024.0;
  r.status = static_cast<int>(rc);
  return r;
}

}  // namespace

int run_reshard_bench(const ReshardBenchOptions& o) {
  kernels::set_threads(o.threads);
  const std::string dir = o.dir.empty() ? "bench-reshard-tmp" : o.dir;
  ckpt::fs::remove_tree(dir);
  ckpt::fs::make_dirs(dir);
  const model::MambaConfig config = model::preset(o.preset);
  int64_t largest = 0;
  for (const auto& p : model::list_parameters(config)) largest = std::max(largest, p.numel() * 4);
  std::map<std::string, std::vector<double>> t, peak;
  std::map<std::string, double> bytes;
  for (const std::string comp : {"none", "zstd:1"}) {
    const std::string src = dir + "/src-" + comp;
    write_trained_checkpoint(src, o.preset, 4, comp, o.threads);
    const std::string step = ckpt::resolve_checkpoint_dir(src);
    bytes[comp] = static_cast<double>(ckpt::CheckpointReader(src).manifest().total_raw_bytes());
    std::fprintf(stderr, "%s: %.3f GB raw at PP 4\n", comp.c_str(), bytes[comp] / 1e9);
    // pp1nv: the same reshard with --no-verify, to show what verifying the copy costs.
    const std::vector<std::string> jobs = {"cp", "pp3", "pp1", "pp1nv"};
    for (int r = 0; r < o.repeats; ++r) {
      for (size_t k = 0; k < jobs.size(); ++k) {
        const std::string job = jobs[(k + static_cast<size_t>(r)) % jobs.size()];
        const std::string out = dir + "/out";
        ckpt::fs::remove_tree(out);
        drop_cache_tree(dir);
        ChildResult res;
        if (job == "cp") {
          // cp -r then sync, as a reshard fsyncs what it writes.
          res = run_child({"sh", "-c", "cp -r '" + step + "' '" + out + "' && sync -f '" + out + "'"});
        } else {
          std::vector<std::string> argv = {o.reshard_bin, step, out, "--pp", job == "pp3" ? "3" : "1", "--quiet",
                                           "--threads", std::to_string(o.threads)};
          if (job == "pp1nv") argv.push_back("--no-verify");
          res = run_child(argv);
        }
        if (res.status != 0) throw std::runtime_error(job + " failed");
        const std::string key = job + "_" + comp;
        t[key].push_back(res.seconds);
        peak[key].push_back(res.peak_mb);
        std::fprintf(stderr, "  %-12s %7.3f s  %6.2f GB/s  peak RSS %6.0f MB\n", key.c_str(), res.seconds,
                     bytes[comp] / 1e9 / res.seconds, res.peak_mb);
      }
    }
    ckpt::fs::remove_tree(dir + "/out");
    ckpt::fs::remove_tree(src);
  }
  nlohmann::ordered_json j;
  j["bench"] = "reshard";
  j["preset"] = o.preset;
  j["raw_bytes"] = bytes["none"];
  j["largest_tensor_mb"] = static_cast<double>(largest) / (1 << 20);
  j["threads"] = o.threads;
  j["repeats"] = o.repeats;
  for (const auto& [k, v] : t) {
    j[k + "_s"] = median(v);
    j[k + "_min_s"] = *std::min_element(v.begin(), v.end());
  }
  for (const std::string comp : {"none", "zstd:1"}) {
    for (const std::string job : {"pp3", "pp1", "pp1nv"}) {
      j[job + "_" + comp + "_vs_cp"] = median(t["cp_" + comp]) / median(t[job + "_" + comp]);
      j[job + "_" + comp + "_peak_rss_mb"] = median(peak[job + "_" + comp]);
    }
  }
  j["rss_limit_mb"] = 2.0 * static_cast<double>(largest) / (1 << 20) + 100;
  std::printf("%s\n", j.dump().c_str());
  ckpt::fs::remove_tree(dir);
  return 0;
}

}  // namespace pmamba::bench
