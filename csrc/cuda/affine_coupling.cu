// CUDA kernels for affine_coupling. Forward writes y and one partial sum of s
// per (row, column tile); a second tiny kernel adds a row's partials in order
// (no atomics: the log-determinant is reproducible and batch-invariant). With
// ladj_elements, forward writes +-s per element instead and sums nothing.
#include "pyprobtf/affine_coupling.h"
#include "pyprobtf/cuda_common.cuh"

namespace ptf {
namespace {

using cuda::kItems;
using cuda::kThreads;

// cuda::Math plus the log that nflows' "sigmoid_eps" needs.
struct CouplingMath : cuda::Math {
  static __device__ __forceinline__ float log(float x) { return ::logf(x); }
  static __device__ __forceinline__ double log(double x) { return ::log(x); }
};

// The min-blocks hint (4: a 64-register cap, above what the instance needs)
// makes ptxas allocate 44 registers with no spill where sm_80 otherwise spills
// one around the double exp's slow path; 0 leaves every other instance as is.
// 5 blocks of 256 threads per SM still keep far more loads in flight than HBM
// bandwidth needs, so the one fewer block does not slow this streaming kernel.
template <typename T, ScaleFn FN, bool INV>
__global__ void __launch_bounds__(kThreads, sizeof(T) == 8 && FN == ScaleFn::Exp && !INV ? 4 : 0)
    forward_kernel(AffineCouplingForward a, int threads_per_row, int rows_per_block, int64_t tile_cols,
                   int64_t col_tiles, double* partial) {
  using C = typename compute_type<T>::type;
  __shared__ double sums[kThreads];
  const int lane = threadIdx.x % threads_per_row;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * rows_per_block + threadIdx.x / threads_per_row;
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * tile_cols;
  const C clamp = static_cast<C>(a.clamp);
  double acc = 0.0;
  if (r < a.rows) {
    const T* x = static_cast<const T*>(a.x.data) + r * a.x.row_stride;
    const T* t = static_cast<const T*>(a.shift.data) + r * a.shift.row_stride;
    const T* sc = static_cast<const T*>(a.scale.data) + r * a.scale.row_stride;
    T* y = static_cast<T*>(a.y) + r * a.cols;
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int64_t c = c0 + lane + static_cast<int64_t>(k) * threads_per_row;
      if (c < a.cols) {
        const C xv = cuda::load(x[c * a.x.col_stride]);
        const C tv = cuda::load(t[c * a.shift.col_stride]);
        const C s = log_multiplier<FN, CouplingMath>(cuda::load(sc[c * a.scale.col_stride]), clamp);
        const C out = INV ? (xv - tv) * CouplingMath::exp(-s) : xv * CouplingMath::exp(s) + tv;
        y[c] = cuda::store<T>(out);
        if (a.ladj_elements) {
          static_cast<C*>(a.ladj)[r * a.cols + c] = INV ? -s : s;
        } else {
          acc += static_cast<double>(s);
        }
      }
    }
  }
  if (a.ladj_elements) return;  // the same for the whole block: no thread waits at the barriers below
  // Tree reduction inside each row's group of threads: a fixed order.
  sums[threadIdx.x] = acc;
  __syncthreads();
  for (int half = threads_per_row / 2; half > 0; half /= 2) {
    if (lane < half) sums[threadIdx.x] += sums[threadIdx.x + half];
    __syncthreads();
  }
  if (lane == 0 && r < a.rows) {
    const double total = sums[threadIdx.x];
    if (col_tiles == 1) {
      static_cast<C*>(a.ladj)[r] = static_cast<C>(INV ? -total : total);
    } else {
      partial[r * col_tiles + blockIdx.y] = total;
    }
  }
}

template <typename L>
__global__ void sum_partials_kernel(const double* partial, L* ladj, int64_t rows, int64_t col_tiles, bool negate) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  double total = 0.0;
  for (int64_t k = 0; k < col_tiles; ++k) total += partial[r * col_tiles + k];
  ladj[r] = static_cast<L>(negate ? -total : total);
}

