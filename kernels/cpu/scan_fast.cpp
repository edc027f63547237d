#include "kernels/cpu/scan_fast.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/vmath.h"

#define PMAMBA_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

namespace pmamba::kernels::cpu {

namespace {

constexpr int G = kLanes;

// Fixed-order sum of the 16 lanes (pairwise), used for reductions over channels.
inline float lane_sum(const float* v) {
  float a[8];
  for (int i = 0; i < 8; ++i) a[i] = v[i] + v[i + 8];
  for (int i = 0; i < 4; ++i) a[i] = a[i] + a[i + 4];
  return (a[0] + a[2]) + (a[1] + a[3]);
}

// Gathers rows d0..d0+nd of a (D, L) plane into a (T, G) tile starting at t0; missing lanes are 0.
inline void load_tile(const float* plane, int64_t L, int64_t d0, int64_t nd, int64_t t0, int64_t tl, float* tile) {
  for (int64_t lane = 0; lane < G; ++lane) {
    if (lane < nd) {
      const float* src = plane + (d0 + lane) * L + t0;
      for (int64_t tt = 0; tt < tl; ++tt) tile[tt * G + lane] = src[tt];
    } else {
      for (int64_t tt = 0; tt < tl; ++tt) tile[tt * G + lane] = 0.0f;
    }
  }
}

inline void store_tile(float* plane, int64_t L, int64_t d0, int64_t nd, int64_t t0, int64_t tl, const float* tile) {
  for (int64_t lane = 0; lane < nd; ++lane) {
    float* dst = plane + (d0 + lane) * L + t0;
    for (int64_t tt = 0; tt < tl; ++tt) dst[tt] = tile[tt * G + lane];
  }
}

struct Lanes {
  float v[G];
};

PMAMBA_CLONES
void forward_group(const ScanForward& a, int64_t b, int64_t g) {
  const ScanShape& s = a.s;
  const int64_t L = s.len, N = s.dstate, D = s.dim;
  const int64_t d0 = g * G, nd = std::min<int64_t>(G, D - d0);
  thread_local std::vector<float> buf;
  buf.resize(static_cast<size_t>(2 * N * G + 5 * kChunk * G));
  float* h = buf.data();        // (N, G)
  float* Al = h + N * G;        // (N, G)
  float* ut = Al + N * G;       // (kChunk, G) tiles
  float* dtt = ut + kChunk * G;
  float* zt = dtt + kChunk * G;
  float* yt = zt + kChunk * G;
  float* dlt = yt + kChunk * G;
  std::fill(h, h + N * G, 0.0f);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t lane = 0; lane < G; ++lane) Al[n * G + lane] = lane < nd ? a.A[(d0 + lane) * N + n] : 0.0f;
  float Dv[G], bv[G];
  for (int64_t lane = 0; lane < G; ++lane) {
    Dv[lane] = (a.Dskip && lane < nd) ? a.Dskip[d0 + lane] : 0.0f;
    bv[lane] = (a.bias && lane < nd) ? a.bias[d0 + lane] : 0.0f;
  }
  const float* u_plane = a.u + b * D * L;
  const float* d_plane = a.delta + b * D * L;
  const float* z_plane = a.z ? a.z + b * D * L : nullptr;
  float* out_plane = a.out + b * D * L;
  for (int64_t t0 = 0; t0 < L; t0 += kChunk) {
    const int64_t tl = std::min<int64_t>(kChunk, L - t0);
    if (a.ckpt) {  // state at the start of this chunk
      float* c = a.ckpt + (((b * s.groups() + g) * s.chunks() + t0 / kChunk) * N) * G;
      std::memcpy(c, h, sizeof(float) * static_cast<size_t>(N * G));
    }
    load_tile(u_plane, L, d0, nd, t0, tl, ut);
    load_tile(d_plane, L, d0, nd, t0, tl, dlt);
    if (z_plane) load_tile(z_plane, L, d0, nd, t0, tl, zt);
    for (int64_t i = 0; i < tl * G; ++i) {
      const float x = dlt[i] + bv[i % G];
      dtt[i] = a.softplus ? softplus(x) : x;
    }
    for (int64_t tt = 0; tt < tl; ++tt) {
      const int64_t t = t0 + tt;
      const float* Bp = a.Bt + (b * L + t) * N;
      const float* Cp = a.Ct + (b * L + t) * N;
      const float* dt = dtt + tt * G;
      const float* u = ut + tt * G;
      float dtu[G], y[G];
      for (int lane = 0; lane < G; ++lane) {
        dtu[lane] = dt[lane] * u[lane];
        y[lane] = 0.0f;
      }
      for (int64_t n = 0; n < N; ++n) {
        const float bn = Bp[n], cn = Cp[n];
        float* hn = h + n * G;
        const float* An = Al + n * G;
        for (int lane = 0; lane < G; ++lane) {
          const float da = fast_exp(dt[lane] * An[lane]);
          hn[lane] = fmaf_(da, hn[lane], dtu[lane] * bn);
          y[lane] = fmaf_(cn, hn[lane], y[lane]);
        }
      }
      float* yo = yt + tt * G;
      for (int lane = 0; lane < G; ++lane) {
        float v = fmaf_(Dv[lane], u[lane], y[lane]);
        if (z_plane) v *= silu(zt[tt * G + lane]);
        yo[lane] = v;
      }
    }
    store_tile(out_plane, L, d0, nd, t0, tl, yt);
  }
  if (a.last_state) {
    for (int64_t lane = 0; lane < nd; ++lane)
      for (int64_t n = 0; n < N; ++n) a.last_state[(b * D + d0 + lane) * N + n] = h[n * G + lane];
  }
}

PMAMBA_CLONES
void backward_group(const ScanBackward& a, int64_t b, int64_t g, float* dB_part, float* dC_part, float* dA_part,
                    float* dD_part, float* dbias_part) {
  const ScanShape& s = a.s;
  const int64_t L = s.len, N = s.dstate, D = s.dim;
  const int64_t d0 = g * G, nd = std::min<int64_t>(G, D - d0);
  thread_local std::vector<float> buf;
  buf.resize(static_cast<size_t>(5 * N * G + kChunk * N * G + 11 * kChunk * G));
  float* gh = buf.data();         // (N, G) dL/dh carried backwards in time
  float* Al = gh + N * G;         // (N, G)
  float* dAl = Al + N * G;        // (N, G)
  float* hprev0 = dAl + N * G;    // (N, G) state before the chunk
  float* tmp = hprev0 + N * G;    // (N, G)
  float* hs = tmp + N * G;        // (kChunk, N, G) states after each step of the chunk
  float* ut = hs + kChunk * N * G;
  float* dlt = ut + kChunk * G;
  float* dtt = dlt + kChunk * G;
  float* zt = dtt + kChunk * G;
  float* dot = zt + kChunk * G;
  float* dut = dot + kChunk * G;
  float* ddt_t = dut + kChunk * G;
  float* dzt = ddt_t + kChunk * G;
  float* sgt = dzt + kChunk * G;  // softplus derivative
  std::fill(gh, gh + N * G, 0.0f);
  std::fill(dAl, dAl + N * G, 0.0f);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t lane = 0; lane < G; ++lane) Al[n * G + lane] = lane < nd ? a.A[(d0 + lane) * N + n] : 0.0f;
  float Dv[G], bv[G], dDacc[G], dbacc[G];
  for (int64_t lane = 0; lane < G; ++lane) {
    Dv[lane] = (a.Dskip && lane < nd) ? a.Dskip[d0 + lane] : 0.0f;
    bv[lane] = (a.bias && lane < nd) ? a.bias[d0 + lane] : 0.0f;
    dDacc[lane] = 0.0f;
    dbacc[lane] = 0.0f;
  }
  const int64_t off = b * D * L;
  for (int64_t c = s.chunks() - 1; c >= 0; --c) {
    const int64_t t0 = c * kChunk, tl = std::min<int64_t>(kChunk, L - t0);
    load_tile(a.u + off, L, d0, nd, t0, tl, ut);
    load_tile(a.delta + off, L, d0, nd, t0, tl, dlt);
    load_tile(a.dout + off, L, d0, nd, t0, tl, dot);
    if (a.z) load_tile(a.z + off, L, d0, nd, t0, tl, zt);
    for (int64_t i = 0; i < tl * G; ++i) {
      const float x = dlt[i] + bv[i % G];
      dtt[i] = a.softplus ? softplus(x) : x;
      sgt[i] = a.softplus ? sigmoid(x) : 1.0f;
    }
    // Recompute the chunk's states from its checkpoint, exactly as the forward did.
    const float* ck = a.ckpt + (((b * s.groups() + g) * s.chunks() + c) * N) * G;
    std::memcpy(hprev0, ck, sizeof(float) * static_cast<size_t>(N * G));
    std::memcpy(tmp, ck, sizeof(float) * static_cast<size_t>(N * G));
    for (int64_t tt = 0; tt < tl; ++tt) {
      const float* Bp = a.Bt + (b * L + t0 + tt) * N;
      const float* dt = dtt + tt * G;
      float dtu[G];
      for (int lane = 0; lane < G; ++lane) dtu[lane] = dt[lane] * ut[tt * G + lane];
      for (int64_t n = 0; n < N; ++n) {
        float* hn = tmp + n * G;
        float* out = hs + (tt * N + n) * G;
        for (int lane = 0; lane < G; ++lane) {
          const float da = fast_exp(dt[lane] * Al[n * G + lane]);
          hn[lane] = fmaf_(da, hn[lane], dtu[lane] * Bp[n]);
          out[lane] = hn[lane];
        }
      }
    }
    for (int64_t tt = tl - 1; tt >= 0; --tt) {
      const int64_t t = t0 + tt;
      const float* Bp = a.Bt + (b * L + t) * N;
      const float* Cp = a.Ct + (b * L + t) * N;
      const float* dt = dtt + tt * G;
      const float* u = ut + tt * G;
      const float* ht = hs + tt * N * G;
      const float* hp = tt > 0 ? hs + (tt - 1) * N * G : hprev0;
      float y[G], dy[G], du[G], ddt[G], dtu[G];
      for (int lane = 0; lane < G; ++lane) y[lane] = 0.0f;
      for (int64_t n = 0; n < N; ++n)
        for (int lane = 0; lane < G; ++lane) y[lane] = fmaf_(Cp[n], ht[n * G + lane], y[lane]);
      for (int lane = 0; lane < G; ++lane) {
        const float full = fmaf_(Dv[lane], u[lane], y[lane]);
        const float gout = dot[tt * G + lane];
        if (a.z) {
          const float zz = zt[tt * G + lane];
          dy[lane] = gout * silu(zz);
          dzt[tt * G + lane] = gout * full * silu_grad(zz);
        } else {
          dy[lane] = gout;
        }
        dDacc[lane] = fmaf_(dy[lane], u[lane], dDacc[lane]);
        du[lane] = dy[lane] * Dv[lane];
        ddt[lane] = 0.0f;
        dtu[lane] = dt[lane] * u[lane];
      }
      float* dBrow = dB_part + t * N;
      float* dCrow = dC_part + t * N;
      for (int64_t n = 0; n < N; ++n) {
        const float bn = Bp[n], cn = Cp[n];
        float* g_n = gh + n * G;
        const float* An = Al + n * G;
        const float* htn = ht + n * G;
        const float* hpn = hp + n * G;
        float vb[G], vc[G];
        for (int lane = 0; lane < G; ++lane) {
          g_n[lane] = fmaf_(dy[lane], cn, g_n[lane]);  // dL/dh_t
          const float da = fast_exp(dt[lane] * An[lane]);
          vc[lane] = dy[lane] * htn[lane];
          vb[lane] = g_n[lane] * dtu[lane];
          du[lane] = fmaf_(g_n[lane] * dt[lane], bn, du[lane]);
          const float dah = da * hpn[lane];
          ddt[lane] = fmaf_(g_n[lane], fmaf_(An[lane], dah, bn * u[lane]), ddt[lane]);
          dAl[n * G + lane] = fmaf_(g_n[lane] * dt[lane], dah, dAl[n * G + lane]);
          g_n[lane] = da * g_n[lane];  // carried to step t - 1
        }
        dBrow[n] = lane_sum(vb);
        dCrow[n] = lane_sum(vc);
      }
      for (int lane = 0; lane < G; ++lane) {
        dut[tt * G + lane] = du[lane];
        const float dd = ddt[lane] * sgt[tt * G + lane];
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

PMAMBA_CLONES
void step_channel(int64_t N, float* state, float u, float dt, const float* A, const float* Bv, const float* Cv,
                  float Dv, bool has_z, float z, float* out) {
  const float dtu = dt * u;
  float y = 0.0f;
  for (int64_t n = 0; n < N; ++n) {
    const float da = fast_exp(dt * A[n]);
    state[n] = fmaf_(da, state[n], dtu * Bv[n]);
    y = fmaf_(Cv[n], state[n], y);
  }
  float v = fmaf_(Dv, u, y);
  if (has_z) v *= silu(z);
  *out = v;
}

}  // namespace

void scan_forward(const ScanForward& a) {
  const int64_t tasks = a.s.batch * a.s.groups();
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) forward_group(a, k / a.s.groups(), k % a.s.groups());
  });
}

