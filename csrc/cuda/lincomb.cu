// CUDA kernel for lincomb: one grid-stride pass over the (rows, cols) elements;
// each element reads its row's coefficients (lincomb_row, shared with the CPU
// kernel) and draws its normal from the Philox stream of pyprobtf/philox.h
// (ptf::randn, accurate logf/cosf), so the noise depends only on (seed, counter).
#include "pyprobtf/cuda_common.cuh"
#include "pyprobtf/lincomb.h"
#include "pyprobtf/philox.h"

namespace ptf {
namespace {

constexpr int kLincombThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;

template <typename T, int N, bool NOISE>
__global__ void __launch_bounds__(kLincombThreads) lincomb_kernel(LincombArgs a) {
  using C = typename compute_type<T>::type;
  const int64_t n = a.rows * a.cols;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t r = i / a.cols;
    const int64_t c = i - r * a.cols;
    const LincombRow<C> row = lincomb_row<C>(a, r);
    C acc = C(0);
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const T* in = static_cast<const T*>(a.inputs[k].data);
      acc += row.coeff[k] * cuda::load(in[r * a.inputs[k].row_stride + c * a.inputs[k].col_stride]);
    }
    if (NOISE) acc += row.noise_std * static_cast<C>(randn(row.seed, row.counter0 + static_cast<uint64_t>(c)));
    static_cast<T*>(a.out.data)[r * a.out.row_stride + c * a.out.col_stride] = cuda::store<T>(acc);
  }
}

template <typename T, int N>
void launch(const LincombArgs& a, unsigned blocks, cudaStream_t stream) {
  if (a.noise) {
    lincomb_kernel<T, N, true><<<blocks, kLincombThreads, 0, stream>>>(a);
  } else {
    lincomb_kernel<T, N, false><<<blocks, kLincombThreads, 0, stream>>>(a);
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
