// Conversion of an int32 mask (nonzero = set) to the uint8 0/1 mask the rescoring kernel reads.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace rfkp {
namespace trt {

// out[i] = in[i] != 0 for i < count; asynchronous on `stream`. Returns the launch status.
cudaError_t int32_mask_to_uint8(const int32_t* in, uint8_t* out, int64_t count, cudaStream_t stream);

}  // namespace trt
}  // namespace rfkp
