// vq_nearest: for each row x of (rows, dim), the k nearest of `codes` codebook
// rows e under l2, cosine or dot, without the rows x codes distance matrix;
// see docs/ARCHITECTURE.md for the contract.
//
// Every backend works in two steps:
//  1. a fast scan in float32 (float64 for float64 data) keeps, per row, every
//     code whose approximate score is within twice a rigorous rounding-error
//     bound B of the k-th best approximate score (only those can be among the
//     exact k best);
//  2. those few candidates are re-scored in float64 and the k best taken in
//     the contract's order. A row whose candidates do not fit the candidate
//     buffer (many codes tied within 2B), or whose values are not finite or
//     too large for the fast scan, is answered by an exact float64 scan.
// The per-row math of step 2 lives here, shared by the CPU and CUDA kernels.
#pragma once

#include "pyprobtf/common.h"

namespace ptf {

enum class VqMetric : int { L2 = 0, Cosine = 1, Dot = 2 };

struct VqNearest {
  Mat x;          // (rows, dim)
  Mat codebook;   // (codes, dim)
  void* indices;  // (rows, k) int64, contiguous
  void* dist;     // (rows, k) float32, contiguous
  int64_t rows, codes, dim, k;
  DType dtype;
  VqMetric metric;
};

// Smallest value the cosine distance divides by, as in torch.nn.functional.normalize.
constexpr double kVqCosineEps = 1e-12;

// The contract's order: by distance, NaN after every number, ties to the lower index.
PTF_HD bool vq_before(double da, int64_t ja, double db, int64_t jb) {
  const bool nan_a = da != da;
  const bool nan_b = db != db;
  if (nan_a != nan_b) return nan_b;
  if (!nan_a && da != db) return da < db;
  return ja < jb;
}

// Inserts (d, j) into the sorted list (dist, idx) of length *count <= k, keeping the k first.
PTF_HD void vq_insert_sorted(double* dist, int64_t* idx, int64_t* count, int64_t k, double d, int64_t j) {
  int64_t pos = *count < k ? *count : k;
  if (pos == k && !vq_before(d, j, dist[k - 1], idx[k - 1])) return;
  if (*count < k) ++*count;
  if (pos == k) pos = k - 1;  // the last entry drops out
  while (pos > 0 && vq_before(d, j, dist[pos - 1], idx[pos - 1])) {
    dist[pos] = dist[pos - 1];
    idx[pos] = idx[pos - 1];
    --pos;
  }
  dist[pos] = d;
  idx[pos] = j;
}

// max(v, eps) that keeps NaN, as torch.clamp_min does.
PTF_HD double vq_clamp_min(double v, double eps) { return v < eps ? eps : v; }

// The contract's distance in float64 from dot = x.e, xsq = |x|^2 and, per metric,
// enorm = |e|^2 (l2) or |e| (cosine; unused for dot).
template <VqMetric METRIC>
PTF_HD double vq_distance(double dot, double xsq, double enorm) {
  if constexpr (METRIC == VqMetric::L2) {
    const double d = xsq - 2.0 * dot + enorm;
    return d < 0.0 ? 0.0 : d;  // NaN stays NaN
  } else if constexpr (METRIC == VqMetric::Cosine) {
    return 1.0 - dot / (vq_clamp_min(sqrt(xsq), kVqCosineEps) * vq_clamp_min(enorm, kVqCosineEps));
  } else {
    return -dot;
  }
}

// Rounding-error bound of the fast scan's score s~ = en + alpha * fl(x.e) against
// the exact s = |e|^2 + alpha x.e (en = |e|^2 rounded, or 0 for cosine/dot):
//   |s~ - s| <= |alpha| (gamma_D + 2u) |x| E + 3u M  (+ underflow),
// with u the unit roundoff of the scan's type, gamma_D = D u / (1 - D u), E the
// largest |e| the scan sees and M = max |e|^2 (0 when en = 0). The value
// returned is twice that (so the rounding of thresholds computed from it is
// covered too), plus an absolute term for products that underflow.
// Returns +inf when the scan cannot be trusted at all (D u >= 1/2).
PTF_HD double vq_score_error_bound(double x_norm, double max_e_norm, double max_e_sq, double alpha_abs, int64_t dim,
                                   double unit_roundoff, double underflow) {
  const double du = static_cast<double>(dim) * unit_roundoff;
  if (du >= 0.5) return static_cast<double>(INFINITY);
  const double gamma = du / (1.0 - du);
  const double bound = alpha_abs * (gamma + 2.0 * unit_roundoff) * 1.01 * x_norm * max_e_norm +
                       3.0 * unit_roundoff * max_e_sq + static_cast<double>(dim + 4) * underflow;
  return 2.0 * bound;
}

// ---------------------------------------------------------------- candidates of one row
// A row's candidates are the codes whose approximate score was <= its
// threshold when seen; the threshold is the k-th best approximate score so far
// plus the window (twice the error bound), +inf until k codes were seen, and
// NaN once the row is left to the exact scan. Only the threshold ever falls, so
// a candidate above it can be dropped at any time.

// Offers an approximate score to the row's k best, a max-heap (heap[0] is the
// k-th best). Returns whether the heap is full and its top changed.
template <typename S>
PTF_HD bool vq_heap_offer(S* heap, int64_t* heap_n, int64_t k, S s) {
  int64_t n = *heap_n;
  if (n < k) {
    int64_t pos = n++;
    while (pos > 0 && heap[(pos - 1) / 2] < s) {
      heap[pos] = heap[(pos - 1) / 2];
      pos = (pos - 1) / 2;
    }
    heap[pos] = s;
    *heap_n = n;
    return n == k;
  }
  if (!(s < heap[0])) return false;
  int64_t pos = 0;
  for (;;) {
    int64_t child = 2 * pos + 1;
    if (child >= k) break;
    if (child + 1 < k && heap[child + 1] > heap[child]) ++child;
    if (!(heap[child] > s)) break;
    heap[pos] = heap[child];
    pos = child;
  }
  heap[pos] = s;
  return true;
}

// Appends candidate (s, j) to the buffer of `cap` entries, first dropping the
// entries above `thr` when it is full. Returns false when it is full of
// entries within the threshold: the row must then go to the exact scan.
template <typename S>
PTF_HD bool vq_keep_candidate(S* cand_s, int64_t* cand_j, int64_t* count, int64_t cap, S thr, S s, int64_t j) {
  if (*count == cap) {
    int64_t kept = 0;
    for (int64_t c = 0; c < cap; ++c) {
      if (cand_s[c] <= thr) {
        cand_s[kept] = cand_s[c];
        cand_j[kept] = cand_j[c];
        ++kept;
      }
    }
    *count = kept;
    if (kept == cap) return false;
  }
  cand_s[*count] = s;
  cand_j[*count] = j;
  ++*count;
  return true;
}

// CPU kernel (csrc/cpu/vq_nearest.cpp). `isa`: 0 picks the best the CPU supports;
// 1 (baseline x86-64), 3 (x86-64-v3, AVX2) or 4 (x86-64-v4, AVX-512) forces one,
// for tests. num_threads <= 1 runs serially.
void vq_nearest_cpu(const VqNearest& args, int isa, int num_threads);
// The instruction-set levels the CPU kernel can use on this machine, best first.
int vq_nearest_cpu_best_isa();

// CUDA kernels (csrc/cuda/vq_nearest.cu): a plain FP32-FMA (float64 for
// float64) tiled scan, so no `fast` variant. Return nullptr or an error
// message. The caller allocates a device workspace of
// vq_nearest_cuda_workspace_bytes (O(rows * k + codes * dim)).
int64_t vq_nearest_cuda_workspace_bytes(int64_t rows, int64_t codes, int64_t dim, int64_t k);
const char* vq_nearest_cuda(const VqNearest& args, void* workspace, void* stream);

}  // namespace ptf
