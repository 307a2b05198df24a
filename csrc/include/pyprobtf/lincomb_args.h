// Building LincombArgs from the plain values the Python bindings receive
// (shared by csrc/bind_cpu.cpp and csrc/bind_cuda.cpp; no pybind11 here).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <tuple>
#include <vector>

#include "pyprobtf/lincomb.h"

namespace ptf {

using MatTuple = std::tuple<uintptr_t, int64_t, int64_t>;  // (pointer, row stride, column stride)
using VecTuple = std::tuple<uintptr_t, int64_t>;           // (pointer or 0, stride)

// Up to four inputs, one coefficient each (a number, or a per-row vector where
// its pointer is nonzero), and the noise scale and seed likewise.
inline LincombArgs make_lincomb_args(const std::vector<MatTuple>& inputs, const std::vector<double>& coeffs,
                                     const std::vector<VecTuple>& coeff_rows, const MatTuple& out, int64_t rows,
                                     int64_t cols, int dtype, bool noise, double noise_std,
                                     const VecTuple& noise_std_rows, int64_t seed, const VecTuple& seed_rows,
                                     int64_t offset) {
  const size_t n = inputs.size();
  if (n < 1 || n > static_cast<size_t>(kLincombMaxInputs) || coeffs.size() != n || coeff_rows.size() != n) {
    throw std::invalid_argument("lincomb: 1 to 4 inputs with one coefficient each");
  }
  auto mat = [](const MatTuple& m) {
    return Mat{reinterpret_cast<void*>(std::get<0>(m)), std::get<1>(m), std::get<2>(m)};
  };
  auto vec = [](const VecTuple& v) { return Vec{reinterpret_cast<void*>(std::get<0>(v)), std::get<1>(v)}; };
  LincombArgs a{};
  a.n_inputs = static_cast<int>(n);
  for (size_t k = 0; k < n; ++k) {
    a.inputs[k] = mat(inputs[k]);
    a.coeffs[k] = coeffs[k];
    a.coeff_rows[k] = vec(coeff_rows[k]);
  }
  a.out = mat(out);
  a.rows = rows;
  a.cols = cols;
  a.dtype = static_cast<DType>(dtype);
  a.noise = noise;
  a.noise_std = noise_std;
  a.noise_std_rows = vec(noise_std_rows);
  a.seed = static_cast<uint64_t>(seed);
  a.seed_rows = vec(seed_rows);
  a.offset = static_cast<uint64_t>(offset);
  return a;
}

}  // namespace ptf
