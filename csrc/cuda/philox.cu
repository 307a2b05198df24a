// Philox streams on the GPU, for testing pyprobtf/philox.h against Triton's
// known-answer vectors on a device.
#include "pyprobtf/cuda_common.cuh"
#include "pyprobtf/philox.h"
#include "pyprobtf/random.h"

namespace ptf {
namespace {

__global__ void philox_fill_kernel(const int64_t* seed, const int64_t* counter, int64_t n, uint32_t* words,
                                   float* normal, double* uniform) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const uint64_t s = static_cast<uint64_t>(seed[i]), c = static_cast<uint64_t>(counter[i]);
  const PhiloxWords w = philox4x32_10(s, c);
  words[4 * i + 0] = w.w0;
  words[4 * i + 1] = w.w1;
  words[4 * i + 2] = w.w2;
  words[4 * i + 3] = w.w3;
  normal[i] = randn(s, c);
  uniform[i] = uniform53(s, c);
}

}  // namespace

const char* philox_fill_cuda(const int64_t* seed, const int64_t* counter, int64_t n, uint32_t* words,
                             float* normal, double* uniform, void* stream) {
  if (n == 0) return nullptr;
  const int threads = 256;
  const unsigned blocks = static_cast<unsigned>((n + threads - 1) / threads);
  philox_fill_kernel<<<blocks, threads, 0, static_cast<cudaStream_t>(stream)>>>(seed, counter, n, words, normal,
                                                                                 uniform);
  return cuda::last_error();
}

}  // namespace ptf
