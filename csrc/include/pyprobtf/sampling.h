// sample_logits / filter_logits: temperature, top-k, top-p and min-p filtering
// of (rows, cols) logits, then an inverse-CDF draw in vocabulary order from one
// uniform per row; see docs/ARCHITECTURE.md and pyprobtf/reference/sampling.py
// (which defines the float computation every backend follows).
//
// Nothing sorts the vocabulary: thresholds are found by selection over the
// values (bounded candidate sets and radix selection on order-preserving keys),
// with masses accumulated in float64.
#pragma once

#include <cstdint>
#include <cstring>

#include "pyprobtf/common.h"
#include "pyprobtf/philox.h"

namespace ptf {
namespace sampling {

// Per-row outcome, numbered as pyprobtf/ops/sampling.py numbers them. The first
// failing check is reported; a row that fails gets token -1 and log-prob NaN.
enum Status : int32_t {
  kOk = 0,
  kBadTemperature = 1,  // not finite, or negative
  kBadTopK = 2,         // negative
  kBadTopP = 3,         // not in (0, 1]
  kBadMinP = 4,         // not in [0, 1)
  kBadUniform = 5,      // not in [0, 1)
  kNanLogit = 6,
  kPosInfLogit = 7,
  kAllNegInf = 8,
};

// A per-row float parameter: data[r * stride] (float64) when data is set, else `value`.
struct RowParam {
  const double* data;
  int64_t stride;
  double value;
  PTF_HD double at(int64_t r) const { return data ? data[r * stride] : value; }
};

// A per-row integer parameter (int64).
struct RowIntParam {
  const int64_t* data;
  int64_t stride;
  int64_t value;
  PTF_HD int64_t at(int64_t r) const { return data ? data[r * stride] : value; }
};

// The first parameter of a row that is out of range, or kOk.
PTF_HD int32_t param_status(double temperature, int64_t top_k, double top_p, double min_p) {
  if (!(temperature >= 0.0 && temperature <= 1.7976931348623157e308)) return kBadTemperature;  // NaN fails too
  if (top_k < 0) return kBadTopK;
  if (!(top_p > 0.0 && top_p <= 1.0)) return kBadTopP;
  if (!(min_p >= 0.0 && min_p < 1.0)) return kBadMinP;
  return kOk;
}

// Order-preserving unsigned keys: a < b as numbers exactly when key(a) < key(b),
// with -0.0 and +0.0 the same key (they are equal logits). NaN never reaches them.
PTF_HD uint32_t order_key(float x) {
  const float canonical = x == 0.0f ? 0.0f : x;
#if defined(__CUDA_ARCH__)
  const uint32_t u = __float_as_uint(canonical);
#elif defined(__CUDACC__)
  uint32_t u;
  std::memcpy(&u, &canonical, sizeof u);
#else
  const uint32_t u = __builtin_bit_cast(uint32_t, canonical);  // (memcpy would block vectorisation)
#endif
  return (u >> 31) ? ~u : (u | 0x80000000u);
}

PTF_HD uint64_t order_key(double x) {
  const double canonical = x == 0.0 ? 0.0 : x;
#if defined(__CUDA_ARCH__)
  const uint64_t u = static_cast<uint64_t>(__double_as_longlong(canonical));
#elif defined(__CUDACC__)
  uint64_t u;
  std::memcpy(&u, &canonical, sizeof u);
#else
  const uint64_t u = __builtin_bit_cast(uint64_t, canonical);
#endif
  return (u >> 63) ? ~u : (u | 0x8000000000000000ull);
}

// The numbers whose order_key is `k` (the inverse of order_key).
PTF_HD float order_value(uint32_t k) {
  const uint32_t u = (k >> 31) ? (k & 0x7FFFFFFFu) : ~k;
  float x;
#if defined(__CUDA_ARCH__)
  x = __uint_as_float(u);
#else
  std::memcpy(&x, &u, sizeof x);
#endif
  return x;
}

PTF_HD double order_value(uint64_t k) {
  const uint64_t u = (k >> 63) ? (k & 0x7FFFFFFFFFFFFFFFull) : ~k;
  double x;
#if defined(__CUDA_ARCH__)
  x = __longlong_as_double(static_cast<long long>(u));
#else
  std::memcpy(&x, &u, sizeof x);
#endif
  return x;
}

// The row's uniform: uniform[r] when given, else the 53-bit Philox uniform of
// (seed, counter): counter = offset[r] for per-row seeds, offset + r for one seed.
PTF_HD double row_uniform(const double* uniform, int64_t uniform_stride, const RowIntParam& seed,
                          const RowIntParam& offset, int64_t r) {
  if (uniform) return uniform[r * uniform_stride];
  const uint64_t key = static_cast<uint64_t>(seed.at(r));
  const uint64_t counter = static_cast<uint64_t>(offset.at(r)) + (seed.data ? 0u : static_cast<uint64_t>(r));
  return uniform53(key, counter);
}

}  // namespace sampling

struct SampleLogitsArgs {
  Mat logits;  // (rows, cols), any strides
  int64_t rows, cols;
  DType dtype;
  sampling::RowParam temperature, top_p, min_p;
  sampling::RowIntParam top_k;
  // Uniforms: uniform[r * uniform_stride] when `uniform` is set, else Philox (see row_uniform).
  const double* uniform;
  int64_t uniform_stride;
  sampling::RowIntParam seed, offset;
  // Outputs. With `filtered` set, the op is filter_logits: it writes the
  // processed logits (rows x cols, contiguous, the logits' dtype) and draws nothing.
  int64_t* tokens;    // (rows,)
  void* logprobs;     // (rows,): float64 for float64 logits, float32 otherwise
  int32_t* status;    // (rows,)
  void* filtered;     // (rows, cols) or null
};

// CPU kernels (csrc/cpu/sampling.cpp). num_threads <= 1 runs serially; results
// never depend on it.
void sample_logits_cpu(const SampleLogitsArgs& args, int num_threads);

// CUDA kernels (csrc/cuda/sampling.cu); return nullptr or an error message. The
// caller allocates sample_logits_workspace_bytes(rows, cols, dtype) bytes of
// device memory (so the op works inside CUDA graphs).
int64_t sample_logits_workspace_bytes(int64_t rows, int64_t cols, DType dtype);
const char* sample_logits_cuda(const SampleLogitsArgs& args, void* workspace, void* stream);

}  // namespace ptf
