// Selective scan (Mamba-1) forward and backward for the CPU.
//
// Layout: 16 channels ride in one vector (GCC/clang vector extensions: one zmm register with
// AVX-512, two ymm with AVX2, NEON quads on Arm), the N state dimensions are unrolled, and the
// exponentials are a vectorised Cephes-style polynomial. Inputs are (B, D, L) with L contiguous,
// so 16x16 tiles are transposed in registers on the way in and out.
// A work unit is (batch b, block of 16 channels); the Python side spreads units over threads.
// The backward recomputes the forward chunk by chunk (CHUNK steps) from the states the forward
// saved at chunk starts, so it needs O(CHUNK) scratch per unit rather than O(L).
//
// Compiled at first use by dimbench/ops/scan_cpu.py (g++ -O3 -march=native), loaded by ctypes.

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));

namespace {

constexpr int W = 16;      // channels per vector
constexpr int T = 16;      // time tile (16x16 transposes)
constexpr int CHUNK = 64;  // time steps between saved states; a multiple of T
constexpr int MAXN = 64;   // largest d_state of the generic path
constexpr int NB = 8;      // state dims per backward block

inline vf splat(float a) { return vf{} + a; }

inline vf loadu(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void storeu(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }

constexpr float LOG2E = 1.44269504088896341f;
constexpr float LN2 = 0.693147180559945309f;

// 2^a for the state decays, relative error 2e-7: a = k + r with k an integer and |r| <= 1/2,
// 2^r by a degree-5 polynomial (fitted for relative error on [-1/2, 1/2]), times 2^k.
inline vf exp2_poly(vf r) {
  vf q = splat(1.3264722815e-3f);
  q = q * r + 9.6715133807e-3f;
  q = q * r + 5.5507337619e-2f;
  q = q * r + 2.4022242072e-1f;
  q = q * r + 6.9314697758e-01f;
  return q * r + 1.0f;
}

#if defined(__AVX512F__)
// AVX-512: round and scale in one instruction each; vscalefps handles under/overflow exactly.
inline vf vexp2(vf a) {
  const __m512 k = _mm512_roundscale_ps((__m512)a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return (vf)_mm512_scalef_ps((__m512)exp2_poly(a - (vf)k), k);
}
#else
// Portable: clamp to [-125, 127] (2^-125 = 3e-38 stands in for anything smaller), round with
// the 1.5 * 2^23 trick, and add k straight into the exponent bits.
inline vf vexp2(vf a) {
  const vf lo = splat(-125.0f), hi = splat(127.0f);
  a = a < lo ? lo : a;
  a = a > hi ? hi : a;
  const vf magic = splat(12582912.0f);
  const vf t = a + magic;  // the low mantissa bits of t hold k
  const vf p = exp2_poly(a - (t - magic));
  return (vf)((vi)p + ((vi)t << 23));
}
#endif

// exp(x), relative error ~2e-7 over the whole range (Cephes expf); 0 below -87.
inline vf vexp(vf x) {
  const vf lo = splat(-87.0f), hi = splat(88.0f);
  vf xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const vf magic = splat(12582912.0f);
  vf k = (xc * LOG2E + magic) - magic;
  vf r = xc - k * 0.693359375f;
  r = r - k * -2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  vf y = p * (r * r) + r + 1.0f;
  vi bits = (__builtin_convertvector(k, vi) + 127) << 23;
  y = y * (vf)bits;
  return x < lo ? splat(0.0f) : y;
}

// log(x) for x >= 1 (Cephes logf polynomial).
inline vf vlog_ge1(vf x) {
  vi bits = (vi)x;
  vi e = ((bits >> 23) & 0xff) - 126;
  vf m = (vf)((bits & 0x007fffff) | 0x3f000000);  // mantissa in [0.5, 1)
  vi small = m < splat(0.707106781186547524f);
  e = small ? e - 1 : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  vf z = m * m;
  vf y = splat(7.0376836292e-2f);
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  vf fe = __builtin_convertvector(e, vf);
  y = y + fe * -2.12194440e-4f;
  y = y - z * 0.5f;
  return m + y + fe * 0.693359375f;
}

// softplus(x) = log(1 + exp(x)), x for x > 20 (torch's threshold).
inline vf vsoftplus(vf x) {
  vf e = vexp(x);
  vf u = e + 1.0f;
  vf d = u - 1.0f;
  // log1p(e) = log(u) * e / (u - 1) keeps precision when e is tiny
  vf lp = d == splat(0.0f) ? e : vlog_ge1(u) * e / (d == splat(0.0f) ? splat(1.0f) : d);
  return x > splat(20.0f) ? x : lp;
}

inline vf vsigmoid(vf x) { return 1.0f / (1.0f + vexp(-x)); }

// In-register 16x16 transpose: stage k swaps the off-diagonal k x k blocks.
#define SHUF_A8 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23
#define SHUF_B8 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31
#define SHUF_A4 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27
#define SHUF_B4 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31
#define SHUF_A2 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29
#define SHUF_B2 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31
#define SHUF_A1 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30
#define SHUF_B1 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31

#define TRANSPOSE_STAGE(r, K)                                   \
  for (int i = 0; i < 16; ++i) {                                \
    if (i & K) continue;                                        \
    vf a = r[i], b = r[i + K];                                  \
    r[i] = __builtin_shufflevector(a, b, SHUF_A##K);            \
    r[i + K] = __builtin_shufflevector(a, b, SHUF_B##K);        \
  }

inline void transpose16(vf* r) {
  TRANSPOSE_STAGE(r, 8)
  TRANSPOSE_STAGE(r, 4)
  TRANSPOSE_STAGE(r, 2)
  TRANSPOSE_STAGE(r, 1)
}

// Lane j of the result = sum of the 16 lanes of v[j]; v is clobbered.
#define HSUM_STAGE(v, K)                                                              \
  for (int i = 0; i < K; ++i) {                                                       \
    vf a = v[i], b = v[i + K];                                                        \
    v[i] = __builtin_shufflevector(a, b, SHUF_A##K) + __builtin_shufflevector(a, b, SHUF_B##K); \
  }

inline vf hsum16(vf* v) {
  HSUM_STAGE(v, 8)
  HSUM_STAGE(v, 4)
  HSUM_STAGE(v, 2)
  HSUM_STAGE(v, 1)
  return v[0];
}

// dst[t] (lane c) = src[c * ld + t] for c < nc, t < nt; zero elsewhere.
inline void load_tile(const float* src, int64_t ld, int nc, int nt, vf* dst) {
  if (nc == W && nt == T) {
    for (int c = 0; c < W; ++c) dst[c] = loadu(src + c * ld);
    transpose16(dst);
    return;
  }
  for (int t = 0; t < T; ++t) dst[t] = splat(0.0f);
  for (int c = 0; c < nc; ++c)
    for (int t = 0; t < nt; ++t) dst[t][c] = src[c * ld + t];
}

// dst[c * ld + t] = src[t] (lane c) for c < nc, t < nt. src is clobbered.
inline void store_tile(float* dst, int64_t ld, int nc, int nt, vf* src) {
  if (nc == W && nt == T) {
    transpose16(src);
    for (int c = 0; c < W; ++c) storeu(dst + c * ld, src[c]);
    return;
  }
  for (int c = 0; c < nc; ++c)
    for (int t = 0; t < nt; ++t) dst[c * ld + t] = src[t][c];
}

inline vf gather_lanes(const float* p, int64_t stride, int nc) {
  vf v = splat(0.0f);
  for (int c = 0; c < nc; ++c) v[c] = p[c * stride];
  return v;
}

struct Params {
  int64_t batch, dim, length, dstate, groups;
  // B and C come time-major, (batch, groups, L, N): one cache line per step. (N, L) rows that
  // lie a multiple of 4 KiB apart would all fall in one L1 set.
  const float *u, *delta, *A, *B, *C, *D, *z, *delta_bias;
  int32_t softplus;
};

struct Unit {
  int64_t b, cb, c0, g;
  int nc;
};

inline Unit make_unit(const Params& p, int64_t unit) {
  const int64_t ncb = (p.dim + W - 1) / W;
  Unit w;
  w.b = unit / ncb;
  w.cb = unit % ncb;
  w.c0 = w.cb * W;
  w.nc = (int)std::min<int64_t>(W, p.dim - w.c0);
  w.g = w.c0 / (p.dim / p.groups);
  return w;
}

inline vf load_dt(vf raw, vf bias, bool has_bias, bool softplus) {
  vf dt = has_bias ? raw + bias : raw;
  return softplus ? vsoftplus(dt) : dt;
}

// A * log2(e) per lane, so the decay exp(dt * A) is vexp2(dt * A2).
inline void load_A2(const Params& p, const Unit& w, int N, vf* A2) {
  for (int n = 0; n < N; ++n) A2[n] = gather_lanes(p.A + w.c0 * N + n, N, w.nc) * LOG2E;
}

// Forward of one unit. ckpt (nullable): (nchunk, N, W) states entering each chunk.
template <int NS>
void fwd_unit(const Params& p, const Unit& w, float* out, float* ckpt) {
  const int N = NS ? NS : (int)p.dstate;
  const int64_t L = p.length;
  const int64_t row = (w.b * p.dim + w.c0) * L;
  const float* Bp = p.B + (w.b * p.groups + w.g) * N * L;
  const float* Cp = p.C + (w.b * p.groups + w.g) * N * L;
  vf A2[NS ? NS : MAXN], x[NS ? NS : MAXN];
  load_A2(p, w, N, A2);
  for (int n = 0; n < N; ++n) x[n] = splat(0.0f);
  const vf Dv = p.D ? gather_lanes(p.D + w.c0, 1, w.nc) : splat(0.0f);
  const vf bias = p.delta_bias ? gather_lanes(p.delta_bias + w.c0, 1, w.nc) : splat(0.0f);
  vf tu[T], td[T], tz[T], ty[T];
  for (int64_t t0 = 0; t0 < L; t0 += T) {
    const int nt = (int)std::min<int64_t>(T, L - t0);
    if (ckpt && t0 % CHUNK == 0) {
      float* s = ckpt + (t0 / CHUNK) * N * W;
      for (int n = 0; n < N; ++n) storeu(s + n * W, x[n]);
    }
    load_tile(p.u + row + t0, L, w.nc, nt, tu);
    load_tile(p.delta + row + t0, L, w.nc, nt, td);
    if (p.z) load_tile(p.z + row + t0, L, w.nc, nt, tz);
    // elementwise work first, as independent chains the CPU overlaps, then the recurrence
    for (int tt = 0; tt < nt; ++tt) {
      td[tt] = load_dt(td[tt], bias, p.delta_bias != nullptr, p.softplus);
      if (p.z) tz[tt] = tz[tt] * vsigmoid(tz[tt]);
    }
    for (int tt = 0; tt < nt; ++tt) {
      const vf dt = td[tt];
      const vf dtu = dt * tu[tt];
      const int64_t t = t0 + tt;
      vf y = splat(0.0f);
#pragma GCC unroll 16
      for (int n = 0; n < N; ++n) {
        x[n] = vexp2(dt * A2[n]) * x[n] + dtu * Bp[t * N + n];
        y += x[n] * Cp[t * N + n];
      }
      if (p.D) y += Dv * tu[tt];
      if (p.z) y *= tz[tt];
      ty[tt] = y;
    }
    store_tile(out + row + t0, L, w.nc, nt, ty);
  }
}

// Per-thread scratch of the backward, sized for one chunk and one block of NB state dims.
struct Scratch {
  vf *cu, *cdt, *csig, *cz, *csz, *cg, *cgy, *cy, *sA, *sB;  // CHUNK each
  vf *xs, *dAs;  // (CHUNK + 1) * NB: the block's dA_t x_{t-1} and dA_t over the chunk
  vf *h, *gA, *dA_next;  // N each: carried from one chunk to the previous
  vf* red;               // NB * T: contributions to dB or dC awaiting their lane reduction
  void* mem;

  explicit Scratch(int64_t N) {
    const int64_t nvec = 10 * CHUNK + 2 * (CHUNK + 1) * NB + 3 * N + NB * T;
    mem = std::aligned_alloc(sizeof(vf), nvec * sizeof(vf));
    vf* q = static_cast<vf*>(mem);
    for (vf** f : {&cu, &cdt, &csig, &cz, &csz, &cg, &cgy, &cy, &sA, &sB}) *f = q, q += CHUNK;
    xs = q, q += (CHUNK + 1) * NB;
    dAs = q, q += (CHUNK + 1) * NB;
    h = q, q += N;
    gA = q, q += N;
    dA_next = q, q += N;
    red = q;
  }
  ~Scratch() { std::free(mem); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

struct Grads {
  float *du, *ddelta, *dz;                 // (B, D, L), shared: units write disjoint rows
  float *dA, *dD, *ddelta_bias, *dB, *dC;  // this thread's accumulators
};

// Reduce red[i][0..nt) over lanes and add to dst[i * L + 0..nt) (dst offset to the tile).
inline void flush_reduction(vf* red, int nb, int nt, float* dst, int64_t L) {
  for (int i = 0; i < nb; ++i) {
    vf* v = red + i * T;
    for (int q = nt; q < T; ++q) v[q] = splat(0.0f);
    const vf r = hsum16(v);
    float* d = dst + i * L;
    if (nt == T) {
      storeu(d, loadu(d) + r);
    } else {
      for (int q = 0; q < nt; ++q) d[q] += r[q];
    }
  }
}

// Backward of one unit, chunk by chunk from the end. The state dims are independent in the
// recurrence, so each chunk is done NB dims at a time, which keeps the block's states and
// decays in L1 and its accumulators in registers:
//  1. recompute the block's states from the chunk's saved ones, keeping dA_t = exp(dt_t A)
//     and dA_t x_{t-1};
//     the same pass gives dC_t = sum_lanes gy_t x_t and the block's share of y (for dz);
//  2. run h_t = exp(dt_{t+1} A) h_{t+1} + gy_t C_t backwards: dB, dA, and the block's share
//     of the sums over n that ddelta and du need.
// Then per time step: du, ddelta and dz.
template <int NS>
void bwd_unit(const Params& p, const Unit& w, const float* dout, const float* ckpt, Grads& g,
              Scratch& sc) {
  static_assert(NS % NB == 0, "a specialised d_state must be a whole number of blocks");
  constexpr int NN = NS ? NS : MAXN;
  const int N = NS ? NS : (int)p.dstate;
  const int64_t L = p.length;
  const int64_t row = (w.b * p.dim + w.c0) * L;
  const int64_t bg = (w.b * p.groups + w.g) * N * L;
  const float* Bp = p.B + bg;
  const float* Cp = p.C + bg;
  vf A2[NN];
  load_A2(p, w, N, A2);
  const vf Dv = p.D ? gather_lanes(p.D + w.c0, 1, w.nc) : splat(0.0f);
  const vf bias = p.delta_bias ? gather_lanes(p.delta_bias + w.c0, 1, w.nc) : splat(0.0f);
  vf gD = splat(0.0f), gbias = splat(0.0f);
  for (int n = 0; n < N; ++n) sc.h[n] = sc.gA[n] = sc.dA_next[n] = splat(0.0f);
  auto xd = [&](int tt, int i) -> vf& { return sc.xs[tt * NB + i]; };  // dA_t x_{t-1}
  auto dAs = [&](int tt, int i) -> vf& { return sc.dAs[tt * NB + i]; };

  const int64_t nchunk = (L + CHUNK - 1) / CHUNK;
  for (int64_t k = nchunk - 1; k >= 0; --k) {
    const int64_t cs = k * CHUNK;
    const int clen = (int)std::min<int64_t>(CHUNK, L - cs);
    for (int j = 0; j < clen; j += T) {
      const int nt = std::min(T, clen - j);
      load_tile(p.u + row + cs + j, L, w.nc, nt, sc.cu + j);
      load_tile(p.delta + row + cs + j, L, w.nc, nt, sc.cdt + j);
      load_tile(dout + row + cs + j, L, w.nc, nt, sc.cg + j);
      if (p.z) load_tile(p.z + row + cs + j, L, w.nc, nt, sc.cz + j);
    }
    for (int tt = 0; tt < clen; ++tt) {  // elementwise work first (see fwd_unit)
      const vf raw = p.delta_bias ? sc.cdt[tt] + bias : sc.cdt[tt];
      if (p.softplus) {
        sc.cdt[tt] = vsoftplus(raw);
        sc.csig[tt] = vsigmoid(raw);
      } else {
        sc.cdt[tt] = raw;
      }
      if (p.z) {
        const vf sg = vsigmoid(sc.cz[tt]);
        sc.csz[tt] = sg;
        sc.cgy[tt] = sc.cg[tt] * sc.cz[tt] * sg;
      } else {
        sc.cgy[tt] = sc.cg[tt];
      }
      gD += sc.cgy[tt] * sc.cu[tt];
      sc.cy[tt] = sc.sA[tt] = sc.sB[tt] = splat(0.0f);
    }
    const float* s = ckpt + k * N * W;
    for (int n0 = 0; n0 < N; n0 += NB) {
      const int nb = NS ? NB : std::min(NB, N - n0);  // NS % NB == 0: a constant, unrolled
      // 1. recompute
      vf x[NB];
      for (int i = 0; i < nb; ++i) {
        x[i] = loadu(s + (n0 + i) * W);     // the state before the chunk
        dAs(clen, i) = sc.dA_next[n0 + i];  // the decay one step past the chunk
      }
      for (int j0 = 0; j0 < clen; j0 += T) {
        const int nt = std::min(T, clen - j0);
        for (int tt = j0; tt < j0 + nt; ++tt) {
          const int64_t t = cs + tt;
          const vf dt = sc.cdt[tt], dtu = dt * sc.cu[tt], gy = sc.cgy[tt];
          vf y = splat(0.0f);
#pragma GCC unroll 8
          for (int i = 0; i < nb; ++i) {
            const int n = n0 + i;
            const vf dA = vexp2(dt * A2[n]);
            const vf xdec = dA * x[i];
            x[i] = xdec + dtu * Bp[t * N + n];
            dAs(tt, i) = dA;
            xd(tt, i) = xdec;
            y += x[i] * Cp[t * N + n];
            sc.red[i * T + (tt - j0)] = gy * x[i];
          }
          sc.cy[tt] += y;
        }
        flush_reduction(sc.red, nb, nt, g.dC + bg + n0 * L + cs + j0, L);
      }
      for (int i = 0; i < nb; ++i) sc.dA_next[n0 + i] = dAs(0, i);
      // 2. reverse
      vf h[NB], gA[NB];
      for (int i = 0; i < nb; ++i) {
        h[i] = sc.h[n0 + i];
        gA[i] = sc.gA[n0 + i];
      }
      for (int j0 = ((clen - 1) / T) * T; j0 >= 0; j0 -= T) {
        const int nt = std::min(T, clen - j0);
        for (int tt = j0 + nt - 1; tt >= j0; --tt) {
          const int64_t t = cs + tt;
          const vf gy = sc.cgy[tt], dt = sc.cdt[tt], dtu = dt * sc.cu[tt];
          vf sA = splat(0.0f), sB = splat(0.0f);
#pragma GCC unroll 8
          for (int i = 0; i < nb; ++i) {
            const int n = n0 + i;
            h[i] = h[i] * dAs(tt + 1, i) + gy * Cp[t * N + n];
            const vf hx = h[i] * xd(tt, i);  // h_t dA_t x_{t-1}
            sA += hx * A2[n];
            sB += h[i] * Bp[t * N + n];
            gA[i] += hx * dt;
            sc.red[i * T + (tt - j0)] = h[i] * dtu;
          }
          sc.sA[tt] += sA;
          sc.sB[tt] += sB;
        }
        flush_reduction(sc.red, nb, nt, g.dB + bg + n0 * L + cs + j0, L);
      }
      for (int i = 0; i < nb; ++i) {
        sc.h[n0 + i] = h[i];
        sc.gA[n0 + i] = gA[i];
      }
    }
    // du, ddelta, dz (sA holds sum_n h x_prev dA A log2(e), hence the ln 2)
    for (int tt = 0; tt < clen; ++tt) {
      const vf uu = sc.cu[tt], dt = sc.cdt[tt];
      const vf gdt = sc.sA[tt] * LN2 + sc.sB[tt] * uu;
      const vf gdelta = p.softplus ? gdt * sc.csig[tt] : gdt;
      gbias += gdelta;
      sc.cdt[tt] = gdelta;
      sc.cu[tt] = dt * sc.sB[tt] + (p.D ? sc.cgy[tt] * Dv : splat(0.0f));
      if (p.z) {
        const vf y = p.D ? sc.cy[tt] + Dv * uu : sc.cy[tt];
        const vf zz = sc.cz[tt], sg = sc.csz[tt];
        sc.cz[tt] = sc.cg[tt] * y * sg * (1.0f + zz * (1.0f - sg));
      }
    }
    for (int j = 0; j < clen; j += T) {
      const int nt = std::min(T, clen - j);
      store_tile(g.du + row + cs + j, L, w.nc, nt, sc.cu + j);
      store_tile(g.ddelta + row + cs + j, L, w.nc, nt, sc.cdt + j);
      if (p.z) store_tile(g.dz + row + cs + j, L, w.nc, nt, sc.cz + j);
    }
  }
  for (int c = 0; c < w.nc; ++c) {
    for (int n = 0; n < N; ++n) g.dA[(w.c0 + c) * N + n] += sc.gA[n][c];
    g.dD[w.c0 + c] += gD[c];
    g.ddelta_bias[w.c0 + c] += gbias[c];
  }
}

Params make_params(int64_t batch, int64_t dim, int64_t length, int64_t dstate, int64_t groups,
                   const float* u, const float* delta, const float* A, const float* B,
                   const float* C, const float* D, const float* z, const float* delta_bias,
                   int32_t softplus) {
  return Params{batch, dim, length, dstate, groups, u, delta, A, B, C, D, z, delta_bias, softplus};
}

}  // namespace

extern "C" {

int dimbench_scan_chunk() { return CHUNK; }
int dimbench_scan_lanes() { return W; }
int dimbench_scan_max_dstate() { return MAXN; }

// Units [unit_begin, unit_end) of the forward. ckpt: (B, ceil(D/16), nchunk, N, 16) or null.
void dimbench_scan_fwd(int64_t batch, int64_t dim, int64_t length, int64_t dstate, int64_t groups,
                       const float* u, const float* delta, const float* A, const float* B,
                       const float* C, const float* D, const float* z, const float* delta_bias,
                       int32_t softplus, float* out, float* ckpt, int64_t unit_begin,
                       int64_t unit_end) {
  const Params p = make_params(batch, dim, length, dstate, groups, u, delta, A, B, C, D, z,
                               delta_bias, softplus);
  const int64_t nchunk = (length + CHUNK - 1) / CHUNK;
  for (int64_t unit = unit_begin; unit < unit_end; ++unit) {
    const Unit w = make_unit(p, unit);
    float* ck = ckpt ? ckpt + unit * nchunk * dstate * W : nullptr;
    if (dstate == 16)
      fwd_unit<16>(p, w, out, ck);
    else
      fwd_unit<0>(p, w, out, ck);
  }
}

// Units [unit_begin, unit_end) of the backward. du/ddelta/dz are written for the units' rows;
// dA (D, N), dD, ddelta_bias (D), dB, dC (B, G, N, L) are accumulated (the caller zeroes them
// and gives each thread its own).
void dimbench_scan_bwd(int64_t batch, int64_t dim, int64_t length, int64_t dstate, int64_t groups,
                       const float* u, const float* delta, const float* A, const float* B,
                       const float* C, const float* D, const float* z, const float* delta_bias,
                       int32_t softplus, const float* dout, const float* ckpt, float* du,
                       float* ddelta, float* dz, float* dA, float* dD, float* ddelta_bias,
                       float* dB, float* dC, int64_t unit_begin, int64_t unit_end) {
  const Params p = make_params(batch, dim, length, dstate, groups, u, delta, A, B, C, D, z,
                               delta_bias, softplus);
  Grads g{du, ddelta, dz, dA, dD, ddelta_bias, dB, dC};
  Scratch sc(dstate);
  const int64_t nchunk = (length + CHUNK - 1) / CHUNK;
  for (int64_t unit = unit_begin; unit < unit_end; ++unit) {
    const Unit w = make_unit(p, unit);
    const float* ck = ckpt + unit * nchunk * dstate * W;
    if (dstate == 16)
      bwd_unit<16>(p, w, dout, ck, g, sc);
    else
      bwd_unit<0>(p, w, dout, ck, g, sc);
  }
}

}  // extern "C"