void scan_backward(const ScanBackward& a) {
  const ScanShape& s = a.s;
  const int64_t Gs = s.groups(), B = s.batch, D = s.dim, L = s.len, N = s.dstate;
  // Per-(batch, group) partial sums, reduced below in a fixed order.
  std::vector<float> dB_part(static_cast<size_t>(B * Gs * L * N)), dC_part(dB_part.size());
  std::vector<float> dA_part(static_cast<size_t>(B * D * N)), dD_part(static_cast<size_t>(B * D)),
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
      float* dB = a.dBt + b * L * N;
      float* dC = a.dCt + b * L * N;
      std::fill(dB, dB + L * N, 0.0f);
      std::fill(dC, dC + L * N, 0.0f);
      for (int64_t g = 0; g < Gs; ++g) {
        const float* pb = dB_part.data() + (b * Gs + g) * L * N;
        const float* pc = dC_part.data() + (b * Gs + g) * L * N;
        for (int64_t i = 0; i < L * N; ++i) {
          dB[i] += pb[i];
          dC[i] += pc[i];
        }
      }
    }
  });
  for (int64_t i = 0; i < D * N; ++i) {
    float v = 0.0f;
    for (int64_t b = 0; b < B; ++b) v += dA_part[b * D * N + i];
    a.dA[i] = v;
  }
  for (int64_t d = 0; d < D; ++d) {
    float vd = 0.0f, vb = 0.0f;
    for (int64_t b = 0; b < B; ++b) {
      vd += dD_part[b * D + d];
      vb += dbias_part[b * D + d];
    }
    if (a.dD) a.dD[d] = vd;
    if (a.dbias) a.dbias[d] = vb;
  }
}

void scan_step(int64_t batch, int64_t dim, int64_t N, float* state, const float* u, const float* delta,
               const float* A, const float* Bv, const float* Cv, const float* Dskip, const float* z,
               const float* bias, bool softplus_on, float* out) {
  at::parallel_for(0, batch * dim, 64, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t b = k / dim, d = k % dim;
      const float x = delta[k] + (bias ? bias[d] : 0.0f);
      const float dt = softplus_on ? softplus(x) : x;
      step_channel(N, state + k * N, u[k], dt, A + d * N, Bv + b * N, Cv + b * N, Dskip ? Dskip[d] : 0.0f,
                   z != nullptr, z ? z[k] : 0.0f, out + k);
    }
  });
}

}  // namespace pmamba::kernels::cpu
