// Causal depthwise conv1d (+ bias, + SiLU) forward and backward for the CPU.
//
// out[b, d, t] = act(bias[d] + sum_k w[d, k] * x[b, d, t - K + 1 + k]), zeros before t = 0.
// Activations are fp32 or bf16 in one of two layouts, the same for x, out, dout and dx (any batch
// strides): channel-major (rows of L contiguous elements, any channel stride) or channel-last
// (the channels of a step contiguous, any time stride: a (B, L, D) projection's output, or a
// channel slice of one); weights, bias and all arithmetic are fp32. Vectors hold 16 elements
// (dimbench_simd.h, with the bf16 conversions and their rounding rule): 16 steps of a row
// channel-major, 16 channels of a step channel-last. The forward reads x once and writes out
// once. The backward recomputes the pre-activation from x (nothing but x is
// saved), then g = dout * act'(pre) with the weight and bias sums, and dx_t = sum_j w[K-1-j]
// g[t+j]: per row from an L1/L2-resident scratch row (channel-major), or step by step from a
// ring of the last K steps' g (channel-last).
// A work unit is one channel over the whole batch, so each channel's weight and bias gradient is
// summed by one thread in a fixed order: deterministic, whatever the thread count.
// Every entry point runs with denormals flushed (FTZ and DAZ) and restores the caller's mode,
// as the scan does: one rule for subnormals in both kernels (dimbench_simd.h).
//
// Compiled at first use by dimbench/ops/conv_cpu.py (through ops/cbuild.py), loaded by ctypes.

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "dimbench_simd.h"

