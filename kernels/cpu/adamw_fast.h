// One AdamW update over many parameters in one pass: each element reads its parameter,
// gradient and two moments once and writes three, where the per-tensor ATen version makes
// eight passes and allocates a temporary the size of the parameter every step.
//
// The arithmetic of one element is fixed (explicit FMAs, contraction off, IEEE sqrt and
// division), so an element's result does not depend on which tensors are updated together,
// on the thread count or on the vector width: updating every FQN in one call gives the bits
// of updating each FQN alone (ZeRO-1 updates only the FQNs a rank owns).
#pragma once

#include <cstdint>
#include <vector>

namespace pmamba::kernels::cpu {

/// One tensor's update; the scalars are float32 values of the step's double-precision
/// schedule (decay = 1 - lr * weight_decay or 1, step_size = lr / (1 - beta1^t),
/// sqrt_bc2 = sqrt(1 - beta2^t)).
struct AdamWSpan {
  float* param;
  const float* grad;  // null: a zero gradient
  float* exp_avg;
  float* exp_avg_sq;
  int64_t numel;
  float decay, step_size, sqrt_bc2;
};

struct AdamWConstants {
  float beta1, beta2, eps;
};

/// p = p * decay; m = (1 - b1) g + b1 m; v = ((1 - b2) g) g + b2 v;
/// p = p - step_size * (m / (sqrt(v) / sqrt_bc2 + eps)), element by element.
void adamw_update(const std::vector<AdamWSpan>& spans, const AdamWConstants& c);

}  // namespace pmamba::kernels::cpu
