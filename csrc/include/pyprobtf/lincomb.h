// lincomb: out = sum_k coeff_k * input_k + noise_std * eps on (rows, cols)
// views, eps drawn from the Philox stream of pyprobtf/philox.h inside the
// kernel (never stored); see docs/ARCHITECTURE.md.
//
// Element (r, c) of the noise is N(seed, offset + r * cols + c) for one seed,
// or N(seed[r], offset + c) for per-row seeds, whatever the tiling, thread or
// block count: the noise (and so every result) is batch- and thread-invariant.
#pragma once

#include <cstdint>

#include "pyprobtf/common.h"

namespace ptf {

constexpr int kLincombMaxInputs = 4;

struct LincombArgs {
  int n_inputs;                         // 1 .. kLincombMaxInputs
  Mat inputs[kLincombMaxInputs];        // (rows, cols) strided views of one dtype
  double coeffs[kLincombMaxInputs];     // used where coeff_rows[k].data is null
  Vec coeff_rows[kLincombMaxInputs];    // per-row coefficients in the compute type, or data null
  Mat out;                              // (rows, cols) strided view; may be exactly one of the inputs
  int64_t rows, cols;
  DType dtype;
  bool noise;                           // add noise_std * eps
  double noise_std;                     // used where noise_std_rows.data is null
  Vec noise_std_rows;                   // per-row noise scale in the compute type, or data null
  uint64_t seed;                        // used where seed_rows.data is null
  Vec seed_rows;                        // per-row int64 seeds, or data null
  uint64_t offset;                      // counter of the first element
};

// What one row needs: its coefficients, noise scale, Philox key and the
// counter of its first column.
template <typename C>
struct LincombRow {
  C coeff[kLincombMaxInputs];
  C noise_std;
  uint64_t seed;
  uint64_t counter0;
};

template <typename C>
PTF_HD LincombRow<C> lincomb_row(const LincombArgs& a, int64_t r) {
  LincombRow<C> p;
  for (int k = 0; k < kLincombMaxInputs; ++k) {
    p.coeff[k] = a.coeff_rows[k].data ? static_cast<const C*>(a.coeff_rows[k].data)[r * a.coeff_rows[k].stride]
                                      : static_cast<C>(a.coeffs[k]);
  }
  p.noise_std = a.noise_std_rows.data ? static_cast<const C*>(a.noise_std_rows.data)[r * a.noise_std_rows.stride]
                                      : static_cast<C>(a.noise_std);
  if (a.seed_rows.data) {
    p.seed = static_cast<uint64_t>(static_cast<const int64_t*>(a.seed_rows.data)[r * a.seed_rows.stride]);
    p.counter0 = a.offset;
  } else {
    p.seed = a.seed;
    p.counter0 = a.offset + static_cast<uint64_t>(r) * static_cast<uint64_t>(a.cols);  // wraps mod 2^64
  }
  return p;
}

// CPU kernel (csrc/cpu/lincomb.cpp). num_threads <= 1 runs serially.
void lincomb_cpu(const LincombArgs& args, int num_threads);

// CUDA kernel (csrc/cuda/lincomb.cu); returns nullptr or an error message.
const char* lincomb_cuda(const LincombArgs& args, void* stream);

}  // namespace ptf