namespace {

constexpr int V = 16;     // time steps per vector
constexpr int MAXK = 64;  // widest kernel

// Element access for fp32 (T = float) and bf16 (T = bf16) activations.
template <typename E>
struct IOf {
  using T = E;
  static vf load(const T* p) { return load16(p); }
  static void store(T* p, vf v) { store16(p, v); }
  static float get(const T* p) { return to_f32(*p); }
  static void put(T* p, float v) { from_f32(v, p); }
};
using F32 = IOf<float>;
using BF16 = IOf<bf16>;

// exp(x), relative error ~2e-7 (Cephes expf: x = k ln2 + r, a degree-5 polynomial in r, times
// 2^k); 0 below -87.3, clamped at exp(88.4) above.
inline vf vexp(vf x) {
  const vf lo = splat(-87.3f), hi = splat(88.3f);
  vf xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const vf k = (xc * 1.44269504088896341f + magic) - magic;
  vf r = xc - k * 0.693359375f;
  r = r - k * -2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  vf y = p * (r * r) + r + 1.0f;
  const vi bits = (__builtin_convertvector(k, vi) + 127) << 23;
  y = y * (vf)bits;
  return x < lo ? splat(0.0f) : y;
}

#if defined(__AVX512F__)
// AVX-512: exp(-x) = 2^(-x log2 e) with 2^r a degree-5 polynomial (relative error 2e-7 on
// |r| <= 1/2) scaled by vscalefps, and 1 / (1 + e) by vrcp14ps and one Newton step (error
// ~1e-7 relative). The exponent is capped at 126 so that 1 + e stays finite: sigmoid(x) for
// x < -87 comes out as ~2^-126 instead of smaller, an absolute error below 1e-37.
inline vf vsigmoid(vf x) {
  vf a = x * -1.44269504088896341f;
  a = a > splat(126.0f) ? splat(126.0f) : a;
  const __m512 k = _mm512_roundscale_ps((__m512)a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const vf r = a - (vf)k;
  vf q = splat(1.3264722815e-3f);
  q = q * r + 9.6715133807e-3f;
  q = q * r + 5.5507337619e-2f;
  q = q * r + 2.4022242072e-1f;
  q = q * r + 6.9314697758e-01f;
  q = q * r + 1.0f;
  const vf d = (vf)_mm512_scalef_ps((__m512)q, k) + 1.0f;
  const vf y = (vf)_mm512_rcp14_ps((__m512)d);
  return y * (2.0f - d * y);
}
#else
inline vf vsigmoid(vf x) { return 1.0f / (1.0f + vexp(-x)); }
#endif

// x[t0 - K + 1 .. t0 + V) of one row as fp32 in buf, zeros outside [0, L).
template <class IO>
inline void load_window(const typename IO::T* x, int64_t L, int64_t t0, int K, float* buf) {
  for (int i = 0; i < V + K - 1; ++i) {
    const int64_t s = t0 - (K - 1) + i;
    buf[i] = (s >= 0 && s < L) ? IO::get(x + s) : 0.0f;
  }
}

// Lanes S..S+15 of the 32-lane concatenation [a, b] (one valignd with AVX-512).
template <int S, size_t... I>
inline vf shift_impl(vf a, vf b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, (S + int(I))...);
}

template <int S>
inline vf shift(vf a, vf b) {
  if constexpr (S == V) return b;
  else return shift_impl<S>(a, b, std::make_index_sequence<V>{});
}

// The K windows of one inner block: window k starts at t0 - K + 1 + k. With K a compile-time
// constant they are built from the block's vector and the one before (read once, converted
// once); otherwise each is an unaligned load.
template <int KS>
struct Windows {
  vf prev, cur;
  template <int k>
  inline vf get() const {
    return shift<V - (KS - 1) + k>(prev, cur);
  }
};

template <int KS, class Fn, size_t... I>
inline void for_windows_impl(const Windows<KS>& win, Fn& fn, std::index_sequence<I...>) {
  (fn(int(I), win.template get<int(I)>()), ...);
}

template <int KS, class Fn>
inline void for_windows(const Windows<KS>& win, Fn fn) {
  for_windows_impl(win, fn, std::make_index_sequence<KS>{});
}

// Calls body(t0, nt, window) for each block of V steps of a row; window(k) is the vector of
// x[t0 - K + 1 + k + lane] (zero outside [0, L)).
template <int KS, class IO, class Body>
inline void for_blocks(const typename IO::T* x, int64_t L, int K, Body body) {
  float buf[V + MAXK];
  vf prev = splat(0.0f);
  for (int64_t t0 = 0; t0 < L; t0 += V) {
    const int64_t nt = std::min<int64_t>(V, L - t0);
    if constexpr (KS != 0) {
      if (t0 >= V && nt == V) {  // x[t0 - K + 1 ..) lies in prev (K <= V + 1)
        const vf cur = IO::load(x + t0);
        const Windows<KS> win{prev, cur};
        body(t0, nt, [&](auto each) { for_windows(win, each); });
        prev = cur;
        continue;
      }
    } else if (t0 >= K - 1 && nt == V) {
      const typename IO::T* base = x + t0 - (K - 1);
      body(t0, nt, [&](auto each) {
        for (int k = 0; k < K; ++k) each(k, IO::load(base + k));
      });
      continue;
    }
    {
      load_window<IO>(x, L, t0, K, buf);
      body(t0, nt, [&](auto each) {
        for (int k = 0; k < K; ++k) each(k, loadu(buf + k));
      });
      if (nt == V) prev = loadu(buf + K - 1);
    }
  }
}

template <int KS, class IO>
void fwd_row(const typename IO::T* x, typename IO::T* out, int64_t L, int K, const float* w,
             float bias, bool silu) {
  for_blocks<KS, IO>(x, L, K, [&](int64_t t0, int64_t nt, auto windows) {
    vf acc = splat(bias);
    windows([&](int k, vf xv) { acc += w[k] * xv; });
    if (silu) acc = acc * vsigmoid(acc);
    if (nt == V) {
      IO::store(out + t0, acc);
    } else {
      for (int i = 0; i < nt; ++i) IO::put(out + t0 + i, acc[i]);
    }
  });
}

// One row's backward. g: scratch of L + V + K floats. Adds to dw[0..K) and *db.
template <int KS, class IO>
void bwd_row(const typename IO::T* x, const typename IO::T* dout, typename IO::T* dx, int64_t L,
             int K, const float* w, float bias, bool silu, float* g, float* dw, float* db) {
  const int KK = KS ? KS : K;
  vf gw[KS ? KS : MAXK];
  for (int k = 0; k < KK; ++k) gw[k] = splat(0.0f);
  vf gb = splat(0.0f);
  // 1. g = dout * act'(pre), and the weight / bias sums
  for_blocks<KS, IO>(x, L, K, [&](int64_t t0, int64_t nt, auto windows) {
    vf go;
    if (nt == V) {
      go = IO::load(dout + t0);
    } else {
      go = splat(0.0f);
      for (int i = 0; i < nt; ++i) go[i] = IO::get(dout + t0 + i);
    }
    vf xs[KS ? KS : MAXK];
    windows([&](int k, vf xv) { xs[k] = xv; });
    if (silu) {
      vf pre = splat(bias);
      for (int k = 0; k < KK; ++k) pre += w[k] * xs[k];
      const vf s = vsigmoid(pre);
      go = go * s * (1.0f + pre * (1.0f - s));
    }
    storeu(g + t0, go);  // lanes past L are zero: dout was zero there
    gb += go;
    for (int k = 0; k < KK; ++k) gw[k] += go * xs[k];
  });
  const int64_t padded = (L + V - 1) / V * V;
  for (int64_t i = padded; i < padded + V + KK; ++i) g[i] = 0.0f;
  // 2. dx_t = sum_j w[K-1-j] g[t+j]
  for (int64_t t0 = 0; t0 < L; t0 += V) {
    const int64_t nt = std::min<int64_t>(V, L - t0);
    vf acc = splat(0.0f);
#pragma GCC unroll 8
    for (int j = 0; j < KK; ++j) acc += w[KK - 1 - j] * loadu(g + t0 + j);
    if (nt == V) {
      IO::store(dx + t0, acc);
    } else {
      for (int i = 0; i < nt; ++i) IO::put(dx + t0 + i, acc[i]);
    }
  }
  for (int k = 0; k < KK; ++k) {
    float s = 0.0f;
    for (int i = 0; i < V; ++i) s += gw[k][i];
    dw[k] += s;
  }
  float s = 0.0f;
  for (int i = 0; i < V; ++i) s += gb[i];
  *db += s;
}

struct Strides {
  int64_t b, d, t;  // in elements
};

// ----------------------------------------------------------------------- channel-last

// n <= V channels at p as a vector (zeros past n), and back.
template <class IO>
inline vf load_part(const typename IO::T* p, int n) {
  if (n == V) return IO::load(p);
  vf v = splat(0.0f);
  for (int i = 0; i < n; ++i) v[i] = IO::get(p + i);
  return v;
}

template <class IO>
inline void store_part(typename IO::T* p, vf v, int n) {
  if (n == V) {
    IO::store(p, v);
    return;
  }
  for (int i = 0; i < n; ++i) IO::put(p + i, v[i]);
}

// Channels [d0, d1) as vectors of V: the weights per tap (K x nv), the bias (nv).
struct ChannelVectors {
  int64_t d0, nv;
  int last;  // channels in the last vector
  std::vector<vf> w, bias;

