#include "kernels/cpu/scan_fast.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/vmath.h"


namespace pmamba::kernels::cpu {

namespace {

constexpr int G = kLanes;

// Fixed-order sum of the 16 lanes (pairwise), used for reductions over channels.
template <typename T>
inline T lane_sum(const T* v) {
  T a[8];
  for (int i = 0; i < 8; ++i) a[i] = v[i] + v[i + 8];
  for (int i = 0; i < 4; ++i) a[i] = a[i] + a[i + 4];
  return (a[0] + a[2]) + (a[1] + a[3]);
}

// Gathers rows d0..d0+nd of a (D, L) plane into a (T, G) tile starting at t0; missing lanes are 0.
template <typename T>
inline void load_tile(const T* plane, int64_t L, int64_t d0, int64_t nd, int64_t t0, int64_t tl, T* tile) {
  for (int64_t lane = 0; lane < G; ++lane) {
    if (lane < nd) {
      const T* src = plane + (d0 + lane) * L + t0;
      for (int64_t tt = 0; tt < tl; ++tt) tile[tt * G + lane] = src[tt];
    } else {
      for (int64_t tt = 0; tt < tl; ++tt) tile[tt * G + lane] = T(0);
    }
  }
}

template <typename T>
inline void store_tile(T* plane, int64_t L, int64_t d0, int64_t nd, int64_t t0, int64_t tl, const T* tile) {
  for (int64_t lane = 0; lane < nd; ++lane) {
    T* dst = plane + (d0 + lane) * L + t0;
    for (int64_t tt = 0; tt < tl; ++tt) dst[tt] = tile[tt * G + lane];
  }
}

template <typename T>
PMAMBA_CLONES void forward_group(const ScanForward<T>& a, int64_t b, int64_t g) {
  const ScanShape& s = a.s;
  const int64_t L = s.len, N = s.dstate, D = s.dim;
  const int64_t d0 = g * G, nd = std::min<int64_t>(G, D - d0);
  thread_local std::vector<T> buf;
  buf.resize(static_cast<size_t>(2 * N * G + 5 * kChunk * G));
  T* __restrict h = buf.data();  // (N, G)
  T* __restrict Al = h + N * G;  // (N, G)
  T* ut = Al + N * G;       // (kChunk, G) tiles
  T* dtt = ut + kChunk * G;
  T* zt = dtt + kChunk * G;
  T* yt = zt + kChunk * G;
  T* dlt = yt + kChunk * G;
  std::fill(h, h + N * G, T(0));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t lane = 0; lane < G; ++lane) Al[n * G + lane] = lane < nd ? a.A[(d0 + lane) * N + n] : T(0);
  T Dv[G], bv[G];
  for (int64_t lane = 0; lane < G; ++lane) {
    Dv[lane] = (a.Dskip && lane < nd) ? a.Dskip[d0 + lane] : T(0);
    bv[lane] = (a.bias && lane < nd) ? a.bias[d0 + lane] : T(0);
  }
  const T* u_plane = a.u + b * D * L;
  const T* d_plane = a.delta + b * D * L;
  const T* z_plane = a.z ? a.z + b * D * L : nullptr;
  T* out_plane = a.out + b * D * L;
  for (int64_t t0 = 0; t0 < L; t0 += kChunk) {
    const int64_t tl = std::min<int64_t>(kChunk, L - t0);
    if (a.ckpt) {  // state at the start of this chunk
      T* c = a.ckpt + (((b * s.groups() + g) * s.chunks() + t0 / kChunk) * N) * G;
      std::memcpy(c, h, sizeof(T) * static_cast<size_t>(N * G));
    }
    load_tile(u_plane, L, d0, nd, t0, tl, ut);
    load_tile(d_plane, L, d0, nd, t0, tl, dlt);
    if (z_plane) load_tile(z_plane, L, d0, nd, t0, tl, zt);
    for (int64_t tt = 0; tt < tl; ++tt)
      for (int lane = 0; lane < G; ++lane) dtt[tt * G + lane] = dlt[tt * G + lane] + bv[lane];
    if (a.softplus) {
      for (int64_t i = 0; i < tl * G; ++i) dtt[i] = softplus(dtt[i]);
    }
    for (int64_t tt = 0; tt < tl; ++tt) {
      const int64_t t = t0 + tt;
      const T* Bp = a.Bt + (b * L + t) * N;
      const T* Cp = a.Ct + (b * L + t) * N;
      const T* dt = dtt + tt * G;
      const T* u = ut + tt * G;
      alignas(64) T dtu[G];
      alignas(64) T y[G];
      for (int lane = 0; lane < G; ++lane) {
        dtu[lane] = dt[lane] * u[lane];
        y[lane] = T(0);
      }
      for (int64_t n = 0; n < N; ++n) {
        const T bn = Bp[n], cn = Cp[n];
        T* __restrict hn = h + n * G;
        const T* __restrict An = Al + n * G;
        for (int lane = 0; lane < G; ++lane) {
          const T da = fast_exp_nonpos(dt[lane] * An[lane]);
          hn[lane] = fma_(da, hn[lane], dtu[lane] * bn);
          y[lane] = fma_(cn, hn[lane], y[lane]);
        }
      }
      T* __restrict yo = yt + tt * G;
      for (int lane = 0; lane < G; ++lane) yo[lane] = fma_(Dv[lane], u[lane], y[lane]);
    }
    if (z_plane) {
      for (int64_t i = 0; i < tl * G; ++i) yt[i] *= silu(zt[i]);
    }
    store_tile(out_plane, L, d0, nd, t0, tl, yt);
  }
  if (a.last_state) {
    for (int64_t lane = 0; lane < nd; ++lane)
      for (int64_t n = 0; n < N; ++n) a.last_state[(b * D + d0 + lane) * N + n] = h[n * G + lane];
  }
}

template <typename T>
PMAMBA_CLONES void backward_group(const ScanBackward<T>& a, int64_t b, int64_t g, T* dB_part, T* dC_part, T* dA_part,
                    T* dD_part, T* dbias_part) {
  const ScanShape& s = a.s;
  const int64_t L = s.len, N = s.dstate, D = s.dim;
  const int64_t d0 = g * G, nd = std::min<int64_t>(G, D - d0);
  thread_local std::vector<T> buf;
  buf.resize(static_cast<size_t>(5 * N * G + kChunk * N * G + 11 * kChunk * G));
  T* __restrict gh = buf.data();  // (N, G) dL/dh carried backwards in time
  T* Al = gh + N * G;         // (N, G)
  T* dAl = Al + N * G;        // (N, G)
  T* hprev0 = dAl + N * G;    // (N, G) state before the chunk
  T* tmp = hprev0 + N * G;    // (N, G)
  T* hs = tmp + N * G;        // (kChunk, N, G) states after each step of the chunk
  T* ut = hs + kChunk * N * G;
  T* dlt = ut + kChunk * G;
  T* dtt = dlt + kChunk * G;
  T* zt = dtt + kChunk * G;
  T* dot = zt + kChunk * G;
  T* dut = dot + kChunk * G;
  T* ddt_t = dut + kChunk * G;
  T* dzt = ddt_t + kChunk * G;
  T* sgt = dzt + kChunk * G;  // softplus derivative
  std::fill(gh, gh + N * G, T(0));
  std::fill(dAl, dAl + N * G, T(0));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t lane = 0; lane < G; ++lane) Al[n * G + lane] = lane < nd ? a.A[(d0 + lane) * N + n] : T(0);
  T Dv[G], bv[G], dDacc[G], dbacc[G];
  for (int64_t lane = 0; lane < G; ++lane) {
    Dv[lane] = (a.Dskip && lane < nd) ? a.Dskip[d0 + lane] : T(0);
    bv[lane] = (a.bias && lane < nd) ? a.bias[d0 + lane] : T(0);
    dDacc[lane] = T(0);
    dbacc[lane] = T(0);
  }
  const int64_t off = b * D * L;
  for (int64_t c = s.chunks() - 1; c >= 0; --c) {
    const int64_t t0 = c * kChunk, tl = std::min<int64_t>(kChunk, L - t0);
    load_tile(a.u + off, L, d0, nd, t0, tl, ut);
    load_tile(a.delta + off, L, d0, nd, t0, tl, dlt);
    load_tile(a.dout + off, L, d0, nd, t0, tl, dot);
    if (a.z) load_tile(a.z + off, L, d0, nd, t0, tl, zt);
    for (int64_t tt = 0; tt < tl; ++tt)
      for (int lane = 0; lane < G; ++lane) dtt[tt * G + lane] = dlt[tt * G + lane] + bv[lane];
    if (a.softplus) {
      for (int64_t i = 0; i < tl * G; ++i) {
        sgt[i] = sigmoid(dtt[i]);
        dtt[i] = softplus(dtt[i]);
      }
    } else {
      for (int64_t i = 0; i < tl * G; ++i) sgt[i] = T(1);
    }
    // Recompute the chunk's states from its checkpoint, exactly as the forward did.
    const T* ck = a.ckpt + (((b * s.groups() + g) * s.chunks() + c) * N) * G;
    std::memcpy(hprev0, ck, sizeof(T) * static_cast<size_t>(N * G));
    std::memcpy(tmp, ck, sizeof(T) * static_cast<size_t>(N * G));
    for (int64_t tt = 0; tt < tl; ++tt) {
      const T* Bp = a.Bt + (b * L + t0 + tt) * N;
      const T* dt = dtt + tt * G;
      T dtu[G];
      for (int lane = 0; lane < G; ++lane) dtu[lane] = dt[lane] * ut[tt * G + lane];
      for (int64_t n = 0; n < N; ++n) {
        T* hn = tmp + n * G;
        T* out = hs + (tt * N + n) * G;
        for (int lane = 0; lane < G; ++lane) {
          const T da = fast_exp_nonpos(dt[lane] * Al[n * G + lane]);
          hn[lane] = fma_(da, hn[lane], dtu[lane] * Bp[n]);
          out[lane] = hn[lane];
        }
      }
    }
    for (int64_t tt = tl - 1; tt >= 0; --tt) {
      const int64_t t = t0 + tt;
      const T* Bp = a.Bt + (b * L + t) * N;
      const T* Cp = a.Ct + (b * L + t) * N;
      const T* dt = dtt + tt * G;
      const T* u = ut + tt * G;
      const T* ht = hs + tt * N * G;
      const T* hp = tt > 0 ? hs + (tt - 1) * N * G : hprev0;
      T y[G], dy[G], du[G], ddt[G], dtu[G];
      for (int lane = 0; lane < G; ++lane) y[lane] = T(0);
      for (int64_t n = 0; n < N; ++n)
        for (int lane = 0; lane < G; ++lane) y[lane] = fma_(Cp[n], ht[n * G + lane], y[lane]);
      for (int lane = 0; lane < G; ++lane) {
        const T full = fma_(Dv[lane], u[lane], y[lane]);
        const T gout = dot[tt * G + lane];
        if (a.z) {
          const T zz = zt[tt * G + lane];
          dy[lane] = gout * silu(zz);
          dzt[tt * G + lane] = gout * full * silu_grad(zz);
        } else {
          dy[lane] = gout;
        }
        dDacc[lane] = fma_(dy[lane], u[lane], dDacc[lane]);
        du[lane] = dy[lane] * Dv[lane];
        ddt[lane] = T(0);
        dtu[lane] = dt[lane] * u[lane];
      }
      T* dBrow = dB_part + t * N;
      T* dCrow = dC_part + t * N;
      for (int64_t n = 0; n < N; ++n) {
        const T bn = Bp[n], cn = Cp[n];
        T* g_n = gh + n * G;
        const T* An = Al + n * G;
        const T* htn = ht + n * G;
        const T* hpn = hp + n * G;
        T vb[G], vc[G];
        for (int lane = 0; lane < G; ++lane) {
          g_n[lane] = fma_(dy[lane], cn, g_n[lane]);  // dL/dh_t
          const T da = fast_exp_nonpos(dt[lane] * An[lane]);
          vc[lane] = dy[lane] * htn[lane];
          vb[lane] = g_n[lane] * dtu[lane];
          du[lane] = fma_(g_n[lane] * dt[lane], bn, du[lane]);
          const T dah = da * hpn[lane];
          ddt[lane] = fma_(g_n[lane], fma_(An[lane], dah, bn * u[lane]), ddt[lane]);
          dAl[n * G + lane] = fma_(g_n[lane] * dt[lane], dah, dAl[n * G + lane]);
          g_n[lane] = da * g_n[lane];  // carried to step t - 1
        }
        dBrow[n] = lane_sum(vb);
        dCrow[n] = lane_sum(vc);
      }
      for (int lane = 0; lane < G; ++lane) {
        dut[tt * G + lane] = du[lane];
        const T dd = ddt[lane] * sgt[tt * G + lane];
        ddt_t[tt * G + lane] = dd;
        dbacc[lane] += dd;
      }
    }
    store_tile(a.du + off, L, d0, nd, t0, tl, dut);
    store_tile(a.ddelta + off, L, d0, nd, t0, tl, ddt_t);
    if (a.z) store_tile(a.dz + off, L, d0, nd, t0, tl, dzt);
  }
  for (int64_t lane = 0; lane < nd; ++lane) {
    for (int64_t n = 0; n < N; ++n) dA_part[(d0 + lane) * N + n] = dAl[n * G + lane];
    dD_part[d0 + lane] = dDacc[lane];
    dbias_part[d0 + lane] = dbacc[lane];
  }
}

