#include "kernels/cpu/ssd_fast.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "kernels/cpu/vmath.h"

// The helpers of the hot loops are forced inline: a function called from a PMAMBA_CLONES
// function is compiled once, for the baseline ISA, unless it is inlined into each clone.
#define PMAMBA_SSD_INLINE inline __attribute__((always_inline))

namespace pmamba::kernels::cpu {

namespace {

constexpr int W = kSsdLanes;

// Fixed-order sum of 16 values, whatever the vector width: a[i] = v[i] + v[i + 8], then
// a[i] + a[i + 4], then (a0 + a2) + (a1 + a3). Written with GCC vector types so each step is one
// vector add of two halves; plain loops over the lanes are vectorised across calls into long
// shuffle sequences.
template <typename T>
PMAMBA_SSD_INLINE T lane_sum(const T* v) {
  typedef T v16 __attribute__((vector_size(16 * sizeof(T))));
  typedef T v8 __attribute__((vector_size(8 * sizeof(T))));
  typedef T v4 __attribute__((vector_size(4 * sizeof(T))));
  typedef T v2 __attribute__((vector_size(2 * sizeof(T))));
  v16 x;
  std::memcpy(&x, v, sizeof x);
  const v8 a = __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7) +
               __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15);
  const v4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  const v2 c = __builtin_shufflevector(b, b, 0, 1) + __builtin_shufflevector(b, b, 2, 3);
  return c[0] + c[1];
}

// sum_i u[i] v[i] in a fixed order whatever the ISA: 16 running lane sums over consecutive
// blocks of 16 (the tail zero-padded), then lane_sum. Short dependency chains, unlike a
// sequential sum.
template <typename T>
PMAMBA_SSD_INLINE T fixed_dot(const T* u, const T* v, int64_t n) {
  T acc[W];
  for (int j = 0; j < W; ++j) acc[j] = T(0);
  int64_t i = 0;
  for (; i + W <= n; i += W) {
#pragma GCC unroll 1  // (unrolled completely, GCC 12 leaves the 16 lanes scalar)
    for (int j = 0; j < W; ++j) acc[j] = fma_(u[i + j], v[i + j], acc[j]);
  }
  for (int j = 0; i + j < n; ++j) acc[j] = fma_(u[i + j], v[i + j], acc[j]);
  return lane_sum(acc);
}

// sum_i v[i] for n a multiple of 16, in the same blocked order.
template <typename T>
PMAMBA_SSD_INLINE T fixed_sum16(const T* v, int64_t n) {
  T acc[W];
  for (int j = 0; j < W; ++j) acc[j] = v[j];
  for (int64_t i = W; i < n; i += W)
    for (int j = 0; j < W; ++j) acc[j] += v[i + j];
  return lane_sum(acc);
}

// A thread's scratch memory, 64-byte aligned: the hot loops move whole 64-byte rows, and a row
// split across two cache lines costs two accesses.
template <typename T>
class Scratch {
 public:
  ~Scratch() { std::free(p_); }
  T* get(int64_t n) {
    if (n > cap_) {
      std::free(p_);
      const size_t bytes = (static_cast<size_t>(n) * sizeof(T) + 63) / 64 * 64;
      p_ = static_cast<T*>(std::aligned_alloc(64, bytes));
      if (!p_) throw std::bad_alloc();
      cap_ = n;
    }
    return p_;
  }

 private:
  T* p_ = nullptr;
  int64_t cap_ = 0;
};

// One head's row of x (or out) is P values H * P apart from the next token's: too far for the
// hardware prefetchers, so the kernels ask for rows a few tokens ahead themselves.
constexpr int64_t kPrefetchTokens = 8;
template <typename T>
PMAMBA_SSD_INLINE void prefetch_row(const T* row, int64_t len, bool for_write) {
  const char* p = reinterpret_cast<const char*>(row);
  for (int64_t off = 0; off < len * static_cast<int64_t>(sizeof(T)); off += 64) {
    if (for_write) {
      __builtin_prefetch(p + off, 1);
    } else {
      __builtin_prefetch(p + off, 0);
    }
  }
}