  ChannelVectors(const float* weight, const float* b, int K, int64_t d_begin, int64_t d_end)
      : d0(d_begin), nv((d_end - d_begin + V - 1) / V), w(K * nv), bias(nv) {
    last = (int)(d_end - d_begin - (nv - 1) * V);
    for (int64_t j = 0; j < nv; ++j) {
      const int n = width(j);
      vf bj = splat(0.0f);
      for (int i = 0; i < n; ++i) {
        const int64_t d = d0 + j * V + i;
        bj[i] = b ? b[d] : 0.0f;
        for (int k = 0; k < K; ++k) w[k * nv + j][i] = weight[d * K + k];
      }
      for (int i = n; i < V; ++i)
        for (int k = 0; k < K; ++k) w[k * nv + j][i] = 0.0f;
      bias[j] = bj;
    }
  }
  int width(int64_t j) const { return j == nv - 1 ? last : V; }
};

// The channel-last loops work on tiles of TILE steps by one or JB channel vectors: a tile's
// taps, the weights and the running sums stay in registers, and each step of the next tile is
// prefetched. (Whole steps in channel order instead keep every channel's weights, taps and sums
// in memory, more than L1 holds at DiM's widths: 2-3x slower.)
constexpr int TILE = 4;  // steps per tile (4-32 measured at E = 1024: 4 fastest)
constexpr int JB = 2;  // channel vectors per forward tile

template <typename T>
inline void prefetch(const T* p, int64_t at, bool write = false) {
  if (write)
    __builtin_prefetch(p + at, 1, 3);
  else
    __builtin_prefetch(p + at, 0, 3);
}

// One forward tile: steps [t0, t1) of channel vectors j0 .. j0 + NJ (FULL: all of 16 channels).
// Prefetches the next tile's steps of these vectors.
template <class IO, int KS, int NJ, bool FULL>
__attribute__((always_inline)) inline void fwd_tile(const typename IO::T* x, Strides sx, typename IO::T* out, Strides so,
                     int64_t L, int K_, const ChannelVectors& cv, bool silu, int64_t t0,
                     int64_t t1, int64_t j0) {
  constexpr int KA = KS ? KS : MAXK;
  const int K = KS ? KS : K_;
  vf w[KA][NJ], bs[NJ], win[KA][NJ];  // win[k]: x at step t - K + 1 + k, k < K - 1
  int n[NJ];
  auto load = [&](const typename IO::T* p, int q) {
    return FULL ? IO::load(p) : load_part<IO>(p, n[q]);
  };
  for (int q = 0; q < NJ; ++q) {
    const int64_t j = j0 + q;
    n[q] = FULL ? V : cv.width(j);
    bs[q] = cv.bias[j];
    for (int k = 0; k < K; ++k) w[k][q] = cv.w[k * cv.nv + j];
    for (int k = 0; k + 1 < K; ++k) {
      const int64_t s = t0 - K + 1 + k;
      win[k][q] = s >= 0 ? load(x + (s * sx.t + j * V), q) : splat(0.0f);
    }
  }
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t tp = t + TILE;
    if (tp < L)
      for (int q = 0; q < NJ; ++q) {
        prefetch(x, tp * sx.t + (j0 + q) * V);
        prefetch(out, tp * so.t + (j0 + q) * V, true);
      }
    for (int q = 0; q < NJ; ++q) {
      const int64_t j = j0 + q;
      const vf cur = load(x + (t * sx.t + j * V), q);
      vf acc = bs[q] + w[K - 1][q] * cur;
      for (int k = 0; k + 1 < K; ++k) acc += w[k][q] * win[k][q];
      if (silu) acc = acc * vsigmoid(acc);
      if (FULL)
        IO::store(out + (t * so.t + j * V), acc);
      else
        store_part<IO>(out + (t * so.t + j * V), acc, n[q]);
      for (int k = 0; k + 2 < K; ++k) win[k][q] = win[k + 1][q];
      if (K > 1) win[K - 2][q] = cur;
    }
  }
}

