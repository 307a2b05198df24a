// CUDA kernels for vq_nearest: a plain tiled scan in FP32 FMA (float64 for
// float64 data), one thread per row, codebook and row tiles staged in shared
// memory, the same candidate scheme and float64 re-scoring as the CPU kernel
// (the per-row logic is shared through csrc/include/pyprobtf/vq_nearest.h).
// It uses no tensor cores, so precision="fast" is the Triton backend's
// business; here both precisions run the same code.
//
// Kernels, in stream order:
//  1. prepare_codes: per code, |e|^2 in float64, the scan's offset, the unit
//     codes for cosine;
//  2. reduce_codes (one block): E and M of the error bound;
//  3. scan: per row, candidates, re-scoring, the k best; or the exact scan
//     for rows whose candidates overflow or whose values are not finite.
// All scratch lives in the caller's workspace (see vq_workspace below).
#include <cuda_runtime.h>
#include <math_constants.h>

#include "pyprobtf/cuda_common.cuh"
#include "pyprobtf/vq_nearest.h"

namespace ptf {
namespace {

constexpr int kRowsPerBlock = 128;  // threads per block, one row each
constexpr int kTileCodes = 32;
constexpr int kTileDim = 32;
constexpr int kPrepThreads = 256;

__host__ __device__ inline int64_t vq_cap(int64_t k) { return 2 * k + 16; }

// Workspace layout, 8-byte slots (256-byte aligned sections).
struct Workspace {
  double* meta;       // [E, M]
  double* norm;       // K: |e|^2 (l2, dot) or |e| (cosine)
  double* offset;     // K: the scan's en, as the scan type (float or double) in an 8-byte slot
  double* unit;       // K * D: unit codes for cosine, as the scan type
  double* heap;       // N * k
  int64_t* heap_n;    // N
  double* cand_s;     // N * cap
  int64_t* cand_j;    // N * cap
  int64_t* count;     // N
  double* best_d;     // N * k
  int64_t* best_j;    // N * k
};

int64_t align256(int64_t bytes) { return (bytes + 255) / 256 * 256; }

Workspace carve(void* base, int64_t rows, int64_t codes, int64_t dim, int64_t k, int64_t* total) {
  char* p = static_cast<char*>(base);
  int64_t off = 0;
  auto take = [&](int64_t slots) {
    char* at = p == nullptr ? nullptr : p + off;
    off += align256(slots * 8);
    return at;
  };
  const int64_t cap = vq_cap(k);
  Workspace w;
  w.meta = reinterpret_cast<double*>(take(2));
  w.norm = reinterpret_cast<double*>(take(codes));
  w.offset = reinterpret_cast<double*>(take(codes));
  w.unit = reinterpret_cast<double*>(take(codes * dim));
  w.heap = reinterpret_cast<double*>(take(rows * k));
  w.heap_n = reinterpret_cast<int64_t*>(take(rows));
  w.cand_s = reinterpret_cast<double*>(take(rows * cap));
  w.cand_j = reinterpret_cast<int64_t*>(take(rows * cap));
  w.count = reinterpret_cast<int64_t*>(take(rows));
  w.best_d = reinterpret_cast<double*>(take(rows * k));
  w.best_j = reinterpret_cast<int64_t*>(take(rows * k));
  if (total) *total = off;
  return w;
}

template <typename T>
__device__ double load64(const Mat& m, int64_t r, int64_t c) {
  return static_cast<double>(cuda::load(static_cast<const T*>(m.data)[r * m.row_stride + c * m.col_stride]));
}

// x . e_j in float64 (products of float32 values are exact in float64).
template <typename T>
__device__ double dot64(const VqNearest& a, int64_t row, int64_t j) {
  double acc = 0.0;
  for (int64_t d = 0; d < a.dim; ++d) acc += load64<T>(a.x, row, d) * load64<T>(a.codebook, j, d);
  return acc;
}

template <typename T, typename S>
__global__ void prepare_codes(VqNearest a, Workspace w) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= a.codes) return;
  double sq = 0.0;
  for (int64_t d = 0; d < a.dim; ++d) {
    const double v = load64<T>(a.codebook, j, d);
    sq += v * v;
  }
  S* offset = reinterpret_cast<S*>(w.offset);
  if (a.metric == VqMetric::Cosine) {
    const double norm = sqrt(sq);
    w.norm[j] = norm;
    const double scale = 1.0 / vq_clamp_min(norm, kVqCosineEps);
    S* unit = reinterpret_cast<S*>(w.unit);
    for (int64_t d = 0; d < a.dim; ++d) unit[j * a.dim + d] = static_cast<S>(load64<T>(a.codebook, j, d) * scale);
    offset[j] = S(0);
  } else {
    w.norm[j] = sq;
    offset[j] = a.metric == VqMetric::L2 ? static_cast<S>(sq) : S(0);
  }
}

