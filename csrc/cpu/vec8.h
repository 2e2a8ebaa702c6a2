// Eight-lane float / int32 vectors written with the GCC/Clang vector extension, so the same code
// becomes AVX2 (or AVX-512VL) on x86, NEON on ARM and SSE on older x86, whatever flags the JIT
// build was given. Only used where MSDA_HAVE_VEC8 is defined (GCC or Clang, 64-bit); other
// compilers use the scalar kernels.
#pragma once

#if (defined(__GNUC__) || defined(__clang__)) && __SIZEOF_POINTER__ == 8
#define MSDA_HAVE_VEC8 1

#include <cstdint>
#include <cstring>

namespace msda {
namespace vec8 {

constexpr int kLanes = 8;

typedef float f8 __attribute__((vector_size(32)));
typedef int32_t i8 __attribute__((vector_size(32)));
typedef float f8_unaligned __attribute__((vector_size(32), aligned(4)));
typedef int32_t i8_unaligned __attribute__((vector_size(32), aligned(4)));

#if defined(__clang__) || __GNUC__ >= 12
#define MSDA_SHUFFLE2(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define MSDA_SHUFFLE2(a, b, ...) __builtin_shuffle(a, b, (::msda::vec8::i8){__VA_ARGS__})
#endif

typedef int32_t i4 __attribute__((vector_size(16)));
typedef int64_t i4x64 __attribute__((vector_size(32)));
typedef int64_t i4x64_unaligned __attribute__((vector_size(32), aligned(8)));

// Lanes 0-3 and 4-7 of v, widened to int64.
inline i4x64 low_half_wide(i8 v) {
  i4 half;
  std::memcpy(&half, &v, sizeof(half));
  return __builtin_convertvector(half, i4x64);
}
inline i4x64 high_half_wide(i8 v) {
  i4 half;
  std::memcpy(&half, reinterpret_cast<const char*>(&v) + sizeof(half), sizeof(half));
  return __builtin_convertvector(half, i4x64);
}

inline f8 load(const float* p) { return *reinterpret_cast<const f8_unaligned*>(p); }
inline i8 load(const int32_t* p) { return *reinterpret_cast<const i8_unaligned*>(p); }
inline void store(float* p, f8 v) { *reinterpret_cast<f8_unaligned*>(p) = v; }
inline void store(int32_t* p, i8 v) { *reinterpret_cast<i8_unaligned*>(p) = v; }
// Store that bypasses the caches where the target supports it (the line is not read first); p must
// be 32-byte aligned. Call stream_fence() before other threads read what was streamed.
inline void stream(float* p, f8 v) {
#if defined(__AVX__)
  __builtin_ia32_movntps256(p, v);
#else
  store(p, v);
#endif
}
inline void stream_fence() {
#if defined(__AVX__)
  __builtin_ia32_sfence();
#endif
}
inline f8 broadcast(float s) { return f8{s, s, s, s, s, s, s, s}; }
inline f8 to_float(i8 v) { return __builtin_convertvector(v, f8); }

// Largest integer <= x, for x >= -1 (callers clamp first): truncation, then one down where it
// rounded up (negative non-integers).
inline i8 floor_to_int(f8 x) {
  const i8 t = __builtin_convertvector(x, i8);
  return t + (x < to_float(t));  // a true comparison is -1
}

// Pointers base + index[j] * stride for the eight lanes, or `outside` where index[j] < 0.
// (index * stride must fit in int32; the caller checks.)
inline void store_pointers(const float** out, i8 index, const float* base, int32_t stride, const float* outside) {
  const i8 offset = index * stride;
  const i8 in = index >= 0;
  const i4x64 base_v = i4x64{} + reinterpret_cast<int64_t>(base);
  const i4x64 outside_v = i4x64{} + reinterpret_cast<int64_t>(outside);
  const i4x64 lo = base_v + (low_half_wide(offset) << 2);
  const i4x64 hi = base_v + (high_half_wide(offset) << 2);
  const i4x64 in_lo = low_half_wide(in), in_hi = high_half_wide(in);
  *reinterpret_cast<i4x64_unaligned*>(out) = in_lo ? lo : outside_v;
  *reinterpret_cast<i4x64_unaligned*>(out + 4) = in_hi ? hi : outside_v;
}

// Splits eight interleaved (x, y) pairs xy[0..15] into x and y.
inline void deinterleave(const float* xy, f8& x, f8& y) {
  const f8 a = load(xy), b = load(xy + kLanes);
  x = MSDA_SHUFFLE2(a, b, 0, 2, 4, 6, 8, 10, 12, 14);
  y = MSDA_SHUFFLE2(a, b, 1, 3, 5, 7, 9, 11, 13, 15);
}

// Writes x, y as eight interleaved (x, y) pairs.
inline void interleave_store(float* xy, f8 x, f8 y) {
  store(xy, MSDA_SHUFFLE2(x, y, 0, 8, 1, 9, 2, 10, 3, 11));
  store(xy + kLanes, MSDA_SHUFFLE2(x, y, 4, 12, 5, 13, 6, 14, 7, 15));
}

// interleave_store with streaming stores (xy 32-byte aligned).
inline void interleave_stream(float* xy, f8 x, f8 y) {
  stream(xy, MSDA_SHUFFLE2(x, y, 0, 8, 1, 9, 2, 10, 3, 11));
  stream(xy + kLanes, MSDA_SHUFFLE2(x, y, 4, 12, 5, 13, 6, 14, 7, 15));
}

// Lanes 0-3 of the result are the sums of the lanes of d[0], ..., d[3] (lanes 4-7 repeat them).
inline f8 sum4_lanes(const f8 d[4]) {
  const f8 s01 = MSDA_SHUFFLE2(d[0], d[1], 0, 8, 2, 10, 4, 12, 6, 14) + MSDA_SHUFFLE2(d[0], d[1], 1, 9, 3, 11, 5, 13, 7, 15);
  const f8 s23 = MSDA_SHUFFLE2(d[2], d[3], 0, 8, 2, 10, 4, 12, 6, 14) + MSDA_SHUFFLE2(d[2], d[3], 1, 9, 3, 11, 5, 13, 7, 15);
  // lanes: d0..d3 summed over lane halves {0..3}, then the same four over {4..7}
  const f8 t = MSDA_SHUFFLE2(s01, s23, 0, 1, 8, 9, 4, 5, 12, 13) + MSDA_SHUFFLE2(s01, s23, 2, 3, 10, 11, 6, 7, 14, 15);
  return t + MSDA_SHUFFLE2(t, t, 4, 5, 6, 7, 0, 1, 2, 3);
}

// From u[j] (lanes 0-3: four values of item j, as sum4_lanes returns), s[k] with lane j = lane k of u[j].
inline void transpose_8x4(const f8 u[kLanes], f8 s[4]) {
  f8 w[4], a[4];
  for (int j = 0; j < 4; ++j) w[j] = MSDA_SHUFFLE2(u[j], u[j + 4], 0, 1, 2, 3, 8, 9, 10, 11);  // items j | j + 4
  a[0] = MSDA_SHUFFLE2(w[0], w[1], 0, 8, 1, 9, 4, 12, 5, 13);
  a[1] = MSDA_SHUFFLE2(w[0], w[1], 2, 10, 3, 11, 6, 14, 7, 15);
  a[2] = MSDA_SHUFFLE2(w[2], w[3], 0, 8, 1, 9, 4, 12, 5, 13);
  a[3] = MSDA_SHUFFLE2(w[2], w[3], 2, 10, 3, 11, 6, 14, 7, 15);
  s[0] = MSDA_SHUFFLE2(a[0], a[2], 0, 1, 8, 9, 4, 5, 12, 13);
  s[1] = MSDA_SHUFFLE2(a[0], a[2], 2, 3, 10, 11, 6, 7, 14, 15);
  s[2] = MSDA_SHUFFLE2(a[1], a[3], 0, 1, 8, 9, 4, 5, 12, 13);
  s[3] = MSDA_SHUFFLE2(a[1], a[3], 2, 3, 10, 11, 6, 7, 14, 15);
}

}  // namespace vec8
}  // namespace msda

#endif
