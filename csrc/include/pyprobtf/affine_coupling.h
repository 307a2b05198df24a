// affine_coupling: y = x * exp(s(a)) + shift (or its inverse) and
// ladj[b] = +-sum_j s(a[b, j]) (or, per element, ladj[b, j] = +-s(a[b, j])), on
// (rows, cols) views; see docs/ARCHITECTURE.md.
//
// The per-element math is written once here for both the CPU and the CUDA
// kernels; `Math` supplies exp/log/tanh/softplus for the place it runs.
#pragma once

#include "pyprobtf/common.h"

namespace ptf {

enum class ScaleFn : int { Exp = 0, SoftClamp = 1, Sigmoid = 2, SoftClip = 3, SigmoidEps = 4, InvSigmoid = 5 };

// nflows' floor on the multiplier: sigmoid(a + 2) + kSigmoidEps.
constexpr double kSigmoidEps = 1e-3;

// s(a), the log of the multiplier.
template <ScaleFn FN, typename Math, typename C>
PTF_HD C log_multiplier(C a, C clamp) {
  if constexpr (FN == ScaleFn::Exp) {
    return a;
  } else if constexpr (FN == ScaleFn::SoftClamp) {
    return clamp * Math::tanh(a / clamp);
  } else if constexpr (FN == ScaleFn::Sigmoid) {
    return -Math::softplus(-(a + C(2)));  // log(sigmoid(a + 2))
  } else if constexpr (FN == ScaleFn::SoftClip) {
    return a / (C(1) + (a < C(0) ? -a : a) / clamp);  // zuko: clamp = -log(slope)
  } else if constexpr (FN == ScaleFn::SigmoidEps) {
    // log(sigmoid(a + 2) + eps), the sigmoid written as torch writes it (so float64 agrees to the ulp).
    return Math::log(C(1) / (C(1) + Math::exp(-(a + C(2)))) + C(kSigmoidEps));
  } else {
    return Math::softplus(-(a + C(2)));  // -log(sigmoid(a + 2))
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
  } else if constexpr (FN == ScaleFn::Sigmoid) {
    // 1 - sigmoid(a + 2) = sigmoid(-(a + 2)) = exp(s - (a + 2)); no cancellation for large a.
    return Math::exp(s - (a + C(2)));
  } else if constexpr (FN == ScaleFn::SoftClip) {
    const C d = C(1) + (a < C(0) ? -a : a) / clamp;
    return C(1) / (d * d);
  } else if constexpr (FN == ScaleFn::SigmoidEps) {
    const C z = a + C(2);
    const C sig = C(1) / (C(1) + Math::exp(-z));
    const C sig_neg = C(1) / (C(1) + Math::exp(z));  // 1 - sig without cancellation
    return sig * sig_neg / (sig + C(kSigmoidEps));
  } else {
    return -Math::exp(-s - (a + C(2)));  // -(1 - sigmoid(a + 2))
  }
}

struct AffineCouplingForward {
  Mat x, shift, scale;
  void* y;     // (rows, cols), contiguous
  void* ladj;  // (rows,) or, with ladj_elements, (rows, cols); contiguous; float64 for float64 data, float32 otherwise
  int64_t rows, cols;
  DType dtype;
  ScaleFn scale_fn;
  double clamp;
  bool inverse;
  bool ladj_elements;  // store +-s per element instead of the row sums
};

struct AffineCouplingBackward {
  Mat x, shift, scale, grad_y;
  Mat grad_ladj;       // (rows, cols) view in ladj's dtype; column stride 0 for a per-row gradient
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
