// Gaussian rescoring of a batch of detections: launcher (host API, framework-free).
//
// The math is the project's Gaussian post-processing (rfkp/ops/gaussian.py, reference in rfkp/ops/rescore.py).
// Per detection n and keypoint slot k, (log_l11, l21, log_l22) is the Cholesky factor L of the keypoint's
// precision P = L L^T in normalised image coordinates. Over the active slots, in log space:
//   log_mean_trace = log(sum_k w_k trace(P_k^-1) / sum_k w_k),  w_k = max(sigmoid(findable_logit_k), 1e-12)
//   score'         = min(sigmoid(log(score) - alpha * log_mean_trace), largest T below 1)
// and, with no active slot, log_mean_trace = 0 and score' = score.
//   cov_k          = area * diag(W, H) P_k^-1 diag(W, H)   (pixels^2; NaN for inactive slots)
// with area = w * h of the normalised box and (W, H) the image size in pixels.
//
// Shapes, dtype T in {float, half, bfloat16, double} (float arithmetic, double for double):
//   cholesky        (N, K, 3) T       findable_logit (N, K) T      active (N, K) uint8 (0 / 1)
//   score           (N,) T in [0, 1]  box_wh (N, 2) T normalised   image_wh (N, 2) T pixels
//   out_score (N,) T, out_log_mean_trace (N,) T, out_covariance (N, K, 2, 2) T
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../common/dtype.h"

namespace rfkp {

cudaError_t gaussian_rescore(DType dtype, const void* cholesky, const void* findable_logit, const uint8_t* active,
                             const void* score, const void* box_wh, const void* image_wh, double alpha, int num,
                             int keypoints, void* out_score, void* out_log_mean_trace, void* out_covariance,
                             cudaStream_t stream);

}  // namespace rfkp
