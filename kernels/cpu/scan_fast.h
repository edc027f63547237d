// Fused CPU selective scan, forward and backward, on raw float32 (or float64) pointers.
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

template <typename T>
struct ScanForward {
  ScanShape s;
  const T *u, *delta, *A, *Bt, *Ct;
  const T *Dskip, *z, *bias;  // may be null
  bool softplus = true;
  T* out;         // (B, D, L)
  T* last_state;  // (B, D, N) or null
  T* ckpt;        // (B, groups, chunks, N, kLanes) or null (no backward)
};

template <typename T>
struct ScanBackward {
  ScanShape s;
  const T *u, *delta, *A, *Bt, *Ct, *Dskip, *z, *bias, *ckpt, *dout;
  bool softplus = true;
  T *du, *ddelta, *dz;  // (B, D, L); dz ignored when z is null
  T *dA;                // (D, N)
  T *dBt, *dCt;         // (B, L, N)
  T *dD, *dbias;        // (D); ignored when the input is null
};

/// Instantiated for float and double.
template <typename T>
void scan_forward(const ScanForward<T>& args);
template <typename T>
void scan_backward(const ScanBackward<T>& args);

/// One recurrent step per (b, d): state (B, D, N) updated in place; u, delta, z: (B, D);
/// Bv, Cv: (B, N). Same arithmetic as one step of scan_forward.
template <typename T>
void scan_step(int64_t batch, int64_t dim, int64_t dstate, T* state, const T* u, const T* delta, const T* A,
               const T* Bv, const T* Cv, const T* Dskip, const T* z, const T* bias, bool softplus, T* out);

}  // namespace pmamba::kernels::cpu
