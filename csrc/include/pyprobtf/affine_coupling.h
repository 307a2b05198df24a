// affine_coupling: y = x * exp(s(a)) + shift (or its inverse) and
// ladj[b] = +-sum_j s(a[b, j]), on (rows, cols) views; see docs/ARCHITECTURE.md.
//
// The per-element math is written once here for both the CPU and the CUDA
// kernels; `Math` supplies exp/tanh/softplus for the place it runs.
#pragma once

#include "pyprobtf/common.h"

namespace ptf {

enum class ScaleFn : int { Exp = 0, SoftClamp = 1, Sigmoid = 2 };

// s(a), the log of the multiplier.
template <ScaleFn FN, typename Math, typename C>
PTF_HD C log_multiplier(C a, C clamp) {
  if constexpr (FN == ScaleFn::Exp) {
    return a;
  } else if constexpr (FN == ScaleFn::SoftClamp) {
    return clamp * Math::tanh(a / clamp);
  } else {
    return -Math::softplus(-(a + C(2)));  // log(sigmoid(a + 2))
  }
}

// ds/da, given s = s(a).
template <ScaleFn FN, typename Math, typename C>
PTF_HD C dlog_multiplier(C a, C s, C clamp) {
  if constexpr (FN == ScaleFn::Exp) {
    return C(1);
  } else if constexpr (FN == ScaleFn::SoftClamp) {
    const C t = s / clamp;
    return C(1) - t * t;
  } else {
    // 1 - sigmoid(a + 2) = sigmoid(-(a + 2)) = exp(s - (a + 2)); no cancellation for large a.
    return Math::exp(s - (a + C(2)));
  }
}

struct AffineCouplingForward {
  Mat x, shift, scale;
  void* y;     // (rows, cols), contiguous
  void* ladj;  // (rows,), contiguous; float64 for float64 data, float32 otherwise
  int64_t rows, cols;
  DType dtype;
  ScaleFn scale_fn;
  double clamp;
  bool inverse;
};

struct AffineCouplingBackward {
  Mat x, shift, scale, grad_y;
  Vec grad_ladj;       // (rows,), dtype of ladj
  void* grad_x;        // (rows, cols), contiguous
  void* grad_shift;    // (rows, cols), contiguous; may be null (the caller derives it)
  void* grad_scale;    // (rows, cols), contiguous
  int64_t rows, cols;
  DType dtype;
  ScaleFn scale_fn;
  double clamp;
  bool inverse;
};

// CPU kernels (csrc/cpu/affine_coupling.cpp). num_threads <= 1 runs serially.
void affine_coupling_forward_cpu(const AffineCouplingForward& args, int num_threads);
void affine_coupling_backward_cpu(const AffineCouplingBackward& args, int num_threads);

// CUDA kernels (csrc/cuda/affine_coupling.cu); return nullptr or an error message.
// The forward pass needs a device workspace of affine_coupling_workspace_bytes
// (zero when every row fits in one tile); the caller allocates it.
int64_t affine_coupling_workspace_bytes(int64_t rows, int64_t cols);
const char* affine_coupling_forward_cuda(const AffineCouplingForward& args, void* workspace, void* stream);
const char* affine_coupling_backward_cuda(const AffineCouplingBackward& args, void* stream);

}  // namespace ptf