// D as one value per channel p of head h: 0 where D is absent and in the padding.
template <typename T>
void skip_per_channel(const T* D, bool per_channel, int64_t h, int64_t P, int64_t len, T* Dv) {
  for (int64_t p = 0; p < len; ++p) Dv[p] = (D && p < P) ? D[per_channel ? h * P + p : h] : T(0);
}

// N values copied into a row of Np, zero-padded.
template <typename T>
void padded_row(const T* src, int64_t N, int64_t Np, T* dst) {
  std::memcpy(dst, src, sizeof(T) * static_cast<size_t>(N));
  std::fill(dst + N, dst + Np, T(0));
}

// The forward's state is stored in tiles of up to kTile lanes (channels p); a tile of K lanes
// holds its (N, K) block contiguously, so the row stride is a compile-time constant.
constexpr int kTile = 4 * W;
inline int64_t tile_width(int64_t Pp, int64_t p0) { return std::min<int64_t>(kTile, Pp - p0); }
// Offset of element (n, p) in the tiled (N, Pp) state.
inline int64_t tiled(int64_t N, int64_t Pp, int64_t n, int64_t p) {
  const int64_t p0 = p / kTile * kTile;
  return N * p0 + n * tile_width(Pp, p0) + (p - p0);
}

// One token on one tile of NV * W lanes: S = dA S + u ⊗ B, y = S C with n in order. The NV
// y accumulators stay in registers and give NV independent dependency chains.
template <int NV, typename T>
PMAMBA_SSD_INLINE void forward_tile(T* __restrict S, int64_t N, T dA, const T* __restrict u, const T* __restrict Bv,
                                    const T* __restrict Cv, T* __restrict yout) {
  constexpr int K = NV * W;
  T uu[K], y[K];
  for (int j = 0; j < K; ++j) {
    uu[j] = u[j];
    y[j] = T(0);
  }
  for (int64_t n = 0; n < N; ++n) {
    const T bn = Bv[n], cn = Cv[n];
    T* __restrict Sn = S + n * K;
    if constexpr (NV == 1) {
      // Unrolled completely, GCC 12 leaves a 16-lane body scalar; as a loop it vectorises.
#pragma GCC unroll 1
      for (int j = 0; j < K; ++j) {
        const T st = fma_(dA, Sn[j], uu[j] * bn);
        Sn[j] = st;
        y[j] = fma_(cn, st, y[j]);
      }
    } else {
      for (int j = 0; j < K; ++j) {
        const T st = fma_(dA, Sn[j], uu[j] * bn);
        Sn[j] = st;
        y[j] = fma_(cn, st, y[j]);
      }
    }
  }
  for (int j = 0; j < K; ++j) yout[j] = y[j];
}

