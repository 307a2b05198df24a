// Philox4x32-10 words 0 and 1 for a run of consecutive counters, in explicit
// SIMD (AVX-512 or AVX2, chosen at run time) with a portable fallback.
//
// GCC does vectorise the portable code (pyprobtf/philox.h) - its 32x32->64-bit
// multiplies become vpmuludq - but it keeps the state in 32-bit lanes and
// repacks the 64-bit products every round (3.2 ns per counter on a Xeon core).
// Here each counter lives in a 64-bit lane: vpmuludq reads only the low half
// of a lane, so the high halves may hold garbage and a round is just two
// multiplies, two shifts and two three-way xors per lane (1.1 ns per counter).
// Every path produces exactly the same words (tests/test_lincomb.py checks each).
#include <cstdint>

#include "pyprobtf/cpu_random.h"
#include "pyprobtf/philox.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define PTF_X86_SIMD 1
#endif

namespace ptf {
namespace cpu {
namespace {

constexpr uint32_t kKeyA = 0x9E3779B9u, kKeyB = 0xBB67AE85u;
constexpr long long kRoundA = 0xD2511F53ll, kRoundB = 0xCD9E8D57ll;
constexpr int kRounds = 10;

void words_generic(uint64_t seed, uint64_t counter, int64_t n, uint32_t* w0, uint32_t* w1) {
  for (int64_t j = 0; j < n; ++j) {
    const PhiloxWords w = philox4x32_10(seed, counter + static_cast<uint64_t>(j));
    w0[j] = w.w0;
    w1[j] = w.w1;
  }
}

#if defined(PTF_X86_SIMD)

__attribute__((target("avx512f"))) void words_avx512(uint64_t seed, uint64_t counter, int64_t n, uint32_t* w0,
                                                      uint32_t* w1) {
  const __m512i a_mul = _mm512_set1_epi64(kRoundA), b_mul = _mm512_set1_epi64(kRoundB);
  const __m512i iota = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0), eight = _mm512_set1_epi64(8);
  __m512i key0[kRounds], key1[kRounds];
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < kRounds; ++r, k0 += kKeyA, k1 += kKeyB) {
    key0[r] = _mm512_set1_epi64(k0);
    key1[r] = _mm512_set1_epi64(k1);
  }
  const int64_t n16 = n - n % 16;
  for (int64_t j = 0; j < n16; j += 16) {
    // Two groups of 8 counters (x: j..j+7, y: j+8..j+15), words c0..c3 each.
    const __m512i base = _mm512_set1_epi64(static_cast<long long>(counter + static_cast<uint64_t>(j)));
    __m512i x0 = _mm512_add_epi64(base, iota), y0 = _mm512_add_epi64(x0, eight);
    __m512i x1 = _mm512_srli_epi64(x0, 32), y1 = _mm512_srli_epi64(y0, 32);
    __m512i x2 = _mm512_setzero_si512(), x3 = x2, y2 = x2, y3 = x2;
#pragma GCC unroll 9
    for (int r = 0; r < kRounds - 1; ++r) {
      const __m512i px0 = _mm512_mul_epu32(a_mul, x0), px2 = _mm512_mul_epu32(b_mul, x2);
      const __m512i py0 = _mm512_mul_epu32(a_mul, y0), py2 = _mm512_mul_epu32(b_mul, y2);
      x0 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(px2, 32), x1, key0[r], 0x96);  // hi ^ c1 ^ k0
      x2 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(px0, 32), x3, key1[r], 0x96);
      y0 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(py2, 32), y1, key0[r], 0x96);
      y2 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(py0, 32), y3, key1[r], 0x96);
      x1 = px2;  // the low halves are the low words of the products
      x3 = px0;
      y1 = py2;
      y3 = py0;
    }
    // Last round: only words 0 and 1 are needed, which come from the c2 product.
    const __m512i px2 = _mm512_mul_epu32(b_mul, x2), py2 = _mm512_mul_epu32(b_mul, y2);
    x0 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(px2, 32), x1, key0[kRounds - 1], 0x96);
    y0 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(py2, 32), y1, key0[kRounds - 1], 0x96);
    x1 = px2;
    y1 = py2;
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w0 + j), _mm512_cvtepi64_epi32(x0));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w0 + j + 8), _mm512_cvtepi64_epi32(y0));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w1 + j), _mm512_cvtepi64_epi32(x1));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w1 + j + 8), _mm512_cvtepi64_epi32(y1));
  }
  words_generic(seed, counter + static_cast<uint64_t>(n16), n - n16, w0 + n16, w1 + n16);
}

