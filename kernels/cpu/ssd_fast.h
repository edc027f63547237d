// Fused CPU SSD scan (Mamba-2), forward, backward and step, on raw float32 (or float64) pointers.
//
// Layout (all contiguous): x, out, dx, dout: (B, L, H, P); dt, ddt: (B, L, H); A, dA: (H);
// B, C, dB, dC: (B, L, G, N); D, dD: (H) or (H, P); last_state, dlast: (B, H, P, N).
// Work is split over (batch, head) with at::parallel_for.
//
// Forward: the state of one head is held as (N, Pp), P padded to kSsdLanes (in tiles of 64
// channels), and the P channels are the SIMD lanes: every lane runs the scalar recurrence of its
// channel and sums y = S C over n in sequential order, so no value depends on the vector width,
// the ISA clone or the thread count. One exp per (token, head): exp(dt A) is a per-head scalar.
//
// Backward: the forward saves the state every kSsdChunk tokens (as (P, Np), N padded to
// kSsdLanes). The backward walks the chunks in reverse, all heads of a chunk in parallel; for
// each head it recomputes the state at every kSsdSubChunk-th token from the checkpoint, then
// per sub-chunk recomputes that sub-chunk's states kSsdRows rows of p at a time and runs the
// reverse recurrence with the N states as the lanes: the per-n sums for dB and dC run over p in
// sequential order, dx sums over n in a fixed tree. The recomputed states equal the forward's
// bitwise (the same operations per element). Memory: the checkpoints, one chunk's
// sub-checkpoints per thread, and per-(batch, head) partial sums of dB and dC for one chunk,
// added over the heads of a group in head order; dA and dD add per-(batch, head) sums in batch
// order.
#pragma once

#include <cstdint>

namespace pmamba::kernels::cpu {

inline constexpr int kSsdLanes = 16;     // padding unit of P (forward) and N (backward)
inline constexpr int kSsdChunk = 128;    // tokens between forward checkpoints
inline constexpr int kSsdSubChunk = 8;   // tokens whose states the backward holds at once
inline constexpr int kSsdRows = 4;       // state rows (p) the backward processes together

struct SsdShape {
  int64_t batch = 0, len = 0, heads = 0, headdim = 0, groups = 0, dstate = 0;
  int64_t heads_per_group() const { return heads / groups; }
  int64_t chunks() const { return (len + kSsdChunk - 1) / kSsdChunk; }
  int64_t padded_headdim() const { return (headdim + kSsdLanes - 1) / kSsdLanes * kSsdLanes; }
  int64_t padded_dstate() const { return (dstate + kSsdLanes - 1) / kSsdLanes * kSsdLanes; }
};

template <typename T>
struct SsdForward {
  SsdShape s;
  const T *x, *dt, *A, *B, *C;
  const T* D;                  // null when absent
  bool d_per_channel = false;  // D is (H, P) rather than (H)
  T* out;                      // (B, L, H, P)
  T* last_state;               // (B, H, P, N) or null
  T* ckpt;                     // (B, H, chunks, P, Np) or null (no backward)
};

template <typename T>
struct SsdBackward {
  SsdShape s;
  const T *x, *dt, *A, *B, *C;
  const T* D;
  bool d_per_channel = false;
  const T* ckpt;   // as written by ssd_forward
  const T* dout;   // (B, L, H, P)
  const T* dlast;  // (B, H, P, N) or null (no gradient reaches last_state)
  T *dx, *ddt, *dA, *dB, *dC;
  T* dD;  // null when D is
};

/// Instantiated for float and double.
template <typename T>
void ssd_forward(const SsdForward<T>& args);
template <typename T>
void ssd_backward(const SsdBackward<T>& args);

/// One token for every (b, h): state (B, H, P, N) updated in place; x, out: (B, H, P); dt: (B, H);
/// B, C: (B, G, N). The same arithmetic as one step of ssd_forward (s.len is ignored).
template <typename T>
void ssd_step(const SsdShape& s, T* state, const T* x, const T* dt, const T* A, const T* B, const T* C,
              const T* D, bool d_per_channel, T* out);

}  // namespace pmamba::kernels::cpu