template <class IO, int KS>
void fwd_channels_last(int64_t batch, int64_t L, int K_, const void* xv, Strides sx,
                       const float* weight, const float* bias, bool silu, void* outv, Strides so,
                       int64_t d_begin, int64_t d_end) {
  using T = typename IO::T;
  const int K = KS ? KS : K_;
  const ChannelVectors cv(weight, bias, K, d_begin, d_end);
  for (int64_t b = 0; b < batch; ++b) {
    const T* x = static_cast<const T*>(xv) + b * sx.b + d_begin * sx.d;
    T* out = static_cast<T*>(outv) + b * so.b + d_begin * so.d;
    for (int64_t t0 = 0; t0 < L; t0 += TILE) {
      const int64_t t1 = std::min<int64_t>(L, t0 + TILE);
      const int64_t full = cv.last == V ? cv.nv : cv.nv - 1;  // vectors of 16 channels
      int64_t j0 = 0;
      for (; j0 + JB <= full; j0 += JB)
        fwd_tile<IO, KS, JB, true>(x, sx, out, so, L, K, cv, silu, t0, t1, j0);
      for (; j0 < full; ++j0)
        fwd_tile<IO, KS, 1, true>(x, sx, out, so, L, K, cv, silu, t0, t1, j0);
      if (full < cv.nv)
        fwd_tile<IO, KS, 1, false>(x, sx, out, so, L, K, cv, silu, t0, t1, full);
    }
  }
}