template <typename T>
PMAMBA_CLONES void forward_head(const SsdForward<T>& a, int64_t b, int64_t h) {
  const SsdShape& s = a.s;
  const int64_t L = s.len, H = s.heads, P = s.headdim, N = s.dstate, G = s.groups;
  const int64_t Pp = s.padded_headdim(), Np = s.padded_dstate(), g = h / s.heads_per_group();
  thread_local Scratch<T> buf;
  T* S = buf.get(N * Pp + 4 * Pp);  // (N, Pp) the state, transposed and tiled
  std::fill(S, S + N * Pp + 4 * Pp, T(0));
  T* xv = S + N * Pp;  // (Pp) this token's x, zero in the padding
  T* u = xv + Pp;      // (Pp) dt x
  T* y = u + Pp;       // (Pp)
  T* Dv = y + Pp;      // (Pp)
  skip_per_channel(a.D, a.d_per_channel, h, P, Pp, Dv);
  const T Ah = a.A[h];
  for (int64_t t = 0; t < L; ++t) {
    if (a.ckpt && t % kSsdChunk == 0) {  // the state entering this chunk, as (P, Np)
      T* ck = a.ckpt + ((b * H + h) * s.chunks() + t / kSsdChunk) * P * Np;
      for (int64_t p = 0; p < P; ++p)
        for (int64_t n = 0; n < Np; ++n) ck[p * Np + n] = n < N ? S[tiled(N, Pp, n, p)] : T(0);
    }
    const int64_t row = (b * L + t) * H + h;
    if (t + kPrefetchTokens < L) {
      prefetch_row(a.x + (row + kPrefetchTokens * H) * P, P, false);
      prefetch_row(a.out + (row + kPrefetchTokens * H) * P, P, true);
    }
    const T dtv = a.dt[row];
    const T dA = fast_exp_nonpos(dtv * Ah);
    std::memcpy(xv, a.x + row * P, sizeof(T) * static_cast<size_t>(P));
    for (int64_t p = 0; p < Pp; ++p) u[p] = dtv * xv[p];
    const T* Bv = a.B + ((b * L + t) * G + g) * N;
    const T* Cv = a.C + ((b * L + t) * G + g) * N;
    for (int64_t p0 = 0; p0 < Pp; p0 += kTile) {
      T* St = S + N * p0;
      switch (tile_width(Pp, p0) / W) {
        case 4: forward_tile<4>(St, N, dA, u + p0, Bv, Cv, y + p0); break;
        case 3: forward_tile<3>(St, N, dA, u + p0, Bv, Cv, y + p0); break;
        case 2: forward_tile<2>(St, N, dA, u + p0, Bv, Cv, y + p0); break;
        default: forward_tile<1>(St, N, dA, u + p0, Bv, Cv, y + p0); break;
      }
    }
    T* o = a.out + row * P;
    for (int64_t p = 0; p < P; ++p) o[p] = fma_(Dv[p], xv[p], y[p]);
  }
  if (a.last_state) {
    T* ls = a.last_state + (b * H + h) * P * N;
    for (int64_t p = 0; p < P; ++p)
      for (int64_t n = 0; n < N; ++n) ls[p * N + n] = S[tiled(N, Pp, n, p)];
  }
}

// One token on `rows` rows of a (rows, Np) state: out = dA in + (dt x_p) B, elementwise the
// forward's arithmetic, so the recomputed states equal the forward's bitwise. in may be out.
template <typename T>
PMAMBA_SSD_INLINE void advance_rows(const T* in, T* out, int64_t rows, int64_t Np, T dA, T dtv, const T* xr,
                                    const T* __restrict Bv) {
  for (int64_t r = 0; r < rows; ++r) {
    const T u = dtv * xr[r];
    const T* si = in + r * Np;
    T* so = out + r * Np;
    for (int64_t n = 0; n < Np; ++n) so[n] = fma_(dA, si[n], u * Bv[n]);
  }
}

// K tokens on a (rows, Np) state, out = the state after them. Each 16-lane piece of a row stays
// in registers through the K steps (one load and one store instead of K of each); the
// arithmetic per element is advance_rows', in the same order.
template <int K, typename T>
PMAMBA_SSD_INLINE void advance_sub_chunk(const T* __restrict in, T* __restrict out, int64_t rows, int64_t Np,
                                         const T* dA, const T* dtv, const T* const* xk, const T* __restrict Bt) {
  for (int64_t r = 0; r < rows; ++r) {
    T u[K];
    for (int k = 0; k < K; ++k) u[k] = dtv[k] * xk[k][r];
    for (int64_t n0 = 0; n0 < Np; n0 += W) {
      T v[W];
      for (int j = 0; j < W; ++j) v[j] = in[r * Np + n0 + j];
#pragma GCC unroll 16
      for (int k = 0; k < K; ++k)
        for (int j = 0; j < W; ++j) v[j] = fma_(dA[k], v[j], u[k] * Bt[k * Np + n0 + j]);
      for (int j = 0; j < W; ++j) out[r * Np + n0 + j] = v[j];
    }
  }
}

