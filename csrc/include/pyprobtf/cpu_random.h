// Vectorisable CPU versions of the Philox normal stream of pyprobtf/philox.h.
//
// ptf::randn (philox.h) calls logf and cosf, scalar libm functions that stop
// GCC from vectorising a loop. cpu::randn below computes the same number
// (tl.randn: Box-Muller on Philox4x32-10 words 0 and 1) with the branch-free
// log and cosine below, so a loop over counters becomes SIMD code (the Philox
// rounds' 32x32->64-bit multiplies turn into vpmuludq). Results agree with
// tl.randn up to float rounding (a few ulp).
//
// For runs of consecutive counters, philox_words (csrc/cpu/philox_simd.cpp)
// computes the words with explicit AVX-512/AVX2 code, about 3x faster than
// GCC's vectorisation of the portable rounds; normal_from_words finishes them.
#pragma once

#include <cmath>
#include <cstdint>

#include "pyprobtf/cpu.h"
#include "pyprobtf/philox.h"

namespace ptf {
namespace cpu {

// cos(x) for x in [0, 2 pi], all that Box-Muller needs. x = k pi/2 + r with
// |r| <= pi/4 (pi/2 split in three parts, Cody-Waite), then the Taylor
// polynomials of sin r and cos r (truncation below 2e-9) and the quadrant's
// sign and swap.
PTF_HD float cos_0_2pi(float x) {
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float kf = (x * 0.636619772367581343f + shifter) - shifter;
  float r = x - kf * 1.5703125f;
  r = r - kf * 4.837512969970703125e-4f;
  r = r - kf * 7.54978995489188216e-8f;
  const float r2 = r * r;
  float c = -1.0f / 3628800.0f;
  c = c * r2 + 1.0f / 40320.0f;
  c = c * r2 - 1.0f / 720.0f;
  c = c * r2 + 1.0f / 24.0f;
  c = c * r2 - 0.5f;
  c = c * r2 + 1.0f;
  float s = 1.0f / 362880.0f;
  s = s * r2 - 1.0f / 5040.0f;
  s = s * r2 + 1.0f / 120.0f;
  s = s * r2 - 1.0f / 6.0f;
  s = r + r * r2 * s;
  const int32_t quadrant = static_cast<int32_t>(kf) & 3;
  const float v = (quadrant & 1) ? s : c;
  return (quadrant == 1 || quadrant == 2) ? -v : v;
}

// tl.randn's Box-Muller transform of Philox words 0 and 1, vectorisable.
// (Written with a ternary clamp: std::fmax here stops GCC 12 from vectorising.)
PTF_HD float normal_from_words(uint32_t w0, uint32_t w1) {
  float u0 = uniform_float(w0);
  u0 = u0 < 1.0e-7f ? 1.0e-7f : u0;
  const float theta = 6.283185307179586f * uniform_float(w1);
  return std::sqrt(-2.0f * log_normal(u0)) * cos_0_2pi(theta);
}

// tl.randn(seed, counter), vectorisable.
PTF_HD float randn(uint64_t seed, uint64_t counter) {
  const PhiloxWords w = philox4x32_10(seed, counter);
  return normal_from_words(w.w0, w.w1);
}

// Words 0 and 1 of philox4x32_10(seed, counter + j) into w0[j], w1[j] for j in [0, n),
// with the fastest instruction set this CPU has (csrc/cpu/philox_simd.cpp).
void philox_words(uint64_t seed, uint64_t counter, int64_t n, uint32_t* w0, uint32_t* w1);

// The same with a chosen implementation (for tests); false when this CPU lacks it.
enum class PhiloxIsa : int { Auto = 0, Generic = 1, Avx2 = 2, Avx512 = 3 };
bool philox_words_isa(PhiloxIsa isa, uint64_t seed, uint64_t counter, int64_t n, uint32_t* w0, uint32_t* w1);

}  // namespace cpu
}  // namespace ptf
