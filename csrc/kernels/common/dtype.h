// Element types understood by every rfkp kernel launcher (host-side header, no device code).
//
// The integer values are part of the C ABI (csrc/capi) and of the Python loader (rfkp/ops/cuda_lib.py):
// never renumber them.
#pragma once

namespace rfkp {

enum class DType : int {
  kFloat32 = 0,
  kFloat16 = 1,
  kBFloat16 = 2,
  kFloat64 = 3,
};

inline bool is_valid_dtype(int code) { return code >= 0 && code <= 3; }

}  // namespace rfkp