// E (largest |e| the scan sees) and M (largest offset), NaN if a code is not finite.
__global__ void reduce_codes(VqNearest a, Workspace w) {
  __shared__ double e_max[kPrepThreads];
  __shared__ int bad[kPrepThreads];
  double m = 0.0;
  int nonfinite = 0;
  for (int64_t j = threadIdx.x; j < a.codes; j += blockDim.x) {
    const double sq = a.metric == VqMetric::Cosine ? w.norm[j] * w.norm[j] : w.norm[j];
    nonfinite |= !isfinite(sq);
    m = sq > m ? sq : m;
  }
  e_max[threadIdx.x] = m;
  bad[threadIdx.x] = nonfinite;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) {
      e_max[threadIdx.x] = fmax(e_max[threadIdx.x], e_max[threadIdx.x + half]);
      bad[threadIdx.x] |= bad[threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const double nan = CUDART_NAN;
    const double largest_sq = e_max[0];
    if (a.metric == VqMetric::Cosine) {
      w.meta[0] = bad[0] ? nan : 1.0 + 1e-6;  // unit codes rounded to the scan type
      w.meta[1] = 0.0;
    } else {
      w.meta[0] = bad[0] ? nan : sqrt(largest_sq);
      w.meta[1] = bad[0] ? nan : (a.metric == VqMetric::L2 ? largest_sq * (1.0 + 1e-6) : 0.0);
    }
  }
}

template <typename S> __device__ constexpr double unit_roundoff() { return sizeof(S) == 4 ? 0x1p-24 : 0x1p-53; }
// Flush-to-zero safe: an underflowing product may lose up to the smallest normal.
template <typename S> __device__ constexpr double underflow() { return sizeof(S) == 4 ? 0x1p-125 : 0x1p-1021; }
template <typename S> __device__ constexpr double score_limit() { return sizeof(S) == 4 ? 1e36 : 1e300; }

// float64: 3 blocks per SM (168 registers), what its 43 KB of shared memory
// allows on sm_80 anyway (sm_86/89 fit 2), and the d loop unrolled twice, not
// 4 times (each step is still 32 independent FMAs): with the 4-fold unroll
// ptxas spilled at 168 registers (sm_80) or took 182-214 (2 blocks per SM).
template <typename S> constexpr int scan_min_blocks() { return sizeof(S) == 8 ? 3 : 0; }
template <typename S> constexpr int scan_d_unroll() { return sizeof(S) == 8 ? 2 : 4; }

