// Host-side launchers of the CUDA kernels, on raw device pointers (no torch types), so the .cu
// files compile with nvcc alone and the dispatch code (cuda_dispatch.cpp) stays plain C++.
//
// Layouts as the CPU kernels: u, delta, z, out, du, ddelta, dz: (B, D, L); Bt, Ct, dBt, dCt:
// (B, L, N); A, dA: (D, N); Dskip, bias, dD, dbias: (D); ckpt: (B, D, chunks, N).
// Element type `T` is float or __nv_bfloat16 for the activations; A, D, bias, the state and all
// arithmetic are float32. Gradient reductions use atomics, so CUDA results are not bitwise
// reproducible run to run (the CPU path is); tests use tolerances.
#pragma once

#include <cstdint>

namespace pmamba::kernels::cuda {

inline constexpr int kChunk = 64;

enum class DType { kFloat32, kBFloat16 };

struct ScanParams {
  int64_t batch, dim, len, dstate;
  DType dtype;
  const void *u, *delta, *Bt, *Ct, *z;  // z may be null
  const float *A, *Dskip, *bias;        // Dskip, bias may be null
  bool softplus;
  void* out;
  float* last_state;  // may be null
  float* ckpt;        // may be null (no backward)
};

struct ScanGradParams {
  ScanParams fwd;
  const void* dout;
  void *du, *ddelta, *dz;
  float *dA, *dBt, *dCt, *dD, *dbias;  // float32, zeroed by the launcher
};

struct ConvParams {
  int64_t batch, dim, len, width;
  DType dtype;
  const void* x;
  const float *w, *bias;  // bias may be null
  bool silu;
  void* out;
};

struct ConvGradParams {
  ConvParams fwd;
  const void* dout;
  void* dx;
  float *dw, *dbias;  // zeroed by the launcher
};

/// Each returns 0 or the cudaError_t of the launch; `stream` is a cudaStream_t.
int scan_forward(const ScanParams& p, void* stream);
int scan_backward(const ScanGradParams& p, void* stream);
int conv_forward(const ConvParams& p, void* stream);
int conv_backward(const ConvGradParams& p, void* stream);
const char* error_string(int code);

}  // namespace pmamba::kernels::cuda
