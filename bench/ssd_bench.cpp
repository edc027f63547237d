// pmamba-ssd-bench: the fused CPU SSD scan (Mamba-2) against the chunked torch-ops reference at
// one layer's shape (default: mamba2-130m, B 2, L 2048, H 24, P 64, G 1, N 128), forward and
// forward+backward time (medians) and peak memory (each contender once more in a fresh process),
// and the forward's multiply-add rate as a fraction of this machine's fp32 FMA throughput,
// measured in this binary on as many threads and with the same vector clone.
//
// Work counted (multiply-adds per (token, head, p, n)): forward 2, the state update
// S = dA S + dt x ⊗ B and y = S C; forward+backward 7, the forward's 2 plus the reverse step's
// dS += dy ⊗ C, dC, dB, dx and the dt/A term. The fused backward's two recomputations of the
// states (it keeps checkpoints, not every state) are overhead and not counted; nor are the
// plain multiplications (dA S, dt x, dA dS) that ride along with the multiply-adds.
// Prints one JSON line on stdout (progress on stderr).
#include <ATen/ATen.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_util.h"
#include "kernels/cpu/vmath.h"
#include "kernels/ssd_scan.h"
#include "kernels/threads.h"

namespace pmamba::bench {

namespace {

struct SsdBenchOptions {
  int64_t batch = 2, len = 2048, heads = 24, headdim = 64, groups = 1, dstate = 128, chunk = 256;
  int threads = 2;
  int repeats = 7;
  int ref_repeats = 3;
  std::string self;  // this executable (peak memory is measured in child processes)
};

// 12 independent 16-lane accumulators: enough multiply-adds in flight to fill two FMA pipes of
// 4 cycles' latency with AVX-512. This file is compiled with -ffp-contract=fast so a * m + c
// becomes one fused multiply-add wherever the clone's ISA has one (x86-64-v3 and v4).
typedef float v16 __attribute__((vector_size(64)));
constexpr int kAccumulators = 12;

PMAMBA_CLONES
float fma_loop(int64_t reps, float seed) {
  v16 a[kAccumulators];
  for (int k = 0; k < kAccumulators; ++k) a[k] = seed + 0.01f * static_cast<float>(k) + v16{};
  const v16 m = 0.9999f + v16{}, c = 1e-4f + v16{};
  for (int64_t r = 0; r < reps; ++r) {
#pragma GCC unroll 12
    for (int k = 0; k < kAccumulators; ++k) a[k] = a[k] * m + c;
  }
  v16 t = a[0];
  for (int k = 1; k < kAccumulators; ++k) t += a[k];
  float s = 0;
  for (int j = 0; j < 16; ++j) s += t[j];
  return s;
}

const char* isa_clone() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
    return "x86-64-v4 (AVX-512)";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "x86-64-v3 (AVX2+FMA)";
  return "baseline";
}

// fp32 multiply-adds per second, summed over `threads` threads, one value per trial. Plain
// std::threads: at::parallel_for runs in parallel only in translation units built with OpenMP.
std::vector<double> fma_trials(int threads, int trials) {
  const int64_t reps = 50'000'000;
  std::vector<double> rates;
  for (int trial = 0; trial < trials; ++trial) {
    std::vector<float> sink(static_cast<size_t>(threads));
    std::vector<std::thread> pool;
    const double t0 = now_s();
    for (int k = 0; k < threads; ++k) {
      pool.emplace_back([&sink, k, reps] { sink[static_cast<size_t>(k)] = fma_loop(reps, 0.5f + static_cast<float>(k)); });
    }
    for (auto& th : pool) th.join();
    rates.push_back(static_cast<double>(threads) * reps * kAccumulators * 16 / (now_s() - t0));
  }
  return rates;
}

struct Inputs {
  at::Tensor x, dt, A, B, C, D;
};

// Mamba2's initialisation ranges: dt in [0.001, 0.1] (log-uniform), A = -U(1, 16), D = 1.
Inputs make_inputs(const SsdBenchOptions& o, bool grad) {
  at::manual_seed(0);
  Inputs in;
  in.x = at::randn({o.batch, o.len, o.heads, o.headdim}).requires_grad_(grad);
  in.dt = at::exp(at::rand({o.batch, o.len, o.heads}) * (std::log(0.1) - std::log(0.001)) + std::log(0.001))
              .requires_grad_(grad);
  in.A = (-(at::rand({o.heads}) * 15 + 1)).requires_grad_(grad);
  in.B = at::randn({o.batch, o.len, o.groups, o.dstate}).requires_grad_(grad);
  in.C = at::randn({o.batch, o.len, o.groups, o.dstate}).requires_grad_(grad);
  in.D = at::ones({o.heads}).requires_grad_(grad);
  return in;
}

void run(const Inputs& in, kernels::Backend backend, int64_t chunk, bool backward) {
  kernels::SsdOptions so;
  so.backend = backend;
  so.chunk_size = chunk;
  const at::Tensor out = kernels::ssd_scan(in.x, in.dt, in.A, in.B, in.C, in.D, so).out;
  if (backward) out.sum().backward();
}

// One scan in a fresh process: its peak-RSS growth is not hidden by memory an earlier
// measurement freed into the allocator.
int run_one(const SsdBenchOptions& o, const std::string& backend, bool bwd) {
  kernels::set_threads(o.threads);
  const Inputs in = make_inputs(o, bwd);
  const double before = rss_mb();
  double pk = 0;
  const double secs = timed([&] { run(in, kernels::parse_backend(backend), o.chunk, bwd); }, &pk);
  std::printf("{\"seconds\": %.6f, \"peak_mb\": %.3f}\n", secs, pk - before);
  return 0;
}

std::string shape_args(const SsdBenchOptions& o) {
  return " --batch " + std::to_string(o.batch) + " --len " + std::to_string(o.len) + " --heads " +
         std::to_string(o.heads) + " --headdim " + std::to_string(o.headdim) + " --groups " +
         std::to_string(o.groups) + " --dstate " + std::to_string(o.dstate) + " --chunk " + std::to_string(o.chunk) +
         " --threads " + std::to_string(o.threads);
}

int run_bench(const SsdBenchOptions& o) {
  kernels::set_threads(o.threads);
  const double elems = static_cast<double>(o.batch * o.len * o.heads * o.headdim * o.dstate);
  std::fprintf(stderr, "ssd B %lld L %lld H %lld P %lld G %lld N %lld, reference chunk %lld, %d threads (%s)\n",
               static_cast<long long>(o.batch), static_cast<long long>(o.len), static_cast<long long>(o.heads),
               static_cast<long long>(o.headdim), static_cast<long long>(o.groups), static_cast<long long>(o.dstate),
               static_cast<long long>(o.chunk), o.threads, isa_clone());
  // The FMA bound is measured before and after the scans (the machine is shared; its median
  // over both windows is the reference).
  fma_trials(o.threads, 1);  // warm-up
  std::vector<double> fma = fma_trials(o.threads, 5);
  std::map<std::string, std::vector<double>> t;
  auto measure = [&](const std::string& name, kernels::Backend be, bool bwd, int reps) {
    for (int r = 0; r < reps; ++r) {
      const Inputs in = make_inputs(o, bwd);
      const double secs = timed([&] { run(in, be, o.chunk, bwd); });
      t[name].push_back(secs);
      std::fprintf(stderr, "  %-14s %9.1f ms\n", name.c_str(), 1e3 * secs);
    }
  };
  measure("fast_fwd", kernels::Backend::kFast, false, 1);  // warm-up
  t.clear();
  measure("ref_fwd", kernels::Backend::kReference, false, o.ref_repeats);
  measure("fast_fwd", kernels::Backend::kFast, false, o.repeats);
  measure("ref_fwd_bwd", kernels::Backend::kReference, true, o.ref_repeats);
  measure("fast_fwd_bwd", kernels::Backend::kFast, true, o.repeats);
  for (const double r : fma_trials(o.threads, 5)) fma.push_back(r);
  const double fma_rate = median(fma);
  std::fprintf(stderr, "  fp32 FMA throughput: %.3g multiply-adds/s (median of %zu trials, %.3g .. %.3g)\n", fma_rate,
               fma.size(), *std::min_element(fma.begin(), fma.end()), *std::max_element(fma.begin(), fma.end()));
  const double fast_fwd = median(t["fast_fwd"]), fast_fb = median(t["fast_fwd_bwd"]);
  nlohmann::ordered_json j;
  j["bench"] = "ssd";
  j["shape"] = {o.batch, o.len, o.heads, o.headdim, o.groups, o.dstate};
  j["reference_chunk"] = o.chunk;
  j["threads"] = o.threads;
  j["isa"] = isa_clone();
  j["ref_fwd_ms"] = 1e3 * median(t["ref_fwd"]);
  j["fast_fwd_ms"] = 1e3 * fast_fwd;
  j["ref_fwd_bwd_ms"] = 1e3 * median(t["ref_fwd_bwd"]);
  j["fast_fwd_bwd_ms"] = 1e3 * fast_fb;
  j["fwd_speedup"] = median(t["ref_fwd"]) / fast_fwd;
  j["fwd_bwd_speedup"] = median(t["ref_fwd_bwd"]) / fast_fb;
  auto child_peak = [&](const std::string& backend, bool bwd) {
    const std::string cmd = o.self + " --one " + backend + (bwd ? " --bwd" : "") + shape_args(o);
    const double mb = nlohmann::json::parse(child_first_line(cmd)).at("peak_mb").get<double>();
    std::fprintf(stderr, "  peak %-9s %-7s +%7.0f MB (own process)\n", backend.c_str(), bwd ? "fwd+bwd" : "fwd", mb);
    return mb;
  };
  j["ref_fwd_peak_mb"] = child_peak("reference", false);
  j["fast_fwd_peak_mb"] = child_peak("fast", false);
  j["ref_fwd_bwd_peak_mb"] = child_peak("reference", true);
  j["fast_fwd_bwd_peak_mb"] = child_peak("fast", true);
  j["fma_per_s"] = fma_rate;
  j["fwd_madds_per_s"] = 2 * elems / fast_fwd;
  j["fwd_fma_fraction"] = 2 * elems / fast_fwd / fma_rate;
  j["fwd_bwd_madds_per_s"] = 7 * elems / fast_fb;
  j["fwd_bwd_fma_fraction"] = 7 * elems / fast_fb / fma_rate;
  std::fprintf(stderr, "  forward: %.3g multiply-adds/s = %.2f of the FMA bound; forward+backward: %.2f\n",
               2 * elems / fast_fwd, j["fwd_fma_fraction"].get<double>(), j["fwd_bwd_fma_fraction"].get<double>());
  std::printf("%s\n", j.dump().c_str());
  return 0;
}

}  // namespace

}  // namespace pmamba::bench