template <typename T>
PMAMBA_CLONES void step_channel(int64_t N, T* state, T u, T dt, const T* A, const T* Bv, const T* Cv,
                  T Dv, bool has_z, T z, T* out) {
  const T dtu = dt * u;
  T y = T(0);
  for (int64_t n = 0; n < N; ++n) {
    const T da = fast_exp_nonpos(dt * A[n]);
    state[n] = fma_(da, state[n], dtu * Bv[n]);
    y = fma_(Cv[n], state[n], y);
  }
  T v = fma_(Dv, u, y);
  if (has_z) v *= silu(z);
  *out = v;
}

}  // namespace

template <typename T>
void scan_forward(const ScanForward<T>& a) {
  const int64_t tasks = a.s.batch * a.s.groups();
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) forward_group(a, k / a.s.groups(), k % a.s.groups());
  });
}

template <typename T>
void scan_backward(const ScanBackward<T>& a) {
  const ScanShape& s = a.s;
  const int64_t Gs = s.groups(), B = s.batch, D = s.dim, L = s.len, N = s.dstate;
  // Per-(batch, group) partial sums, reduced below in a fixed order.
  std::vector<T> dB_part(static_cast<size_t>(B * Gs * L * N)), dC_part(dB_part.size());
  std::vector<T> dA_part(static_cast<size_t>(B * D * N)), dD_part(static_cast<size_t>(B * D)),
      dbias_part(static_cast<size_t>(B * D));
  at::parallel_for(0, B * Gs, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t b = k / Gs, g = k % Gs;
      backward_group(a, b, g, dB_part.data() + (b * Gs + g) * L * N, dC_part.data() + (b * Gs + g) * L * N,
                     dA_part.data() + b * D * N, dD_part.data() + b * D, dbias_part.data() + b * D);
    }
  });
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      T* dB = a.dBt + b * L * N;
      T* dC = a.dCt + b * L * N;
      std::fill(dB, dB + L * N, T(0));
      std::fill(dC, dC + L * N, T(0));
      for (int64_t g = 0; g < Gs; ++g) {
        const T* pb = dB_part.data() + (b * Gs + g) * L * N;
        const T* pc = dC_part.data() + (b * Gs + g) * L * N;
        for (int64_t i = 0; i < L * N; ++i) {
          dB[i] += pb[i];
          dC[i] += pc[i];
        }
      }
    }
  });
  for (int64_t i = 0; i < D * N; ++i) {
    T v = T(0);
    for (int64_t b = 0; b < B; ++b) v += dA_part[b * D * N + i];
    a.dA[i] = v;
  }
  for (int64_t d = 0; d < D; ++d) {
    T vd = T(0), vb = T(0);
    for (int64_t b = 0; b < B; ++b) {
      vd += dD_part[b * D + d];
      vb += dbias_part[b * D + d];
    }
    if (a.dD) a.dD[d] = vd;
    if (a.dbias) a.dbias[d] = vb;
  }
}

