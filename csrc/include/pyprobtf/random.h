// Fill functions over the Philox streams of pyprobtf/philox.h (used by tests).
#pragma once

#include <cstdint>

namespace ptf {

// For each i: the four Philox words of (seed[i], counter[i]) into words[4i..4i+3],
// tl.randn's normal into normal[i] and the 53-bit uniform into uniform[i].
void philox_fill_cpu(const int64_t* seed, const int64_t* counter, int64_t n, uint32_t* words, float* normal,
                     double* uniform);
// The same on the GPU: all pointers are device pointers. Returns nullptr or an error message.
const char* philox_fill_cuda(const int64_t* seed, const int64_t* counter, int64_t n, uint32_t* words,
                             float* normal, double* uniform, void* stream);

}  // namespace ptf
