// Plain-C++ view of the CUDA runtime for the bindings (no CUDA headers).
#pragma once

#include <string>

namespace ptf {

// Number of CUDA devices; 0 with `error` set when there is no usable driver or device.
int cuda_device_count(std::string* error);
// Compute capability as major * 10 + minor, or -1 with `error` set.
int cuda_device_capability(int device, std::string* error);
// The driver's CUDA version (e.g. 12080 for 12.8), or 0 when there is no driver.
int cuda_driver_version();

}  // namespace ptf
