// Selective scan (Mamba-1) forward and backward for the CPU.
//
// Layout: W channels ride in one vector (GCC/clang vector extensions): W = 16 (one zmm register)
// with AVX-512, W = 8 (one ymm) on x86 with AVX2 but not AVX-512 (16-lane vectors there are ymm
// pairs: twice the 16 registers' pressure, spills, and a compile 10x longer), 16 (four NEON
// quads) elsewhere. Below, "16" in a name or comment means W. The N state dimensions are
// unrolled, and the
// exponentials are a vectorised Cephes-style polynomial. u, delta, z, the output gradient and
// the outputs (out, du, ddelta, dz) are (B, D, L) with any batch stride and one of two layouts,
// the same for all of them: channel-major (unit time stride: rows of L, read and written as
// 16x16 tiles transposed in registers) or channel-last (unit channel stride, as a (B, L, D)
// projection output: the 16 channels of a step are one contiguous vector, no transposes).
// They are float32 or bfloat16 (one type for all of them); the state and every sum are float32.
// A work unit is (batch b, block of 16 channels); the Python side spreads units over threads.
// The backward recomputes the forward chunk by chunk (CHUNK steps) from the states the forward
// saved at chunk starts, so it needs O(CHUNK) scratch per unit rather than O(L).
// Every entry point runs with denormals flushed (FTZ and DAZ, or FZ on Arm) and restores the
// caller's floating-point mode: decayed states would otherwise turn subnormal. The vectors, the
// bfloat16 conversions (and their rounding rule) and that guard are dimbench_simd.h's.
//
// Compiled at first use by dimbench/ops/scan_cpu.py (g++ -O3 -march=native), loaded by ctypes.

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <tuple>
#include <type_traits>

#if defined(__AVX2__) && !defined(__AVX512F__)
#define DIMBENCH_LANES 8
#endif
#include "dimbench_simd.h"

