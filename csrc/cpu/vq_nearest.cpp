// CPU kernel for vq_nearest: a blocked, register-tiled scan in float32
// (float64 for float64 data) that keeps per row only the candidates that can
// be among the exact k best, then re-scores those in float64. See
// csrc/include/pyprobtf/vq_nearest.h for the scheme and its error bound.
//
// Work is cut into tiles of rows whose size depends only on D and k, never on
// the thread count, and nothing a row computes depends on the other rows: the
// result is batch- and thread-invariant. Extra memory: the packed codebook
// (K x D) and, per running tile, its candidate lists (and a converted copy of
// its rows when they are not contiguous values of the scan's type).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif
// Per-instruction-set scans need GCC's `#pragma GCC target` (as PTF_MULTIVERSION needs target_clones).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PTF_VQ_X86 1
#endif

#include "pyprobtf/cpu.h"
#include "pyprobtf/vq_nearest.h"

namespace ptf {
namespace vq {
namespace {

template <typename T>
struct AlignedBuffer {
  std::unique_ptr<T, decltype(&std::free)> ptr{nullptr, &std::free};
  explicit AlignedBuffer(size_t n) {
    const size_t bytes = ((n * sizeof(T) + 63) / 64) * 64;
    ptr.reset(static_cast<T*>(std::aligned_alloc(64, bytes > 0 ? bytes : 64)));
    if (!ptr) throw std::bad_alloc();
  }
  T* get() const { return ptr.get(); }
};

// The scan's unit roundoff and the size below which its products may underflow.
template <typename S> constexpr double unit_roundoff() { return sizeof(S) == 4 ? 0x1p-24 : 0x1p-53; }
template <typename S> constexpr double underflow() { return sizeof(S) == 4 ? 0x1p-148 : 0x1p-1073; }
// Scores must stay far from overflow for the bound to hold; rows beyond go to the exact scan.
template <typename S> constexpr double score_limit() { return sizeof(S) == 4 ? 1e36 : 1e300; }

// a . b in float64 with eight interleaved partial sums added in a fixed tree:
// the same value whatever the caller (and one vector FMA chain per 8 terms).
// Products of float32 values are exact in float64.
constexpr int kExactLanes = 8;

template <typename A, typename B>
PTF_MULTIVERSION double dot_exact(const A* a, int64_t as, const B* b, int64_t bs, int64_t dim) {
  double acc[kExactLanes] = {};
  int64_t d = 0;
  if (as == 1 && bs == 1) {
    for (; d + kExactLanes <= dim; d += kExactLanes) {
      for (int l = 0; l < kExactLanes; ++l) {
        acc[l] += static_cast<double>(cpu::load(a[d + l])) * static_cast<double>(cpu::load(b[d + l]));
      }
    }
  } else {
    for (; d + kExactLanes <= dim; d += kExactLanes) {
      for (int l = 0; l < kExactLanes; ++l) {
        acc[l] += static_cast<double>(cpu::load(a[(d + l) * as])) * static_cast<double>(cpu::load(b[(d + l) * bs]));
      }
    }
  }
  for (; d < dim; ++d) acc[0] += static_cast<double>(cpu::load(a[d * as])) * static_cast<double>(cpu::load(b[d * bs]));
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

template <typename T>
void row_to_double(const Mat& m, int64_t row, int64_t dim, double* out) {
  const T* p = static_cast<const T*>(m.data) + row * m.row_stride;
  if (m.col_stride == 1) {
    for (int64_t d = 0; d < dim; ++d) out[d] = static_cast<double>(cpu::load(p[d]));
  } else {
    for (int64_t d = 0; d < dim; ++d) out[d] = static_cast<double>(cpu::load(p[d * m.col_stride]));
  }
}

// |x|^2 of row `row` in float64.
template <typename T>
double sum_of_squares(const Mat& m, int64_t row, int64_t dim) {
  const T* p = static_cast<const T*>(m.data) + row * m.row_stride;
  return dot_exact(p, m.col_stride, p, m.col_stride, dim);
}

// Twice the rounding-error bound of this scan's score s~ (the window is twice
// this again; see vq_score_error_bound in vq_nearest.h for the scheme). The
// scan adds the D exact products x_d (alpha e_d) one by one to en = |e|^2
// rounded to S (u M off), each step rounded once (or twice without FMA), so
// against s = |e|^2 + alpha x.e for the codes the scan sees:
//   |s~ - s| <= u M + gamma_{D+1} (M + |alpha| |x| E)  (+ underflow),
// plus |alpha| u |x| E where the codes are rounded to S (cosine's unit codes):
// within (gamma_{D+1} + 2u) (|alpha| |x| E + M).
double scan_error_bound(double x_norm, double max_e_norm, double max_e_sq, double alpha_abs, int64_t dim,
                        double unit_roundoff, double underflow) {
  const double du = static_cast<double>(dim + 1) * unit_roundoff;
  if (du >= 0.5) return std::numeric_limits<double>::infinity();
  const double gamma = du / (1.0 - du);
  const double bound = (gamma + 2.0 * unit_roundoff) * 1.01 * (alpha_abs * x_norm * max_e_norm + max_e_sq) +
                       static_cast<double>(dim + 4) * underflow;
  return 2.0 * bound;
}

template <typename T>
const T* code_row(const VqNearest& a, int64_t j) {
  return static_cast<const T*>(a.codebook.data) + j * a.codebook.row_stride;
}

}  // namespace

// ---------------------------------------------------------------- shared with the scan

// The codebook as the scan reads it: panels of NR codes, D x NR each (code
// p * NR + c at lane c of row d), holding alpha e (alpha = -2 for l2, -1 for
// cosine on unit codes and dot: exact scalings), padded with zero codes whose
// offset is +inf. A score is en + x . (alpha e).
template <typename S>
struct PackedCodebook {
  const S* panel;
  const S* offset;  // en per code: |e|^2 (l2), 0 (cosine, dot); +inf for padding
  int64_t codes, dim, panels;
};

// Per-row state of one row tile (see "candidates of one row" in vq_nearest.h);
// `exact` marks rows answered by the exact float64 scan.
template <typename S>
struct RowState {
  S* thr;
  S* window;
  S* heap;          // k per row
  int64_t* heap_n;
  S* cand_score;    // cap per row
  int64_t* cand_idx;
  int64_t* count;
  uint8_t* exact;
  int64_t k, cap;
};

template <typename S>
inline bool heap_offer(RowState<S>& st, int64_t row, S s) {
  return vq_heap_offer(st.heap + row * st.k, st.heap_n + row, st.k, s);
}

// Returns false when the row went to the exact scan (its threshold is then NaN:
// nothing passes any more).
template <typename S>
inline bool keep_candidate(RowState<S>& st, int64_t row, S s, int64_t j) {
  if (vq_keep_candidate(st.cand_score + row * st.cap, st.cand_idx + row * st.cap, st.count + row, st.cap,
                        st.thr[row], s, j)) {
    return true;
  }
  st.exact[row] = 1;
  st.thr[row] = std::numeric_limits<S>::quiet_NaN();
  return false;
}

// ---------------------------------------------------------------- the scan, per instruction set

#if defined(PTF_VQ_X86)
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
namespace isa4 {
#define PTF_VQ_ISA 4
#include "pyprobtf/vq_nearest_scan.inc"
#undef PTF_VQ_ISA
}  // namespace isa4
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
namespace isa3 {
#define PTF_VQ_ISA 3
#include "pyprobtf/vq_nearest_scan.inc"
#undef PTF_VQ_ISA
}  // namespace isa3
#pragma GCC pop_options
#endif

namespace isa1 {
#define PTF_VQ_ISA 1
#include "pyprobtf/vq_nearest_scan.inc"
#undef PTF_VQ_ISA
}  // namespace isa1

// ---------------------------------------------------------------- driver

namespace {

// The codebook, prepared once per call for a scan with panels of `nr` codes.
template <typename S>
struct Prepared {
  int64_t nr, panels;
  AlignedBuffer<S> panel, offset;
  std::vector<double> norm;  // |e|^2 (l2) or |e| (cosine) in float64
  double max_norm = 0.0;     // E: largest |e| the scan sees
  double max_sq = 0.0;       // M: largest en the scan adds (0 for cosine, dot)
  bool finite = true;        // every code finite
  Prepared(int64_t codes, int64_t dim, int64_t nr_)
      : nr(nr_), panels((codes + nr_ - 1) / nr_), panel(static_cast<size_t>(panels * nr_ * dim)),
        offset(static_cast<size_t>(panels * nr_)), norm(static_cast<size_t>(codes)) {}
};

template <typename T, typename S>
void prepare_codebook(const VqNearest& a, Prepared<S>& prep, int num_threads) {
  const int64_t nr = prep.nr, dim = a.dim;
  std::vector<double> sq(static_cast<size_t>(prep.panels * nr), 0.0);
  cpu::parallel_for(prep.panels, a.codes * a.dim, num_threads, [&](int64_t p) {
    std::vector<double> e(static_cast<size_t>(dim));
    S* panel = prep.panel.get() + p * dim * nr;
    S* offset = prep.offset.get() + p * nr;
    for (int64_t c = 0; c < nr; ++c) {
      const int64_t j = p * nr + c;
      if (j >= a.codes) {
        for (int64_t d = 0; d < dim; ++d) panel[d * nr + c] = S(0);
        offset[c] = std::numeric_limits<S>::infinity();
        continue;
      }
      row_to_double<T>(a.codebook, j, dim, e.data());
      const double s = dot_exact(e.data(), 1, e.data(), 1, dim);
      sq[static_cast<size_t>(j)] = s;
      // Cosine scans unit codes e / max(|e|, eps): x . e^ orders codes as the cosine distance does.
      // The scaling by alpha comes after the rounding to S, so it is exact (a code large enough for
      // 2 e to overflow has |e|^2 = inf: every row then goes to the exact scan).
      const double scale = a.metric == VqMetric::Cosine ? 1.0 / vq_clamp_min(std::sqrt(s), kVqCosineEps) : 1.0;
      const S alpha = a.metric == VqMetric::L2 ? S(-2) : S(-1);
      for (int64_t d = 0; d < dim; ++d) panel[d * nr + c] = alpha * static_cast<S>(e[static_cast<size_t>(d)] * scale);
      offset[c] = a.metric == VqMetric::L2 ? static_cast<S>(s) : S(0);
    }
  });
  for (int64_t j = 0; j < a.codes; ++j) {
    const double s = sq[static_cast<size_t>(j)];
    prep.finite = prep.finite && std::isfinite(s);
    prep.norm[static_cast<size_t>(j)] = a.metric == VqMetric::Cosine ? std::sqrt(s) : s;
    prep.max_norm = std::max(prep.max_norm, std::sqrt(s));
    if (a.metric == VqMetric::L2) prep.max_sq = std::max(prep.max_sq, s);
  }
  // Unit codes rounded to S have norm <= 1 + u.
  if (a.metric == VqMetric::Cosine) prep.max_norm = 1.0 + 1e-6;
  // Rounding en = |e|^2 to S can raise it by u relative: M must bound what the scan adds.
  prep.max_sq *= 1.0 + 1e-6;
}

// Like cpu::parallel_for, but tiles are handed out dynamically: they cost about
// the same, yet on a shared machine one thread can fall behind. The cut never
// depends on the thread count, so neither do the results.
template <typename F>
void parallel_tiles(int64_t n, int64_t work, int num_threads, F&& f) {
#if defined(PTF_HAVE_OPENMP)
  if (num_threads > 1 && n > 1 && work >= cpu::kMinParallelWork) {
#pragma omp parallel for num_threads(num_threads) schedule(dynamic, 1)
    for (int64_t i = 0; i < n; ++i) f(i);
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) f(i);
}

// Rows per tile: a function of D and k only (never of the thread count).
// About 24 KiB of rows (they stay in L1/L2 while the codebook panels pass
// over them), a multiple of every micro-tile height, a bounded candidate buffer.
int64_t rows_per_tile(int64_t dim, int64_t cap) {
  int64_t mc = 24576 / std::max<int64_t>(dim, 1);
  mc = std::min<int64_t>(mc, (int64_t(1) << 20) / cap);
  mc = std::max<int64_t>(12, std::min<int64_t>(192, mc));
  return (mc / 12) * 12;
}

// The k best of all codes for one row, in float64: for rows the fast scan cannot answer.
template <typename T, VqMetric METRIC>
void exact_scan(const VqNearest& a, const std::vector<double>& norm, const double* x, double xsq, double* dist,
                int64_t* idx) {
  int64_t count = 0;
  for (int64_t j = 0; j < a.codes; ++j) {
    const double dot = dot_exact(x, 1, code_row<T>(a, j), a.codebook.col_stride, a.dim);
    vq_insert_sorted(dist, idx, &count, a.k, vq_distance<METRIC>(dot, xsq, norm[static_cast<size_t>(j)]), j);
  }
}

template <class Kern, typename T, typename S, VqMetric METRIC>
void process_tile(const VqNearest& a, const Prepared<S>& prep, const PackedCodebook<S>& cb, int64_t r0, int64_t r1,
                  int64_t cap) {
  constexpr int MR = Kern::MR;
  const int64_t dim = a.dim, k = a.k, rows = r1 - r0;
  const int64_t micro_tiles = (rows + MR - 1) / MR;
  const int64_t padded = micro_tiles * MR;
  std::vector<S> thr(padded), window(padded);
  // Written before they are read: left uninitialised (a value-initialised vector would clear them).
  std::unique_ptr<S[]> heap(new S[padded * k]), cand_score(new S[padded * cap]);
  std::unique_ptr<int64_t[]> cand_idx(new int64_t[padded * cap]);
  std::vector<int64_t> heap_n(padded, 0), count(padded, 0);
  std::vector<uint8_t> exact(padded, 1);
  std::vector<double> xsq(padded, 0.0), x(static_cast<size_t>(std::max<int64_t>(dim, 1)));
  // (rows >= 1 here: tiles are never empty)
  const double alpha_abs = METRIC == VqMetric::L2 ? 2.0 : 1.0;

  // Row pointers for the scan: straight into x when its rows already are
  // contiguous values of the scan's type, else into a converted copy.
  std::vector<const S*> row_ptr(static_cast<size_t>(padded));
  std::vector<S> converted;
  if constexpr (std::is_same_v<T, S>) {
    if (a.x.col_stride == 1 || dim <= 1) {
      for (int64_t r = 0; r < padded; ++r) {
        row_ptr[r] = static_cast<const S*>(a.x.data) + (r0 + std::min(r, rows - 1)) * a.x.row_stride;
      }
    }
  }
  if (row_ptr[0] == nullptr) {
    converted.resize(static_cast<size_t>(rows * std::max<int64_t>(dim, 1)));
    for (int64_t r = 0; r < rows; ++r) {
      const T* src = static_cast<const T*>(a.x.data) + (r0 + r) * a.x.row_stride;
      S* dst = converted.data() + r * dim;
      const int64_t cs = a.x.col_stride;
      if (cs == 1) {
        for (int64_t d = 0; d < dim; ++d) dst[d] = static_cast<S>(cpu::load(src[d]));
      } else {
        for (int64_t d = 0; d < dim; ++d) dst[d] = static_cast<S>(cpu::load(src[d * cs]));
      }
    }
    for (int64_t r = 0; r < padded; ++r) row_ptr[r] = converted.data() + std::min(r, rows - 1) * dim;
  }
  for (int64_t r = 0; r < padded; ++r) {
    thr[r] = std::numeric_limits<S>::quiet_NaN();
    if (r >= rows) {
      exact[r] = 0;  // padding: never looked at
      continue;
    }
    const double s = sum_of_squares<T>(a.x, r0 + r, dim);
    xsq[r] = s;
    const double xn = std::sqrt(s);
    const double largest = prep.max_sq + alpha_abs * xn * prep.max_norm;
    const double bound = scan_error_bound(xn, prep.max_norm, prep.max_sq, alpha_abs, dim, unit_roundoff<S>(),
                                          underflow<S>());
    if (!prep.finite || !std::isfinite(s) || !(largest < score_limit<S>()) || !(bound < score_limit<S>())) continue;
    // window >= 2 * bound in S: widened by 2^-20 first, so that only a subnormal window needs nextafter.
    S w = static_cast<S>(2.0 * bound * (1.0 + 0x1p-20));
    if (static_cast<double>(w) < 2.0 * bound) w = std::nextafter(w, std::numeric_limits<S>::infinity());
    window[r] = w;
    thr[r] = std::numeric_limits<S>::infinity();
    exact[r] = 0;
  }

  RowState<S> st{thr.data(), window.data(), heap.get(), heap_n.data(), cand_score.get(), cand_idx.get(),
                 count.data(), exact.data(), k, cap};
  Kern::scan(cb, row_ptr.data(), micro_tiles, st);

  // Re-score the candidates in float64 (or scan exactly) and write the k best in order.
  std::vector<double> best_d(static_cast<size_t>(k)), cd;
  std::vector<int64_t> best_j(static_cast<size_t>(k)), cj, order;
  for (int64_t r = 0; r < rows; ++r) {
    row_to_double<T>(a.x, r0 + r, dim, x.data());
    if (exact[r] || heap_n[r] < k) {
      exact_scan<T, METRIC>(a, prep.norm, x.data(), xsq[r], best_d.data(), best_j.data());
    } else {
      const S* s = cand_score.get() + r * cap;
      const int64_t* j = cand_idx.get() + r * cap;
      cd.clear();
      cj.clear();
      for (int64_t c = 0; c < count[r]; ++c) {
        if (!(s[c] <= thr[r])) continue;  // entered under an older, looser threshold
        const int64_t code = j[c];
        const double dot = dot_exact(x.data(), 1, code_row<T>(a, code), a.codebook.col_stride, dim);
        cd.push_back(vq_distance<METRIC>(dot, xsq[r], prep.norm[static_cast<size_t>(code)]));
        cj.push_back(code);
      }
      if (k <= 16) {
        int64_t n = 0;
        for (size_t c = 0; c < cd.size(); ++c) vq_insert_sorted(best_d.data(), best_j.data(), &n, k, cd[c], cj[c]);
      } else {
        order.resize(cd.size());
        for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
        std::partial_sort(order.begin(), order.begin() + k, order.end(),
                          [&](int64_t u, int64_t v) { return vq_before(cd[u], cj[u], cd[v], cj[v]); });
        for (int64_t i = 0; i < k; ++i) {
          best_d[i] = cd[order[i]];
          best_j[i] = cj[order[i]];
        }
      }
    }
    int64_t* out_idx = static_cast<int64_t*>(a.indices) + (r0 + r) * k;
    float* out_dist = static_cast<float*>(a.dist) + (r0 + r) * k;
    for (int64_t i = 0; i < k; ++i) {
      out_idx[i] = best_j[i];
      out_dist[i] = static_cast<float>(best_d[i]);
    }
  }
}

template <class Kern, typename T, VqMetric METRIC>
void run(const VqNearest& a, int num_threads) {
  using S = typename compute_type<T>::type;
  Prepared<S> prep(a.codes, a.dim, Kern::NR);
  prepare_codebook<T, S>(a, prep, num_threads);
  const PackedCodebook<S> cb{prep.panel.get(), prep.offset.get(), a.codes, a.dim, prep.panels};
  const int64_t cap = 2 * a.k + 32;
  const int64_t mc = rows_per_tile(a.dim, cap);
  const int64_t tiles = (a.rows + mc - 1) / mc;
  parallel_tiles(tiles, a.rows * a.codes * std::max<int64_t>(a.dim, 1), num_threads, [&](int64_t t) {
    const int64_t r0 = t * mc;
    const int64_t r1 = std::min(a.rows, r0 + mc);
    process_tile<Kern, T, S, METRIC>(a, prep, cb, r0, r1, cap);
  });
}

template <template <typename> class Kern>
void dispatch(const VqNearest& a, int num_threads) {
  cpu::dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    using K = Kern<typename compute_type<T>::type>;
    switch (a.metric) {
      case VqMetric::L2: run<K, T, VqMetric::L2>(a, num_threads); break;
      case VqMetric::Cosine: run<K, T, VqMetric::Cosine>(a, num_threads); break;
      case VqMetric::Dot: run<K, T, VqMetric::Dot>(a, num_threads); break;
    }
  });
}

}  // namespace
}  // namespace vq

int vq_nearest_cpu_best_isa() {
#if defined(PTF_VQ_X86)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return 4;
  if (__builtin_cpu_supports("x86-64-v3")) return 3;
#endif
  return 1;
}

void vq_nearest_cpu(const VqNearest& a, int isa, int num_threads) {
  if (a.rows == 0 || a.codes == 0 || a.k == 0) return;
  const int best = vq_nearest_cpu_best_isa();
  if (isa == 0 || isa > best) isa = best;
#if defined(PTF_VQ_X86)
  if (isa == 4) return vq::dispatch<vq::isa4::Kernel>(a, num_threads);
  if (isa == 3) return vq::dispatch<vq::isa3::Kernel>(a, num_threads);
#endif
  vq::dispatch<vq::isa1::Kernel>(a, num_threads);
}

}  // namespace ptf
