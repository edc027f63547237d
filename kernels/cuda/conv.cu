// CUDA causal depthwise conv1d (+ SiLU): one thread per output element; the backward computes
// dx per element and reduces dw/dbias over a warp before one atomic per warp.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace pmamba::kernels::cuda {

namespace {

constexpr int kThreads = 256;


template <typename T>
__device__ float preact(const ConvParams& p, const T* x, int64_t row, int64_t t, int64_t d) {
  float acc = p.bias ? p.bias[d] : 0.f;
  for (int64_t k = 0; k < p.width; ++k) {
    const int64_t src = t - (p.width - 1) + k;
    if (src >= 0) acc = fmaf(p.w[d * p.width + k], load(x, row * p.len + src), acc);
  }
  return acc;
}

template <typename T>
__global__ void conv_forward_kernel(ConvParams p) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= p.batch * p.dim * p.len) return;
  const int64_t row = i / p.len, t = i % p.len, d = row % p.dim;
  const T* x = static_cast<const T*>(p.x);
  const float a = preact(p, x, row, t, d);
  store(static_cast<T*>(p.out), i, p.silu ? a * sigmoid(a) : a);
}

template <typename T>
__global__ void conv_backward_kernel(ConvGradParams g) {
  const ConvParams& p = g.fwd;
  const int64_t total = p.batch * p.dim * p.len;
  const int64_t i_raw = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const bool active = i_raw < total;
  const int64_t i = active ? i_raw : total - 1;
  const int64_t row = i / p.len, t = i % p.len, d = row % p.dim;
  const T* x = static_cast<const T*>(p.x);
  const T* dout = static_cast<const T*>(g.dout);
  auto dpre_at = [&](int64_t tt) {
    const float a = preact(p, x, row, tt, d), go = load(dout, row * p.len + tt);
    if (!p.silu) return go;
    const float s = sigmoid(a);
    return go * s * (1.f + a * (1.f - s));
  };
  // dx[t] = sum_k w[k] * dpre[t + (K-1) - k]
  float dx = 0.f;
  for (int64_t k = 0; k < p.width; ++k) {
    const int64_t tt = t + (p.width - 1) - k;
    if (tt < p.len) dx = fmaf(p.w[d * p.width + k], dpre_at(tt), dx);
  }
  if (active) store(static_cast<T*>(g.dx), i, dx);
  const float dp = active ? dpre_at(t) : 0.f;
  // A warp covers consecutive t of one row unless it straddles two rows; reduce only then-safe.
  const int64_t first_row = (i - (threadIdx.x & 31)) / p.len;
  const bool uniform = __all_sync(0xffffffffu, row == first_row);
  for (int64_t k = 0; k < p.width; ++k) {
    const int64_t src = t - (p.width - 1) + k;
    const float v = (src >= 0 && active) ? dp * load(x, row * p.len + src) : 0.f;
    if (uniform) {
      const float s = warp_sum(v);
      if ((threadIdx.x & 31) == 0) atomicAdd(g.dw + d * p.width + k, s);
    } else if (active) {
      atomicAdd(g.dw + d * p.width + k, v);
    }
  }
  if (g.dbias) {
    if (uniform) {
      const float s = warp_sum(dp);
      if ((threadIdx.x & 31) == 0) atomicAdd(g.dbias + d, s);
    } else if (active) {
      atomicAdd(g.dbias + d, dp);
    }
  }
}

}  // namespace

int conv_forward(const ConvParams& p, void* stream) {
  const int64_t total = p.batch * p.dim * p.len;
  const unsigned blocks = static_cast<unsigned>((total + kThreads - 1) / kThreads);
  auto s = static_cast<cudaStream_t>(stream);
  if (p.dtype == DType::kFloat32) conv_forward_kernel<float><<<blocks, kThreads, 0, s>>>(p);
  else conv_forward_kernel<__nv_bfloat16><<<blocks, kThreads, 0, s>>>(p);
  return static_cast<int>(cudaGetLastError());
}

int conv_backward(const ConvGradParams& g, void* stream) {
  const ConvParams& p = g.fwd;
  auto s = static_cast<cudaStream_t>(stream);
  cudaMemsetAsync(g.dw, 0, sizeof(float) * p.dim * p.width, s);
  if (g.dbias) cudaMemsetAsync(g.dbias, 0, sizeof(float) * p.dim, s);
  const int64_t total = p.batch * p.dim * p.len;
  const unsigned blocks = static_cast<unsigned>((total + kThreads - 1) / kThreads);
  if (p.dtype == DType::kFloat32) conv_backward_kernel<float><<<blocks, kThreads, 0, s>>>(g);
  else conv_backward_kernel<__nv_bfloat16><<<blocks, kThreads, 0, s>>>(g);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace pmamba::kernels::cuda