// The low 32 bits of the 4 + 4 lanes of x and y, in order.
__attribute__((target("avx2"))) inline __m256i low_halves(__m256i x, __m256i y) {
  const __m256i interleaved = _mm256_blend_epi32(x, _mm256_slli_epi64(y, 32), 0xAA);  // x0 y0 x1 y1 ...
  return _mm256_permutevar8x32_epi32(interleaved, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
}

__attribute__((target("avx2"))) void words_avx2(uint64_t seed, uint64_t counter, int64_t n, uint32_t* w0,
                                                 uint32_t* w1) {
  const __m256i a_mul = _mm256_set1_epi64x(kRoundA), b_mul = _mm256_set1_epi64x(kRoundB);
  const __m256i iota = _mm256_setr_epi64x(0, 1, 2, 3), four = _mm256_set1_epi64x(4);
  __m256i key0[kRounds], key1[kRounds];
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < kRounds; ++r, k0 += kKeyA, k1 += kKeyB) {
    key0[r] = _mm256_set1_epi64x(k0);
    key1[r] = _mm256_set1_epi64x(k1);
  }
  const int64_t n8 = n - n % 8;
  for (int64_t j = 0; j < n8; j += 8) {
    const __m256i base = _mm256_set1_epi64x(static_cast<long long>(counter + static_cast<uint64_t>(j)));
    __m256i x0 = _mm256_add_epi64(base, iota), y0 = _mm256_add_epi64(x0, four);
    __m256i x1 = _mm256_srli_epi64(x0, 32), y1 = _mm256_srli_epi64(y0, 32);
    __m256i x2 = _mm256_setzero_si256(), x3 = x2, y2 = x2, y3 = x2;
#pragma GCC unroll 9
    for (int r = 0; r < kRounds - 1; ++r) {
      const __m256i px0 = _mm256_mul_epu32(a_mul, x0), px2 = _mm256_mul_epu32(b_mul, x2);
      const __m256i py0 = _mm256_mul_epu32(a_mul, y0), py2 = _mm256_mul_epu32(b_mul, y2);
      x0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(px2, 32), x1), key0[r]);
      x2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(px0, 32), x3), key1[r]);
      y0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(py2, 32), y1), key0[r]);
      y2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(py0, 32), y3), key1[r]);
      x1 = px2;
      x3 = px0;
      y1 = py2;
      y3 = py0;
    }
    const __m256i px2 = _mm256_mul_epu32(b_mul, x2), py2 = _mm256_mul_epu32(b_mul, y2);  // last round: words 0, 1
    x0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(px2, 32), x1), key0[kRounds - 1]);
    y0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(py2, 32), y1), key0[kRounds - 1]);
    x1 = px2;
    y1 = py2;
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w0 + j), low_halves(x0, y0));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w1 + j), low_halves(x1, y1));
  }
  words_generic(seed, counter + static_cast<uint64_t>(n8), n - n8, w0 + n8, w1 + n8);
}

#endif  // PTF_X86_SIMD

using WordsFn = void (*)(uint64_t, uint64_t, int64_t, uint32_t*, uint32_t*);

WordsFn words_for(PhiloxIsa isa) {
#if defined(PTF_X86_SIMD)
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f");
  const bool avx2 = __builtin_cpu_supports("avx2");
  if (isa == PhiloxIsa::Auto) return avx512 ? words_avx512 : (avx2 ? words_avx2 : words_generic);
  if (isa == PhiloxIsa::Avx512) return avx512 ? words_avx512 : nullptr;
  if (isa == PhiloxIsa::Avx2) return avx2 ? words_avx2 : nullptr;
#else
  if (isa == PhiloxIsa::Auto) return words_generic;
  if (isa != PhiloxIsa::Generic) return nullptr;
#endif
  return words_generic;
}

}  // namespace

void philox_words(uint64_t seed, uint64_t counter, int64_t n, uint32_t* w0, uint32_t* w1) {
  static const WordsFn fn = words_for(PhiloxIsa::Auto);
  fn(seed, counter, n, w0, w1);
}

bool philox_words_isa(PhiloxIsa isa, uint64_t seed, uint64_t counter, int64_t n, uint32_t* w0, uint32_t* w1) {
  const WordsFn fn = words_for(isa);
  if (fn == nullptr) return false;
  fn(seed, counter, n, w0, w1);
  return true;
}

}  // namespace cpu
}  // namespace ptf
