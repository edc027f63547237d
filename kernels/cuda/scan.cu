// CUDA selective scan: one thread per (batch, channel) runs the recurrence over the sequence with
// the state in registers (d_state <= kMaxState), reading the time step's B and C rows, which the
// threads of a block share through the cache. The forward saves the state every kChunk steps;
// the backward recomputes one chunk's states from its checkpoint into local memory and runs the
// reverse scan, reducing dB/dC over the channels of a warp before one atomic per warp.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/launch.h"

namespace pmamba::kernels::cuda {

namespace {

constexpr int kMaxState = 64;
constexpr int kThreads = 128;


__device__ __forceinline__ float softplus(float x) { return x > 20.f ? x : log1pf(expf(x)); }

template <typename T>
__global__ void scan_forward_kernel(ScanParams p) {
  const int64_t d = blockIdx.x * blockDim.x + threadIdx.x, b = blockIdx.y;
  if (d >= p.dim) return;
  const int64_t N = p.dstate, L = p.len, chunks = (L + kChunk - 1) / kChunk;
  const T* u = static_cast<const T*>(p.u) + (b * p.dim + d) * L;
  const T* delta = static_cast<const T*>(p.delta) + (b * p.dim + d) * L;
  const T* z = p.z ? static_cast<const T*>(p.z) + (b * p.dim + d) * L : nullptr;
  const T* Bt = static_cast<const T*>(p.Bt) + b * L * N;
  const T* Ct = static_cast<const T*>(p.Ct) + b * L * N;
  T* out = static_cast<T*>(p.out) + (b * p.dim + d) * L;
  float h[kMaxState], A[kMaxState];
  for (int n = 0; n < N; ++n) {
    h[n] = 0.f;
    A[n] = p.A[d * N + n];
  }
  const float Dv = p.Dskip ? p.Dskip[d] : 0.f, bias = p.bias ? p.bias[d] : 0.f;
  for (int64_t t = 0; t < L; ++t) {
    if (p.ckpt && t % kChunk == 0) {
      float* c = p.ckpt + ((b * p.dim + d) * chunks + t / kChunk) * N;
      for (int n = 0; n < N; ++n) c[n] = h[n];
    }
    float dt = load(delta, t) + bias;
    if (p.softplus) dt = softplus(dt);
    const float x = load(u, t), dtu = dt * x;
    float y = 0.f;
    for (int n = 0; n < N; ++n) {
      h[n] = fmaf(__expf(dt * A[n]), h[n], dtu * load(Bt, t * N + n));
      y = fmaf(load(Ct, t * N + n), h[n], y);
    }
    y = fmaf(Dv, x, y);
    if (z) {
      const float zz = load(z, t);
      y *= zz * sigmoid(zz);
    }
    store(out, t, y);
  }
  if (p.last_state) {
    for (int n = 0; n < N; ++n) p.last_state[(b * p.dim + d) * N + n] = h[n];
  }
}

template <typename T>
__global__ void scan_backward_kernel(ScanGradParams g) {
  const ScanParams& p = g.fwd;
  const int64_t d_raw = blockIdx.x * blockDim.x + threadIdx.x, b = blockIdx.y;
  const bool active = d_raw < p.dim;
  const int64_t d = active ? d_raw : p.dim - 1;  // inactive lanes still join the warp reductions
  const int64_t N = p.dstate, L = p.len, chunks = (L + kChunk - 1) / kChunk;
  const int64_t off = (b * p.dim + d) * L;
  const T* u = static_cast<const T*>(p.u) + off;
  const T* delta = static_cast<const T*>(p.delta) + off;
  const T* z = p.z ? static_cast<const T*>(p.z) + off : nullptr;
  const T* dout = static_cast<const T*>(g.dout) + off;
  const T* Bt = static_cast<const T*>(p.Bt) + b * L * N;
  const T* Ct = static_cast<const T*>(p.Ct) + b * L * N;
  float A[kMaxState], gh[kMaxState], dA[kMaxState], hs[kChunk + 1][kMaxState];
  for (int n = 0; n < N; ++n) {
    A[n] = p.A[d * N + n];
    gh[n] = 0.f;
    dA[n] = 0.f;
  }
  const float Dv = p.Dskip ? p.Dskip[d] : 0.f, bias = p.bias ? p.bias[d] : 0.f;
  float dD = 0.f, dbias = 0.f;
  const float on = active ? 1.f : 0.f;
  for (int64_t c = chunks - 1; c >= 0; --c) {
    const int64_t t0 = c * kChunk, tl = L - t0 < kChunk ? L - t0 : kChunk;
    const float* ck = p.ckpt + ((b * p.dim + d) * chunks + c) * N;
    for (int n = 0; n < N; ++n) hs[0][n] = ck[n];
    for (int64_t tt = 0; tt < tl; ++tt) {
      const int64_t t = t0 + tt;
      float dt = load(delta, t) + bias;
      if (p.softplus) dt = softplus(dt);
      const float dtu = dt * load(u, t);
      for (int n = 0; n < N; ++n) hs[tt + 1][n] = fmaf(__expf(dt * A[n]), hs[tt][n], dtu * load(Bt, t * N + n));
    }
    for (int64_t tt = tl - 1; tt >= 0; --tt) {
      const int64_t t = t0 + tt;
      const float raw = load(delta, t) + bias;
      const float dt = p.softplus ? softplus(raw) : raw;
      const float x = load(u, t), go = on * load(dout, t);
      float y = 0.f;
      for (int n = 0; n < N; ++n) y = fmaf(load(Ct, t * N + n), hs[tt + 1][n], y);
      const float full = fmaf(Dv, x, y);
      float dy = go;
      if (z) {
        const float zz = load(z, t), s = sigmoid(zz);
        dy = go * zz * s;
        if (active) store(static_cast<T*>(g.dz) + off, t, go * full * s * (1.f + zz * (1.f - s)));
      }
      dD += dy * x;
      float du = dy * Dv, ddt = 0.f;
      for (int n = 0; n < N; ++n) {
        const float bn = load(Bt, t * N + n), cn = load(Ct, t * N + n);
        gh[n] = fmaf(dy, cn, gh[n]);
        const float da = __expf(dt * A[n]), dah = da * hs[tt][n];
        const float vb = warp_sum(gh[n] * dt * x), vc = warp_sum(dy * hs[tt + 1][n]);
        if ((threadIdx.x & 31) == 0) {
          atomicAdd(g.dBt + (b * L + t) * N + n, vb);
          atomicAdd(g.dCt + (b * L + t) * N + n, vc);
        }
        du = fmaf(gh[n] * dt, bn, du);
        ddt = fmaf(gh[n], fmaf(A[n], dah, bn * x), ddt);
        dA[n] = fmaf(gh[n] * dt, dah, dA[n]);
        gh[n] *= da;
      }
      const float dd = ddt * (p.softplus ? sigmoid(raw) : 1.f);
      dbias += dd;
      if (active) {
        store(static_cast<T*>(g.du) + off, t, du);
        store(static_cast<T*>(g.ddelta) + off, t, dd);
      }
    }
  }
  if (active) {
    for (int n = 0; n < N; ++n) atomicAdd(g.dA + d * N + n, dA[n]);
    if (g.dD) atomicAdd(g.dD + d, dD);
    if (g.dbias) atomicAdd(g.dbias + d, dbias);
  }
}

int check_state(int64_t n) { return n > kMaxState ? static_cast<int>(cudaErrorInvalidValue) : 0; }

}  // namespace

int scan_forward(const ScanParams& p, void* stream) {
  if (int e = check_state(p.dstate)) return e;
  const dim3 grid(static_cast<unsigned>((p.dim + kThreads - 1) / kThreads), static_cast<unsigned>(p.batch));
  auto s = static_cast<cudaStream_t>(stream);
  if (p.dtype == DType::kFloat32) scan_forward_kernel<float><<<grid, kThreads, 0, s>>>(p);
  else scan_forward_kernel<__nv_bfloat16><<<grid, kThreads, 0, s>>>(p);
  return static_cast<int>(cudaGetLastError());
}

int scan_backward(const ScanGradParams& g, void* stream) {
  const ScanParams& p = g.fwd;
  if (int e = check_state(p.dstate)) return e;
  auto s = static_cast<cudaStream_t>(stream);
  cudaMemsetAsync(g.dA, 0, sizeof(float) * p.dim * p.dstate, s);
  cudaMemsetAsync(g.dBt, 0, sizeof(float) * p.batch * p.len * p.dstate, s);
  cudaMemsetAsync(g.dCt, 0, sizeof(float) * p.batch * p.len * p.dstate, s);
  if (g.dD) cudaMemsetAsync(g.dD, 0, sizeof(float) * p.dim, s);
  if (g.dbias) cudaMemsetAsync(g.dbias, 0, sizeof(float) * p.dim, s);
  const dim3 grid(static_cast<unsigned>((p.dim + kThreads - 1) / kThreads), static_cast<unsigned>(p.batch));
  if (p.dtype == DType::kFloat32) scan_backward_kernel<float><<<grid, kThreads, 0, s>>>(g);
  else scan_backward_kernel<__nv_bfloat16><<<grid, kThreads, 0, s>>>(g);
  return static_cast<int>(cudaGetLastError());
}

const char* error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // namespace pmamba::kernels::cuda