template <typename T, typename S, VqMetric METRIC>
__global__ void __launch_bounds__(kRowsPerBlock, scan_min_blocks<S>()) scan(VqNearest a, Workspace w) {
  __shared__ S codes_tile[kTileCodes][kTileDim + 1];
  __shared__ S rows_tile[kRowsPerBlock][kTileDim + 1];
  // |x|^2 is needed again only after the scan: kept in shared memory (1 KB)
  // rather than in two registers that ptxas spilled in the float64 kernels.
  __shared__ double row_sq[kRowsPerBlock];
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock;
  const int64_t row = row0 + threadIdx.x;
  const bool live = row < a.rows;
  const int64_t k = a.k, cap = vq_cap(k);
  const S alpha = METRIC == VqMetric::L2 ? S(-2) : S(-1);
  const S* offset = reinterpret_cast<const S*>(w.offset);
  const S* unit = reinterpret_cast<const S*>(w.unit);

  // Per-row state in the workspace.
  S* heap = reinterpret_cast<S*>(w.heap + (live ? row : 0) * k);
  int64_t* heap_n = w.heap_n + (live ? row : 0);
  S* cand_s = reinterpret_cast<S*>(w.cand_s + (live ? row : 0) * cap);
  int64_t* cand_j = w.cand_j + (live ? row : 0) * cap;
  int64_t* count = w.count + (live ? row : 0);

  double xsq = 0.0;
  if (live) {
    for (int64_t d = 0; d < a.dim; ++d) {
      const double v = load64<T>(a.x, row, d);
      xsq += v * v;
    }
    *heap_n = 0;
    *count = 0;
  }
  row_sq[threadIdx.x] = xsq;
  const double e_max = w.meta[0], m_max = w.meta[1];
  const double alpha_abs = METRIC == VqMetric::L2 ? 2.0 : 1.0;
  const double x_norm = sqrt(xsq);
  const double bound =
      vq_score_error_bound(x_norm, e_max, m_max, alpha_abs, a.dim, unit_roundoff<S>(), underflow<S>());
  const double largest = m_max + alpha_abs * x_norm * e_max;
  bool exact = !(xsq < CUDART_INF) || !(largest < score_limit<S>()) || !(bound < score_limit<S>());
  // window = 2 * bound, rounded up to S.
  S window = static_cast<S>(2.0 * bound);
  if (static_cast<double>(window) < 2.0 * bound) {
    if constexpr (sizeof(S) == 4) {
      window = nextafterf(window, CUDART_INF_F);
    } else {
      window = nextafter(window, CUDART_INF);
    }
  }
  S thr = exact ? static_cast<S>(CUDART_NAN) : static_cast<S>(CUDART_INF);

  for (int64_t n0 = 0; n0 < a.codes; n0 += kTileCodes) {
    S acc[kTileCodes];
#pragma unroll
    for (int c = 0; c < kTileCodes; ++c) acc[c] = S(0);
    for (int64_t d0 = 0; d0 < a.dim; d0 += kTileDim) {
      __syncthreads();
      for (int i = threadIdx.x; i < kTileCodes * kTileDim; i += kRowsPerBlock) {
        const int c = i / kTileDim, d = i % kTileDim;
        const int64_t j = n0 + c, dd = d0 + d;
        S v = S(0);
        if (j < a.codes && dd < a.dim) {
          v = METRIC == VqMetric::Cosine ? unit[j * a.dim + dd] : static_cast<S>(load64<T>(a.codebook, j, dd));
        }
        codes_tile[c][d] = v;
      }
      for (int i = threadIdx.x; i < kRowsPerBlock * kTileDim; i += kRowsPerBlock) {
        const int r = i / kTileDim, d = i % kTileDim;
        const int64_t rr = row0 + r, dd = d0 + d;
        rows_tile[r][d] = (rr < a.rows && dd < a.dim) ? static_cast<S>(load64<T>(a.x, rr, dd)) : S(0);
      }
      __syncthreads();
#pragma unroll (scan_d_unroll<S>())
      for (int d = 0; d < kTileDim; ++d) {
        const S xv = rows_tile[threadIdx.x][d];
#pragma unroll
        for (int c = 0; c < kTileCodes; ++c) acc[c] = fma(xv, codes_tile[c][d], acc[c]);
      }
    }
    if (!live || exact) continue;
    // The tile's dot products go to this thread's own row of rows_tile (free
    // until the next tile's __syncthreads; stride kTileDim + 1: no bank
    // conflicts), so the candidate loop below runs rolled, with no acc[] live
    // across the heap code. Unrolled over acc[] in registers, ptxas spilled at
    // 128 registers on sm_80/86/89 (float). The cost: 32 shared stores and
    // loads per code tile, against 33 shared loads per dimension of the tile;
    // the scores, their order and the arithmetic are unchanged.
    S* dots = rows_tile[threadIdx.x];
#pragma unroll
    for (int c = 0; c < kTileCodes; ++c) dots[c] = acc[c];
    for (int c = 0; c < kTileCodes; ++c) {
      const int64_t j = n0 + c;
      if (j >= a.codes) break;
      const S s = offset[j] + alpha * dots[c];
      if (!(s <= thr)) continue;
      if (vq_heap_offer(heap, heap_n, k, s)) thr = heap[0] + window;
      if (s <= thr && !vq_keep_candidate(cand_s, cand_j, count, cap, thr, s, j)) {
        exact = true;
        thr = static_cast<S>(CUDART_NAN);
      }
    }
  }
  if (!live) return;

  // The k best in float64: of the candidates within the final threshold, or of all codes.
  xsq = row_sq[threadIdx.x];
  double* best_d = w.best_d + row * k;
  int64_t* best_j = w.best_j + row * k;
  int64_t n = 0;
  if (exact || *heap_n < k) {
    for (int64_t j = 0; j < a.codes; ++j) {
      vq_insert_sorted(best_d, best_j, &n, k, vq_distance<METRIC>(dot64<T>(a, row, j), xsq, w.norm[j]), j);
    }
  } else {
    for (int64_t c = 0; c < *count; ++c) {
      if (!(cand_s[c] <= thr)) continue;
      const int64_t j = cand_j[c];
      vq_insert_sorted(best_d, best_j, &n, k, vq_distance<METRIC>(dot64<T>(a, row, j), xsq, w.norm[j]), j);
    }
  }
  int64_t* out_idx = static_cast<int64_t*>(a.indices) + row * k;
  float* out_dist = static_cast<float*>(a.dist) + row * k;
  for (int64_t i = 0; i < k; ++i) {
    out_idx[i] = best_j[i];
    out_dist[i] = static_cast<float>(best_d[i]);
  }
}

