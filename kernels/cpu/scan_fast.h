// Fused CPU selective scan, forward and backward, on raw float32 pointers.
//
// Layout: u, delta, z, out, du, ddelta, dz: (B, D, L) contiguous; Bt, Ct, dBt, dCt: (B, L, N)
// (time-major so one step reads one contiguous row); A, dA: (D, N); Dskip, bias: (D).
// Channels are processed in groups of kLanes, one channel per SIMD lane: each lane runs the
// scalar recurrence of its channel, so no value depends on the thread count, the group it falls
// in or the vector width. Work is split over (batch, channel group) with at::parallel_for;
// reductions across channels and batches use fixed orders.
//
// The forward saves the state at the start of every kChunk steps; the backward recomputes the
// states of one chunk at a time from those checkpoints and runs the reverse scan over it.
#pragma once

#include <cstdint>

namespace pmamba::kernels::cpu {

inline constexpr int kLanes = 16;
inline constexpr int kChunk = 64;

struct ScanShape {
  int64_t batch = 0, dim = 0, len = 0, dstate = 0;
  int64_t groups() const { return (dim + kLanes - 1) / kLanes; }
  int64_t chunks() const { return (len + kChunk - 1) / kChunk; }
};

struct ScanForward {
  ScanShape s;
  const float *u, *delta, *A, *Bt, *Ct;
  const float *Dskip, *z, *bias;  // may be null
  bool softplus = true;
  float* out;         // (B, D, L)
  float* last_state;  // (B, D, N) or null
  float* ckpt;        // (B, groups, chunks, N, kLanes) or null (no backward)
};

struct ScanBackward {
  ScanShape s;
  const float *u, *delta, *A, *Bt, *Ct, *Dskip, *z, *bias, *ckpt, *dout;
  bool softplus = true;
  float *du, *ddelta, *dz;  // (B, D, L); dz ignored when z is null
  float *dA;                // (D, N)
  float *dBt, *dCt;         // (B, L, N)
  float *dD, *dbias;        // (D); ignored when the input is null
};

void scan_forward(const ScanForward& args);
void scan_backward(const ScanBackward& args);

/// One recurrent step per (b, d): state (B, D, N) updated in place; u, dt_raw, z: (B, D);
/// Bv, Cv: (B, N). Same arithmetic as one step of scan_forward.
void scan_step(int64_t batch, int64_t dim, int64_t dstate, float* state, const float* u, const float* delta,
               const float* A, const float* Bv, const float* Cv, const float* Dskip, const float* z,
               const float* bias, bool softplus, float* out);

}  // namespace pmamba::kernels::cpu
