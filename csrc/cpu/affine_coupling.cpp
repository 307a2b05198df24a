// CPU kernels for affine_coupling: one pass over the data forward (y and the
// log-determinant together) and one fused pass backward (all three gradients).
#include <initializer_list>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define PTF_AVX512_ROWS 1
#endif

#include "pyprobtf/affine_coupling.h"
#include "pyprobtf/cpu.h"

namespace ptf {
namespace {

struct CpuMath {
  template <typename C> static PTF_HD C exp(C x) { return cpu::exp(x); }
  static PTF_HD float log(float x) { return cpu::log(x); }
  static PTF_HD double log(double x) { return std::log(x); }
  template <typename C> static PTF_HD C tanh(C x) { return cpu::tanh(x); }
  template <typename C> static PTF_HD C softplus(C x) { return cpu::softplus(x); }
};

// Below this many columns a loop per row is too short to vectorise: tiles of whole, densely
// packed rows then take one flat loop instead.
constexpr int64_t kNarrowCols = 32;

bool narrow_packed(int64_t cols, int64_t c0, int64_t c1, std::initializer_list<int64_t> row_strides) {
  if (cols >= kNarrowCols || c0 != 0 || c1 != cols) return false;
  for (int64_t stride : row_strides)
    if (stride != cols) return false;
  return true;
}

// One element forward: returns y and sets s (the log multiplier), for both loops below.
template <typename C, ScaleFn FN, bool INV>
PTF_HD C forward_element(C xv, C tv, C av, C clamp, C& s) {
  if constexpr (FN == ScaleFn::SigmoidEps) {
    // The multiplier is in hand before its log: no exp(log(m)) (the same s as log_multiplier's).
    const C m = C(1) / (C(1) + cpu::exp(-(av + C(2)))) + C(kSigmoidEps);
    s = CpuMath::log(m);
    return INV ? (xv - tv) / m : xv * m + tv;
  } else {
    s = log_multiplier<FN, CpuMath>(av, clamp);
    return INV ? (xv - tv) * cpu::exp(-s) : xv * cpu::exp(s) + tv;
  }
}

// One element backward: the gradients of x, shift and scale given grad_y (g) and the
// element's grad_ladj (gl). tv is read only by the inverse.
template <typename C, ScaleFn FN, bool INV>
PTF_HD void backward_element(C xv, C tv, C av, C g, C gl, C clamp, C& gx, C& gt, C& ga) {
  C e, d;  // the multiplier exp(+-s) applied, and ds/da
  if constexpr (FN == ScaleFn::Sigmoid || FN == ScaleFn::SigmoidEps || FN == ScaleFn::InvSigmoid) {
    // One exp gives both for the sigmoid scales (s, then exp(s) and ds/da, cost three more).
    const C u = cpu::exp(-(av + C(2)));
    const C sig = C(1) / (C(1) + u);
    const C sig_neg = C(1) / (C(1) + C(1) / u);  // 1 - sig without cancellation; u = inf gives 1, u = 0 gives 0
    C m;  // exp(s)
    if constexpr (FN == ScaleFn::Sigmoid) {
      m = sig;
      d = sig_neg;
    } else if constexpr (FN == ScaleFn::SigmoidEps) {
      m = sig + C(kSigmoidEps);
      d = sig * sig_neg / m;
    } else {
      m = C(1) + u;
      d = -sig_neg;
    }
    e = INV ? C(1) / m : m;
  } else {
    const C s = log_multiplier<FN, CpuMath>(av, clamp);
    e = cpu::exp(INV ? -s : s);
    d = dlog_multiplier<FN, CpuMath>(av, s, clamp);
  }
  gx = g * e;
  const C gs = INV ? -(g * ((xv - tv) * e)) - gl : gx * xv + gl;
  ga = gs * d;
  gt = INV ? -gx : g;
}

// Columns [c0, c1) of rows [r0, r1). ELEMENTS: the per-element +-s go to a.ladj; otherwise
// partial[r - r0] receives the row's sum of s over those columns, accumulated in float64.
template <typename T, ScaleFn FN, bool INV, bool CONTIG, bool ELEMENTS = false>
PTF_MULTIVERSION void forward_tile(const AffineCouplingForward& a, int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                                   double* partial) {
  using L = typename compute_type<T>::type;
  using C = typename compute_type<T>::type;
  const C clamp = static_cast<C>(a.clamp);
  const int64_t xs = CONTIG ? 1 : a.x.col_stride;
  const int64_t ts = CONTIG ? 1 : a.shift.col_stride;
  const int64_t as = CONTIG ? 1 : a.scale.col_stride;
  if constexpr (CONTIG) {
    if (narrow_packed(a.cols, c0, c1, {a.x.row_stride, a.shift.row_stride, a.scale.row_stride})) {
      // Rows of a few columns (RealNVP on low-dimensional data): one flat loop over the tile, which
      // vectorises, then the row sums in the same order as below (so the results are identical).
      const int64_t n = (r1 - r0) * a.cols;
      const T* x = static_cast<const T*>(a.x.data) + r0 * a.cols;
      const T* t = static_cast<const T*>(a.shift.data) + r0 * a.cols;
      const T* sc = static_cast<const T*>(a.scale.data) + r0 * a.cols;
      T* y = static_cast<T*>(a.y) + r0 * a.cols;
      C s_tile[cpu::kTile];
      L* s_out = ELEMENTS ? static_cast<L*>(a.ladj) + r0 * a.cols : s_tile;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        C s;
        y[i] = cpu::store<T>(forward_element<C, FN, INV>(cpu::load(x[i]), cpu::load(t[i]), cpu::load(sc[i]), clamp, s));
        s_out[i] = ELEMENTS && INV ? -s : s;
      }
      if constexpr (ELEMENTS) return;
      for (int64_t r = 0; r < r1 - r0; ++r) {
        double acc = 0.0;
        for (int64_t c = 0; c < a.cols; ++c) acc += static_cast<double>(s_tile[r * a.cols + c]);
        partial[r] = acc;
      }
      return;
    }
  }
  for (int64_t r = r0; r < r1; ++r) {
    const T* x = static_cast<const T*>(a.x.data) + r * a.x.row_stride;
    const T* t = static_cast<const T*>(a.shift.data) + r * a.shift.row_stride;
    const T* sc = static_cast<const T*>(a.scale.data) + r * a.scale.row_stride;
    T* y = static_cast<T*>(a.y) + r * a.cols;
    if constexpr (ELEMENTS) {
      L* l = static_cast<L*>(a.ladj) + r * a.cols;
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) {
        C s;
        y[c] = cpu::store<T>(
            forward_element<C, FN, INV>(cpu::load(x[c * xs]), cpu::load(t[c * ts]), cpu::load(sc[c * as]), clamp, s));
        l[c] = INV ? -s : s;
      }
      continue;
    }
    double acc = 0.0;
#pragma omp simd reduction(+ : acc)
    for (int64_t c = c0; c < c1; ++c) {
      C s;
      y[c] = cpu::store<T>(
          forward_element<C, FN, INV>(cpu::load(x[c * xs]), cpu::load(t[c * ts]), cpu::load(sc[c * as]), clamp, s));
      acc += static_cast<double>(s);
    }
    partial[r - r0] = acc;
  }
}