template <typename T>
const char* launch(const VqNearest& a, void* workspace, cudaStream_t stream) {
  using S = typename compute_type<T>::type;
  const Workspace w = carve(workspace, a.rows, a.codes, a.dim, a.k, nullptr);
  const unsigned code_blocks = static_cast<unsigned>((a.codes + kPrepThreads - 1) / kPrepThreads);
  prepare_codes<T, S><<<code_blocks, kPrepThreads, 0, stream>>>(a, w);
  reduce_codes<<<1, kPrepThreads, 0, stream>>>(a, w);
  const unsigned row_blocks = static_cast<unsigned>((a.rows + kRowsPerBlock - 1) / kRowsPerBlock);
  switch (a.metric) {
    case VqMetric::L2: scan<T, S, VqMetric::L2><<<row_blocks, kRowsPerBlock, 0, stream>>>(a, w); break;
    case VqMetric::Cosine: scan<T, S, VqMetric::Cosine><<<row_blocks, kRowsPerBlock, 0, stream>>>(a, w); break;
    case VqMetric::Dot: scan<T, S, VqMetric::Dot><<<row_blocks, kRowsPerBlock, 0, stream>>>(a, w); break;
  }
  return cuda::last_error();
}

}  // namespace

int64_t vq_nearest_cuda_workspace_bytes(int64_t rows, int64_t codes, int64_t dim, int64_t k) {
  int64_t total = 0;
  carve(nullptr, rows, codes, dim, k, &total);
  return total;
}

const char* vq_nearest_cuda(const VqNearest& a, void* workspace, void* stream) {
  if (a.rows == 0) return nullptr;
  const char* error = nullptr;
  cuda::dispatch_dtype(a.dtype, [&](auto tag) {
    error = launch<decltype(tag)>(a, workspace, static_cast<cudaStream_t>(stream));
  });
  return error;
}

}  // namespace ptf
