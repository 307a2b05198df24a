// Building SampleLogitsArgs from the plain values the Python bindings receive
// (shared by csrc/bind_cpu.cpp and csrc/bind_cuda.cpp; no pybind11 here).
#pragma once

#include <cstdint>
#include <tuple>

#include "pyprobtf/sampling.h"

namespace ptf {

using SamplingMat = std::tuple<uintptr_t, int64_t, int64_t>;     // (pointer, row stride, column stride)
using SamplingVec = std::tuple<uintptr_t, int64_t>;              // (pointer or 0, stride)
using SamplingParam = std::tuple<uintptr_t, int64_t, double>;    // (pointer or 0, stride, the number otherwise)
using SamplingIntParam = std::tuple<uintptr_t, int64_t, int64_t>;

// Per-row parameters are float64 (int64 for top_k, seed, offset) (B,) vectors
// when their pointer is nonzero, else one number for every row. `filtered` is
// nonzero for filter_logits; tokens and logprobs are then unused (may be 0).
inline SampleLogitsArgs make_sample_logits_args(const SamplingMat& logits, int64_t rows, int64_t cols, int dtype,
                                                const SamplingParam& temperature, const SamplingIntParam& top_k,
                                                const SamplingParam& top_p, const SamplingParam& min_p,
                                                const SamplingVec& uniform, const SamplingIntParam& seed,
                                                const SamplingIntParam& offset, uintptr_t tokens, uintptr_t logprobs,
                                                uintptr_t status, uintptr_t filtered) {
  auto param = [](const SamplingParam& p) {
    return sampling::RowParam{reinterpret_cast<const double*>(std::get<0>(p)), std::get<1>(p), std::get<2>(p)};
  };
  auto int_param = [](const SamplingIntParam& p) {
    return sampling::RowIntParam{reinterpret_cast<const int64_t*>(std::get<0>(p)), std::get<1>(p), std::get<2>(p)};
  };
  SampleLogitsArgs a{};
  a.logits = Mat{reinterpret_cast<void*>(std::get<0>(logits)), std::get<1>(logits), std::get<2>(logits)};
  a.rows = rows;
  a.cols = cols;
  a.dtype = static_cast<DType>(dtype);
  a.temperature = param(temperature);
  a.top_p = param(top_p);
  a.min_p = param(min_p);
  a.top_k = int_param(top_k);
  a.uniform = reinterpret_cast<const double*>(std::get<0>(uniform));
  a.uniform_stride = std::get<1>(uniform);
  a.seed = int_param(seed);
  a.offset = int_param(offset);
  a.tokens = reinterpret_cast<int64_t*>(tokens);
  a.logprobs = reinterpret_cast<void*>(logprobs);
  a.status = reinterpret_cast<int32_t*>(status);
  a.filtered = reinterpret_cast<void*>(filtered);
  return a;
}

}  // namespace ptf