#if defined(PTF_AVX512_ROWS)
// The hottest case, float32 "exp" backward in the forward direction, written with AVX-512
// intrinsics: the operations of cpu::exp, with 2^n applied by one vscalefps instead of two
// multiplications by halves of it. Both round once, so the results are bit-identical to the
// generic loop (NaN and +-inf included); it runs about 1.5x fewer instructions per element,
// which is what bounds this kernel while the data sits in cache.
__attribute__((target("avx512f,fma"))) inline __m512 exp_avx512(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-104.0f), hi = _mm512_set1_ps(89.0f);
  __m512 xc = _mm512_mask_mov_ps(x, _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ), lo);  // NaN passes through
  xc = _mm512_mask_mov_ps(xc, _mm512_cmp_ps_mask(xc, hi, _CMP_GT_OQ), hi);
  const __m512 shifter = _mm512_set1_ps(12582912.0f);
  const __m512 n = _mm512_sub_ps(_mm512_fmadd_ps(xc, _mm512_set1_ps(1.44269504088896341f), shifter), shifter);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), xc);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);  // p * 2^n, one rounding; NaN n gives NaN
}

// grad_x = g e, grad_scale = grad_x x + gl (and grad_shift = g when asked) over n columns of a row.
__attribute__((target("avx512f,fma"))) void backward_row_exp_avx512(const float* x, const float* sc, const float* gy,
                                                                   float gl, float* gx, float* gt, float* ga,
                                                                   int64_t n) {
  const __m512 glv = _mm512_set1_ps(gl);
  int64_t c = 0;
  for (; c + 16 <= n; c += 16) {
    const __m512 g = _mm512_loadu_ps(gy + c);
    const __m512 gxv = _mm512_mul_ps(g, exp_avx512(_mm512_loadu_ps(sc + c)));
    _mm512_storeu_ps(gx + c, gxv);
    _mm512_storeu_ps(ga + c, _mm512_fmadd_ps(gxv, _mm512_loadu_ps(x + c), glv));
    if (gt != nullptr) _mm512_storeu_ps(gt + c, g);
  }
  if (c < n) {  // the last columns, masked
    const __mmask16 m = static_cast<__mmask16>((1u << (n - c)) - 1u);
    const __m512 g = _mm512_maskz_loadu_ps(m, gy + c);
    const __m512 gxv = _mm512_mul_ps(g, exp_avx512(_mm512_maskz_loadu_ps(m, sc + c)));
    _mm512_mask_storeu_ps(gx + c, m, gxv);
    _mm512_mask_storeu_ps(ga + c, m, _mm512_fmadd_ps(gxv, _mm512_maskz_loadu_ps(m, x + c), glv));
    if (gt != nullptr) _mm512_mask_storeu_ps(gt + c, m, g);
  }
}

