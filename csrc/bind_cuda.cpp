// pyprobtf._C_cuda: thin pybind11 bindings of the CUDA kernels.
//
// Built only when a CUDA compiler is found (PYPROBTF_CUDA=AUTO|ON|OFF). The
// CUDA runtime is linked statically, so this module imports on machines with
// no GPU and no CUDA libraries; device_count() then reports why there is none.
// Tensors arrive as plain integers (pointers, strides, the stream).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "pyprobtf/affine_coupling.h"
#include "pyprobtf/cuda_runtime_info.h"
#include "pyprobtf/lincomb_args.h"
#include "pyprobtf/random.h"
#include "pyprobtf/sampling_args.h"
#include "pyprobtf/vq_nearest.h"

namespace py = pybind11;
using MatArg = std::tuple<uintptr_t, int64_t, int64_t>;
using VecArg = std::tuple<uintptr_t, int64_t>;

#ifndef PTF_CUDA_ARCHS
#define PTF_CUDA_ARCHS "unknown"
#endif

static ptf::Mat mat(const MatArg& m) {
  return ptf::Mat{reinterpret_cast<void*>(std::get<0>(m)), std::get<1>(m), std::get<2>(m)};
}
static ptf::Vec vec(const VecArg& v) { return ptf::Vec{reinterpret_cast<void*>(std::get<0>(v)), std::get<1>(v)}; }
static void* ptr(uintptr_t p) { return reinterpret_cast<void*>(p); }
static void check(const char* error) {
  if (error) throw std::runtime_error(std::string("pyprobtf CUDA kernel failed: ") + error);
}

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "pyprobtf CUDA kernels";
  m.attr("architectures") = PTF_CUDA_ARCHS;

  m.def("device_count", []() {
    std::string error;
    const int n = ptf::cuda_device_count(&error);
    return std::make_tuple(n, error);
  }, "(number of CUDA devices, error message when that number is 0 because of an error)");

  m.def("device_capability", [](int device) {
    std::string error;
    const int cc = ptf::cuda_device_capability(device, &error);
    if (cc < 0) throw std::runtime_error("cudaGetDeviceProperties failed: " + error);
    return cc;
  });

  m.def("driver_version", &ptf::cuda_driver_version, "The driver's CUDA version (12080 for 12.8), 0 without a driver.");

  m.def("affine_coupling_workspace_bytes", &ptf::affine_coupling_workspace_bytes);

  m.def(
      "affine_coupling_forward",
      [](MatArg x, MatArg shift, MatArg scale, uintptr_t y, uintptr_t ladj, int64_t rows, int64_t cols, int dtype,
         int scale_fn, double clamp, bool inverse, bool ladj_elements, uintptr_t workspace, uintptr_t stream) {
        ptf::AffineCouplingForward a{mat(x), mat(shift), mat(scale), ptr(y), ptr(ladj), rows, cols,
                                     static_cast<ptf::DType>(dtype), static_cast<ptf::ScaleFn>(scale_fn), clamp,
                                     inverse, ladj_elements};
        check(ptf::affine_coupling_forward_cuda(a, ptr(workspace), ptr(stream)));
      },
      py::arg("x"), py::arg("shift"), py::arg("scale"), py::arg("y"), py::arg("ladj"), py::arg("rows"),
      py::arg("cols"), py::arg("dtype"), py::arg("scale_fn"), py::arg("clamp"), py::arg("inverse"),
      py::arg("ladj_elements"), py::arg("workspace"), py::arg("stream"));

  m.def(
      "affine_coupling_backward",
      [](MatArg x, MatArg shift, MatArg scale, MatArg grad_y, MatArg grad_ladj, uintptr_t grad_x,
         uintptr_t grad_shift, uintptr_t grad_scale, int64_t rows, int64_t cols, int dtype, int scale_fn,
         double clamp, bool inverse, uintptr_t stream) {
        ptf::AffineCouplingBackward a{mat(x), mat(shift), mat(scale), mat(grad_y), mat(grad_ladj), ptr(grad_x),
                                      ptr(grad_shift), ptr(grad_scale), rows, cols,
                                      static_cast<ptf::DType>(dtype), static_cast<ptf::ScaleFn>(scale_fn), clamp,
                                      inverse};
        check(ptf::affine_coupling_backward_cuda(a, ptr(stream)));
      },
      py::arg("x"), py::arg("shift"), py::arg("scale"), py::arg("grad_y"), py::arg("grad_ladj"),
      py::arg("grad_x"), py::arg("grad_shift"), py::arg("grad_scale"), py::arg("rows"), py::arg("cols"),
      py::arg("dtype"), py::arg("scale_fn"), py::arg("clamp"), py::arg("inverse"), py::arg("stream"));

  m.def(
      "philox_fill",
      [](uintptr_t seed, uintptr_t counter, int64_t n, uintptr_t words, uintptr_t normal, uintptr_t uniform,
         uintptr_t stream) {
        check(ptf::philox_fill_cuda(reinterpret_cast<const int64_t*>(seed), reinterpret_cast<const int64_t*>(counter),
                                    n, reinterpret_cast<uint32_t*>(words), reinterpret_cast<float*>(normal),
                                    reinterpret_cast<double*>(uniform), ptr(stream)));
      },
      "Philox words, tl.randn normals and 53-bit uniforms for int64 seed/counter device arrays (testing).");

  m.def(
      "lincomb",
      [](const std::vector<MatArg>& inputs, const std::vector<double>& coeffs, const std::vector<VecArg>& coeff_rows,
         MatArg out, int64_t rows, int64_t cols, int dtype, bool noise, double noise_std, VecArg noise_std_rows,
         int64_t seed, VecArg seed_rows, int64_t offset, uintptr_t stream) {
        const ptf::LincombArgs a = ptf::make_lincomb_args(inputs, coeffs, coeff_rows, out, rows, cols, dtype, noise,
                                                          noise_std, noise_std_rows, seed, seed_rows, offset);
        check(ptf::lincomb_cuda(a, ptr(stream)));
      },
      py::arg("inputs"), py::arg("coeffs"), py::arg("coeff_rows"), py::arg("out"), py::arg("rows"), py::arg("cols"),
      py::arg("dtype"), py::arg("noise"), py::arg("noise_std"), py::arg("noise_std_rows"), py::arg("seed"),
      py::arg("seed_rows"), py::arg("offset"), py::arg("stream"),
      "out = sum_k coeffs[k] * inputs[k] + noise_std * eps (Philox normals drawn in the kernel).");

  m.def("sample_logits_workspace_bytes", [](int64_t rows, int64_t cols, int dtype) {
    return ptf::sample_logits_workspace_bytes(rows, cols, static_cast<ptf::DType>(dtype));
  });

  m.def(
      "sample_logits",
      [](ptf::SamplingMat logits, int64_t rows, int64_t cols, int dtype, ptf::SamplingParam temperature,
         ptf::SamplingIntParam top_k, ptf::SamplingParam top_p, ptf::SamplingParam min_p, ptf::SamplingVec uniform,
         ptf::SamplingIntParam seed, ptf::SamplingIntParam offset, uintptr_t tokens, uintptr_t logprobs,
         uintptr_t status, uintptr_t filtered, uintptr_t workspace, uintptr_t stream) {
        const ptf::SampleLogitsArgs a = ptf::make_sample_logits_args(
            logits, rows, cols, dtype, temperature, top_k, top_p, min_p, uniform, seed, offset, tokens, logprobs,
            status, filtered);
        check(ptf::sample_logits_cuda(a, ptr(workspace), ptr(stream)));
      },
      py::arg("logits"), py::arg("rows"), py::arg("cols"), py::arg("dtype"), py::arg("temperature"),
      py::arg("top_k"), py::arg("top_p"), py::arg("min_p"), py::arg("uniform"), py::arg("seed"), py::arg("offset"),
      py::arg("tokens"), py::arg("logprobs"), py::arg("status"), py::arg("filtered"), py::arg("workspace"),
      py::arg("stream"), "sample_logits / filter_logits on CUDA (unverified); see pyprobtf/ops/sampling.py.");

  m.def("vq_nearest_workspace_bytes", &ptf::vq_nearest_cuda_workspace_bytes, py::arg("rows"), py::arg("codes"),
        py::arg("dim"), py::arg("k"));

  m.def(
      "vq_nearest",
      [](MatArg x, MatArg codebook, uintptr_t indices, uintptr_t dist, int64_t rows, int64_t codes, int64_t dim,
         int64_t k, int dtype, int metric, uintptr_t workspace, uintptr_t stream) {
        ptf::VqNearest a{mat(x), mat(codebook), ptr(indices), ptr(dist), rows, codes, dim, k,
                         static_cast<ptf::DType>(dtype), static_cast<ptf::VqMetric>(metric)};
        check(ptf::vq_nearest_cuda(a, ptr(workspace), ptr(stream)));
      },
      py::arg("x"), py::arg("codebook"), py::arg("indices"), py::arg("dist"), py::arg("rows"), py::arg("codes"),
      py::arg("dim"), py::arg("k"), py::arg("dtype"), py::arg("metric"), py::arg("workspace"), py::arg("stream"));
}