// g_t = dout_t act'(pre_t); dx_{t-K+1} = sum_i w[K-1-i] g_{t-K+1+i} as soon as g_t is known; the
// weight and bias sums per channel vector (lane = channel: the same order of additions for a
// channel whatever the thread split) over blocks of SUM_BLOCK steps that are then added up (a
// running sum over all B * L steps would lose digits). Carried from tile to tile per vector: the
// last K - 1 g's and the block sums.
constexpr int SUM_BLOCK = 64;  // a multiple of TILE

// The carried state of one channel vector between backward tiles: the last K g's and the
// current block's weight and bias sums; and the totals over closed blocks.
struct BwdCarry {
  std::vector<vf> ring, bw, bb, gw, gb;
  BwdCarry(int K, int64_t nv)
      : ring(K * nv), bw(K * nv), bb(nv), gw(K * nv, splat(0.0f)), gb(nv, splat(0.0f)) {}
  void reset() {
    std::fill(ring.begin(), ring.end(), splat(0.0f));
    std::fill(bw.begin(), bw.end(), splat(0.0f));
    std::fill(bb.begin(), bb.end(), splat(0.0f));
  }
};

// One backward tile: steps [t0, t1) (up to L + K - 1: g = 0 past L, the last dx's) of channel
// vector j (FULL: 16 channels). close: add the block sums to the totals afterwards.
template <class IO, int KS, bool FULL>
__attribute__((always_inline)) inline void bwd_tile(
    const typename IO::T* x, Strides sx, const typename IO::T* dout, Strides sg,
    typename IO::T* dx, Strides sdx, int64_t L, int K_, const ChannelVectors& cv, bool silu,
    BwdCarry& c, int64_t t0, int64_t t1, int64_t j, bool close) {
  constexpr int KA = KS ? KS : MAXK;
  const int K = KS ? KS : K_;
  const int64_t nv = cv.nv;
  const int n = FULL ? V : cv.width(j);
  auto load = [&](const typename IO::T* p) { return FULL ? IO::load(p) : load_part<IO>(p, n); };
  vf w[KA], win[KA], gr[KA], sw[KA], sb = c.bb[j];  // gr[i]: g at step t - K + 1 + i
  const vf bs = cv.bias[j];
  for (int k = 0; k < K; ++k) {
    w[k] = cv.w[k * nv + j];
    sw[k] = c.bw[k * nv + j];
    gr[k] = c.ring[k * nv + j];
  }
  for (int k = 0; k + 1 < K; ++k) {
    const int64_t s = t0 - K + 1 + k;
    win[k] = s >= 0 && s < L ? load(x + (s * sx.t + j * V)) : splat(0.0f);
  }
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t tp = t + TILE;
    if (tp < L) {
      prefetch(x, tp * sx.t + j * V);
      prefetch(dout, tp * sg.t + j * V);
      prefetch(dx, (tp - K + 1) * sdx.t + j * V, true);
    }
    vf go = splat(0.0f);
    if (t < L) {
      win[K - 1] = load(x + (t * sx.t + j * V));
      go = load(dout + (t * sg.t + j * V));
      if (silu) {
        vf pre = bs;
        for (int k = 0; k < K; ++k) pre += w[k] * win[k];
        const vf s = vsigmoid(pre);
        go = go * s * (1.0f + pre * (1.0f - s));
      }
      sb += go;
      for (int k = 0; k < K; ++k) sw[k] += go * win[k];
      for (int k = 0; k + 1 < K; ++k) win[k] = win[k + 1];
    }
    for (int i = 0; i + 1 < K; ++i) gr[i] = gr[i + 1];
    gr[K - 1] = go;
    const int64_t td = t - K + 1;
    if (td >= 0) {
      vf acc = splat(0.0f);
      for (int i = 0; i < K; ++i) acc += w[K - 1 - i] * gr[i];
      if (FULL)
        IO::store(dx + (td * sdx.t + j * V), acc);
      else
        store_part<IO>(dx + (td * sdx.t + j * V), acc, n);
    }
  }
  for (int k = 0; k < K; ++k) {
    c.ring[k * nv + j] = gr[k];
    if (close) {
      c.gw[k * nv + j] += sw[k];
      sw[k] = splat(0.0f);
    }
    c.bw[k * nv + j] = sw[k];
  }
  if (close) c.gb[j] += sb, sb = splat(0.0f);
  c.bb[j] = sb;
}