bool have_avx512() {
  static const bool have = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;
  }();
  return have;
}
#endif

// CONTIG: x, shift and scale have unit column strides. grad_y may have any strides then: a row
// slice of a strided grad_y (such as the expanded ones autograd passes for `y.sum()`, column
// stride 0) is first copied into a small contiguous buffer, so the vectorised loop still runs.
// grad_ladj's column stride is 0 for a per-row gradient (the fast paths) and any value for a
// per-element one.
template <typename T, ScaleFn FN, bool INV, bool CONTIG>
PTF_MULTIVERSION void backward_tile(const AffineCouplingBackward& a, int64_t r0, int64_t r1, int64_t c0,
                                    int64_t c1) {
  using C = typename compute_type<T>::type;
  using L = C;  // ladj (and its gradient) is float32 for every dtype but float64
  const C clamp = static_cast<C>(a.clamp);
  const int64_t xs = CONTIG ? 1 : a.x.col_stride;
  const int64_t ts = CONTIG ? 1 : a.shift.col_stride;
  const int64_t as = CONTIG ? 1 : a.scale.col_stride;
  const int64_t gs = CONTIG ? 1 : a.grad_y.col_stride;
  const int64_t gl_rs = a.grad_ladj.row_stride, gl_cs = a.grad_ladj.col_stride;
  const bool stage_grad_y = CONTIG && a.grad_y.col_stride != 1;
  const bool write_shift = a.grad_shift != nullptr;
  if constexpr (CONTIG) {
    if (!stage_grad_y && narrow_packed(a.cols, c0, c1, {a.x.row_stride, a.shift.row_stride, a.scale.row_stride,
                                                        a.grad_y.row_stride})) {
      // Few columns: one flat, vectorisable loop over the tile (see forward_tile), the row's
      // ladj gradient spread over its columns first.
      const int64_t n = (r1 - r0) * a.cols;
      const int64_t off = r0 * a.cols;
      const T* x = static_cast<const T*>(a.x.data) + off;
      const T* t = static_cast<const T*>(a.shift.data) + off;
      const T* sc = static_cast<const T*>(a.scale.data) + off;
      const T* gy = static_cast<const T*>(a.grad_y.data) + off;
      T* gx = static_cast<T*>(a.grad_x) + off;
      T* gt = write_shift ? static_cast<T*>(a.grad_shift) + off : nullptr;
      T* ga = static_cast<T*>(a.grad_scale) + off;
      C gl_tile[cpu::kTile];
      for (int64_t r = r0; r < r1; ++r) {
        const L* gl = static_cast<const L*>(a.grad_ladj.data) + r * gl_rs;
        for (int64_t c = 0; c < a.cols; ++c) gl_tile[(r - r0) * a.cols + c] = static_cast<C>(gl[c * gl_cs]);
      }
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        C gxv, gtv, gav;
        backward_element<C, FN, INV>(cpu::load(x[i]), INV ? cpu::load(t[i]) : C(0), cpu::load(sc[i]),
                                     cpu::load(gy[i]), gl_tile[i], clamp, gxv, gtv, gav);
        gx[i] = cpu::store<T>(gxv);
        ga[i] = cpu::store<T>(gav);
        if (write_shift) gt[i] = cpu::store<T>(gtv);
      }
      return;
    }
  }
  T gy_row[CONTIG ? cpu::kTile : 1];  // a tile never spans more than kTile columns of one row
  const int64_t n = c1 - c0;