// The reverse step of one token for RR consecutive rows p of the state, the N states as lanes.
// g: the rows of dL/dS carried from the later tokens (dL/dS_t once dy ⊗ C is added; left as
// dA dL/dS_t, what reaches S_{t-1}). accC, accB, accS: per-n sums over p (in order of p) of
// S_t dy, g x and g S_{t-1}; dxr: per row, sum over n of g B (16-lane chains, then a fixed tree).
template <int RR, typename T>
PMAMBA_SSD_INLINE void reverse_rows(int64_t Np, T dA, const T* dy, const T* xr, const T* __restrict Cv,
                                    const T* __restrict Bv, const T* __restrict Snow, const T* __restrict Sprev,
                                    T* __restrict g, T* __restrict accB, T* __restrict accC, T* __restrict accS,
                                    T* __restrict dxr) {
  T dyp[RR], xp[RR], part[RR][W];
  for (int r = 0; r < RR; ++r) {
    dyp[r] = dy[r];
    xp[r] = xr[r];
    for (int j = 0; j < W; ++j) part[r][j] = T(0);
  }
  for (int64_t n0 = 0; n0 < Np; n0 += W) {
    T vB[W], vC[W], vS[W], bn[W], cn[W];
    for (int j = 0; j < W; ++j) {
      vB[j] = accB[n0 + j];
      vC[j] = accC[n0 + j];
      vS[j] = accS[n0 + j];
      bn[j] = Bv[n0 + j];
      cn[j] = Cv[n0 + j];
    }
    for (int r = 0; r < RR; ++r) {
      T* __restrict gr = g + r * Np + n0;
      const T* __restrict sn = Snow + r * Np + n0;
      const T* __restrict sp = Sprev + r * Np + n0;
      for (int j = 0; j < W; ++j) {
        const T gv = fma_(dyp[r], cn[j], gr[j]);  // dL/dS_t
        vC[j] = fma_(sn[j], dyp[r], vC[j]);
        vB[j] = fma_(gv, xp[r], vB[j]);
        part[r][j] = fma_(gv, bn[j], part[r][j]);
        vS[j] = fma_(gv, sp[j], vS[j]);
        gr[j] = dA * gv;
      }
    }
    for (int j = 0; j < W; ++j) {
      accB[n0 + j] = vB[j];
      accC[n0 + j] = vC[j];
      accS[n0 + j] = vS[j];
    }
  }
  for (int r = 0; r < RR; ++r) dxr[r] = lane_sum(part[r]);
}

