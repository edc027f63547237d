// Kernel benchmark: the fused CPU selective scan against the reference path at one layer's
// shape (default: mamba-130m, B 2, D 1536, L 2048, N 16, with z and delta_bias), forward and
// forward+backward time and peak memory, and the forward's state updates per second as a
// fraction of the machine's measured vectorised-exp throughput (one exp per state update is
// the floor of the recurrence's work). Also whole-model training tokens/s, fast vs reference.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <map>
#include <nlohmann/json.hpp>
#include <vector>

#include "bench/bench.h"
#include "bench/bench_util.h"
#include "kernels/cpu/scan_fast.h"
#include "kernels/cpu/vmath.h"
#include "kernels/selective_scan.h"
#include "kernels/threads.h"
#include "src/model/mamba.h"
#include "src/pp/optim.h"


namespace pmamba::bench {

namespace {

// Exps per second of the scan's own exp on one path, summed over the threads: x is kept in a
// small array so the loop is compute-bound, as the scan's inner loop is.
double exp_throughput(kernels::cpu::Isa isa) {
  const int64_t reps = isa == kernels::cpu::Isa::kScalar ? 2000 : 20000;
  std::vector<double> rates;
  for (int trial = 0; trial < 3; ++trial) {
    const double t0 = now_s();
    std::atomic<float> sink{0};
    at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) {
        std::vector<float> x(1024);
        for (int i = 0; i < 1024; ++i) x[i] = -0.001f * static_cast<float>(i);
        sink = sink + kernels::cpu::exp_bound_loop(isa, x.data(), 1024, reps);
      }
    });
    rates.push_back(static_cast<double>(at::get_num_threads()) * reps * 1024 / (now_s() - t0));
  }
  return median(rates);
}

struct Inputs {
  at::Tensor u, delta, A, B, C, D, z, bias;
};

Inputs make_inputs(int64_t b, int64_t d, int64_t l, int64_t n, bool grad) {
  at::manual_seed(0);
  Inputs x;
  x.u = at::randn({b, d, l}).requires_grad_(grad);
  x.delta = (at::randn({b, d, l}) * 0.5).requires_grad_(grad);
  x.A = (-(at::rand({d, n}) + 0.1) * 2).requires_grad_(grad);
  x.B = at::randn({b, n, l}).requires_grad_(grad);
  x.C = at::randn({b, n, l}).requires_grad_(grad);
  x.D = at::randn({d}).requires_grad_(grad);
  x.z = at::randn({b, d, l}).requires_grad_(grad);
  x.bias = (at::rand({d}) * 0.5).requires_grad_(grad);
  return x;
}

void run(const Inputs& x, kernels::Backend backend, bool backward) {
  kernels::ScanOptions o;
  o.backend = backend;
  at::Tensor out = kernels::selective_scan(x.u, x.delta, x.A, x.B, x.C, x.D, x.z, x.bias, o).out;
  if (backward) out.sum().backward();
}

double train_tokens_per_s(const std::string& preset, kernels::Backend backend, int64_t batch, int64_t len, int steps) {
  kernels::set_default_backend(backend);
  const model::MambaConfig c = model::preset(preset);
  model::MambaLM m(c, model::whole_model(c.n_layer));
  m->init_parameters(1);
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& item : m->named_parameters()) named.emplace_back(item.key(), item.value());
  pp::AdamW opt(named, c, {});
  const at::Tensor ids = at::randint(0, c.vocab_size, {batch, len}, at::kLong);
  std::vector<double> times;
  for (int s = 0; s < steps + 1; ++s) {
    const double t0 = now_s();
    for (auto& p : m->parameters()) p.mutable_grad().reset();
    const at::Tensor logits = m->forward(ids);
    at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), ids.reshape({-1})).backward();
    model::sync_tied_gradients(*m, *m);
    opt.step(1e-3);
    if (s > 0) times.push_back(now_s() - t0);  // the first step warms up
  }
  kernels::set_default_backend(kernels::Backend::kAuto);
  return static_cast<double>(batch * len) / median(times);
}

}  // namespace

