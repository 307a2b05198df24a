// CPU kernel for lincomb: one pass over the inputs and the output, the noise
// drawn from the Philox stream in registers (cpu_random.h), never stored.
//
// Work is cut into tiles by cpu::Tiling, which depends on the shape only; each
// element's noise depends on its counter only, so results are identical for
// any thread count and batch split.
#include "pyprobtf/cpu.h"
#include "pyprobtf/cpu_random.h"
#include "pyprobtf/lincomb.h"

namespace ptf {
namespace {

// Columns per noise chunk: the chunk's Philox words go to stack buffers that
// stay in L1, then one SIMD loop turns them into normals and combines.
constexpr int64_t kChunk = 512;

template <typename T, int N, bool CONTIG>
struct RowPointers {
  const T* in[kLincombMaxInputs];
  int64_t stride[kLincombMaxInputs];
  T* out;
  int64_t out_stride;

  RowPointers(const LincombArgs& a, int64_t r) {
    for (int k = 0; k < N; ++k) {
      in[k] = static_cast<const T*>(a.inputs[k].data) + r * a.inputs[k].row_stride;
      stride[k] = CONTIG ? 1 : a.inputs[k].col_stride;
    }
    out = static_cast<T*>(a.out.data) + r * a.out.row_stride;
    out_stride = CONTIG ? 1 : a.out.col_stride;
  }
};

// sum_k coeff[k] * in_k[c], in the compute type C, in the order of the inputs.
template <typename T, int N, bool CONTIG, typename C>
PTF_HD C weighted_sum(const T* const* in, const int64_t* stride, const C* coeff, int64_t c) {
  C acc = coeff[0] * cpu::load(in[0][c * (CONTIG ? 1 : stride[0])]);
  if constexpr (N > 1) acc += coeff[1] * cpu::load(in[1][c * (CONTIG ? 1 : stride[1])]);
  if constexpr (N > 2) acc += coeff[2] * cpu::load(in[2][c * (CONTIG ? 1 : stride[2])]);
  if constexpr (N > 3) acc += coeff[3] * cpu::load(in[3][c * (CONTIG ? 1 : stride[3])]);
  return acc;
}

// Standard normals of rows [r0, r1), all columns, into eps (row-major, at most
// cpu::kTile of them): the tile of short rows is drawn as one flat SIMD loop
// over per-element (seed, counter) keys, so rows of a few elements cost no
// more per element than long ones.
PTF_MULTIVERSION void noise_of_rows(const LincombArgs& a, int64_t r0, int64_t r1, float* eps) {
  const int64_t n = (r1 - r0) * a.cols;
  if (!a.seed_rows.data) {
    // One seed: the counters of consecutive rows are consecutive.
    const uint64_t counter = lincomb_row<float>(a, r0).counter0;
    uint32_t w0[kChunk], w1[kChunk];
    for (int64_t start = 0; start < n; start += kChunk) {
      const int64_t m = start + kChunk < n ? kChunk : n - start;
      cpu::philox_words(a.seed, counter + static_cast<uint64_t>(start), m, w0, w1);
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) eps[start + j] = cpu::normal_from_words(w0[j], w1[j]);
    }
    return;
  }
  // Per-row seeds: a (seed, counter) key per element, drawn by the vectorised portable rounds.
  uint64_t seeds[kChunk], counters[kChunk];
  int64_t r = r0, c = 0;
  for (int64_t start = 0; start < n; start += kChunk) {
    const int64_t m = start + kChunk < n ? kChunk : n - start;
    for (int64_t j = 0; j < m; ++j) {
      seeds[j] = static_cast<uint64_t>(static_cast<const int64_t*>(a.seed_rows.data)[r * a.seed_rows.stride]);
      counters[j] = a.offset + static_cast<uint64_t>(c);
      if (++c == a.cols) {
        c = 0;
        ++r;
      }
    }
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) eps[start + j] = cpu::randn(seeds[j], counters[j]);
  }
}

