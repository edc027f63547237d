#include "kernels/cpu/adamw_fast.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include "kernels/cpu/vmath.h"

namespace pmamba::kernels::cpu {

namespace {

// Elements per task: large enough that scheduling is noise, small enough that 2-16 threads
// share a small model's ~100 tensors evenly.
constexpr int64_t kBlock = 1 << 15;

PMAMBA_CLONES void update_range(const AdamWSpan& s, const AdamWConstants& c, int64_t begin, int64_t end) {
  const float b1 = c.beta1, b2 = c.beta2, omb1 = 1.0f - c.beta1, omb2 = 1.0f - c.beta2, eps = c.eps;
  const float decay = s.decay, neg_step = -s.step_size, sqrt_bc2 = s.sqrt_bc2;
  float* __restrict p = s.param;
  float* __restrict m = s.exp_avg;
  float* __restrict v = s.exp_avg_sq;
  const float* __restrict g = s.grad;
  if (g == nullptr) {
    for (int64_t i = begin; i < end; ++i) {  // exactly a zero gradient (signs of zero included)
      const float m1 = fma_(omb1, 0.0f, b1 * m[i]);
      const float v1 = fma_(omb2 * 0.0f, 0.0f, b2 * v[i]);
      m[i] = m1;
      v[i] = v1;
      p[i] = fma_(neg_step, m1 / (__builtin_sqrtf(v1) / sqrt_bc2 + eps), p[i] * decay);
    }
    return;
  }
  for (int64_t i = begin; i < end; ++i) {
    const float gi = g[i];
    const float m1 = fma_(omb1, gi, b1 * m[i]);
    const float v1 = fma_(omb2 * gi, gi, b2 * v[i]);
    m[i] = m1;
    v[i] = v1;
    p[i] = fma_(neg_step, m1 / (__builtin_sqrtf(v1) / sqrt_bc2 + eps), p[i] * decay);
  }
}

}  // namespace

void adamw_update(const std::vector<AdamWSpan>& spans, const AdamWConstants& c) {
  // Tasks are (span, block) pairs in a flat index space, so small tensors do not each pay a
  // parallel region and large ones are split.
  std::vector<int64_t> first_task(spans.size() + 1, 0);
  for (size_t k = 0; k < spans.size(); ++k)
    first_task[k + 1] = first_task[k] + (spans[k].numel + kBlock - 1) / kBlock;
  at::parallel_for(0, first_task.back(), 1, [&](int64_t begin, int64_t end) {
    size_t k = static_cast<size_t>(std::upper_bound(first_task.begin(), first_task.end(), begin) - first_task.begin()) - 1;
    for (int64_t task = begin; task < end; ++task) {
      while (task >= first_task[k + 1]) ++k;
      const int64_t lo = (task - first_task[k]) * kBlock;
      update_range(spans[k], c, lo, std::min(spans[k].numel, lo + kBlock));
    }
  });
}

}  // namespace pmamba::kernels::cpu
