// What the CPU kernels (selective_scan.cpp, causal_conv1d.cpp) share: float vectors,
// bfloat16 <-> float32, and the floating-point mode their entry points run in.
//
// Vectors: GCC/clang vector extensions of DIMBENCH_LANES floats, which a kernel may define
// before including this header (default 16: one zmm with AVX-512, two ymm with AVX2, NEON quads
// on Arm). load16 / store16 and the like move one such vector (16 values at the default).
//
// bfloat16 is the top half of a float32: widening is exact (a shift). Narrowing follows one
// rule in every kernel, on every path (vector and scalar) and ISA; it is what AVX512-BF16's
// vcvtneps2bf16 does, which the kernels use where the CPU has it:
//   - a finite value rounds to the nearest bfloat16, ties to even (a value at or past half an
//     ulp above the largest bfloat16, 3.3895e38, becomes infinity);
//   - +-inf stays +-inf;
//   - NaN stays NaN, made quiet: its sign and the top 7 payload bits are kept;
//   - a subnormal float32 (|v| < 2^-126) becomes a zero of its sign.
// (torch's conversion differs in the last two: it rounds subnormals, and writes NaN as 0x7fc0
// on its scalar path and 0xffff on its vector path.)
//
// FP mode: every entry point runs its work under with_denormals_flushed, which sets
// flush-to-zero and denormals-are-zero (FZ on Arm) in the calling thread and restores the
// caller's mode afterwards. Subnormal inputs are read as zeros of their sign and subnormal
// results are flushed to zero, so no arithmetic takes the slow subnormal path (decayed scan
// states would otherwise turn subnormal, which costs some CPUs, Intel's microcode assists,
// 10-20x), and the conversion above never sees a subnormal that arithmetic produced.

#pragma once

#include <cstdint>
#include <cstring>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

#ifndef DIMBENCH_LANES
#define DIMBENCH_LANES 16
#endif

typedef float vf __attribute__((vector_size(4 * DIMBENCH_LANES)));
typedef int32_t vi __attribute__((vector_size(4 * DIMBENCH_LANES)));
typedef uint32_t vu __attribute__((vector_size(4 * DIMBENCH_LANES)));
typedef uint16_t vh __attribute__((vector_size(2 * DIMBENCH_LANES)));

namespace {

// ----------------------------------------------------------------------- vectors

inline vf splat(float a) { return vf{} + a; }

inline vf loadu(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void storeu(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }

// ----------------------------------------------------------------------- bfloat16

struct bf16 {
  uint16_t bits;
};

inline float to_f32(float x) { return x; }
inline float to_f32(bf16 x) {
  const uint32_t b = uint32_t(x.bits) << 16;
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

inline void from_f32(float v, float* d) { *d = v; }
inline void from_f32(float v, bf16* d) {
  uint32_t b;
  std::memcpy(&b, &v, 4);
  if ((b & 0x7fffffffu) > 0x7f800000u) {
    d->bits = uint16_t((b >> 16) | 0x40);  // NaN: quiet, sign and top payload bits kept
    return;
  }
  if ((b & 0x7f800000u) == 0) b &= 0x80000000u;  // zero or subnormal: a zero of its sign
  d->bits = uint16_t((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

inline vf load16(const float* p) { return loadu(p); }
inline vf load16(const bf16* p) {
  vh h;
  std::memcpy(&h, p, sizeof(h));
  return (vf)(__builtin_convertvector(h, vu) << 16);
}

inline void store16(float* p, vf v) { storeu(p, v); }
inline void store16(bf16* p, vf v) {
#if defined(__AVX512BF16__) && DIMBENCH_LANES == 16
  const __m256bh r = _mm512_cvtneps_pbh((__m512)v);  // the rule above, in one instruction
  std::memcpy(p, &r, sizeof(r));
#else
  const vu b = (vu)v;
  vu r = (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
  r = (b & 0x7fffffffu) > 0x7f800000u ? (b >> 16) | 0x40u : r;
  r = (b & 0x7f800000u) == 0 ? (b >> 16) & 0x8000u : r;
  const vh h = __builtin_convertvector(r, vh);
  std::memcpy(p, &h, sizeof(h));
#endif
}

// ----------------------------------------------------------------------- floating-point mode

#if defined(__x86_64__) || defined(__i386__)
constexpr bool kFlushes = true;
inline uint64_t fp_control() { return _mm_getcsr(); }
inline void set_fp_control(uint64_t v) { _mm_setcsr((unsigned)v); }
constexpr uint64_t kFlushBits = 0x8040;  // MXCSR FTZ (bit 15) and DAZ (bit 6)
#elif defined(__aarch64__)
constexpr bool kFlushes = true;
inline uint64_t fp_control() {
  uint64_t v;
  asm volatile("mrs %0, fpcr" : "=r"(v));
  return v;
}
inline void set_fp_control(uint64_t v) { asm volatile("msr fpcr, %0" : : "r"(v)); }
constexpr uint64_t kFlushBits = uint64_t(1) << 24;  // FPCR.FZ
#else
constexpr bool kFlushes = false;
inline uint64_t fp_control() { return 0; }
inline void set_fp_control(uint64_t) {}
constexpr uint64_t kFlushBits = 0;
#endif

// fn is called through a non-inlined function so that no arithmetic is scheduled across the
// mode switches.
template <typename F>
__attribute__((noinline)) void call_noinline(F& fn) {
  fn();
}

// Runs fn with denormals flushed in this thread, then restores the caller's mode.
template <typename F>
void with_denormals_flushed(F fn) {
  const uint64_t saved = fp_control();
  set_fp_control(saved | kFlushBits);
  call_noinline(fn);
  set_fp_control(saved);
}

}  // namespace
