// Device-side element conversions and the accumulation type.
//
// Inputs may be float, half or bfloat16: they are widened to float on load and every sum is carried in
// float. double inputs accumulate in double (used by fp64 gradcheck on a GPU).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "dtype.h"

namespace rfkp {

template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};

template <typename T>
using acc_t = typename AccType<T>::type;

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_acc(acc_t<T> v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <>
__device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Sum of v over a team of `team` consecutive lanes (team is a power of two <= 32). Every lane of the warp
// must call this (the shuffle uses the full mask); each team reduces independently.
template <typename T>
__device__ __forceinline__ T team_sum(T v, int team) {
  for (int offset = team >> 1; offset > 0; offset >>= 1) {
    v += __shfl_xor_sync(0xffffffffu, v, offset, team);
  }
  return v;
}

}  // namespace rfkp

// Instantiates the body (the variadic argument) once per element type; `scalar_t` is defined inside it.
#define RFKP_DISPATCH_DTYPE(dtype, ...)                               \
  switch (dtype) {                                                     \
    case ::rfkp::DType::kFloat32: {                                    \
      using scalar_t = float;                                          \
      __VA_ARGS__;                                                     \
      break;                                                           \
    }                                                                  \
    case ::rfkp::DType::kFloat16: {                                    \
      using scalar_t = __half;                                         \
      __VA_ARGS__;                                                     \
      break;                                                           \
    }                                                                  \
    case ::rfkp::DType::kBFloat16: {                                   \
      using scalar_t = __nv_bfloat16;                                  \
      __VA_ARGS__;                                                     \
      break;                                                           \
    }                                                                  \
    case ::rfkp::DType::kFloat64: {                                    \
      using scalar_t = double;                                         \
      __VA_ARGS__;                                                     \
      break;                                                           \
    }                                                                  \
    default:                                                           \
      return cudaErrorInvalidValue;                                    \
  }