// One scan in a fresh process: its peak-RSS growth is not hidden by memory an earlier
// measurement freed into the allocator.
int run_scan_one(const ScanBenchOptions& o, const std::string& backend, bool bwd) {
  kernels::set_threads(o.threads);
  const Inputs x = make_inputs(o.batch, o.dim, o.len, o.dstate, bwd);
  const double before = rss_mb();
  double pk = 0;
  const double secs = timed([&] { run(x, kernels::parse_backend(backend), bwd); }, &pk);
  std::printf("{\"seconds\": %.6f, \"peak_mb\": %.3f}\n", secs, pk - before);
  return 0;
}

int run_scan_bench(const ScanBenchOptions& o) {
  kernels::set_threads(o.threads);
  const int64_t B = o.batch, D = o.dim, L = o.len, N = o.dstate;
  const double updates = static_cast<double>(B * D * L * N);
  std::fprintf(stderr, "scan B %lld D %lld L %lld N %lld, %d threads\n", static_cast<long long>(B),
               static_cast<long long>(D), static_cast<long long>(L), static_cast<long long>(N), o.threads);
  const kernels::cpu::Isa best = kernels::cpu::scan_isa();
  const double exp_rate = exp_throughput(best);
  std::fprintf(stderr, "  vectorised exp (%s): %.3g exp/s\n", kernels::cpu::isa_name(best), exp_rate);
  std::map<std::string, std::vector<double>> t;
  std::map<std::string, double> peak;
  auto measure = [&](const std::string& name, kernels::Backend be, bool bwd, int reps) {
    for (int r = 0; r < reps; ++r) {
      const Inputs x = make_inputs(B, D, L, N, bwd);
      const double before = rss_mb();
      double pk = 0;
      const double secs = timed([&] { run(x, be, bwd); }, &pk);
      t[name].push_back(secs);
      peak[name] = std::max(peak[name], pk - before);
      std::fprintf(stderr, "  %-14s %9.1f ms  peak +%7.0f MB\n", name.c_str(), 1e3 * secs, pk - before);
    }
  };
  measure("fast_fwd", kernels::Backend::kFast, false, 1);  // warm-up
  t.clear();
  peak.clear();
  // The fast contenders first: right after the reference frees its gigabytes, the VM is still
  // taking pages back and fresh memory is slow to touch, which a 20 ms forward would feel.
  measure("fast_fwd", kernels::Backend::kFast, false, o.repeats);
  measure("fast_fwd_bwd", kernels::Backend::kFast, true, o.repeats);
  measure("ref_fwd", kernels::Backend::kReference, false, o.ref_repeats);
  measure("ref_fwd_bwd", kernels::Backend::kReference, true, o.ref_repeats);
  nlohmann::ordered_json j;
  j["bench"] = "scan";
  j["shape"] = {B, D, L, N};
  j["threads"] = o.threads;
  j["ref_fwd_ms"] = 1e3 * median(t["ref_fwd"]);
  j["fast_fwd_ms"] = 1e3 * median(t["fast_fwd"]);
  j["ref_fwd_bwd_ms"] = 1e3 * median(t["ref_fwd_bwd"]);
  j["fast_fwd_bwd_ms"] = 1e3 * median(t["fast_fwd_bwd"]);
  j["fwd_speedup"] = median(t["ref_fwd"]) / median(t["fast_fwd"]);
  j["speedup"] = median(t["ref_fwd_bwd"]) / median(t["fast_fwd_bwd"]);
  // Peak memory: each configuration once more, in its own process.
  auto child_peak = [&](const std::string& backend, bool bwd) {
    const std::string cmd = o.self + " scan-one --backend " + backend + (bwd ? " --bwd" : "") + " --batch " +
                            std::to_string(B) + " --dim " + std::to_string(D) + " --len " + std::to_string(L) +
                            " --dstate " + std::to_string(N) + " --threads " + std::to_string(o.threads);
    const double mb = nlohmann::json::parse(child_first_line(cmd)).at("peak_mb").get<double>();
    std::fprintf(stderr, "  peak %-9s %-7s +%7.0f MB (own process)\n", backend.c_str(), bwd ? "fwd+bwd" : "fwd", mb);
    return mb;
  };
  j["ref_peak_mb"] = child_peak("reference", true);
  j["fast_peak_mb"] = child_peak("fast", true);
  j["memory_ratio"] = j["ref_peak_mb"].get<double>() / std::max(j["fast_peak_mb"].get<double>(), 1.0);
  j["ref_fwd_peak_mb"] = child_peak("reference", false);
  j["fast_fwd_peak_mb"] = child_peak("fast", false);
  // The forward needs one exp per state update, and so does the backward: it recomputes the
  // chunk's states and keeps each exp(dt A) for the reverse recurrence. (Before 2026-12-04 it
  // computed that exp twice and this fraction was reported against two per update.)
  j["isa"] = kernels::cpu::isa_name(best);
  j["exp_per_s"] = exp_rate;
  j["state_updates_per_s"] = updates / median(t["fast_fwd"]);
  j["exp_bound_fraction"] = updates / median(t["fast_fwd"]) / exp_rate;
  j["bwd_ms"] = 1e3 * (median(t["fast_fwd_bwd"]) - median(t["fast_fwd"]));
  j["bwd_exp_bound_fraction"] =
      updates / std::max(median(t["fast_fwd_bwd"]) - median(t["fast_fwd"]), 1e-9) / exp_rate;
  // Each path the CPU supports, pinned in turn (they give the same bits; see fast_test.cpp).
  nlohmann::ordered_json paths;
  for (const kernels::cpu::Isa isa : {kernels::cpu::Isa::kAvx512, kernels::cpu::Isa::kAvx2, kernels::cpu::Isa::kScalar}) {
    const char* name = kernels::cpu::isa_name(isa);
    if (!kernels::cpu::isa_supported(isa)) {
      std::fprintf(stderr, "  path %-7s skipped: this CPU does not support it\n", name);
      paths[name] = "unsupported";
      continue;
    }
    kernels::cpu::set_scan_isa(isa);
    const int reps = isa == kernels::cpu::Isa::kScalar ? o.ref_repeats : o.repeats;
    const double rate = exp_throughput(isa);
    measure(std::string(name) + "_fwd", kernels::Backend::kFast, false, reps);
    measure(std::string(name) + "_fwd_bwd", kernels::Backend::kFast, true, reps);
    const double f = median(t[std::string(name) + "_fwd"]), fb = median(t[std::string(name) + "_fwd_bwd"]);
    nlohmann::ordered_json p;
    p["exp_per_s"] = rate;
    p["fwd_ms"] = 1e3 * f;
    p["fwd_bwd_ms"] = 1e3 * fb;
    p["exp_bound_fraction"] = updates / f / rate;
    p["bwd_ms"] = 1e3 * (fb - f);
    p["bwd_exp_bound_fraction"] = updates / std::max(fb - f, 1e-9) / rate;
    std::fprintf(stderr, "  path %-7s exp %.3g/s  fwd %.1f ms (%.2f of its exp bound)  bwd %.1f ms (%.2f)\n", name,
                 rate, 1e3 * f, p["exp_bound_fraction"].get<double>(), 1e3 * (fb - f),
                 p["bwd_exp_bound_fraction"].get<double>());
    paths[name] = p;
  }
  kernels::cpu::set_scan_isa(std::nullopt);
  j["paths"] = paths;
  if (o.models) {
    for (const std::string preset : {"tiny", "small"}) {
      const int64_t batch = preset == "tiny" ? 8 : 4, len = 256;
      const double fast = train_tokens_per_s(preset, kernels::Backend::kFast, batch, len, 5);
      const double ref = train_tokens_per_s(preset, kernels::Backend::kReference, batch, len, 3);
      std::fprintf(stderr, "  train %-6s fast %8.0f tok/s  reference %8.0f tok/s\n", preset.c_str(), fast, ref);
      j["train_" + preset + "_fast_tok_s"] = fast;
      j["train_" + preset + "_ref_tok_s"] = ref;
      j["train_" + preset + "_speedup"] = fast / ref;
    }
  }
  std::printf("%s\n", j.dump().c_str());
  return 0;
}

}  // namespace pmamba::bench
