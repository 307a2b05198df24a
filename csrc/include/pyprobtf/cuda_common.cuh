// CUDA helpers for pyprobtf's kernels: element types, math and launch layout.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "pyprobtf/common.h"

namespace ptf {
namespace cuda {

template <typename T> __device__ __forceinline__ typename compute_type<T>::type load(const T& v) { return v; }
__device__ __forceinline__ float load(const __half& v) { return __half2float(v); }
__device__ __forceinline__ float load(const __nv_bfloat16& v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T store(typename compute_type<T>::type v) { return v; }
template <> __device__ __forceinline__ __half store<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 store<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Accurate (not --use_fast_math) device math.
struct Math {
  static __device__ __forceinline__ float exp(float x) { return ::expf(x); }
  static __device__ __forceinline__ double exp(double x) { return ::exp(x); }
  static __device__ __forceinline__ float tanh(float x) { return ::tanhf(x); }
  static __device__ __forceinline__ double tanh(double x) { return ::tanh(x); }
  static __device__ __forceinline__ float softplus(float z) {
    return z == z ? fmaxf(z, 0.0f) + ::log1pf(::expf(-fabsf(z))) : z;
  }
  static __device__ __forceinline__ double softplus(double z) {
    return z == z ? fmax(z, 0.0) + ::log1p(::exp(-fabs(z))) : z;
  }
};

// Calls f(T{}) with T the device storage type of `dtype`.
template <typename F>
void dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::Float32: f(float{}); break;
    case DType::Float64: f(double{}); break;
    case DType::Float16: f(__half{}); break;
    case DType::BFloat16: f(__nv_bfloat16{}); break;
  }
}

// Row-tiled launch layout for (rows, cols) work with per-row reductions.
// A block of kThreads threads covers rows_per_block rows; each row gets
// threads_per_row threads (a power of two), each handling kItems columns of a
// tile. The layout depends only on `cols`, so a row's reduction order never
// depends on the batch size. grid.x runs over row blocks (up to 2^31 - 1),
// grid.y over column tiles (up to 65535, so rows of up to 2^26 elements).
constexpr int kThreads = 256;
constexpr int kItems = 4;

struct RowLayout {
  int threads_per_row;
  int rows_per_block;
  int64_t tile_cols;
  int64_t col_tiles;
  dim3 grid;

  RowLayout(int64_t rows, int64_t cols) {
    int tpr = 1;
    while (tpr < kThreads && tpr < cols) tpr *= 2;
    threads_per_row = tpr;
    rows_per_block = kThreads / tpr;
    tile_cols = static_cast<int64_t>(tpr) * kItems;
    col_tiles = cols > 0 ? (cols + tile_cols - 1) / tile_cols : 1;
    const int64_t row_blocks = (rows + rows_per_block - 1) / rows_per_block;
    grid = dim3(static_cast<unsigned>(row_blocks), static_cast<unsigned>(col_tiles));
  }
};

inline const char* last_error() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace cuda

}  // namespace ptf
