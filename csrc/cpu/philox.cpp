// Philox streams on the CPU, for testing the shared header against Triton's
// known-answer vectors (kernels use pyprobtf/philox.h directly).
#include "pyprobtf/philox.h"
#include "pyprobtf/random.h"

namespace ptf {

void philox_fill_cpu(const int64_t* seed, const int64_t* counter, int64_t n, uint32_t* words, float* normal,
                     double* uniform) {
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t s = static_cast<uint64_t>(seed[i]), c = static_cast<uint64_t>(counter[i]);
    const PhiloxWords w = philox4x32_10(s, c);
    words[4 * i + 0] = w.w0;
    words[4 * i + 1] = w.w1;
    words[4 * i + 2] = w.w2;
    words[4 * i + 3] = w.w3;
    normal[i] = randn(s, c);
    uniform[i] = uniform53(s, c);
  }
}

}  // namespace ptf
