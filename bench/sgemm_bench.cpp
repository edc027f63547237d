// sgemm benchmark: the float32 matmul rate of LibTorch's BLAS (OpenBLAS on Debian) on the given
// threads, at a square 2048 x 2048 x 2048 product (the machine's matmul ceiling: the "MFU"
// denominator of bench/train_bench.sh) and at a Mamba model's own matmul shapes: for every
// Linear of a Mamba-1 layer (in_proj, x_proj, dt_proj, out_proj) and the LM head, the forward
// product and the two backward products with M = tokens per step, in the layouts a training step
// uses (at::linear's x W^T; autograd's dY W and X^T dY). From those, the ideal matmul time of one
// training step (every product at its measured rate) and at the square rate.
#include <ATen/ATen.h>

#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "bench/bench.h"
#include "bench/bench_util.h"
#include "kernels/threads.h"
#include "src/model/config.h"
#include "src/model/fqn.h"

namespace pmamba::bench {

namespace {

// Median seconds of fn over at least 5 repeats and at least ~0.3 s (one warm-up first).
double time_product(const std::function<at::Tensor()>& fn) {
  fn();
  std::vector<double> t;
  double total = 0;
  while (t.size() < 5 || (total < 0.3 && t.size() < 50)) {
    const double t0 = now_s();
    const at::Tensor y = fn();
    const double dt = now_s() - t0;
    t.push_back(dt);
    total += dt;
  }
  return median(t);
}

struct Product {
  double seconds = 0, gflops = 0;
};

Product measure(int64_t m, int64_t n, int64_t k, const std::function<at::Tensor()>& fn) {
  Product p;
  p.seconds = time_product(fn);
  p.gflops = 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k) / p.seconds / 1e9;
  return p;
}

}  // namespace

int run_sgemm_bench(const SgemmBenchOptions& o) {
  kernels::set_threads(o.threads);
  at::manual_seed(0);
  nlohmann::ordered_json j;
  j["bench"] = "sgemm";
  j["threads"] = o.threads;
  j["blas_threads"] = kernels::blas_threads();
  j["cpu"] = cpu_model();
  const int64_t S = o.size;
  double square_rate = 0;
  {
    const at::Tensor a = at::randn({S, S}), b = at::randn({S, S});
    const Product p = measure(S, S, S, [&] { return at::mm(a, b); });
    square_rate = p.gflops;
    std::fprintf(stderr, "sgemm %lld^3 on %d threads: %.1f GFLOP/s (%.1f ms)\n", static_cast<long long>(S), o.threads,
                 p.gflops, 1e3 * p.seconds);
    j["size"] = S;
    j["sgemm_gflops"] = p.gflops;
  }
  nlohmann::ordered_json models = nlohmann::ordered_json::array();
  for (const std::string& spec : o.models) {
    // PRESET:TOKENS
    const size_t colon = spec.rfind(':');
    if (colon == std::string::npos) throw std::runtime_error("--model wants PRESET:TOKENS, got " + spec);
    const std::string name = spec.substr(0, colon);
    const int64_t M = std::stoll(spec.substr(colon + 1));
    const model::MambaConfig c = model::preset(name);
    const int64_t E = c.d_inner(), R = c.dt_rank_value(), N = c.d_state, Dm = c.d_model, V = c.padded_vocab();
    struct Shape {
      const char* name;
      int64_t in, out, count;
    };
    const std::vector<Shape> shapes = {{"in_proj", Dm, 2 * E, c.n_layer},
                                       {"x_proj", E, R + 2 * N, c.n_layer},
                                       {"dt_proj", R, E, c.n_layer},
                                       {"out_proj", E, Dm, c.n_layer},
                                       {"lm_head", Dm, V, 1}};
    nlohmann::ordered_json mj;
    mj["model"] = name;
    mj["tokens"] = M;
    mj["parameters"] = model::count_parameters(c);
    double ideal = 0, flops = 0;
    nlohmann::ordered_json rows = nlohmann::ordered_json::array();
    std::fprintf(stderr, "%s, M = %lld tokens: GFLOP/s of forward X W^T / dgrad dY W / wgrad X^T dY\n", name.c_str(),
                 static_cast<long long>(M));
    for (const Shape& s : shapes) {
      const int64_t K = s.in, Nn = s.out;
      const at::Tensor x = at::randn({M, K}), w = at::randn({Nn, K}), dy = at::randn({M, Nn});
      const Product f = measure(M, Nn, K, [&] { return at::linear(x, w); });
      const Product dg = measure(M, K, Nn, [&] { return at::mm(dy, w); });
      const Product wg = measure(K, Nn, M, [&] { return at::mm(x.t(), dy); });
      const double per = f.seconds + dg.seconds + wg.seconds;
      ideal += per * static_cast<double>(s.count);
      flops += 6.0 * static_cast<double>(M * K * Nn * s.count);
      std::fprintf(stderr, "  %-8s (%5lld x %5lld) x%-3lld  %6.1f / %6.1f / %6.1f   %7.2f ms per step\n", s.name,
                   static_cast<long long>(K), static_cast<long long>(Nn), static_cast<long long>(s.count), f.gflops,
                   dg.gflops, wg.gflops, 1e3 * per * static_cast<double>(s.count));
      nlohmann::ordered_json r;
      r["name"] = s.name;
      r["in"] = K;
      r["out"] = Nn;
      r["count"] = s.count;
      r["fwd_gflops"] = f.gflops;
      r["dgrad_gflops"] = dg.gflops;
      r["wgrad_gflops"] = wg.gflops;
      r["step_ms"] = 1e3 * per * static_cast<double>(s.count);
      rows.push_back(r);
    }
    mj["linears"] = rows;
    mj["matmul_gflop_per_step"] = flops / 1e9;
    mj["ideal_matmul_s"] = ideal;                     // every product at its own measured rate
    mj["ideal_matmul_s_at_square"] = flops / 1e9 / square_rate;  // every product at the 2048^3 rate
    mj["shape_gflops"] = flops / 1e9 / ideal;         // the model's matmuls' effective rate
    std::fprintf(stderr, "  all: %.2f GFLOP per step, ideal %.3f s at the shapes' rates (%.1f GFLOP/s), %.3f s at %lld^3's\n",
                 flops / 1e9, ideal, flops / 1e9 / ideal, flops / 1e9 / square_rate, static_cast<long long>(S));
    models.push_back(mj);
  }
  if (!models.empty()) j["models"] = models;
  std::printf("%s\n", j.dump().c_str());
  return 0;
}

}  // namespace pmamba::bench