namespace {

constexpr int W = DIMBENCH_LANES;  // channels per vector
constexpr int T = W;               // time tile (W x W transposes)
constexpr int CHUNK = 128;         // time steps between saved states; a multiple of T
constexpr int MAXN = 64;           // largest d_state of the generic path
// vectors per backward block: 8 state dims of 1 unit, 4 of 2 (half that with 16 registers)
constexpr int NB = W == 16 ? 8 : 4;
constexpr int ABI = 4;     // bumped whenever ScanArgs or an entry point changes

// ----------------------------------------------------------------------- elementwise math

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

// 1/x for x >= 1: AVX-512's 14-bit estimate and one Newton step (relative error 2^-28; 0 for
// x beyond 2^126, where 1/x would be subnormal and is flushed anyway).
inline vf vrecip(vf x) {
#if defined(__AVX512F__)
  const vf r = (vf)_mm512_rcp14_ps((__m512)x);
  return r + r * (1.0f - x * r);
#else
  return 1.0f / x;
#endif
}

// With e = exp(x) (clamped, so finite), u = 1 + e and r = 1 / u:
//   sigmoid(x) = 1 - r for x > 0 (r <= 1/2: no cancellation; r -> 0 as x grows), e r below;
//   softplus(x) = log1p(e) = log(u) + (e - (u - 1)) r, which restores the low bits of e that
//   rounding u lost (x itself for x > 20, torch's threshold).
inline vf vsigmoid_from(vf x, vf e, vf r) { return x > splat(0.0f) ? 1.0f - r : e * r; }

inline void vsoftplus_sigmoid(vf x, vf& sp, vf& sg) {
  const vf e = vexp(x), u = e + 1.0f, r = vrecip(u);
  sp = x > splat(20.0f) ? x : vlog_ge1(u) + (e - (u - 1.0f)) * r;
  sg = vsigmoid_from(x, e, r);
}

inline vf vsoftplus(vf x) {
  const vf e = vexp(x), u = e + 1.0f;
  return x > splat(20.0f) ? x : vlog_ge1(u) + (e - (u - 1.0f)) * vrecip(u);
}

inline vf vsigmoid(vf x) {
  const vf e = vexp(x);
  return vsigmoid_from(x, e, vrecip(e + 1.0f));
}

// ----------------------------------------------------------------------- tiles

#define SHUF(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)

#if DIMBENCH_LANES == 16
// In-register 16x16 transpose from cheap shuffles only (in-lane unpacks, 128-bit lane moves):
// rows 4q..4q+3 are unpacked to 4 vectors holding 4x4 blocks, which two 128-bit lane shuffle
// stages put together. Two-source full permutes (vpermt2ps) cost more on some cores.
#define UNPCKLO_PS 0, 16, 1, 17, 4, 20, 5, 21, 8, 24, 9, 25, 12, 28, 13, 29
#define UNPCKHI_PS 2, 18, 3, 19, 6, 22, 7, 23, 10, 26, 11, 27, 14, 30, 15, 31
#define UNPCKLO_PD 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29
#define UNPCKHI_PD 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31
#define SHUFPS_0202 0, 2, 16, 18, 4, 6, 20, 22, 8, 10, 24, 26, 12, 14, 28, 30
#define SHUFPS_1313 1, 3, 17, 19, 5, 7, 21, 23, 9, 11, 25, 27, 13, 15, 29, 31
#define LANES_01 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23
#define LANES_23 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31
#define LANES_02 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27
#define LANES_13 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31

inline void transpose16(vf* r) {
  vf g[4][4];  // g[q][m]: lane j holds rows 4q..4q+3 of column m + 4j
  for (int q = 0; q < 4; ++q) {
    const vf* s = r + 4 * q;
    const vf lo01 = SHUF(s[0], s[1], UNPCKLO_PS), hi01 = SHUF(s[0], s[1], UNPCKHI_PS);
    const vf lo23 = SHUF(s[2], s[3], UNPCKLO_PS), hi23 = SHUF(s[2], s[3], UNPCKHI_PS);
    g[q][0] = SHUF(lo01, lo23, UNPCKLO_PD);
    g[q][1] = SHUF(lo01, lo23, UNPCKHI_PD);
    g[q][2] = SHUF(hi01, hi23, UNPCKLO_PD);
    g[q][3] = SHUF(hi01, hi23, UNPCKHI_PD);
  }
  for (int m = 0; m < 4; ++m) {
    const vf x01 = SHUF(g[0][m], g[1][m], LANES_02), y01 = SHUF(g[0][m], g[1][m], LANES_13);
    const vf x23 = SHUF(g[2][m], g[3][m], LANES_02), y23 = SHUF(g[2][m], g[3][m], LANES_13);
    r[m] = SHUF(x01, x23, LANES_02);
    r[m + 8] = SHUF(x01, x23, LANES_13);
    r[m + 4] = SHUF(y01, y23, LANES_02);
    r[m + 12] = SHUF(y01, y23, LANES_13);
  }
}

// Lane j of the result = sum of the 16 lanes of v[j]; v is clobbered. Each stage adds two
// shuffles that keep one vector's partial sums together; the last permute undoes the order
// the stages leave the sums in (lane j holds v[P[j]], P = 0 2 1 3 8 10 9 11 4 6 5 7 ...).
inline vf hsum16(vf* v) {
  for (int i = 0; i < 8; ++i) v[i] = SHUF(v[i], v[i + 8], LANES_01) + SHUF(v[i], v[i + 8], LANES_23);
  for (int i = 0; i < 4; ++i) v[i] = SHUF(v[i], v[i + 4], LANES_02) + SHUF(v[i], v[i + 4], LANES_13);
  for (int i = 0; i < 2; ++i)
    v[i] = SHUF(v[i], v[i + 2], UNPCKLO_PD) + SHUF(v[i], v[i + 2], UNPCKHI_PD);
  const vf s = SHUF(v[0], v[1], SHUFPS_0202) + SHUF(v[0], v[1], SHUFPS_1313);
  return __builtin_shufflevector(s, s, 0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15);
}
#elif DIMBENCH_LANES == 8
// In-register 8x8 transpose (AVX2's unpack, shuffle, 128-bit lane permute pattern).
inline void transpose16(vf* r) {
  vf t[8], q[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = SHUF(r[2 * i], r[2 * i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[2 * i + 1] = SHUF(r[2 * i], r[2 * i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int h = 0; h < 2; ++h)  // rows 4h..4h+3
    for (int j = 0; j < 2; ++j) {
      const vf a = t[4 * h + j], b = t[4 * h + 2 + j];
      q[4 * h + 2 * j] = SHUF(a, b, 0, 1, 8, 9, 4, 5, 12, 13);
      q[4 * h + 2 * j + 1] = SHUF(a, b, 2, 3, 10, 11, 6, 7, 14, 15);
    }
  for (int m = 0; m < 4; ++m) {  // q[m]: column m (low half) and m + 4 (high) of rows 0..3
    r[m] = SHUF(q[m], q[m + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    r[m + 4] = SHUF(q[m], q[m + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}

// Lane j of the result = sum of the 8 lanes of v[j]; v is clobbered.
inline vf hsum16(vf* v) {
  transpose16(v);
  return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
}
#else
#error "the scan kernel has transposes for 8 and 16 lanes"
#endif

// One activation tensor of a unit: element (channel c0 + c, step t) at p[c * cs + t * ts]. One
// of the strides is 1: ts (channel-major rows) or cs (channel-last steps).
template <typename E>
struct Act {
  E* p = nullptr;
  int64_t cs = 0, ts = 0;
  E* at(int64_t t) const { return p + t * ts; }
  explicit operator bool() const { return p != nullptr; }
};

// dst[t] (lane c) = element (c, t0 + t) of a for c < nc, t < nt; zero elsewhere.
template <typename E>
inline void load_tile(const Act<const E>& a, int64_t t0, int nc, int nt, vf* dst) {
  const E* src = a.at(t0);
  if (nc == W && a.cs == 1) {  // channel-last: one vector per step
    for (int t = 0; t < nt; ++t) dst[t] = load16(src + t * a.ts);
    for (int t = nt; t < T; ++t) dst[t] = splat(0.0f);
    return;
  }
  if (nt == T && a.ts == 1) {  // channel-major: rows of T steps (zero rows past a tail's nc)
    for (int c = 0; c < nc; ++c) dst[c] = load16(src + c * a.cs);
    for (int c = nc; c < W; ++c) dst[c] = splat(0.0f);
    transpose16(dst);
    return;
  }
  for (int t = 0; t < T; ++t) dst[t] = splat(0.0f);
  for (int c = 0; c < nc; ++c)
    for (int t = 0; t < nt; ++t) dst[t][c] = to_f32(src[c * a.cs + t * a.ts]);
}

// Streaming (non-temporal) stores of 16 elements: no read-for-ownership of the line, and the
// line does not displace cached data. p must be aligned to the 64 (float) or 32 (bf16) bytes.
inline void store16_stream(float* p, vf v) {
#if defined(__AVX512F__)
  _mm512_stream_ps(p, (__m512)v);
#else
  storeu(p, v);
#endif
}
inline void store16_stream(bf16* p, vf v) {
#if defined(__AVX512F__)
  bf16 tmp[W];
  store16(tmp, v);
  __m256i h;
  std::memcpy(&h, tmp, sizeof(h));
  _mm256_stream_si256(reinterpret_cast<__m256i*>(p), h);
#else
  store16(p, v);
#endif
}

// Element (c, t0 + t) of a = src[t] (lane c) for c < nc, t < nt. src is clobbered. stream: use
// streaming stores where the vectors are aligned for them (outputs too big to stay cached) and
// fill whole cache lines (a channel-last bfloat16 vector is half a line: the other half is the
// next unit's, written much later, so those are plain stores).
template <typename E>
inline void store_tile(const Act<E>& a, int64_t t0, int nc, int nt, vf* src, bool stream = false) {
  E* dst = a.at(t0);
  constexpr uintptr_t align = W * sizeof(E);
  const bool aligned = reinterpret_cast<uintptr_t>(dst) % align == 0;
  if (nc == W && a.cs == 1) {
    if (stream && sizeof(E) == 4 && aligned && (a.ts * sizeof(E)) % align == 0) {
      for (int t = 0; t < nt; ++t) store16_stream(dst + t * a.ts, src[t]);
    } else {
      for (int t = 0; t < nt; ++t) store16(dst + t * a.ts, src[t]);
    }
    return;
  }
  if (nt == T && a.ts == 1) {  // channel-major: nc rows of T steps
    transpose16(src);
    if (stream && aligned && (a.cs * sizeof(E)) % align == 0) {
      for (int c = 0; c < nc; ++c) store16_stream(dst + c * a.cs, src[c]);
    } else {
      for (int c = 0; c < nc; ++c) store16(dst + c * a.cs, src[c]);
    }
    return;
  }
  for (int c = 0; c < nc; ++c)
    for (int t = 0; t < nt; ++t) from_f32(src[t][c], dst + c * a.cs + t * a.ts);
}

// Ask for the lines of row[0, n) in L2 ahead of their use (rows of 16 channels lie L elements
// apart, too many streams for the hardware prefetchers once the backward walks them backwards).
template <typename E>
inline void prefetch_row(const E* row, int64_t n) {
  const char* a = reinterpret_cast<const char*>(row);
  for (int64_t b = 0; b < n * (int64_t)sizeof(E); b += 64) __builtin_prefetch(a + b, 0, 2);
}

// The 16 channels of step t of a channel-last tensor (one line, two when not aligned).
template <typename E>
inline void prefetch_step(const Act<const E>& a, int64_t t) {
  const E* q = a.at(t);
  __builtin_prefetch(q, 0, 2);
  __builtin_prefetch(q + W - 1, 0, 2);
}

// The same for a row about to be read and written.
inline void prefetch_row_rw(float* row, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) __builtin_prefetch(row + i, 1, 2);
}

inline vf gather_lanes(const float* p, int64_t stride, int nc) {
  vf v = splat(0.0f);
  for (int c = 0; c < nc; ++c) v[c] = p[c * stride];
  return v;
}

}  // namespace

// ----------------------------------------------------------------------- arguments

extern "C" {

// One scan's tensors, filled by scan_cpu.py (a ctypes.Structure of the same layout).
// Strides are in elements, (batch, channel, time) for the (B, D, L) activations u, delta, z,
// dout, out, du, ddelta, dz: all of them channel-major (time stride 1) or, with channel_last,
// all channel-last (channel stride 1). B and C: float32 (B, G, L, N) with unit state stride, or
// with B_fixed / C_fixed one (D, N) matrix for every step (strides 0). A unit never straddles a
// group: units are (batch, group, block of up to 16 of the group's channels).
struct ScanArgs {
  int64_t batch, dim, length, dstate, groups;
  int64_t B_fixed, C_fixed;
  int64_t bf16;          // 1: u, delta, z, dout, out, du, ddelta, dz are bfloat16; 0: float32
                         // (always 0 with a fixed B or C: those cases have float32 code only)
  int64_t softplus;      // apply softplus to delta (+ delta_bias)
  int64_t channel_last;  // the activations' layout (see above)
  int64_t u_s[3], delta_s[3], z_s[3], dout_s[3], out_s[3], du_s[3], ddelta_s[3], dz_s[3];
  int64_t B_sb, B_sg, B_st, C_sb, C_sg, C_st;
  const void *u, *delta, *z, *dout;  // z may be null
  const float *A, *B, *C, *D, *delta_bias;  // D, delta_bias may be null
  void *out, *du, *ddelta, *dz;
  float* ckpt;  // (B, G * ceil(D/G/16), nchunk, N, 16): the state entering each chunk
  float* last;  // nullable: (B, D, N) float32, the state after the last step (forward)
  const float* dlast;  // nullable: (B, D, N) float32, the gradient of that state (backward)
};

}  // extern "C"

namespace {

struct Unit {
  int64_t b, cb, c0, g;
  int nc;
};

// Units (b, g, cb): block cb of group g's channels; the last block of a group has the group's
// tail lanes (nc < 16), which the tile loads and stores mask.
inline Unit make_unit(const ScanArgs& p, int64_t unit) {
  const int64_t dg = p.dim / p.groups, ncb = (dg + W - 1) / W;
  Unit w;
  w.b = unit / (p.groups * ncb);
  w.cb = unit % (p.groups * ncb);
  w.g = w.cb / ncb;
  w.c0 = w.g * dg + (w.cb % ncb) * W;
  w.nc = (int)std::min<int64_t>(W, (w.g + 1) * dg - w.c0);
  return w;
}

inline int64_t nchunks(int64_t length) { return (length + CHUNK - 1) / CHUNK; }

template <typename E, typename P>
inline Act<E> act(P* base, const int64_t* s, const Unit& w) {
  Act<E> a;
  if (base) a.p = static_cast<E*>(base) + w.b * s[0] + w.c0 * s[1], a.cs = s[1], a.ts = s[2];
  return a;
}

// The tensors of one unit (channels c0.. of batch b).
template <typename E>
struct Rows {
  Act<const E> u, delta, z, dout;
  Act<E> out, du, ddelta, dz;
  const float *B, *C;  // (L, N) of the unit's batch and group, time stride B_st / C_st
  int64_t sB, sC;

  Rows(const ScanArgs& p, const Unit& w) {
    u = act<const E>(p.u, p.u_s, w);
    delta = act<const E>(p.delta, p.delta_s, w);
    z = act<const E>(p.z, p.z_s, w);
    dout = act<const E>(p.dout, p.dout_s, w);
    out = act<E>(p.out, p.out_s, w);
    du = act<E>(p.du, p.du_s, w);
    ddelta = act<E>(p.ddelta, p.ddelta_s, w);
    dz = act<E>(p.dz, p.dz_s, w);
    B = p.B + w.b * p.B_sb + w.g * p.B_sg;
    C = p.C + w.b * p.C_sb + w.g * p.C_sg;
    sB = p.B_st, sC = p.C_st;
  }
};

inline vf load_dt(vf raw, vf bias, bool has_bias, bool softplus) {
  vf dt = has_bias ? raw + bias : raw;
  return softplus ? vsoftplus(dt) : dt;
}

// A * log2(e) per lane, so the decay exp(dt * A) is vexp2(dt * A2).
inline void load_A2(const ScanArgs& p, const Unit& w, int N, vf* A2) {
  for (int n = 0; n < N; ++n) A2[n] = gather_lanes(p.A + w.c0 * N + n, N, w.nc) * LOG2E;
}

// A fixed B or C: per lane, the unit's channels' rows of the (D, N) matrix.
inline void load_fixed(const float* M, const Unit& w, int N, vf* dst) {
  for (int n = 0; n < N; ++n) dst[n] = gather_lanes(M + w.c0 * N + n, N, w.nc);
}

// B_t[n] or C_t[n]: one value for every lane (time-varying) or a lane vector (fixed).
template <bool FIXED>
inline vf coef(const float* t, const vf* fixed, int n) {
  if constexpr (FIXED) return fixed[n];
  else return splat(t[n]);
}

// FIX: bit 0 a fixed B, bit 1 a fixed C.
constexpr int FIX_B = 1, FIX_C = 2;

// ----------------------------------------------------------------------- forward

// Outputs at least this big are written with streaming stores (they cannot stay cached).
constexpr int64_t kStreamBytes = int64_t(16) << 20;
constexpr int PF_TILES = 2;  // the forward prefetches this many time tiles ahead

// Forward of one unit. ckpt (nullable): (nchunk, N, W) states entering each chunk.
template <int NS, int FIX, typename E>
void fwd_unit(const ScanArgs& p, const Unit& w, float* ckpt, bool stream) {
  constexpr bool FB = FIX & FIX_B, FC = FIX & FIX_C;
  const int N = NS ? NS : (int)p.dstate;
  const int64_t L = p.length;
  const Rows<E> r(p, w);
  vf A2[NS ? NS : MAXN], x[NS ? NS : MAXN];
  vf Bf[FB ? (NS ? NS : MAXN) : 1], Cf[FC ? (NS ? NS : MAXN) : 1];
  load_A2(p, w, N, A2);
  if constexpr (FB) load_fixed(p.B, w, N, Bf);
  if constexpr (FC) load_fixed(p.C, w, N, Cf);
  for (int n = 0; n < N; ++n) x[n] = splat(0.0f);
  const vf Dv = p.D ? gather_lanes(p.D + w.c0, 1, w.nc) : splat(0.0f);
  const vf bias = p.delta_bias ? gather_lanes(p.delta_bias + w.c0, 1, w.nc) : splat(0.0f);
  const Act<const E>* prefetched[3] = {&r.u, &r.delta, &r.z};
  const bool cl = p.channel_last != 0;
  vf tu[T], td[T], tz[T], ty[T];
  for (int64_t t0 = 0; t0 < L; t0 += T) {
    const int nt = (int)std::min<int64_t>(T, L - t0);
    if (ckpt && t0 % CHUNK == 0) {
      float* s = ckpt + (t0 / CHUNK) * N * W;
      for (int n = 0; n < N; ++n) stream ? store16_stream(s + n * W, x[n]) : storeu(s + n * W, x[n]);
    }
    load_tile(r.u, t0, w.nc, nt, tu);
    load_tile(r.delta, t0, w.nc, nt, td);
    if (r.z) load_tile(r.z, t0, w.nc, nt, tz);
    // elementwise work first, as independent chains the CPU overlaps, then the recurrence
    for (int tt = 0; tt < nt; ++tt) {
      td[tt] = load_dt(td[tt], bias, p.delta_bias != nullptr, p.softplus);
      if (r.z) tz[tt] = tz[tt] * vsigmoid(tz[tt]);
    }
    const int64_t tp = t0 + PF_TILES * T;
    for (int tt = 0; tt < nt; ++tt) {
      if (cl && tp + tt < L) {  // step tt of the three inputs' tile PF_TILES ahead
        for (const Act<const E>* a : prefetched)
          if (*a) prefetch_step(*a, tp + tt);
      } else if (!cl && tp < L) {  // rows 3tt..3tt+2 of the three inputs' tile PF_TILES ahead
        for (int q = 3 * tt; q < 3 * tt + 3; ++q) {
          const Act<const E>& a = *prefetched[q / W];
          if (a && q % W < w.nc) prefetch_row(a.p + (q % W) * a.cs + tp, T);
        }
      }
      const vf dt = td[tt];
      const vf dtu = dt * tu[tt];
      const float* Bt = r.B + (t0 + tt) * r.sB;
      const float* Ct = r.C + (t0 + tt) * r.sC;
      vf y = splat(0.0f);
#pragma GCC unroll 16
      for (int n = 0; n < N; ++n) {
        x[n] = vexp2(dt * A2[n]) * x[n] + dtu * coef<FB>(Bt, Bf, n);
        y += x[n] * coef<FC>(Ct, Cf, n);
      }
      if (p.D) y += Dv * tu[tt];
      if (r.z) y *= tz[tt];
      ty[tt] = y;
    }
    store_tile(r.out, t0, w.nc, nt, ty, stream);
  }
  if (p.last) {
    float* s = p.last + (w.b * p.dim + w.c0) * N;
    for (int c = 0; c < w.nc; ++c)
      for (int n = 0; n < N; ++n) s[c * N + n] = x[n][c];
  }
}

// ----------------------------------------------------------------------- backward

// Per-thread scratch of the backward, sized for one chunk, one block of NB state dims and up to
// VMAX units (index [step * V + v]). The per-step arrays lie a vector more than a multiple of
// 4 KiB apart: at exactly 4 KiB the same step of every array would fall in one L1 set.
constexpr int VMAX = 2;

struct Scratch {
  static constexpr int STRIDE = CHUNK * VMAX + 1;
  vf *cu, *cdt, *csig, *cz, *csz, *cg, *cgy, *cy, *sA, *sB;  // per step and unit
  vf *xs, *dAs;  // (CHUNK + 1) * NB: the block's dA_t x_{t-1} and dA_t over the chunk
  vf *h, *gA, *dA_next;  // N * V each: carried from one chunk to the previous
  vf *gB, *gC;           // N * V each: per-lane sums for a fixed B or C
  vf* red;               // NB * T: contributions to dB or dC awaiting their lane reduction
  void* mem;

  explicit Scratch(int64_t N) {
    const int64_t nvec = 10 * STRIDE + 2 * (CHUNK + 1) * NB + 5 * N * VMAX + NB * T;
    mem = std::aligned_alloc(sizeof(vf), nvec * sizeof(vf));
    vf* q = static_cast<vf*>(mem);
    for (vf** f : {&cu, &cdt, &csig, &cz, &csz, &cg, &cgy, &cy, &sA, &sB}) *f = q, q += STRIDE;
    xs = q, q += (CHUNK + 1) * NB;
    dAs = q, q += (CHUNK + 1) * NB;
    h = q, q += N * VMAX;
    gA = q, q += N * VMAX;
    dA_next = q, q += N * VMAX;
    gB = q, q += N * VMAX;
    gC = q, q += N * VMAX;
    red = q;
  }
  ~Scratch() { std::free(mem); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

// One thread's sums over its units, in the partial buffer the caller gives it:
// dA (D, N), dD (D), ddelta_bias (D), dB and dC (B, G, N, L), or (D, N) where fixed.
struct Partial {
  float *dA, *dD, *ddelta_bias, *dB, *dC;

  static int64_t bc_size(const ScanArgs& p, bool fixed) {
    return fixed ? p.dim * p.dstate : p.batch * p.groups * p.dstate * p.length;
  }
  static int64_t size(const ScanArgs& p) {
    return p.dim * p.dstate + 2 * p.dim + bc_size(p, p.B_fixed) + bc_size(p, p.C_fixed);
  }
  explicit Partial(const ScanArgs& p, float* mem) {
    dA = mem;
    dD = dA + p.dim * p.dstate;
    ddelta_bias = dD + p.dim;
    dB = ddelta_bias + p.dim;
    dC = dB + bc_size(p, p.B_fixed);
  }
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

// Backward of V units (V blocks of 16 channels of one batch and group), chunk by chunk from the
// end. The state dims are independent in the recurrence, so each chunk is done NB dims at a
// time, which keeps the block's states and decays in L1 and its accumulators in registers:
//  1. recompute the block's states from the chunk's saved ones, keeping dA_t = exp(dt_t A)
//     and dA_t x_{t-1};
//     the same pass gives dC_t = sum_lanes gy_t x_t and the block's share of y (for dz);
//  2. run h_t = exp(dt_{t+1} A) h_{t+1} + gy_t C_t backwards: dB, dA, and the block's shares
//     of the sums over n that ddelta and du need; after the last block, each time tile's du,
//     ddelta and dz are complete and written at once.
// A block is NB / V state dims of the V units: NB vectors of state, which with the reverse
// pass's as many accumulators is what the 32 registers hold.
// dB and dC are sums over channels: the V units' terms are added before the lane reduction,
// which is the expensive part (V = 2 halves it).
// Memory: each chunk's 16-channel rows of u, delta, dout, z and its rows of the dB and dC sums
// are prefetched into L2 during the chunk after them (spread over the first block's
// recompute); without that the loads stall the core for a quarter of the backward.
template <int NS, int V, int FIX, typename E>
void bwd_unit(const ScanArgs& p, const Unit* ws, const float* const* ckpts, Partial& g,
              Scratch& sc, bool stream) {
  constexpr bool FB = FIX & FIX_B, FC = FIX & FIX_C;
  constexpr int NBV = NB / V;  // state dims per block
  static_assert(NS % NBV == 0, "a specialised d_state must be a whole number of blocks");
  const int N = NS ? NS : (int)p.dstate;
  const int64_t L = p.length;
  const Unit& w0 = ws[0];
  const int nc = w0.nc;  // V > 1 only for full blocks
  const int64_t bg = (w0.b * p.groups + w0.g) * N * L;  // the units' (N, L) block of dB and dC
  const Rows<E> r[2] = {Rows<E>(p, ws[0]), Rows<E>(p, ws[V - 1])};  // r[v], v < V
  vf A2[V][NS ? NS : MAXN], Dv[V], bias[V], gD[V], gbias[V];
  vf Bf[FB ? V : 1][FB ? (NS ? NS : MAXN) : 1], Cf[FC ? V : 1][FC ? (NS ? NS : MAXN) : 1];
  for (int v = 0; v < V; ++v) {
    load_A2(p, ws[v], N, A2[v]);
    if constexpr (FB) load_fixed(p.B, ws[v], N, Bf[v]);
    if constexpr (FC) load_fixed(p.C, ws[v], N, Cf[v]);
    Dv[v] = p.D ? gather_lanes(p.D + ws[v].c0, 1, nc) : splat(0.0f);
    bias[v] = p.delta_bias ? gather_lanes(p.delta_bias + ws[v].c0, 1, nc) : splat(0.0f);
    gD[v] = gbias[v] = splat(0.0f);
  }
  for (int n = 0; n < N * V; ++n)
    sc.h[n] = sc.gA[n] = sc.dA_next[n] = sc.gB[n] = sc.gC[n] = splat(0.0f);
  if (p.dlast) {  // the final state's gradient enters h at the last step, with a unit decay
    for (int v = 0; v < V; ++v)
      for (int n = 0; n < N; ++n) {
        sc.h[n * V + v] = gather_lanes(p.dlast + (ws[v].b * p.dim + ws[v].c0) * N + n, N, nc);
        sc.dA_next[n * V + v] = splat(1.0f);
      }
  }
  auto at = [](int tt, int v) { return tt * V + v; };
  auto xd = [&](int tt, int i, int v) -> vf& { return sc.xs[(tt * NBV + i) * V + v]; };
  auto dAs = [&](int tt, int i, int v) -> vf& { return sc.dAs[(tt * NBV + i) * V + v]; };
  // rows to prefetch per chunk: 4 inputs x 16 channels x V units, then the N rows of dB and dC
  constexpr int NIN = 4 * W * V;
  const int nrows = NIN + 2 * N;
  const bool cl = p.channel_last != 0;

  for (int64_t k = nchunks(L) - 1; k >= 0; --k) {
    const int64_t cs = k * CHUNK;
    const int clen = (int)std::min<int64_t>(CHUNK, L - cs);
    // the chunk's inputs, and the elementwise terms of every step
    for (int v = 0; v < V; ++v) {
      const Rows<E>& rv = r[v];
      for (int j = 0; j < clen; j += T) {
        const int nt = std::min(T, clen - j);
        vf tu[T], td[T], tg[T], tz[T];
        load_tile(rv.u, cs + j, nc, nt, tu);
        load_tile(rv.delta, cs + j, nc, nt, td);
        load_tile(rv.dout, cs + j, nc, nt, tg);
        if (rv.z) load_tile(rv.z, cs + j, nc, nt, tz);
        for (int q = 0; q < nt; ++q) {
          const int i = at(j + q, v);
          const vf raw = p.delta_bias ? td[q] + bias[v] : td[q];
          vf dt = raw, sig = splat(1.0f), gy = tg[q];
          if (p.softplus) vsoftplus_sigmoid(raw, dt, sig);
          if (rv.z) {
            const vf sz = vsigmoid(tz[q]);
            sc.cz[i] = tz[q];
            sc.csz[i] = sz;
            gy = gy * tz[q] * sz;
          }
          sc.cu[i] = tu[q];
          sc.cdt[i] = dt;
          sc.csig[i] = sig;
          sc.cg[i] = tg[q];
          sc.cgy[i] = gy;
          gD[v] += gy * tu[q];
          sc.cy[i] = sc.sA[i] = sc.sB[i] = splat(0.0f);
        }
      }
    }
    for (int n0 = 0; n0 < N; n0 += NBV) {
      const int nb = NS ? NBV : std::min(NBV, N - n0);  // a constant when NS is, unrolled
      const bool last = n0 + NBV >= N;  // sA, sB complete after this block's reverse pass
      // 1. recompute
      vf x[NBV][V], gCl[FC ? NBV : 1][V];
      for (int i = 0; i < nb; ++i)
        for (int v = 0; v < V; ++v) {
          x[i][v] = loadu(ckpts[v] + (k * N + n0 + i) * W);  // the state before the chunk
          dAs(clen, i, v) = sc.dA_next[(n0 + i) * V + v];   // the decay one step past it
          if constexpr (FC) gCl[i][v] = sc.gC[(n0 + i) * V + v];
        }
      for (int j0 = 0; j0 < clen; j0 += T) {
        const int nt = std::min(T, clen - j0);
        for (int tt = j0; tt < j0 + nt; ++tt) {
          if (n0 == 0 && k > 0 && cl) {  // steps tt, tt + clen, ... of chunk k - 1
            for (int s = tt; s < CHUNK; s += clen)
              for (int v = 0; v < V; ++v)
                for (const Act<const E>* a : {&r[v].u, &r[v].delta, &r[v].dout, &r[v].z})
                  if (*a) prefetch_step(*a, cs - CHUNK + s);
            for (int q = tt; q < 2 * N; q += clen)
              if (!(q < N ? FC : FB))
                prefetch_row_rw((q < N ? g.dC : g.dB) + bg + (q % N) * L + cs - CHUNK, CHUNK);
          } else if (n0 == 0 && k > 0) {  // rows tt, tt + clen, ... of chunk k - 1
            for (int q = tt; q < nrows; q += clen) {
              if (q >= NIN) {
                const int n = (q - NIN) % N;
                if (!(q - NIN < N ? FC : FB))
                  prefetch_row_rw((q - NIN < N ? g.dC : g.dB) + bg + n * L + cs - CHUNK, CHUNK);
                continue;
              }
              const Rows<E>& rv = r[q / (4 * W)];
              const int c = q % W, which = (q / W) % 4;
              const Act<const E>& a = which == 0   ? rv.u
                                      : which == 1 ? rv.delta
                                      : which == 2 ? rv.dout
                                                   : rv.z;
              if (a && c < nc) prefetch_row(a.p + c * a.cs + cs - CHUNK, CHUNK);
            }
          }
          const float* Bt = r[0].B + (cs + tt) * r[0].sB + n0;
          const float* Ct = r[0].C + (cs + tt) * r[0].sC + n0;
          vf dt[V], dtu[V], gy[V], y[V];
          for (int v = 0; v < V; ++v) {
            dt[v] = sc.cdt[at(tt, v)];
            dtu[v] = dt[v] * sc.cu[at(tt, v)];
            gy[v] = sc.cgy[at(tt, v)];
            y[v] = splat(0.0f);
          }
#pragma GCC unroll 8
          for (int i = 0; i < nb; ++i) {
            vf red = splat(0.0f);
            for (int v = 0; v < V; ++v) {
              const vf dA = vexp2(dt[v] * A2[v][n0 + i]);
              const vf xdec = dA * x[i][v];
              x[i][v] = xdec + dtu[v] * coef<FB>(Bt, Bf[FB ? v : 0] + n0, i);
              dAs(tt, i, v) = dA;
              xd(tt, i, v) = xdec;
              y[v] += x[i][v] * coef<FC>(Ct, Cf[FC ? v : 0] + n0, i);
              if constexpr (FC) gCl[i][v] += gy[v] * x[i][v];
              else red += gy[v] * x[i][v];
            }
            if constexpr (!FC) sc.red[i * T + (tt - j0)] = red;
          }
          for (int v = 0; v < V; ++v) sc.cy[at(tt, v)] += y[v];
        }
        if constexpr (!FC) flush_reduction(sc.red, nb, nt, g.dC + bg + n0 * L + cs + j0, L);
      }
      for (int i = 0; i < nb; ++i)
        for (int v = 0; v < V; ++v) {
          sc.dA_next[(n0 + i) * V + v] = dAs(0, i, v);
          if constexpr (FC) sc.gC[(n0 + i) * V + v] = gCl[i][v];
        }
      // 2. reverse
      vf h[NBV][V], gA[NBV][V], gBl[FB ? NBV : 1][V];
      for (int i = 0; i < nb; ++i)
        for (int v = 0; v < V; ++v) {
          h[i][v] = sc.h[(n0 + i) * V + v];
          gA[i][v] = sc.gA[(n0 + i) * V + v];
          if constexpr (FB) gBl[i][v] = sc.gB[(n0 + i) * V + v];
        }
      for (int j0 = ((clen - 1) / T) * T; j0 >= 0; j0 -= T) {
        const int nt = std::min(T, clen - j0);
        for (int tt = j0 + nt - 1; tt >= j0; --tt) {
          const float* Bt = r[0].B + (cs + tt) * r[0].sB + n0;
          const float* Ct = r[0].C + (cs + tt) * r[0].sC + n0;
          vf dt[V], dtu[V], gy[V], sA[V], sB[V];
          for (int v = 0; v < V; ++v) {
            dt[v] = sc.cdt[at(tt, v)];
            dtu[v] = dt[v] * sc.cu[at(tt, v)];
            gy[v] = sc.cgy[at(tt, v)];
            sA[v] = sB[v] = splat(0.0f);
          }
#pragma GCC unroll 8
          for (int i = 0; i < nb; ++i) {
            vf red = splat(0.0f);
            for (int v = 0; v < V; ++v) {
              vf& hi = h[i][v];
              hi = hi * dAs(tt + 1, i, v) + gy[v] * coef<FC>(Ct, Cf[FC ? v : 0] + n0, i);
              const vf hx = hi * xd(tt, i, v);  // h_t dA_t x_{t-1}
              sA[v] += hx * A2[v][n0 + i];
              sB[v] += hi * coef<FB>(Bt, Bf[FB ? v : 0] + n0, i);
              gA[i][v] += hx * dt[v];
              if constexpr (FB) gBl[i][v] += hi * dtu[v];
              else red += hi * dtu[v];
            }
            if constexpr (!FB) sc.red[i * T + (tt - j0)] = red;
          }
          for (int v = 0; v < V; ++v) {
            sc.sA[at(tt, v)] += sA[v];
            sc.sB[at(tt, v)] += sB[v];
          }
        }
        if constexpr (!FB) flush_reduction(sc.red, nb, nt, g.dB + bg + n0 * L + cs + j0, L);
        if (!last) continue;
        // du, ddelta, dz of the tile (sA holds sum_n h x_prev dA A log2(e), hence the ln 2)
        for (int v = 0; v < V; ++v) {
          const Rows<E>& rv = r[v];
          vf tdu[T], tdd[T], tdz[T];
          for (int q = 0; q < nt; ++q) {
            const int i = at(j0 + q, v);
            const vf uu = sc.cu[i], dt = sc.cdt[i];
            const vf gdt = sc.sA[i] * LN2 + sc.sB[i] * uu;
            const vf gdelta = p.softplus ? gdt * sc.csig[i] : gdt;
            gbias[v] += gdelta;
            tdd[q] = gdelta;
            tdu[q] = dt * sc.sB[i] + (p.D ? sc.cgy[i] * Dv[v] : splat(0.0f));
            if (rv.z) {
              const vf y = p.D ? sc.cy[i] + Dv[v] * uu : sc.cy[i];
              const vf zz = sc.cz[i], sg = sc.csz[i];
              tdz[q] = sc.cg[i] * y * sg * (1.0f + zz * (1.0f - sg));
            }
          }
          store_tile(rv.du, cs + j0, nc, nt, tdu, stream);
          store_tile(rv.ddelta, cs + j0, nc, nt, tdd, stream);
          if (rv.z) store_tile(rv.dz, cs + j0, nc, nt, tdz, stream);
        }
      }
      for (int i = 0; i < nb; ++i)
        for (int v = 0; v < V; ++v) {
          sc.h[(n0 + i) * V + v] = h[i][v];
          sc.gA[(n0 + i) * V + v] = gA[i][v];
          if constexpr (FB) sc.gB[(n0 + i) * V + v] = gBl[i][v];
        }
    }
  }
  for (int v = 0; v < V; ++v) {
    const int64_t c0 = ws[v].c0;
    for (int c = 0; c < nc; ++c) {
      for (int n = 0; n < N; ++n) {
        g.dA[(c0 + c) * N + n] += sc.gA[n * V + v][c];
        if constexpr (FB) g.dB[(c0 + c) * N + n] += sc.gB[n * V + v][c];
        if constexpr (FC) g.dC[(c0 + c) * N + n] += sc.gC[n * V + v][c];
      }
      g.dD[c0 + c] += gD[v][c];
      g.ddelta_bias[c0 + c] += gbias[v][c];
    }
  }
}

template <typename E>
bool streams(const ScanArgs& p) {
  return p.batch * p.dim * p.length * (int64_t)sizeof(E) >= kStreamBytes;
}

inline void fence_streams() {
#if defined(__AVX512F__)
  _mm_sfence();  // streaming stores are weakly ordered: publish them before returning
#endif
}

template <typename E>
void fwd_units(const ScanArgs& p, int64_t begin, int64_t end) {
  const int64_t per_unit = nchunks(p.length) * p.dstate * W;
  const bool stream = streams<E>(p);
  for (int64_t unit = begin; unit < end; ++unit) {
    const Unit w = make_unit(p, unit);
    float* ck = p.ckpt ? p.ckpt + unit * per_unit : nullptr;
    const int fix = p.B_fixed * FIX_B + p.C_fixed * FIX_C;
    if constexpr (std::is_same_v<E, float>) {  // a fixed B or C: float32 rows only (rare)
      if (fix) {
        if (fix == FIX_B)
          fwd_unit<0, FIX_B, E>(p, w, ck, stream);
        else if (fix == FIX_C)
          fwd_unit<0, FIX_C, E>(p, w, ck, stream);
        else
          fwd_unit<0, FIX_B | FIX_C, E>(p, w, ck, stream);
        continue;
      }
    }
    if (p.dstate == 16)
      fwd_unit<16, 0, E>(p, w, ck, stream);
    else
      fwd_unit<0, 0, E>(p, w, ck, stream);
  }
  if (stream) fence_streams();
}

// Two units go together when they are full blocks of the same batch and group.
inline bool pairable(const Unit& a, const Unit& b) {
  return a.b == b.b && a.g == b.g && a.nc == W && b.nc == W;
}

template <typename E>
void bwd_units(const ScanArgs& p, float* partial, int64_t begin, int64_t end) {
  std::memset(partial, 0, Partial::size(p) * sizeof(float));
  Partial g(p, partial);
  Scratch sc(p.dstate);
  const int64_t per_unit = nchunks(p.length) * p.dstate * W;
  const bool stream = streams<E>(p);
  for (int64_t unit = begin; unit < end;) {
    const Unit ws[2] = {make_unit(p, unit), make_unit(p, std::min(unit + 1, end - 1))};
    const float* ck[2] = {p.ckpt + unit * per_unit, p.ckpt + (unit + 1) * per_unit};
    const int fix = p.B_fixed * FIX_B + p.C_fixed * FIX_C;
    if constexpr (std::is_same_v<E, float>) {  // one generic instantiation per fixed case
      if (fix) {
        if (fix == FIX_B)
          bwd_unit<0, 1, FIX_B, E>(p, ws, ck, g, sc, stream);
        else if (fix == FIX_C)
          bwd_unit<0, 1, FIX_C, E>(p, ws, ck, g, sc, stream);
        else
          bwd_unit<0, 1, FIX_B | FIX_C, E>(p, ws, ck, g, sc, stream);
        unit += 1;
        continue;
      }
    }
    if (unit + 1 < end && pairable(ws[0], ws[1])) {
      if (p.dstate == 16)
        bwd_unit<16, 2, 0, E>(p, ws, ck, g, sc, stream);
      else
        bwd_unit<0, 2, 0, E>(p, ws, ck, g, sc, stream);
      unit += 2;
    } else {
      if (p.dstate == 16)
        bwd_unit<16, 1, 0, E>(p, ws, ck, g, sc, stream);
      else
        bwd_unit<0, 1, 0, E>(p, ws, ck, g, sc, stream);
      unit += 1;
    }
  }
  if (stream) fence_streams();
}

template <typename E>
void sum_parts(const float* parts, int64_t nparts, int64_t stride, int64_t offset, int64_t n,
               E* dst) {
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    vf s = loadu(parts + offset + i);
    for (int64_t k = 1; k < nparts; ++k) s += loadu(parts + k * stride + offset + i);
    store16(dst + i, s);
  }
  for (; i < n; ++i) {
    float s = parts[offset + i];
    for (int64_t k = 1; k < nparts; ++k) s += parts[k * stride + offset + i];
    from_f32(s, dst + i);
  }
}

}  // namespace

extern "C" {

int dimbench_scan_abi() { return ABI; }
int dimbench_scan_chunk() { return CHUNK; }
int dimbench_scan_lanes() { return W; }
int dimbench_scan_max_dstate() { return MAXN; }
int dimbench_scan_flushes_denormals() { return kFlushes; }
int dimbench_scan_native_bf16() {
#if defined(__AVX512BF16__)
  return 1;
#else
  return 0;
#endif
}
// This thread's floating-point control word (MXCSR on x86, FPCR on Arm; 0 elsewhere).
uint64_t dimbench_fp_control() { return fp_control(); }

// Floats of one thread's backward partial sums (see dimbench_scan_bwd).
int64_t dimbench_scan_partial_size(const ScanArgs* a) { return Partial::size(*a); }

// Units [unit_begin, unit_end) of the forward: out (and ckpt when not null).
void dimbench_scan_fwd(const ScanArgs* a, int64_t unit_begin, int64_t unit_end) {
  with_denormals_flushed([&] {
    if (a->bf16)
      fwd_units<bf16>(*a, unit_begin, unit_end);
    else
      fwd_units<float>(*a, unit_begin, unit_end);
  });
}

// Units [unit_begin, unit_end) of the backward: du, ddelta, dz in full for the units' rows, and
// this thread's sums of dA, dD, ddelta_bias, dB, dC in partial (dimbench_scan_partial_size
// floats; overwritten, no zeroing needed). dimbench_scan_bwd_reduce adds the threads' up.
void dimbench_scan_bwd(const ScanArgs* a, float* partial, int64_t unit_begin, int64_t unit_end) {
  with_denormals_flushed([&] {
    if (a->bf16)
      bwd_units<bf16>(*a, partial, unit_begin, unit_end);
    else
      bwd_units<float>(*a, partial, unit_begin, unit_end);
  });
}

// Sum nparts partials into dA (D, N), dD, ddelta_bias (D) float32 and dB, dC (B, G, N, L) or
// (D, N) where fixed, float32 or bfloat16 (dB_bf16, dC_bf16). Any output pointer may be null (not wanted).
void dimbench_scan_bwd_reduce(const ScanArgs* a, const float* parts, int64_t nparts, float* dA,
                              float* dD, float* ddelta_bias, void* dB, int64_t dB_bf16, void* dC,
                              int64_t dC_bf16) {
  with_denormals_flushed([&] {
    const ScanArgs& p = *a;
    const int64_t stride = Partial::size(p);
    const int64_t nB = Partial::bc_size(p, p.B_fixed), nC = Partial::bc_size(p, p.C_fixed);
    const int64_t oD = p.dim * p.dstate, oB = oD + 2 * p.dim, oC = oB + nB;
    if (dA) sum_parts(parts, nparts, stride, 0, oD, dA);
    if (dD) sum_parts(parts, nparts, stride, oD, p.dim, dD);
    if (ddelta_bias) sum_parts(parts, nparts, stride, oD + p.dim, p.dim, ddelta_bias);
    for (auto [dst, is_bf16, off, nbc] :
         {std::tuple{dB, dB_bf16, oB, nB}, std::tuple{dC, dC_bf16, oC, nC}}) {
      if (!dst) continue;
      if (is_bf16)
        sum_parts(parts, nparts, stride, off, nbc, static_cast<bf16*>(dst));
      else
        sum_parts(parts, nparts, stride, off, nbc, static_cast<float*>(dst));
    }
  });
}

}  // extern "C"