template <class IO, int KS>
void bwd_channels_last(int64_t batch, int64_t L, int K_, const void* xv, Strides sx,
                       const float* weight, const float* bias, bool silu, const void* doutv,
                       Strides sg, void* dxv, Strides sdx, float* dw, float* db,
                       int64_t d_begin, int64_t d_end) {
  using T = typename IO::T;
  const int K = KS ? KS : K_;
  const ChannelVectors cv(weight, bias, K, d_begin, d_end);
  const int64_t nv = cv.nv, full = cv.last == V ? nv : nv - 1;
  BwdCarry c(K, nv);
  for (int64_t b = 0; b < batch; ++b) {
    const T* x = static_cast<const T*>(xv) + b * sx.b + d_begin * sx.d;
    const T* dout = static_cast<const T*>(doutv) + b * sg.b + d_begin * sg.d;
    T* dx = static_cast<T*>(dxv) + b * sdx.b + d_begin * sdx.d;
    c.reset();
    for (int64_t t0 = 0; t0 < L + K - 1; t0 += TILE) {
      const int64_t t1 = std::min<int64_t>(L + K - 1, t0 + TILE);
      const bool close = t1 % SUM_BLOCK == 0 || t1 == L + K - 1;
      for (int64_t j = 0; j < full; ++j)
        bwd_tile<IO, KS, true>(x, sx, dout, sg, dx, sdx, L, K, cv, silu, c, t0, t1, j, close);
      if (full < nv)
        bwd_tile<IO, KS, false>(x, sx, dout, sg, dx, sdx, L, K, cv, silu, c, t0, t1, full, close);
    }
  }
  for (int64_t j = 0; j < nv; ++j)
    for (int i = 0; i < cv.width(j); ++i) {
      const int64_t d = d_begin + j * V + i;
      for (int k = 0; k < K; ++k) dw[d * K + k] = c.gw[k * nv + j][i];
      db[d] = c.gb[j][i];
    }
}

template <class IO, int KS>
void fwd_channels(int64_t batch, int64_t length, int K, const void* x, Strides sx,
                  const float* w, const float* bias, bool silu, void* out, Strides so,
                  int64_t d_begin, int64_t d_end) {
  using T = typename IO::T;
  for (int64_t d = d_begin; d < d_end; ++d)
    for (int64_t b = 0; b < batch; ++b)
      fwd_row<KS, IO>(static_cast<const T*>(x) + b * sx.b + d * sx.d,
                      static_cast<T*>(out) + b * so.b + d * so.d, length, K, w + d * K,
                      bias ? bias[d] : 0.0f, silu);
}

template <class IO, int KS>
void bwd_channels(int64_t batch, int64_t length, int K, const void* x, Strides sx,
                  const float* w, const float* bias, bool silu, const void* dout, Strides sg,
                  void* dx, Strides sdx, float* dw, float* db, int64_t d_begin, int64_t d_end) {
  using T = typename IO::T;
  std::vector<float> g(length + 2 * V + K);
  for (int64_t d = d_begin; d < d_end; ++d) {
    float gb = 0.0f;
    for (int k = 0; k < K; ++k) dw[d * K + k] = 0.0f;
    for (int64_t b = 0; b < batch; ++b)
      bwd_row<KS, IO>(static_cast<const T*>(x) + b * sx.b + d * sx.d,
                      static_cast<const T*>(dout) + b * sg.b + d * sg.d,
                      static_cast<T*>(dx) + b * sdx.b + d * sdx.d, length, K, w + d * K,
                      bias ? bias[d] : 0.0f, silu, g.data(), dw + d * K, &gb);
    db[d] = gb;
  }
}

