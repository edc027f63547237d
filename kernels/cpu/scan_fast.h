// Fused CPU selective scan, forward and backward, on raw float32 (or float64) pointers.
//
// Layout: u, delta, z, out, du, ddelta, dz: (B, D, L) planes with any strides (PlaneStrides):
// element (b, d, t) at p[b * s.b + d * s.d + t * s.l], so a transposed view of a (B, L, D)
// tensor, the model's own layout, needs no copy; Bt, Ct, dBt, dCt: (B, L, N) contiguous
// (time-major so one step reads one contiguous row); A, dA: (D, N); Dskip, bias: (D).
// Channels are processed in groups of kLanes, one channel per SIMD lane: each lane runs the
// scalar recurrence of its channel, so no value depends on the thread count, the group it falls
// in or the vector width. Work is split over (batch, channel group) with at::parallel_for;
// reductions across channels and batches use fixed orders.
//
// The float32 kernels exist for AVX-512, AVX2+FMA and plain C++ (written once, scan_body.inc);
// the best one the CPU supports runs unless PMAMBA_SCAN_ISA or set_scan_isa pins another. All
// three give the same bits (the same operations in the same order per lane, explicit FMAs).
//
// The forward saves the state at the start of every kChunk steps; the backward recomputes the
// states of one chunk at a time from those checkpoints and runs the reverse scan over it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace pmamba::kernels::cpu {

inline constexpr int kLanes = 16;
inline constexpr int kChunk = 64;

struct ScanShape {
  int64_t batch = 0, dim = 0, len = 0, dstate = 0;
  int64_t groups() const { return (dim + kLanes - 1) / kLanes; }
  int64_t chunks() const { return (len + kChunk - 1) / kChunk; }
};

struct PlaneStrides {
  int64_t b = 0, d = 0, l = 0;  // in elements
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
  PlaneStrides su, sdelta, sz, sout;
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
  PlaneStrides su, sdelta, sz, sdout, sdu, sddelta, sdz;
};

enum class Isa { kScalar, kAvx2, kAvx512 };

const char* isa_name(Isa isa);                        // "scalar", "avx2", "avx512"
std::optional<Isa> parse_isa(const std::string& name);
bool isa_supported(Isa isa);                          // by this CPU (and this build)
Isa best_isa();
/// The path float32 scans take now: set_scan_isa's, else PMAMBA_SCAN_ISA's, else best_isa().
Isa scan_isa();
/// Pins the path (nullopt: back to the default); throws c10::Error for an unsupported one.
void set_scan_isa(std::optional<Isa> isa);

/// For the benchmark's bound: `reps` passes of x = exp(x) * -0.5 over x[0, n) (n a multiple
/// of kLanes, values <= 0) with path `isa`'s exp, the one its scan uses; returns a checksum.
float exp_bound_loop(Isa isa, float* x, int64_t n, int64_t reps);

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