#if defined(PTF_AVX512_ROWS)
  const bool avx512 = have_avx512();
#endif
  for (int64_t r = r0; r < r1; ++r) {
    // Pointers to column c0 of row r; the loop below runs over the tile's n columns.
    const T* x = static_cast<const T*>(a.x.data) + r * a.x.row_stride + c0 * xs;
    const T* t = static_cast<const T*>(a.shift.data) + r * a.shift.row_stride + c0 * ts;
    const T* sc = static_cast<const T*>(a.scale.data) + r * a.scale.row_stride + c0 * as;
    const T* gy = static_cast<const T*>(a.grad_y.data) + r * a.grad_y.row_stride + c0 * a.grad_y.col_stride;
    if (stage_grad_y && n > 0) {  // (an empty grad_y may have no memory at all)
      const int64_t stride = a.grad_y.col_stride;
      if (stride == 0) {
        const T v = gy[0];
        for (int64_t c = 0; c < n; ++c) gy_row[c] = v;
      } else {
        for (int64_t c = 0; c < n; ++c) gy_row[c] = gy[c * stride];
      }
      gy = gy_row;
    }
    const L* gl_row = static_cast<const L*>(a.grad_ladj.data) + r * gl_rs + c0 * gl_cs;
    T* gx = static_cast<T*>(a.grad_x) + r * a.cols + c0;
    T* gt = write_shift ? static_cast<T*>(a.grad_shift) + r * a.cols + c0 : nullptr;
    T* ga = static_cast<T*>(a.grad_scale) + r * a.cols + c0;
    if (gl_cs != 0) {  // a per-element ladj gradient
#pragma omp simd
      for (int64_t c = 0; c < n; ++c) {
        C gxv, gtv, gav;
        backward_element<C, FN, INV>(cpu::load(x[c * xs]), INV ? cpu::load(t[c * ts]) : C(0),
                                     cpu::load(sc[c * as]), cpu::load(gy[c * gs]), static_cast<C>(gl_row[c * gl_cs]),
                                     clamp, gxv, gtv, gav);
        gx[c] = cpu::store<T>(gxv);
        ga[c] = cpu::store<T>(gav);
        if (write_shift) gt[c] = cpu::store<T>(gtv);
      }
      continue;
    }
    const C gl = static_cast<C>(n > 0 ? gl_row[0] : L(0));
#if defined(PTF_AVX512_ROWS)
    if constexpr (CONTIG && !INV && FN == ScaleFn::Exp && std::is_same_v<T, float>) {
      if (avx512) {
        backward_row_exp_avx512(x, sc, gy, gl, gx, gt, ga, n);
        continue;
      }
    }
#endif
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) {
      C gxv, gtv, gav;
      backward_element<C, FN, INV>(cpu::load(x[c * xs]), INV ? cpu::load(t[c * ts]) : C(0), cpu::load(sc[c * as]),
                                   cpu::load(gy[c * gs]), gl, clamp, gxv, gtv, gav);
      gx[c] = cpu::store<T>(gxv);
      ga[c] = cpu::store<T>(gav);
      if (write_shift) gt[c] = cpu::store<T>(gtv);
    }
  }
}

