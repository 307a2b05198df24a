// Plain-C++ view of the CUDA runtime for the bindings (no CUDA headers).
#pragma once

#include <string>

namespace ptf {

// Number of CUDA devices; 0 with `error` set when there is no usable driver or device.
int cuda_device_count(std::string* error);
// Compute capability as major * 10 + minor, or -1 with `error` set.
int cuda_device_capability(int device, std::string* error);

}  // namespace ptf
