// CPU helpers for pyprobtf's C++ kernels: element types, vectorisable math,
// dtype dispatch and a deterministic parallel loop.
//
// glibc's expf/log1pf are scalar calls that stop GCC from vectorising a loop
// (libmvec is only used under -ffast-math, which we refuse because it breaks
// NaN propagation). The float32 functions below are branch-free
// polynomial/bit-manipulation versions (about 1 ulp) that GCC turns into SIMD
// code; NaN propagates through them and +-inf map to the right limits.
// float64 uses the libm functions: correct rounding matters more there.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "pyprobtf/common.h"

namespace ptf {
namespace cpu {

// ----------------------------------------------------------------- storage types
using half = _Float16;  // GCC >= 12 on x86-64: conversions in hardware (F16C) or libgcc

struct bfloat16 {
  uint16_t bits;
};

PTF_HD float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
PTF_HD uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

template <typename T> PTF_HD typename compute_type<T>::type load(const T& v) { return v; }
PTF_HD float load(const half& v) { return static_cast<float>(v); }
PTF_HD float load(const bfloat16& v) { return bits_to_float(uint32_t(v.bits) << 16); }

template <typename T> PTF_HD T store(typename compute_type<T>::type v) { return static_cast<T>(v); }
template <> PTF_HD half store<half>(float v) { return static_cast<half>(v); }
template <> PTF_HD bfloat16 store<bfloat16>(float v) {
  // Round to nearest even; NaN stays a (quiet) NaN.
  uint32_t u = float_to_bits(v);
  uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  uint32_t nan = ((u >> 16) | 0x40u);
  return bfloat16{static_cast<uint16_t>(v != v ? nan : rounded)};
}

// ----------------------------------------------------------------- float32 math
// exp: x = n ln2 + r with |r| <= ln2/2, exp(r) by a degree-7 Taylor polynomial
// (truncation < 6e-9 relative), 2^n applied in two halves so that results in
// the subnormal range round correctly and large x overflow to +inf.
PTF_HD float exp(float x) {
  const float xc0 = x < -104.0f ? -104.0f : x;  // comparisons are false for NaN: it passes through
  const float xc = xc0 > 89.0f ? 89.0f : xc0;
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float t = xc * 1.44269504088896341f + shifter;
  const float n = t - shifter;
  float r = xc - n * 0.693145751953125f;  // ln2 split in a high part with few bits ...
  r = r - n * 1.428606765330187045e-06f;  // ... and the rest (Cody-Waite)
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t ni = (n == n) ? static_cast<int32_t>(n) : 0;
  const int32_t n1 = ni >> 1;
  const int32_t n2 = ni - n1;
  const float s1 = bits_to_float(static_cast<uint32_t>(n1 + 127) << 23);
  const float s2 = bits_to_float(static_cast<uint32_t>(n2 + 127) << 23);
  return p * s1 * s2;
}

// log(us) - shift * ln 2 for a normal positive finite us: us = m 2^e with m in
// [sqrt(1/2), sqrt(2)), log(m) = 2 atanh(f), f = (m-1)/(m+1), |f| <= 0.1716.
// No special cases, so loops that know their argument is normal (e.g. a
// clamped uniform) stay vectorisable.
PTF_HD float log_normal(float us, int32_t shift = 0) {
  const uint32_t bits = float_to_bits(us);
  int32_t e = static_cast<int32_t>((bits >> 23) & 0xFF) - 127 - shift;
  float m = bits_to_float((bits & 0x007FFFFFu) | 0x3F800000u);  // [1, 2)
  const bool big = m > 1.41421356f;
  m = big ? m * 0.5f : m;
  e = big ? e + 1 : e;
  const float f = (m - 1.0f) / (m + 1.0f);
  const float f2 = f * f;
  float p = 2.0f / 11.0f;
  p = p * f2 + 2.0f / 9.0f;
  p = p * f2 + 2.0f / 7.0f;
  p = p * f2 + 2.0f / 5.0f;
  p = p * f2 + 2.0f / 3.0f;
  p = p * f2 + 2.0f;
  const float ef = static_cast<float>(e);
  return ef * 0.693145751953125f + (f * p + ef * 1.428606765330187045e-06f);
}

// log(u) for u > 0 (and NaN/inf/0 handled like libm).
PTF_HD float log(float u) {
  // Subnormals: scale into the normal range first.
  const bool sub = u < 1.17549435e-38f;
  const float us = sub ? u * 8388608.0f : u;  // 2^23
  const float result = log_normal(us, sub ? 23 : 0);
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  return (u != u || u < 0.0f) ? nan : (u == 0.0f ? -inf : (u == inf ? inf : result));
}

// log1p(t) for t in [0, 1] (all that softplus needs) without the
// cancellation of log(1 + t): the rounding error of u = 1 + t is corrected to
// first order.
PTF_HD float log1p(float t) {
  const float u = 1.0f + t;
  const float corrected = log(u) - ((u - 1.0f) - t) / u;
  return (u == 1.0f) ? t : corrected;
}

// tanh: odd Taylor polynomial near 0 (where (1-e)/(1+e) loses relative
// accuracy), otherwise from exp(-2|x|), which never overflows.
PTF_HD float tanh(float x) {
  const float ax = x < 0.0f ? -x : x;
  const float e = exp(-2.0f * ax);
  const float big = (1.0f - e) / (1.0f + e);
  const float x2 = x * x;
  float p = 62.0f / 2835.0f;
  p = p * x2 - 17.0f / 315.0f;
  p = p * x2 + 2.0f / 15.0f;
  p = p * x2 - 1.0f / 3.0f;
  const float small = ax + ax * x2 * p;
  const float r = ax < 0.125f ? small : big;
  return x < 0.0f ? -r : (x == x ? r : x);
}

// softplus(z) = log(1 + e^z) = max(z, 0) + log1p(e^-|z|).
PTF_HD float softplus(float z) {
  const float az = z < 0.0f ? -z : z;
  const float mz = z > 0.0f ? z : 0.0f;
  return (z == z) ? mz + log1p(exp(-az)) : z;
}

// ----------------------------------------------------------------- float64 math
PTF_HD double exp(double x) { return std::exp(x); }
PTF_HD double tanh(double x) { return std::tanh(x); }
PTF_HD double softplus(double z) {
  const double az = z < 0.0 ? -z : z;
  return (z == z) ? (z > 0.0 ? z : 0.0) + std::log1p(std::exp(-az)) : z;
}

}  // namespace cpu
}  // namespace ptf