template <class IO>
void fwd_dispatch(bool cl, int64_t batch, int64_t length, int K, const void* x, Strides sx,
                  const float* w, const float* bias, bool silu, void* out, Strides so,
                  int64_t d0, int64_t d1) {
#define DIMBENCH_FWD(KS)                                                                    \
  return cl ? fwd_channels_last<IO, KS>(batch, length, K, x, sx, w, bias, silu, out, so, d0, d1) \
            : fwd_channels<IO, KS>(batch, length, K, x, sx, w, bias, silu, out, so, d0, d1)
  switch (K) {
    case 2: DIMBENCH_FWD(2);
    case 3: DIMBENCH_FWD(3);
    case 4: DIMBENCH_FWD(4);
    default: DIMBENCH_FWD(0);
  }
#undef DIMBENCH_FWD
}

template <class IO>
void bwd_dispatch(bool cl, int64_t batch, int64_t length, int K, const void* x, Strides sx,
                  const float* w, const float* bias, bool silu, const void* dout, Strides sg,
                  void* dx, Strides sdx, float* dw, float* db, int64_t d0, int64_t d1) {
#define DIMBENCH_BWD(KS)                                                                      \
  return cl ? bwd_channels_last<IO, KS>(batch, length, K, x, sx, w, bias, silu, dout, sg, dx,  \
                                        sdx, dw, db, d0, d1)                                 \
            : bwd_channels<IO, KS>(batch, length, K, x, sx, w, bias, silu, dout, sg, dx, sdx, \
                                   dw, db, d0, d1)
  switch (K) {
    case 2: DIMBENCH_BWD(2);
    case 3: DIMBENCH_BWD(3);
    case 4: DIMBENCH_BWD(4);
    default: DIMBENCH_BWD(0);
  }
#undef DIMBENCH_BWD
}

}  // namespace

extern "C" {

int dimbench_conv_max_width() { return MAXK; }

// Channels [d_begin, d_end) of the forward. x, out: (B, D, L) with the given (batch, channel,
// time) strides (elements, three each), channel-major (time stride 1) or with channel_last
// channel-last (channel stride 1); fp32 (bf16 = 0) or bf16 (bf16 = 1). w (D, K), bias (D) or
// null: fp32, contiguous.
void dimbench_conv_fwd(int64_t batch, int64_t length, int64_t width, int32_t bf16,
                       int32_t channel_last, const void* x, const int64_t* x_s, const float* w,
                       const float* bias, int32_t silu, void* out, const int64_t* o_s,
                       int64_t d_begin, int64_t d_end) {
  const int K = (int)width;
  const bool cl = channel_last != 0;
  const Strides sx{x_s[0], x_s[1], x_s[2]}, so{o_s[0], o_s[1], o_s[2]};
  with_denormals_flushed([&] {
    if (bf16)
      fwd_dispatch<BF16>(cl, batch, length, K, x, sx, w, bias, silu != 0, out, so, d_begin,
                         d_end);
    else
      fwd_dispatch<F32>(cl, batch, length, K, x, sx, w, bias, silu != 0, out, so, d_begin, d_end);
  });
}

// Channels [d_begin, d_end) of the backward (dout and dx in x's layout): dx written in full for
// those channels, dw (D, K) and db (D) fp32, written (not accumulated) for those channels.
void dimbench_conv_bwd(int64_t batch, int64_t length, int64_t width, int32_t bf16,
                       int32_t channel_last, const void* x, const int64_t* x_s, const float* w,
                       const float* bias, int32_t silu, const void* dout, const int64_t* g_s,
                       void* dx, const int64_t* dx_s, float* dw, float* db, int64_t d_begin,
                       int64_t d_end) {
  const int K = (int)width;
  const bool cl = channel_last != 0;
  const Strides sx{x_s[0], x_s[1], x_s[2]}, sg{g_s[0], g_s[1], g_s[2]};
  const Strides sdx{dx_s[0], dx_s[1], dx_s[2]};
  with_denormals_flushed([&] {
    if (bf16)
      bwd_dispatch<BF16>(cl, batch, length, K, x, sx, w, bias, silu != 0, dout, sg, dx, sdx, dw,
                         db, d_begin, d_end);
    else
      bwd_dispatch<F32>(cl, batch, length, K, x, sx, w, bias, silu != 0, dout, sg, dx, sdx, dw,
                        db, d_begin, d_end);
  });
}

}  // extern "C"
