#include "src/gen/sampler.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>

#include "src/pp/errors.h"
#include "src/pp/handshake.h"

namespace pmamba::gen {

namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// softmax over the finite entries, in float64, in id order.
std::vector<double> softmax(const std::vector<double>& s) {
  double top = kNegInf;
  for (double v : s) top = std::max(top, v);
  std::vector<double> p(s.size(), 0.0);
  double sum = 0.0;
  for (size_t i = 0; i < s.size(); ++i) {
    p[i] = s[i] == kNegInf ? 0.0 : std::exp(s[i] - top);
    sum += p[i];
  }
  for (double& v : p) v /= sum;
  return p;
}

// Ids ordered by score, ascending (ties by id, so the order is a function of the scores alone).
std::vector<size_t> ascending(const std::vector<double>& s) {
  std::vector<size_t> order(s.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return s[a] < s[b]; });
  return order;
}

}  // namespace

void check_sampling(const SamplingOptions& o) {
  auto bad = [](const std::string& option, double v, const std::string& want) {
    throw pp::UsageError("--" + option + " must be " + want + ", found " + pp::format_real(v));
  };
  if (!(o.temperature >= 0) || !std::isfinite(o.temperature)) bad("temperature", o.temperature, "finite and >= 0 (0 = greedy)");
  if (o.top_k < 0) bad("top-k", static_cast<double>(o.top_k), ">= 0 (0 = off)");
  if (!(o.top_p > 0 && o.top_p <= 1)) bad("top-p", o.top_p, "in (0, 1] (1 = off)");
  if (!(o.min_p >= 0 && o.min_p <= 1)) bad("min-p", o.min_p, "in [0, 1] (0 = off)");
  if (!(o.repetition_penalty > 0) || !std::isfinite(o.repetition_penalty)) {
    bad("repetition-penalty", o.repetition_penalty, "finite and > 0 (1 = off)");
  }
}

RowRandom::RowRandom(uint64_t seed, uint64_t row) : state_(seed) {
  // Decorrelate neighbouring rows and seeds: mix both through the generator once.
  uint64_t s = seed ^ (0xD1B54A32D192ED03ull * (row + 1));
  state_ = splitmix64(s);
}

double RowRandom::uniform() { return static_cast<double>(splitmix64(state_) >> 11) * 0x1.0p-53; }

at::Tensor process_scores(const at::Tensor& logits, const std::vector<int64_t>& context, const SamplingOptions& o) {
  const at::Tensor l = logits.detach().to(at::kDouble).contiguous().cpu();  // (V)
  std::vector<double> s(l.data_ptr<double>(), l.data_ptr<double>() + l.numel());
  const int64_t V = static_cast<int64_t>(s.size());
  // 1. repetition penalty (CTRL): once per distinct id of the context.
  if (o.repetition_penalty != 1.0) {
    std::vector<bool> seen(s.size(), false);
    for (int64_t id : context) {
      if (id < 0 || id >= V || seen[static_cast<size_t>(id)]) continue;
      seen[static_cast<size_t>(id)] = true;
      double& v = s[static_cast<size_t>(id)];
      v = v < 0 ? v * o.repetition_penalty : v / o.repetition_penalty;
    }
  }
  if (o.temperature > 0) {
    // 2. temperature
    for (double& v : s) v /= o.temperature;
    // 3. top-k: everything below the k-th largest score goes (ties with it stay).
    if (o.top_k > 0 && o.top_k < V) {
      std::vector<double> sorted = s;
      std::nth_element(sorted.begin(), sorted.begin() + (o.top_k - 1), sorted.end(), std::greater<double>());
      const double kth = sorted[static_cast<size_t>(o.top_k - 1)];
      for (double& v : s) {
        if (v < kth) v = kNegInf;
      }
    }
    // 4. top-p: drop the least likely ids whose probabilities sum to at most 1 - top_p; the
    //    most likely id always stays.
    if (o.top_p < 1.0) {
      const std::vector<double> p = softmax(s);
      const std::vector<size_t> order = ascending(s);
      double cum = 0.0;
      for (size_t i = 0; i + 1 < order.size(); ++i) {
        cum += p[order[i]];
        if (cum <= 1.0 - o.top_p) s[order[i]] = kNegInf;
      }
    }
    // 5. min-p: drop ids less likely than min_p x the top probability; the top id stays.
    if (o.min_p > 0.0) {
      const std::vector<double> p = softmax(s);
      const double cut = o.min_p * *std::max_element(p.begin(), p.end());
      const size_t top = static_cast<size_t>(std::max_element(s.begin(), s.end()) - s.begin());
      for (size_t i = 0; i < s.size(); ++i) {
        if (i != top && p[i] < cut) s[i] = kNegInf;
      }
    }
  }
  return at::from_blob(s.data(), {V}, at::kDouble).clone();
}

int64_t choose_token(const at::Tensor& logits, const std::vector<int64_t>& context, const SamplingOptions& o,
                     RowRandom& random) {
  const at::Tensor scores = process_scores(logits, context, o);
  const double* s = scores.data_ptr<double>();
  const int64_t V = scores.numel();
  if (o.temperature == 0.0) {
    int64_t best = 0;
    for (int64_t i = 1; i < V; ++i) {
      if (s[i] > s[best]) best = i;  // the lowest id wins a tie
    }
    return best;
  }
  const std::vector<double> p = softmax(std::vector<double>(s, s + V));
  const double u = random.uniform();
  double cum = 0.0;
  int64_t last = 0;
  for (int64_t i = 0; i < V; ++i) {
    if (p[static_cast<size_t>(i)] == 0.0) continue;
    cum += p[static_cast<size_t>(i)];
    last = i;
    if (u < cum) return i;
  }
  return last;  // u beyond the rounded total: the last id with probability
}

}  // namespace pmamba::gen
