// pyprobtf._C: thin pybind11 bindings of the CPU kernels.
//
// Tensors arrive as (data pointer, row stride, column stride) tuples of plain
// integers built by pyprobtf/ops/_native.py; the kernels never see torch.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <tuple>

#include "pyprobtf/affine_coupling.h"
#include "pyprobtf/cpu_random.h"
#include "pyprobtf/lincomb_args.h"
#include "pyprobtf/random.h"
#include "pyprobtf/sampling_args.h"
#include "pyprobtf/vq_nearest.h"

namespace py = pybind11;
using MatArg = std::tuple<uintptr_t, int64_t, int64_t>;
using VecArg = std::tuple<uintptr_t, int64_t>;

static ptf::Mat mat(const MatArg& m) {
  return ptf::Mat{reinterpret_cast<void*>(std::get<0>(m)), std::get<1>(m), std::get<2>(m)};
}
static ptf::Vec vec(const VecArg& v) { return ptf::Vec{reinterpret_cast<void*>(std::get<0>(v)), std::get<1>(v)}; }
static void* ptr(uintptr_t p) { return reinterpret_cast<void*>(p); }

// The enums the Python side passes as integers, by the names it uses for them;
// tests/test_registry.py checks pyprobtf.ops against these.
static py::dict enums() {
  using ptf::ScaleFn;
  using ptf::VqMetric;
  py::dict scale_fn, metric, dtype, status;
  scale_fn["exp"] = int(ScaleFn::Exp);
  scale_fn["softclamp"] = int(ScaleFn::SoftClamp);
  scale_fn["sigmoid"] = int(ScaleFn::Sigmoid);
  scale_fn["softclip"] = int(ScaleFn::SoftClip);
  scale_fn["sigmoid_eps"] = int(ScaleFn::SigmoidEps);
  scale_fn["inv_sigmoid"] = int(ScaleFn::InvSigmoid);
  metric["l2"] = int(VqMetric::L2);
  metric["cosine"] = int(VqMetric::Cosine);
  metric["dot"] = int(VqMetric::Dot);
  dtype["float32"] = int(ptf::DType::Float32);
  dtype["float64"] = int(ptf::DType::Float64);
  dtype["float16"] = int(ptf::DType::Float16);
  dtype["bfloat16"] = int(ptf::DType::BFloat16);
  status["ok"] = int(ptf::sampling::kOk);
  status["bad_temperature"] = int(ptf::sampling::kBadTemperature);
  status["bad_top_k"] = int(ptf::sampling::kBadTopK);
  status["bad_top_p"] = int(ptf::sampling::kBadTopP);
  status["bad_min_p"] = int(ptf::sampling::kBadMinP);
  status["bad_uniform"] = int(ptf::sampling::kBadUniform);
  status["nan_logit"] = int(ptf::sampling::kNanLogit);
  status["pos_inf_logit"] = int(ptf::sampling::kPosInfLogit);
  status["all_neg_inf"] = int(ptf::sampling::kAllNegInf);
  py::dict all;
  all["scale_fn"] = scale_fn;
  all["metric"] = metric;
  all["dtype"] = dtype;
  all["status"] = status;
  return all;
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "pyprobtf CPU kernels (C++17, OpenMP)";

  m.def("enums", &enums, "The integer codes of scale functions, metrics, dtypes and sampling statuses.");

  m.def("openmp", []() {
#if defined(PTF_HAVE_OPENMP)
    return true;
#else
    return false;
#endif
  }, "Whether the kernels were built with OpenMP.");

  m.def(
      "affine_coupling_forward",
      [](MatArg x, MatArg shift, MatArg scale, uintptr_t y, uintptr_t ladj, int64_t rows, int64_t cols, int dtype,
         int scale_fn, double clamp, bool inverse, bool ladj_elements, int num_threads) {
        ptf::AffineCouplingForward a{mat(x), mat(shift), mat(scale), ptr(y), ptr(ladj), rows, cols,
                                     static_cast<ptf::DType>(dtype), static_cast<ptf::ScaleFn>(scale_fn), clamp,
                                     inverse, ladj_elements};
        py::gil_scoped_release release;
        ptf::affine_coupling_forward_cpu(a, num_threads);
      },
      py::arg("x"), py::arg("shift"), py::arg("scale"), py::arg("y"), py::arg("ladj"), py::arg("rows"),
      py::arg("cols"), py::arg("dtype"), py::arg("scale_fn"), py::arg("clamp"), py::arg("inverse"),
      py::arg("ladj_elements"), py::arg("num_threads"));

  m.def(
      "affine_coupling_backward",
      [](MatArg x, MatArg shift, MatArg scale, MatArg grad_y, MatArg grad_ladj, uintptr_t grad_x,
         uintptr_t grad_shift, uintptr_t grad_scale, int64_t rows, int64_t cols, int dtype, int scale_fn,
         double clamp, bool inverse, int num_threads) {
        ptf::AffineCouplingBackward a{mat(x), mat(shift), mat(scale), mat(grad_y), mat(grad_ladj), ptr(grad_x),
                                      ptr(grad_shift), ptr(grad_scale), rows, cols,
                                      static_cast<ptf::DType>(dtype), static_cast<ptf::ScaleFn>(scale_fn), clamp,
                                      inverse};
        py::gil_scoped_release release;
        ptf::affine_coupling_backward_cpu(a, num_threads);
      },
      py::arg("x"), py::arg("shift"), py::arg("scale"), py::arg("grad_y"), py::arg("grad_ladj"),
      py::arg("grad_x"), py::arg("grad_shift"), py::arg("grad_scale"), py::arg("rows"), py::arg("cols"),
      py::arg("dtype"), py::arg("scale_fn"), py::arg("clamp"), py::arg("inverse"), py::arg("num_threads"));

  m.def(
      "philox_fill",
      [](uintptr_t seed, uintptr_t counter, int64_t n, uintptr_t words, uintptr_t normal, uintptr_t uniform) {
        py::gil_scoped_release release;
        ptf::philox_fill_cpu(reinterpret_cast<const int64_t*>(seed), reinterpret_cast<const int64_t*>(counter), n,
                             reinterpret_cast<uint32_t*>(words), reinterpret_cast<float*>(normal),
                             reinterpret_cast<double*>(uniform));
      },
      "Philox words, tl.randn normals and 53-bit uniforms for int64 seed/counter arrays (testing).");

  m.def(
      "lincomb",
      [](const std::vector<MatArg>& inputs, const std::vector<double>& coeffs, const std::vector<VecArg>& coeff_rows,
         MatArg out, int64_t rows, int64_t cols, int dtype, bool noise, double noise_std, VecArg noise_std_rows,
         int64_t seed, VecArg seed_rows, int64_t offset, int num_threads) {
        const ptf::LincombArgs a = ptf::make_lincomb_args(inputs, coeffs, coeff_rows, out, rows, cols, dtype, noise,
                                                          noise_std, noise_std_rows, seed, seed_rows, offset);
        py::gil_scoped_release release;
        ptf::lincomb_cpu(a, num_threads);
      },
      py::arg("inputs"), py::arg("coeffs"), py::arg("coeff_rows"), py::arg("out"), py::arg("rows"), py::arg("cols"),
      py::arg("dtype"), py::arg("noise"), py::arg("noise_std"), py::arg("noise_std_rows"), py::arg("seed"),
      py::arg("seed_rows"), py::arg("offset"), py::arg("num_threads"),
      "out = sum_k coeffs[k] * inputs[k] + noise_std * eps (Philox normals drawn in the kernel).");

  m.def(
      "lincomb_flat",
      [](const std::vector<uintptr_t>& inputs, const std::vector<double>& coeffs, uintptr_t out, int64_t numel,
         int dtype, bool noise, double noise_std, int64_t seed, int64_t offset, int num_threads) {
        // The common call with the fewest conversions: contiguous tensors of one shape
        // as one row of numel elements, scalar coefficients, one seed.
        const size_t n = inputs.size();
        if (n < 1 || n > static_cast<size_t>(ptf::kLincombMaxInputs) || coeffs.size() != n) {
          throw std::invalid_argument("lincomb_flat: 1 to 4 inputs with one coefficient each");
        }
        ptf::LincombArgs a{};
        a.n_inputs = static_cast<int>(n);
        for (size_t k = 0; k < n; ++k) {
          a.inputs[k] = ptf::Mat{ptr(inputs[k]), numel, 1};
          a.coeffs[k] = coeffs[k];
        }
        a.out = ptf::Mat{ptr(out), numel, 1};
        a.rows = 1;
        a.cols = numel;
        a.dtype = static_cast<ptf::DType>(dtype);
        a.noise = noise;
        a.noise_std = noise_std;
        a.seed = static_cast<uint64_t>(seed);
        a.offset = static_cast<uint64_t>(offset);
        py::gil_scoped_release release;
        ptf::lincomb_cpu(a, num_threads);
      },
      "lincomb of contiguous inputs as one row of numel elements, scalar coefficients and one seed.");

  m.def(
      "philox_words",
      [](int isa, int64_t seed, int64_t counter, int64_t n, uintptr_t w0, uintptr_t w1) {
        py::gil_scoped_release release;
        return ptf::cpu::philox_words_isa(static_cast<ptf::cpu::PhiloxIsa>(isa), static_cast<uint64_t>(seed),
                                          static_cast<uint64_t>(counter), n, reinterpret_cast<uint32_t*>(w0),
                                          reinterpret_cast<uint32_t*>(w1));
      },
      "Philox words 0 and 1 of counters counter .. counter + n - 1 with a chosen implementation (0 auto, "
      "1 portable, 2 AVX2, 3 AVX-512); False when this CPU lacks it (testing).");

  m.def(
      "sample_logits",
      [](ptf::SamplingMat logits, int64_t rows, int64_t cols, int dtype, ptf::SamplingParam temperature,
         ptf::SamplingIntParam top_k, ptf::SamplingParam top_p, ptf::SamplingParam min_p, ptf::SamplingVec uniform,
         ptf::SamplingIntParam seed, ptf::SamplingIntParam offset, uintptr_t tokens, uintptr_t logprobs,
         uintptr_t status, uintptr_t filtered, int num_threads) {
        const ptf::SampleLogitsArgs a = ptf::make_sample_logits_args(
            logits, rows, cols, dtype, temperature, top_k, top_p, min_p, uniform, seed, offset, tokens, logprobs,
            status, filtered);
        int64_t bad_rows = 0;
        {
          py::gil_scoped_release release;
          ptf::sample_logits_cpu(a, num_threads);
          for (int64_t r = 0; r < rows; ++r) bad_rows += a.status[r] != 0;
        }
        return bad_rows;
      },
      py::arg("logits"), py::arg("rows"), py::arg("cols"), py::arg("dtype"), py::arg("temperature"),
      py::arg("top_k"), py::arg("top_p"), py::arg("min_p"), py::arg("uniform"), py::arg("seed"), py::arg("offset"),
      py::arg("tokens"), py::arg("logprobs"), py::arg("status"), py::arg("filtered"), py::arg("num_threads"),
      "sample_logits (filtered == 0) or filter_logits (filtered != 0) on CPU; returns the number of rows whose "
      "status is not OK. See pyprobtf/ops/sampling.py.");

  m.def(
      "vq_nearest",
      [](MatArg x, MatArg codebook, uintptr_t indices, uintptr_t dist, int64_t rows, int64_t codes, int64_t dim,
         int64_t k, int dtype, int metric, int isa, int num_threads) {
        if (rows < 0 || codes < 1 || dim < 0 || k < 1 || k > codes) {
          throw std::invalid_argument("vq_nearest: need rows >= 0, dim >= 0 and 1 <= k <= codes");
        }
        if (isa > ptf::vq_nearest_cpu_best_isa()) {
          throw std::invalid_argument("vq_nearest: instruction-set level " + std::to_string(isa) +
                                      " is not supported by this CPU");
        }
        ptf::VqNearest a{mat(x), mat(codebook), ptr(indices), ptr(dist), rows, codes, dim, k,
                         static_cast<ptf::DType>(dtype), static_cast<ptf::VqMetric>(metric)};
        py::gil_scoped_release release;
        ptf::vq_nearest_cpu(a, isa, num_threads);
      },
      py::arg("x"), py::arg("codebook"), py::arg("indices"), py::arg("dist"), py::arg("rows"), py::arg("codes"),
      py::arg("dim"), py::arg("k"), py::arg("dtype"), py::arg("metric"), py::arg("isa"), py::arg("num_threads"));

  m.def("vq_nearest_best_isa", &ptf::vq_nearest_cpu_best_isa,
        "Best instruction-set level of the vq_nearest scan on this CPU: 4 (AVX-512), 3 (AVX2) or 1 (baseline).");
}
