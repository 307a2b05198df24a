// Counter-based random numbers, bit-compatible with triton.language.random.
//
// philox4x32_10(seed, c) is Philox4x32 with 10 rounds, key (lo32(seed),
// hi32(seed)) and counter (lo32(c), hi32(c), 0, 0): exactly what
// tl.randint4x(seed, c) computes for a 64-bit offset c. From its words:
//   uniform_float(w)  = tl.rand's float32 in [0, 1)
//   randn(seed, c)    = tl.randn's standard normal (Box-Muller on words 0 and 1)
//   uniform53(seed, c)= a float64 in [0, 1) with 53 random bits (words 0 and 1)
// See docs/ARCHITECTURE.md (lincomb and sample_logits) for where each is used.
#pragma once

#include <cmath>
#include <cstdint>

#include "pyprobtf/common.h"

namespace ptf {

struct PhiloxWords {
  uint32_t w0, w1, w2, w3;
};

PTF_HD uint32_t umulhi32(uint32_t a, uint32_t b) {
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * static_cast<uint64_t>(b)) >> 32);
}

PTF_HD PhiloxWords philox4x32_10(uint64_t seed, uint64_t counter) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  constexpr uint32_t kKeyA = 0x9E3779B9u, kKeyB = 0xBB67AE85u;
  constexpr uint32_t kRoundA = 0xD2511F53u, kRoundB = 0xCD9E8D57u;
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    const uint32_t old0 = c0, old2 = c2;
    c0 = umulhi32(kRoundB, old2) ^ c1 ^ k0;
    c2 = umulhi32(kRoundA, old0) ^ c3 ^ k1;
    c1 = kRoundB * old2;
    c3 = kRoundA * old0;
    k0 += kKeyA;
    k1 += kKeyB;
  }
  return PhiloxWords{c0, c1, c2, c3};
}

// tl.rand's conversion: the word as int32, bit-flipped when negative, times a
// scale just below 2^-31 (so the result is < 1 after float rounding).
PTF_HD float uniform_float(uint32_t w) {
  const int32_t i = static_cast<int32_t>(w);
  const int32_t nonneg = i < 0 ? ~i : i;
  return static_cast<float>(nonneg) * 4.6566127342e-10f;
}

// tl.randn: Box-Muller on the first two words, float32 throughout.
PTF_HD float randn(uint64_t seed, uint64_t counter) {
  const PhiloxWords w = philox4x32_10(seed, counter);
  float u0 = uniform_float(w.w0);
  u0 = u0 < 1.0e-7f ? 1.0e-7f : u0;
  const float theta = 6.283185307179586f * uniform_float(w.w1);
  return sqrtf(-2.0f * logf(u0)) * cosf(theta);
}

// 53 random bits as a float64 in [0, 1): ((w0 >> 5) * 2^26 + (w1 >> 6)) * 2^-53.
PTF_HD double uniform53(uint64_t seed, uint64_t counter) {
  const PhiloxWords w = philox4x32_10(seed, counter);
  const uint64_t bits = (static_cast<uint64_t>(w.w0 >> 5) << 26) | static_cast<uint64_t>(w.w1 >> 6);
  return static_cast<double>(bits) * 1.1102230246251565e-16;  // 2^-53
}

}  // namespace ptf