// Compile a hot function for AVX-512, AVX2 and baseline x86-64; the loader
// picks the best one the CPU supports.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PTF_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PTF_MULTIVERSION
#endif

namespace ptf {
namespace cpu {

// Calls f(T{}) with T the storage type of `dtype`.
template <typename F>
void dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::Float32: f(float{}); break;
    case DType::Float64: f(double{}); break;
    case DType::Float16: f(half{}); break;
    case DType::BFloat16: f(bfloat16{}); break;
  }
}

// Below this many elements of work a parallel region costs more than it saves.
constexpr int64_t kMinParallelWork = 1 << 15;

// Runs f(i) for i in [0, n). How the tasks are cut is the caller's business and
// must not depend on num_threads, so that results never depend on it either.
template <typename F>
void parallel_for(int64_t n, int64_t work, int num_threads, F&& f) {
#if defined(PTF_HAVE_OPENMP)
  if (num_threads > 1 && n > 1 && work >= kMinParallelWork) {
#pragma omp parallel for num_threads(num_threads) schedule(static)
    for (int64_t i = 0; i < n; ++i) f(i);
    return;
  }
#endif
  (void)num_threads;
  (void)work;
  for (int64_t i = 0; i < n; ++i) f(i);
}

// Work is cut into tiles of at most kTile elements of one row, or of several
// whole rows when rows are short. The tiling depends only on the row length,
// so a row's reductions are summed in the same order whatever the batch size
// or thread count.
constexpr int64_t kTile = 4096;

struct Tiling {
  int64_t rows_per_tile;  // > 1 only when a tile holds whole rows
  int64_t col_tiles;      // tiles per row (1 when rows_per_tile > 1)
  int64_t tiles;

  Tiling(int64_t rows, int64_t cols) {
    if (cols <= kTile) {
      rows_per_tile = cols > 0 ? kTile / cols : kTile;  // >= 1
      col_tiles = 1;
      tiles = rows > 0 ? (rows + rows_per_tile - 1) / rows_per_tile : 0;
    } else {
      rows_per_tile = 1;
      col_tiles = (cols + kTile - 1) / kTile;
      tiles = rows * col_tiles;
    }
  }
};

}  // namespace cpu
}  // namespace ptf