template <typename T, ScaleFn FN, bool INV>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(AffineCouplingBackward a, int threads_per_row, int rows_per_block, int64_t tile_cols) {
  using C = typename compute_type<T>::type;
  const int lane = threadIdx.x % threads_per_row;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * rows_per_block + threadIdx.x / threads_per_row;
  if (r >= a.rows) return;
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * tile_cols;
  const C clamp = static_cast<C>(a.clamp);
  const T* x = static_cast<const T*>(a.x.data) + r * a.x.row_stride;
  const T* t = static_cast<const T*>(a.shift.data) + r * a.shift.row_stride;
  const T* sc = static_cast<const T*>(a.scale.data) + r * a.scale.row_stride;
  const T* gy = static_cast<const T*>(a.grad_y.data) + r * a.grad_y.row_stride;
  // grad_ladj's column stride is 0 for a per-row gradient: one load then.
  const C* gl_row = static_cast<const C*>(a.grad_ladj.data) + r * a.grad_ladj.row_stride;
  const int64_t gl_cs = a.grad_ladj.col_stride;
  const C gl_one = gl_cs == 0 && c0 < a.cols ? gl_row[0] : C(0);
  T* gx = static_cast<T*>(a.grad_x) + r * a.cols;
  T* gt = a.grad_shift ? static_cast<T*>(a.grad_shift) + r * a.cols : nullptr;
  T* ga = static_cast<T*>(a.grad_scale) + r * a.cols;
#pragma unroll
  for (int k = 0; k < kItems; ++k) {
    const int64_t c = c0 + lane + static_cast<int64_t>(k) * threads_per_row;
    if (c >= a.cols) break;
    const C xv = cuda::load(x[c * a.x.col_stride]);
    const C av = cuda::load(sc[c * a.scale.col_stride]);
    const C g = cuda::load(gy[c * a.grad_y.col_stride]);
    const C gl = gl_cs == 0 ? gl_one : gl_row[c * gl_cs];
    const C s = log_multiplier<FN, CouplingMath>(av, clamp);
    const C e = CouplingMath::exp(INV ? -s : s);
    const C gxv = g * e;
    C gsv;
    if constexpr (INV) {
      const C yv = (xv - cuda::load(t[c * a.shift.col_stride])) * e;
      gsv = -(g * yv) - gl;
    } else {
      gsv = gxv * xv + gl;
    }
    gx[c] = cuda::store<T>(gxv);
    ga[c] = cuda::store<T>(gsv * dlog_multiplier<FN, CouplingMath>(av, s, clamp));
    if (gt) gt[c] = cuda::store<T>(INV ? -gxv : g);
  }
}

template <typename F>
void dispatch_fn(ScaleFn fn, bool inverse, F&& f) {
  auto with_inv = [&](auto fn_tag) {
    if (inverse) f(fn_tag, std::true_type{});
    else f(fn_tag, std::false_type{});
  };
  switch (fn) {
    case ScaleFn::Exp: with_inv(std::integral_constant<ScaleFn, ScaleFn::Exp>{}); break;
    case ScaleFn::SoftClamp: with_inv(std::integral_constant<ScaleFn, ScaleFn::SoftClamp>{}); break;
    case ScaleFn::Sigmoid: with_inv(std::integral_constant<ScaleFn, ScaleFn::Sigmoid>{}); break;
    case ScaleFn::SoftClip: with_inv(std::integral_constant<ScaleFn, ScaleFn::SoftClip>{}); break;
    case ScaleFn::SigmoidEps: with_inv(std::integral_constant<ScaleFn, ScaleFn::SigmoidEps>{}); break;
    case ScaleFn::InvSigmoid: with_inv(std::integral_constant<ScaleFn, ScaleFn::InvSigmoid>{}); break;
  }
}

}  // namespace

int64_t affine_coupling_workspace_bytes(int64_t rows, int64_t cols) {
  const cuda::RowLayout layout(rows, cols);
  return layout.col_tiles > 1 ? rows * layout.col_tiles * static_cast<int64_t>(sizeof(double)) : 0;
}

const char* affine_coupling_forward_cuda(const AffineCouplingForward& a, void* workspace, void* stream_ptr) {
  if (a.rows == 0) return nullptr;
  const cuda::RowLayout layout(a.rows, a.cols);
  if (layout.col_tiles > 65535) return "affine_coupling: rows longer than 2^26 elements are not supported on CUDA";
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  double* partial = static_cast<double*>(workspace);
  cuda::dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    using L = typename compute_type<T>::type;
    dispatch_fn(a.scale_fn, a.inverse, [&](auto fn_tag, auto inv_tag) {
      forward_kernel<T, decltype(fn_tag)::value, decltype(inv_tag)::value>
          <<<layout.grid, kThreads, 0, stream>>>(a, layout.threads_per_row, layout.rows_per_block,
                                                 layout.tile_cols, layout.col_tiles, partial);
    });
    if (layout.col_tiles > 1 && !a.ladj_elements) {
      const int threads = 256;
      const unsigned blocks = static_cast<unsigned>((a.rows + threads - 1) / threads);
      sum_partials_kernel<L><<<blocks, threads, 0, stream>>>(partial, static_cast<L*>(a.ladj), a.rows,
                                                             layout.col_tiles, a.inverse);
    }
  });
  return cuda::last_error();
}

const char* affine_coupling_backward_cuda(const AffineCouplingBackward& a, void* stream_ptr) {
  if (a.rows == 0 || a.cols == 0) return nullptr;
  const cuda::RowLayout layout(a.rows, a.cols);
  if (layout.col_tiles > 65535) return "affine_coupling: rows longer than 2^26 elements are not supported on CUDA";
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  cuda::dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    dispatch_fn(a.scale_fn, a.inverse, [&](auto fn_tag, auto inv_tag) {
      backward_kernel<T, decltype(fn_tag)::value, decltype(inv_tag)::value>
          <<<layout.grid, kThreads, 0, stream>>>(a, layout.threads_per_row, layout.rows_per_block,
                                                 layout.tile_cols);
    });
  });
  return cuda::last_error();
}

}  // namespace ptf