int main(int argc, char** argv) {
  CLI::App app{"fused CPU SSD scan vs the chunked torch-ops reference; prints one JSON line", "pmamba-ssd-bench"};
  pmamba::bench::SsdBenchOptions o;
  app.add_option("--batch", o.batch);
  app.add_option("--len", o.len);
  app.add_option("--heads", o.heads);
  app.add_option("--headdim", o.headdim);
  app.add_option("--groups", o.groups);
  app.add_option("--dstate", o.dstate);
  app.add_option("--chunk", o.chunk, "the reference's chunk size (default 256)");
  app.add_option("--threads", o.threads, "intra-op threads (default 2)");
  app.add_option("--repeats", o.repeats, "fast-path repetitions (median)");
  app.add_option("--ref-repeats", o.ref_repeats, "reference repetitions (median)");
  std::string one;
  bool one_bwd = false;
  app.add_option("--one", one, "one timed scan of this backend in this process (used for peak memory)");
  app.add_flag("--bwd", one_bwd, "with --one: forward and backward");
  o.self = argv[0];
  CLI11_PARSE(app, argc, argv);
  try {
    return one.empty() ? pmamba::bench::run_bench(o) : pmamba::bench::run_one(o, one, one_bwd);
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    std::fprintf(stderr, "pmamba-ssd-bench: %s\n", msg.substr(0, msg.find('\n')).c_str());
    return 3;
  }
}