// The backward of chunk c of head (b, h). g: (P, Np) dL/dS carried across chunks; dBp, dCp:
// (kSsdChunk, Np) this head's sums over p of dL/dS_t x and of S_t dy for the chunk's tokens
// (dB before the factor dt, and dC); dAp, dDp: this (b, h)'s running dA and (P) dD sums.
template <typename T>
PMAMBA_CLONES void backward_chunk(const SsdBackward<T>& a, int64_t b, int64_t h, int64_t c, T* g, T* dBp, T* dCp,
                                  T* dAp, T* dDp) {
  constexpr int K2 = kSsdSubChunk, R = kSsdRows;
  const SsdShape& s = a.s;
  const int64_t L = s.len, H = s.heads, P = s.headdim, N = s.dstate, G = s.groups;
  const int64_t Np = s.padded_dstate(), gi = h / s.heads_per_group(), PN = P * Np;
  const int64_t t0 = c * kSsdChunk, tl = std::min<int64_t>(kSsdChunk, L - t0), nsub = (tl + K2 - 1) / K2;
  constexpr int64_t kMaxSub = (kSsdChunk + K2 - 1) / K2;
  thread_local Scratch<T> buf;
  T* sub = buf.get(kMaxSub * PN + (K2 + 1) * R * Np + 3 * K2 * Np + K2 * P + P);
  // sub: (nsub, P, Np) the state entering each sub-chunk
  T* hs = sub + kMaxSub * PN;          // (K2 + 1, R, Np) states of R rows through one sub-chunk
  T* Bt = hs + (K2 + 1) * R * Np;      // (K2, Np) zero-padded B rows of the sub-chunk
  T* Ct = Bt + K2 * Np;                // (K2, Np)
  T* accS = Ct + K2 * Np;              // (K2, Np) sums over p of dL/dS_t S_{t-1}
  T* dxr = accS + K2 * Np;             // (K2, P) sum over n of dL/dS_t B
  T* Dv = dxr + K2 * P;                // (P)
  skip_per_channel(a.D, a.d_per_channel, h, P, P, Dv);
  const T Ah = a.A[h];
  auto row_of = [&](int64_t t) { return (b * L + t) * H + h; };
  auto bc_row = [&](const T* m, int64_t t) { return m + ((b * L + t) * G + gi) * N; };

  // 1. The sub-chunk entry states, recomputed from the chunk's checkpoint.
  T dtv[K2], dAv[K2];
  const T* xk[K2];
  std::memcpy(sub, a.ckpt + ((b * H + h) * s.chunks() + c) * PN, sizeof(T) * static_cast<size_t>(PN));
  for (int64_t m = 1; m < nsub; ++m) {
    for (int64_t k = 0; k < K2; ++k) {
      const int64_t t = t0 + (m - 1) * K2 + k, row = row_of(t);
      dtv[k] = a.dt[row];
      dAv[k] = fast_exp_nonpos(dtv[k] * Ah);
      xk[k] = a.x + row * P;
      padded_row(bc_row(a.B, t), N, Np, Bt + k * Np);
    }
    for (int64_t t = t0 + m * K2; t < std::min<int64_t>(t0 + (m + 1) * K2, L); ++t) {  // the next step's x
      prefetch_row(a.x + row_of(t) * P, P, false);
    }
    advance_sub_chunk<K2>(sub + (m - 1) * PN, sub + m * PN, P, Np, dAv, dtv, xk, Bt);
  }

  // 2. The sub-chunks in reverse.
  for (int64_t m = nsub - 1; m >= 0; --m) {
    const int64_t u0 = t0 + m * K2, ul = std::min<int64_t>(K2, t0 + tl - u0);
    for (int64_t t = std::max<int64_t>(0, u0 - K2); t < u0; ++t) {  // the sub-chunk after this one
      prefetch_row(a.x + row_of(t) * P, P, false);
      prefetch_row(a.dout + row_of(t) * P, P, false);
      prefetch_row(a.dx + row_of(t) * P, P, true);
    }
    for (int64_t tt = 0; tt < ul; ++tt) {
      dtv[tt] = a.dt[row_of(u0 + tt)];
      dAv[tt] = fast_exp_nonpos(dtv[tt] * Ah);
      padded_row(bc_row(a.B, u0 + tt), N, Np, Bt + tt * Np);
      padded_row(bc_row(a.C, u0 + tt), N, Np, Ct + tt * Np);
    }
    std::fill(dBp + (u0 - t0) * Np, dBp + (u0 - t0 + ul) * Np, T(0));
    std::fill(dCp + (u0 - t0) * Np, dCp + (u0 - t0 + ul) * Np, T(0));
    std::fill(accS, accS + ul * Np, T(0));
    for (int64_t p0 = 0; p0 < P; p0 += R) {
      const int64_t rr = std::min<int64_t>(R, P - p0);
      std::memcpy(hs, sub + m * PN + p0 * Np, sizeof(T) * static_cast<size_t>(rr * Np));
      for (int64_t tt = 0; tt < ul; ++tt) {
        advance_rows(hs + tt * R * Np, hs + (tt + 1) * R * Np, rr, Np, dAv[tt], dtv[tt],
                     a.x + row_of(u0 + tt) * P + p0, Bt + tt * Np);
      }
      for (int64_t tt = ul - 1; tt >= 0; --tt) {
        const int64_t row = row_of(u0 + tt);
        const T* dy = a.dout + row * P + p0;
        const T* xr = a.x + row * P + p0;
        const T* Snow = hs + (tt + 1) * R * Np;
        const T* Sprev = hs + tt * R * Np;
        T* gb = g + p0 * Np;
        T *aB = dBp + (u0 - t0 + tt) * Np, *aC = dCp + (u0 - t0 + tt) * Np, *aS = accS + tt * Np;
        T* dx = dxr + tt * P + p0;
        const T *Cv = Ct + tt * Np, *Bv = Bt + tt * Np;
        switch (rr) {
          case 4: reverse_rows<4>(Np, dAv[tt], dy, xr, Cv, Bv, Snow, Sprev, gb, aB, aC, aS, dx); break;
          case 3: reverse_rows<3>(Np, dAv[tt], dy, xr, Cv, Bv, Snow, Sprev, gb, aB, aC, aS, dx); break;
          case 2: reverse_rows<2>(Np, dAv[tt], dy, xr, Cv, Bv, Snow, Sprev, gb, aB, aC, aS, dx); break;
          default: reverse_rows<1>(Np, dAv[tt], dy, xr, Cv, Bv, Snow, Sprev, gb, aB, aC, aS, dx); break;
        }
      }
    }
    // Per-token gradients of the sub-chunk; the running dA and dD sums go in reverse time order.
    for (int64_t tt = ul - 1; tt >= 0; --tt) {
      const int64_t row = row_of(u0 + tt);
      const T* dy = a.dout + row * P;
      const T* xr = a.x + row * P;
      const T* xd_n = dxr + tt * P;
      const T ss = fixed_sum16(accS + tt * Np, Np);  // sum over (p, n) of dL/dS_t ∘ S_{t-1}
      const T xd = fixed_dot(xr, xd_n, P);           // sum over (p, n) of dL/dS_t ∘ (x ⊗ B)
      const T das = dAv[tt] * ss;
      a.ddt[row] = fma_(Ah, das, xd);
      *dAp = fma_(dtv[tt], das, *dAp);
      T* dxo = a.dx + row * P;
      for (int64_t p = 0; p < P; ++p) {
        dxo[p] = fma_(dtv[tt], xd_n[p], Dv[p] * dy[p]);
        dDp[p] = fma_(dy[p], xr[p], dDp[p]);
      }
    }
  }
}

