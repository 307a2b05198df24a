// CUDA kernel for lincomb: one grid-stride pass over the (rows, cols) elements;
// each element takes its row's coefficients (lincomb_row, shared with the CPU
// kernel) and draws its normal from the Philox stream of pyprobtf/philox.h
// (ptf::randn, accurate logf/cosf), so the noise depends only on (seed, counter).
//
// The common case is one row (the Python side collapses a state whose rows
// share every parameter into one): its parameters are read once per thread and
// no index is divided. Otherwise the row of a flat index is found by a 32-bit
// division when the sizes allow (64-bit division is several times slower).
#include <type_traits>

#include "pyprobtf/cuda_common.cuh"
#include "pyprobtf/lincomb.h"
#include "pyprobtf/philox.h"

namespace ptf {
namespace {

constexpr int kLincombThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;

template <typename T, int N, bool NOISE, typename C>
__device__ __forceinline__ void lincomb_element(const LincombArgs& a, const LincombRow<C>& row, int64_t r,
                                                int64_t c) {
  C acc = C(0);
#pragma unroll
  for (int k = 0; k < N; ++k) {
    const T* in = static_cast<const T*>(a.inputs[k].data);
    acc += row.coeff[k] * cuda::load(in[r * a.inputs[k].row_stride + c * a.inputs[k].col_stride]);
  }
  if (NOISE) acc += row.noise_std * static_cast<C>(randn(row.seed, row.counter0 + static_cast<uint64_t>(c)));
  static_cast<T*>(a.out.data)[r * a.out.row_stride + c * a.out.col_stride] = cuda::store<T>(acc);
}

// INDEX: the type rows are found in (uint32_t when rows * cols < 2^32, else int64_t);
// void for a single row.
template <typename T, int N, bool NOISE, typename INDEX>
__global__ void __launch_bounds__(kLincombThreads) lincomb_kernel(LincombArgs a) {
  using C = typename compute_type<T>::type;
  const int64_t n = a.rows * a.cols;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if constexpr (std::is_void_v<INDEX>) {
    const LincombRow<C> row = lincomb_row<C>(a, 0);
    for (int64_t c = first; c < n; c += stride) lincomb_element<T, N, NOISE>(a, row, 0, c);
  } else {
    const INDEX cols = static_cast<INDEX>(a.cols);
    for (int64_t i = first; i < n; i += stride) {
      const INDEX r = static_cast<INDEX>(i) / cols;
      const int64_t c = i - static_cast<int64_t>(r) * a.cols;
      lincomb_element<T, N, NOISE>(a, lincomb_row<C>(a, r), r, c);
    }
  }
}

template <typename T, int N, bool NOISE>
void launch_layout(const LincombArgs& a, unsigned blocks, cudaStream_t stream) {
  if (a.rows == 1) {
    lincomb_kernel<T, N, NOISE, void><<<blocks, kLincombThreads, 0, stream>>>(a);
  } else if (a.rows * a.cols < (int64_t(1) << 32)) {
    lincomb_kernel<T, N, NOISE, uint32_t><<<blocks, kLincombThreads, 0, stream>>>(a);
  } else {
    lincomb_kernel<T, N, NOISE, int64_t><<<blocks, kLincombThreads, 0, stream>>>(a);
  }
}

template <typename T, int N>
void launch(const LincombArgs& a, unsigned blocks, cudaStream_t stream) {
  if (a.noise) {
    launch_layout<T, N, true>(a, blocks, stream);
  } else {
    launch_layout<T, N, false>(a, blocks, stream);
  }
}

}  // namespace

const char* lincomb_cuda(const LincombArgs& a, void* stream_ptr) {
  const int64_t n = a.rows * a.cols;
  if (n == 0) return nullptr;
  int64_t blocks = (n + kLincombThreads - 1) / kLincombThreads;
  blocks = blocks < kMaxBlocks ? blocks : kMaxBlocks;
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  cuda::dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    switch (a.n_inputs) {
      case 1: launch<T, 1>(a, static_cast<unsigned>(blocks), stream); break;
      case 2: launch<T, 2>(a, static_cast<unsigned>(blocks), stream); break;
      case 3: launch<T, 3>(a, static_cast<unsigned>(blocks), stream); break;
      case 4: launch<T, 4>(a, static_cast<unsigned>(blocks), stream); break;
    }
  });
  return cuda::last_error();
}

}  // namespace ptf