template <typename T>
void scan_step(int64_t batch, int64_t dim, int64_t N, T* state, const T* u, const T* delta,
               const T* A, const T* Bv, const T* Cv, const T* Dskip, const T* z,
               const T* bias, bool softplus_on, T* out) {
  at::parallel_for(0, batch * dim, 64, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t b = k / dim, d = k % dim;
      const T x = delta[k] + (bias ? bias[d] : T(0));
      const T dt = softplus_on ? softplus(x) : x;
      step_channel(N, state + k * N, u[k], dt, A + d * N, Bv + b * N, Cv + b * N, Dskip ? Dskip[d] : T(0),
                   z != nullptr, z ? z[k] : T(0), out + k);
    }
  });
}

template void scan_forward<float>(const ScanForward<float>&);
template void scan_forward<double>(const ScanForward<double>&);
template void scan_backward<float>(const ScanBackward<float>&);
template void scan_backward<double>(const ScanBackward<double>&);
template void scan_step<float>(int64_t, int64_t, int64_t, float*, const float*, const float*, const float*,
                               const float*, const float*, const float*, const float*, const float*, bool, float*);
template void scan_step<double>(int64_t, int64_t, int64_t, double*, const double*, const double*, const double*,
                                const double*, const double*, const double*, const double*, const double*, bool,
                                double*);

}  // namespace pmamba::kernels::cpu