template <typename T, ScaleFn FN, bool INV, bool CONTIG>
void forward_impl(const AffineCouplingForward& a, int num_threads) {
  using L = typename compute_type<T>::type;
  const cpu::Tiling tiling(a.rows, a.cols);
  L* ladj = static_cast<L*>(a.ladj);
  if (a.ladj_elements) {
    cpu::parallel_for(tiling.tiles, a.rows * a.cols, num_threads, [&](int64_t tile) {
      if (tiling.col_tiles == 1) {
        const int64_t r0 = tile * tiling.rows_per_tile;
        const int64_t r1 = r0 + tiling.rows_per_tile < a.rows ? r0 + tiling.rows_per_tile : a.rows;
        forward_tile<T, FN, INV, CONTIG, true>(a, r0, r1, 0, a.cols, nullptr);
      } else {
        const int64_t r = tile / tiling.col_tiles;
        const int64_t c0 = (tile % tiling.col_tiles) * cpu::kTile;
        const int64_t c1 = c0 + cpu::kTile < a.cols ? c0 + cpu::kTile : a.cols;
        forward_tile<T, FN, INV, CONTIG, true>(a, r, r + 1, c0, c1, nullptr);
      }
    });
    return;
  }
  if (tiling.col_tiles == 1) {
    cpu::parallel_for(tiling.tiles, a.rows * a.cols, num_threads, [&](int64_t tile) {
      const int64_t r0 = tile * tiling.rows_per_tile;
      const int64_t r1 = r0 + tiling.rows_per_tile < a.rows ? r0 + tiling.rows_per_tile : a.rows;
      double partial[cpu::kTile];
      forward_tile<T, FN, INV, CONTIG>(a, r0, r1, 0, a.cols, partial);
      for (int64_t r = r0; r < r1; ++r) ladj[r] = static_cast<L>(INV ? -partial[r - r0] : partial[r - r0]);
    });
    return;
  }
  // Long rows: each tile is a piece of one row; the pieces' sums are added in order.
  std::vector<double> partial(static_cast<size_t>(tiling.tiles));
  cpu::parallel_for(tiling.tiles, a.rows * a.cols, num_threads, [&](int64_t tile) {
    const int64_t r = tile / tiling.col_tiles;
    const int64_t c0 = (tile % tiling.col_tiles) * cpu::kTile;
    const int64_t c1 = c0 + cpu::kTile < a.cols ? c0 + cpu::kTile : a.cols;
    forward_tile<T, FN, INV, CONTIG>(a, r, r + 1, c0, c1, &partial[tile]);
  });
  for (int64_t r = 0; r < a.rows; ++r) {
    double sum = 0.0;
    for (int64_t k = 0; k < tiling.col_tiles; ++k) sum += partial[r * tiling.col_tiles + k];
    ladj[r] = static_cast<L>(INV ? -sum : sum);
  }
}

