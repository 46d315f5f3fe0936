// Causal depthwise conv1d (+ bias, + SiLU) forward and backward for the CPU.
//
// out[b, d, t] = act(bias[d] + sum_k w[d, k] * x[b, d, t - K + 1 + k]), zeros before t = 0.
// Activations are fp32 or bf16 (rows of L contiguous elements, any batch and channel strides);
// weights, bias and all arithmetic are fp32. Time is vectorised, 16 steps per vector (GCC/clang
// vector extensions: one zmm with AVX-512, two ymm with AVX2, NEON quads on Arm). The forward
// reads x once and writes out once. The backward recomputes the pre-activation from x (nothing
// but x is saved), then per row: g = dout * act'(pre) into an L1/L2-resident scratch row with
// the weight and bias sums, and dx_t = sum_j w[K-1-j] g[t+j].
// A work unit is one channel over the whole batch, so each channel's weight and bias gradient is
// summed by one thread in a fixed order: deterministic, whatever the thread count.
//
// Compiled at first use by dimbench/ops/conv_cpu.py (through ops/cbuild.py), loaded by ctypes.

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef uint32_t vu __attribute__((vector_size(64)));
typedef uint16_t vh __attribute__((vector_size(32)));

namespace {

constexpr int V = 16;     // time steps per vector
constexpr int MAXK = 64;  // widest kernel

inline vf splat(float a) { return vf{} + a; }

inline vf loadu(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void storeu(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }

// bf16 <-> fp32: bf16 is the high half of an fp32; rounding to nearest even, NaN stays NaN.
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (f != f) return 0x7fc0;
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

struct F32 {
  using T = float;
  static vf load(const T* p) { return loadu(p); }
  static void store(T* p, vf v) { storeu(p, v); }
  static float get(const T* p) { return *p; }
  static void put(T* p, float v) { *p = v; }
};

struct BF16 {
  using T = uint16_t;
#if defined(__AVX512F__) && defined(__AVX512BW__)
  static vf load(const T* p) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p));
    return (vf)_mm512_slli_epi32(w, 16);
  }
#if defined(__AVX512BF16__)
  // vcvtneps2bf16 rounds to nearest even like torch, but flushes subnormals (|v| < 1.2e-38)
  // to zero; the integer route below keeps them, at twice the cost of the whole SiLU pass.
  static void store(T* p, vf v) {
    _mm256_storeu_si256((__m256i*)p, (__m256i)_mm512_cvtneps_pbh((__m512)v));
  }
#else
  static void store(T* p, vf v) {
    const __m512i u = (__m512i)v;
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(
        _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
    const __mmask16 nan = _mm512_cmp_ps_mask((__m512)v, (__m512)v, _CMP_UNORD_Q);
    r = _mm512_mask_mov_epi32(r, nan, _mm512_set1_epi32(0x7fc0));
    _mm256_storeu_si256((__m256i*)p, _mm512_cvtepi32_epi16(r));
  }
#endif
#else
  static vf load(const T* p) {
    vh h;
    std::memcpy(&h, p, sizeof(h));
    return (vf)(__builtin_convertvector(h, vu) << 16);
  }
  static void store(T* p, vf v) {
    const vu u = (vu)v;
    vu r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    r = v != v ? vu{} + 0x7fc0u : r;
    const vh h = __builtin_convertvector(r, vh);
    std::memcpy(p, &h, sizeof(h));
  }
#endif
  static float get(const T* p) { return bf16_to_f32(*p); }
  static void put(T* p, float v) { *p = f32_to_bf16(v); }
};

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
  int64_t b, d;  // in elements; time is contiguous
};

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
void fwd_dispatch(int64_t batch, int64_t length, int K, const void* x, Strides sx,
                  const float* w, const float* bias, bool silu, void* out, Strides so,
                  int64_t d0, int64_t d1) {
  switch (K) {
    case 2: return fwd_channels<IO, 2>(batch, length, K, x, sx, w, bias, silu, out, so, d0, d1);
    case 3: return fwd_channels<IO, 3>(batch, length, K, x, sx, w, bias, silu, out, so, d0, d1);
    case 4: return fwd_channels<IO, 4>(batch, length, K, x, sx, w, bias, silu, out, so, d0, d1);
    default: return fwd_channels<IO, 0>(batch, length, K, x, sx, w, bias, silu, out, so, d0, d1);
  }
}

template <class IO>
void bwd_dispatch(int64_t batch, int64_t length, int K, const void* x, Strides sx,
                  const float* w, const float* bias, bool silu, const void* dout, Strides sg,
                  void* dx, Strides sdx, float* dw, float* db, int64_t d0, int64_t d1) {
#define DIMBENCH_BWD(KS) \
  bwd_channels<IO, KS>(batch, length, K, x, sx, w, bias, silu, dout, sg, dx, sdx, dw, db, d0, d1)
  switch (K) {
    case 2: return DIMBENCH_BWD(2);
    case 3: return DIMBENCH_BWD(3);
    case 4: return DIMBENCH_BWD(4);
    default: return DIMBENCH_BWD(0);
  }
#undef DIMBENCH_BWD
}

}  // namespace

extern "C" {

int dimbench_conv_max_width() { return MAXK; }

// Channels [d_begin, d_end) of the forward. x, out: (B, D, L) with the given batch / channel
// strides (elements) and L contiguous, fp32 (bf16 = 0) or bf16 (bf16 = 1). w (D, K), bias (D)
// or null: fp32, contiguous.
void dimbench_conv_fwd(int64_t batch, int64_t length, int64_t width, int32_t bf16,
                       const void* x, int64_t x_sb, int64_t x_sd, const float* w,
                       const float* bias, int32_t silu, void* out, int64_t o_sb, int64_t o_sd,
                       int64_t d_begin, int64_t d_end) {
  const int K = (int)width;
  const Strides sx{x_sb, x_sd}, so{o_sb, o_sd};
  if (bf16)
    fwd_dispatch<BF16>(batch, length, K, x, sx, w, bias, silu != 0, out, so, d_begin, d_end);
  else
    fwd_dispatch<F32>(batch, length, K, x, sx, w, bias, silu != 0, out, so, d_begin, d_end);
}

// Channels [d_begin, d_end) of the backward: dx written in full for those channels, dw (D, K)
// and db (D) fp32, written (not accumulated) for those channels.
void dimbench_conv_bwd(int64_t batch, int64_t length, int64_t width, int32_t bf16,
                       const void* x, int64_t x_sb, int64_t x_sd, const float* w,
                       const float* bias, int32_t silu, const void* dout, int64_t g_sb,
                       int64_t g_sd, void* dx, int64_t dx_sb, int64_t dx_sd, float* dw, float* db,
                       int64_t d_begin, int64_t d_end) {
  const int K = (int)width;
  const Strides sx{x_sb, x_sd}, sg{g_sb, g_sd}, sdx{dx_sb, dx_sd};
  if (bf16)
    bwd_dispatch<BF16>(batch, length, K, x, sx, w, bias, silu != 0, dout, sg, dx, sdx, dw, db,
                       d_begin, d_end);
  else
    bwd_dispatch<F32>(batch, length, K, x, sx, w, bias, silu != 0, dout, sg, dx, sdx, dw, db,
                      d_begin, d_end);
}

}  // extern "C"
