#include "mask_cast.h"

namespace rfkp {
namespace trt {
namespace {

constexpr int kThreads = 256;

__global__ void int32_mask_kernel(const int32_t* __restrict__ in, uint8_t* __restrict__ out, int64_t count) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = in[i] != 0 ? 1 : 0;
  }
}

}  // namespace

cudaError_t int32_mask_to_uint8(const int32_t* in, uint8_t* out, int64_t count, cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  const int64_t needed = (count + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(needed < 4096 ? needed : 4096);
  int32_mask_kernel<<<blocks, kThreads, 0, stream>>>(in, out, count);
  return cudaGetLastError();
}

}  // namespace trt
}  // namespace rfkp