template <typename T, ScaleFn FN, bool INV, bool CONTIG>
void backward_impl(const AffineCouplingBackward& a, int num_threads) {
  const cpu::Tiling tiling(a.rows, a.cols);
  cpu::parallel_for(tiling.tiles, a.rows * a.cols, num_threads, [&](int64_t tile) {
    if (tiling.col_tiles == 1) {
      const int64_t r0 = tile * tiling.rows_per_tile;
      const int64_t r1 = r0 + tiling.rows_per_tile < a.rows ? r0 + tiling.rows_per_tile : a.rows;
      backward_tile<T, FN, INV, CONTIG>(a, r0, r1, 0, a.cols);
    } else {
      const int64_t r = tile / tiling.col_tiles;
      const int64_t c0 = (tile % tiling.col_tiles) * cpu::kTile;
      const int64_t c1 = c0 + cpu::kTile < a.cols ? c0 + cpu::kTile : a.cols;
      backward_tile<T, FN, INV, CONTIG>(a, r, r + 1, c0, c1);
    }
  });
}

// Turns the run-time choices into template arguments.
template <template <typename, ScaleFn, bool, bool> class Impl, typename Args>
void dispatch(const Args& a, bool contiguous, int num_threads) {
  cpu::dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    auto with_fn = [&](auto fn_tag) {
      constexpr ScaleFn FN = decltype(fn_tag)::value;
      if (a.inverse) {
        contiguous ? Impl<T, FN, true, true>::run(a, num_threads) : Impl<T, FN, true, false>::run(a, num_threads);
      } else {
        contiguous ? Impl<T, FN, false, true>::run(a, num_threads) : Impl<T, FN, false, false>::run(a, num_threads);
      }
    };
    switch (a.scale_fn) {
      case ScaleFn::Exp: with_fn(std::integral_constant<ScaleFn, ScaleFn::Exp>{}); break;
      case ScaleFn::SoftClamp: with_fn(std::integral_constant<ScaleFn, ScaleFn::SoftClamp>{}); break;
      case ScaleFn::Sigmoid: with_fn(std::integral_constant<ScaleFn, ScaleFn::Sigmoid>{}); break;
      case ScaleFn::SoftClip: with_fn(std::integral_constant<ScaleFn, ScaleFn::SoftClip>{}); break;
      case ScaleFn::SigmoidEps: with_fn(std::integral_constant<ScaleFn, ScaleFn::SigmoidEps>{}); break;
      case ScaleFn::InvSigmoid: with_fn(std::integral_constant<ScaleFn, ScaleFn::InvSigmoid>{}); break;
    }
  });
}

template <typename T, ScaleFn FN, bool INV, bool CONTIG>
struct Forward {
  static void run(const AffineCouplingForward& a, int n) { forward_impl<T, FN, INV, CONTIG>(a, n); }
};
template <typename T, ScaleFn FN, bool INV, bool CONTIG>
struct Backward {
  static void run(const AffineCouplingBackward& a, int n) { backward_impl<T, FN, INV, CONTIG>(a, n); }
};

}  // namespace

void affine_coupling_forward_cpu(const AffineCouplingForward& a, int num_threads) {
  const bool contiguous = a.x.col_stride == 1 && a.shift.col_stride == 1 && a.scale.col_stride == 1;
  dispatch<Forward>(a, contiguous, num_threads);
}

void affine_coupling_backward_cpu(const AffineCouplingBackward& a, int num_threads) {
  const bool contiguous = a.x.col_stride == 1 && a.shift.col_stride == 1 && a.scale.col_stride == 1;
  dispatch<Backward>(a, contiguous, num_threads);
}

}  // namespace ptf