// Columns [c0, c1) of rows [r0, r1) (several rows only when they are whole and short).
template <typename T, int N, bool NOISE, bool CONTIG>
PTF_MULTIVERSION void lincomb_tile(const LincombArgs& a, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  using C = typename compute_type<T>::type;
  float tile_eps[NOISE ? cpu::kTile : 1];
  const bool short_rows = NOISE && r1 - r0 > 1;
  if (short_rows) noise_of_rows(a, r0, r1, tile_eps);
  for (int64_t r = r0; r < r1; ++r) {
    const LincombRow<C> row = lincomb_row<C>(a, r);
    const RowPointers<T, N, CONTIG> p(a, r);
    const C* coeff = row.coeff;
    if constexpr (!NOISE) {
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) {
        p.out[c * p.out_stride] = cpu::store<T>(weighted_sum<T, N, CONTIG>(p.in, p.stride, coeff, c));
      }
    } else {
      const C std = row.noise_std;
      for (int64_t start = c0; start < c1; start += kChunk) {
        const int64_t stop = start + kChunk < c1 ? start + kChunk : c1;
        if (short_rows) {
          const float* eps = tile_eps + (r - r0) * a.cols;
#pragma omp simd
          for (int64_t c = start; c < stop; ++c) {
            const C sum = weighted_sum<T, N, CONTIG>(p.in, p.stride, coeff, c);
            p.out[c * p.out_stride] = cpu::store<T>(sum + std * static_cast<C>(eps[c]));
          }
          continue;
        }
        // Philox words of the chunk's consecutive counters (explicit SIMD), then one
        // vectorised loop: Box-Muller and the combination.
        uint32_t words0[kChunk], words1[kChunk];
        cpu::philox_words(row.seed, row.counter0 + static_cast<uint64_t>(start), stop - start, words0, words1);
        const uint32_t* w0 = words0 - start;  // w0[c] for c in [start, stop)
        const uint32_t* w1 = words1 - start;
#pragma omp simd
        for (int64_t c = start; c < stop; ++c) {
          const C sum = weighted_sum<T, N, CONTIG>(p.in, p.stride, coeff, c);
          const float eps = cpu::normal_from_words(w0[c], w1[c]);
          p.out[c * p.out_stride] = cpu::store<T>(sum + std * static_cast<C>(eps));
        }
      }
    }
  }
}

template <typename T, int N, bool NOISE, bool CONTIG>
void lincomb_impl(const LincombArgs& a, int num_threads) {
  const cpu::Tiling tiling(a.rows, a.cols);
  // A normal costs about as much as reading a few inputs: weigh it so that
  // small noisy problems still use the threads.
  const int64_t work = a.rows * a.cols * (N + 1 + (NOISE ? 8 : 0));
  cpu::parallel_for(tiling.tiles, work, num_threads, [&](int64_t tile) {
    if (tiling.col_tiles == 1) {
      const int64_t r0 = tile * tiling.rows_per_tile;
      const int64_t r1 = r0 + tiling.rows_per_tile < a.rows ? r0 + tiling.rows_per_tile : a.rows;
      lincomb_tile<T, N, NOISE, CONTIG>(a, r0, r1, 0, a.cols);
    } else {
      const int64_t r = tile / tiling.col_tiles;
      const int64_t c0 = (tile % tiling.col_tiles) * cpu::kTile;
      const int64_t c1 = c0 + cpu::kTile < a.cols ? c0 + cpu::kTile : a.cols;
      lincomb_tile<T, N, NOISE, CONTIG>(a, r, r + 1, c0, c1);
    }
  });
}

// Turns the run-time choices (input count, noise, layout) into template arguments.
template <typename T, int N>
void dispatch_noise_layout(const LincombArgs& a, bool contiguous, int num_threads) {
  if (a.noise) {
    contiguous ? lincomb_impl<T, N, true, true>(a, num_threads) : lincomb_impl<T, N, true, false>(a, num_threads);
  } else {
    contiguous ? lincomb_impl<T, N, false, true>(a, num_threads) : lincomb_impl<T, N, false, false>(a, num_threads);
  }
}

}  // namespace

void lincomb_cpu(const LincombArgs& a, int num_threads) {
  if (a.rows == 0 || a.cols == 0) return;
  bool contiguous = a.out.col_stride == 1;
  for (int k = 0; k < a.n_inputs; ++k) contiguous = contiguous && a.inputs[k].col_stride == 1;
  cpu::dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    switch (a.n_inputs) {
      case 1: dispatch_noise_layout<T, 1>(a, contiguous, num_threads); break;
      case 2: dispatch_noise_layout<T, 2>(a, contiguous, num_threads); break;
      case 3: dispatch_noise_layout<T, 3>(a, contiguous, num_threads); break;
      case 4: dispatch_noise_layout<T, 4>(a, contiguous, num_threads); break;
    }
  });
}

}  // namespace ptf
