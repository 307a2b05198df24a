// Shared definitions for pyprobtf's native kernels.
//
// Native code sees raw pointers, sizes and strides only: no torch and no
// pybind11 headers, so one build works with any torch version. Strides are
// in elements, as torch reports them.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define PTF_HD __host__ __device__ __forceinline__
#else
#define PTF_HD inline __attribute__((always_inline))
#endif

namespace ptf {

// Element types, numbered as pyprobtf/ops/_native.py numbers them.
enum class DType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

// A 2-D strided view: element (r, c) is data[r * row_stride + c * col_stride].
struct Mat {
  void* data;
  int64_t row_stride;
  int64_t col_stride;
};

// A 1-D strided view (per-row values such as a log-determinant gradient).
struct Vec {
  void* data;
  int64_t stride;
};

// The type kernels compute in: float64 for float64 data, float32 otherwise.
template <typename T> struct compute_type { using type = float; };
template <> struct compute_type<double> { using type = double; };

}  // namespace ptf