// The dB and dC rows of token t (index ti in its chunk): sums over the heads of each group, in
// head order, of the heads' partial sums (times the head's dt for dB).
template <typename T>
PMAMBA_CLONES void sum_group_heads(const SsdBackward<T>& a, const T* __restrict dBp, const T* __restrict dCp,
                                   int64_t b, int64_t t, int64_t ti) {
  const SsdShape& s = a.s;
  const int64_t H = s.heads, N = s.dstate, R = s.heads_per_group(), Np = s.padded_dstate();
  for (int64_t gi = 0; gi < s.groups; ++gi) {
    T* __restrict dB = a.dB + ((b * s.len + t) * s.groups + gi) * N;
    T* __restrict dC = a.dC + ((b * s.len + t) * s.groups + gi) * N;
    for (int64_t r = 0; r < R; ++r) {
      const int64_t h = gi * R + r;
      const T dtv = a.dt[(b * s.len + t) * H + h];
      const T* pb = dBp + ((b * H + h) * kSsdChunk + ti) * Np;
      const T* pc = dCp + ((b * H + h) * kSsdChunk + ti) * Np;
      if (r == 0) {
        for (int64_t n = 0; n < N; ++n) {
          dB[n] = dtv * pb[n];
          dC[n] = pc[n];
        }
      } else {
        for (int64_t n = 0; n < N; ++n) {
          dB[n] = fma_(dtv, pb[n], dB[n]);
          dC[n] += pc[n];
        }
      }
    }
  }
}

template <typename T>
PMAMBA_CLONES void step_head(int64_t P, int64_t N, T* S, const T* x, T dtv, T Ah, const T* Bv, const T* Cv,
                             const T* Dv, T* out) {
  const T dA = fast_exp_nonpos(dtv * Ah);
  for (int64_t p = 0; p < P; ++p) {
    const T u = dtv * x[p];
    T* Sp = S + p * N;
    for (int64_t n = 0; n < N; ++n) Sp[n] = fma_(dA, Sp[n], u * Bv[n]);
    T y = T(0);
    for (int64_t n = 0; n < N; ++n) y = fma_(Cv[n], Sp[n], y);  // n in order, as the forward
    out[p] = fma_(Dv[p], x[p], y);
  }
}

}  // namespace

template <typename T>
void ssd_forward(const SsdForward<T>& a) {
  const int64_t H = a.s.heads;
  at::parallel_for(0, a.s.batch * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) forward_head(a, k / H, k % H);
  });
}

template <typename T>
void ssd_backward(const SsdBackward<T>& a) {
  const SsdShape& s = a.s;
  const int64_t B = s.batch, H = s.heads, P = s.headdim, N = s.dstate, L = s.len;
  const int64_t BH = B * H, Np = s.padded_dstate();
  // dL/dS per (b, h), carried from chunk to chunk; it starts as the gradient of last_state.
  // (The buffers the hot loops walk are 64-byte aligned: see Scratch.)
  Scratch<T> g_buf, dB_buf, dC_buf;
  T* g = g_buf.get(BH * P * Np);
  std::fill(g, g + BH * P * Np, T(0));
  if (a.dlast) {
    for (int64_t k = 0; k < BH * P; ++k) std::memcpy(g + k * Np, a.dlast + k * N, sizeof(T) * N);
  }
  // Per-(b, h) partial sums, reduced below in a fixed order. dB and dC are kept one chunk at a
  // time, so this memory does not grow with L.
  T* dBp = dB_buf.get(BH * kSsdChunk * Np);
  T* dCp = dC_buf.get(BH * kSsdChunk * Np);
  std::vector<T> dAp(static_cast<size_t>(BH), T(0)), dDp(static_cast<size_t>(BH * P), T(0));
  for (int64_t c = s.chunks() - 1; c >= 0; --c) {
    at::parallel_for(0, BH, 1, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        backward_chunk(a, k / H, k % H, c, g + k * P * Np, dBp + k * kSsdChunk * Np, dCp + k * kSsdChunk * Np,
                       dAp.data() + k, dDp.data() + k * P);
      }
    });
    const int64_t t0 = c * kSsdChunk, tl = std::min<int64_t>(kSsdChunk, L - t0);
    at::parallel_for(0, B * tl, 8, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const int64_t b = k / tl, ti = k % tl;
        sum_group_heads(a, dBp, dCp, b, t0 + ti, ti);
      }
    });
  }
  for (int64_t h = 0; h < H; ++h) {
    T v = T(0);
    for (int64_t b = 0; b < B; ++b) v += dAp[b * H + h];
    a.dA[h] = v;
  }
  if (a.dD) {
    if (a.d_per_channel) {
      for (int64_t i = 0; i < H * P; ++i) {
        T v = T(0);
        for (int64_t b = 0; b < B; ++b) v += dDp[b * H * P + i];
        a.dD[i] = v;
      }
    } else {
      for (int64_t h = 0; h < H; ++h) {
        T v = T(0);
        for (int64_t b = 0; b < B; ++b)
          for (int64_t p = 0; p < P; ++p) v += dDp[(b * H + h) * P + p];
        a.dD[h] = v;
      }
    }
  }
}

template <typename T>
void ssd_step(const SsdShape& s, T* state, const T* x, const T* dt, const T* A, const T* B, const T* C,
              const T* D, bool d_per_channel, T* out) {
  const int64_t H = s.heads, P = s.headdim, N = s.dstate, G = s.groups;
  at::parallel_for(0, s.batch * H, 4, [&](int64_t begin, int64_t end) {
    std::vector<T> Dv(static_cast<size_t>(P));
    for (int64_t k = begin; k < end; ++k) {
      const int64_t b = k / H, h = k % H, gi = h / s.heads_per_group();
      skip_per_channel(D, d_per_channel, h, P, P, Dv.data());
      step_head(P, N, state + k * P * N, x + k * P, dt[k], A[h], B + (b * G + gi) * N, C + (b * G + gi) * N,
                Dv.data(), out + k * P);
    }
  });
}

template void ssd_forward<float>(const SsdForward<float>&);
template void ssd_forward<double>(const SsdForward<double>&);
template void ssd_backward<float>(const SsdBackward<float>&);
template void ssd_backward<double>(const SsdBackward<double>&);
template void ssd_step<float>(const SsdShape&, float*, const float*, const float*, const float*, const float*,
                              const float*, const float*, bool, float*);
template void ssd_step<double>(const SsdShape&, double*, const double*, const double*, const double*, const double*,
                               const double*, const double*, bool, double*);

}  // namespace pmamba::kernels::cpu
