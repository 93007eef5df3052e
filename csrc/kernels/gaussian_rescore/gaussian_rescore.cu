// Gaussian rescoring (see gaussian_rescore.h). One thread per detection; it loops over the K keypoint slots,
// which are contiguous for that detection. K is small (<= a few dozen), so nothing is staged. Sums are kept in
// log space with an online logsumexp, so very sharp or very vague Gaussians do not overflow.
#include <cfloat>

#include "../common/dtype.cuh"
#include "gaussian_rescore.h"

namespace rfkp {
namespace rescore {

constexpr int kThreads = 128;

// Largest value of T below 1, as the accumulation type.
template <typename T>
__device__ __forceinline__ acc_t<T> below_one();
template <>
__device__ __forceinline__ float below_one<float>() { return 1.0f - FLT_EPSILON / 2; }
template <>
__device__ __forceinline__ double below_one<double>() { return 1.0 - DBL_EPSILON / 2; }
template <>
__device__ __forceinline__ float below_one<__half>() { return 1.0f - 1.0f / 2048; }
template <>
__device__ __forceinline__ float below_one<__nv_bfloat16>() { return 1.0f - 1.0f / 256; }

// Non-finite inputs follow torch.logsumexp and torch.clamp (the reference): NaN propagates (fmax/fmin would
// drop it), an infinite maximum is the result (an infinite variance scores 0), never inf - inf.

// Online logsumexp: running max m and sum s of exp(x - m). A NaN x makes s NaN.
template <typename A>
__device__ __forceinline__ void lse_add(A x, A& m, A& s) {
  if (x == -INFINITY) return;
  if (x > m) {
    s = s * exp(m - x) + A(1);
    m = x;
  } else {
    s += x == m ? A(1) : exp(x - m);  // x == m == +inf: exp(inf - inf) would be NaN
  }
}

template <typename A>
__device__ __forceinline__ A lse_result(A m, A s) {
  return isinf(m) && !isnan(s) ? m : m + log(s);
}

template <typename A>
__device__ __forceinline__ A lse3(A a, A b, A c) {
  if (isnan(a) || isnan(b) || isnan(c)) return a + b + c;
  const A m = fmax(fmax(a, b), c);
  if (isinf(m)) return m;
  return m + log(exp(a - m) + exp(b - m) + exp(c - m));
}

template <typename T>
__global__ void rescore_kernel(const T* __restrict__ cholesky, const T* __restrict__ findable_logit,
                               const uint8_t* __restrict__ active, const T* __restrict__ score,
                               const T* __restrict__ box_wh, const T* __restrict__ image_wh, acc_t<T> alpha,
                               int num, int keypoints, T* __restrict__ out_score, T* __restrict__ out_log_mean_trace,
                               T* __restrict__ out_covariance) {
  using A = acc_t<T>;
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  if (n >= num) return;
  const A area = static_cast<A>(to_acc(box_wh[2 * n])) * static_cast<A>(to_acc(box_wh[2 * n + 1]));
  const A width = to_acc(image_wh[2 * n]);
  const A height = to_acc(image_wh[2 * n + 1]);
  A num_m = -INFINITY, num_s = 0, den_m = -INFINITY, den_s = 0;
  bool any_active = false;
  for (int k = 0; k < keypoints; ++k) {
    const int64_t nk = static_cast<int64_t>(n) * keypoints + k;
    T* cov = out_covariance + 4 * nk;
    if (!active[nk]) {
      const T nan = from_acc<T>(static_cast<A>(NAN));
      cov[0] = nan;
      cov[1] = nan;
      cov[2] = nan;
      cov[3] = nan;
      continue;
    }
    any_active = true;
    const A log_l11 = to_acc(cholesky[3 * nk]);
    const A l21 = to_acc(cholesky[3 * nk + 1]);
    const A log_l22 = to_acc(cholesky[3 * nk + 2]);
    // log trace(P^-1) = logsumexp(-2 log_l11, -2 log_l22, 2 log|l21| - 2 log_l11 - 2 log_l22).
    const A t1 = A(-2) * log_l11;
    const A t2 = A(-2) * log_l22;
    const A t3 = l21 != A(0) ? A(2) * log(fabs(l21)) + t1 + t2 : static_cast<A>(-INFINITY);
    const A log_trace = lse3(t1, t2, t3);
    const A w = A(1) / (A(1) + exp(-static_cast<A>(to_acc(findable_logit[nk]))));
    const A log_w = isnan(w) ? w : log(fmax(w, static_cast<A>(1e-12)));
    lse_add(log_trace + log_w, num_m, num_s);
    lse_add(log_w, den_m, den_s);
    // P^-1 = L^-T L^-1 = [[a^2 + b^2, b c], [b c, c^2]] with a = 1 / l11, c = 1 / l22, b = -l21 a c.
    const A a = exp(-log_l11);
    const A c = exp(-log_l22);
    const A b = -l21 * a * c;
    cov[0] = from_acc<T>((a * a + b * b) * area * width * width);
    cov[1] = from_acc<T>(b * c * area * width * height);
    cov[2] = cov[1];
    cov[3] = from_acc<T>(c * c * area * height * height);
  }
  const A s = to_acc(score[n]);
  if (!any_active) {
    out_log_mean_trace[n] = from_acc<T>(A(0));
    out_score[n] = score[n];
    return;
  }
  const A log_mean_trace = lse_result(num_m, num_s) - lse_result(den_m, den_s);
  const A z = log(s) - alpha * log_mean_trace;
  const A fused = A(1) / (A(1) + exp(-z));
  out_log_mean_trace[n] = from_acc<T>(log_mean_trace);
  out_score[n] = from_acc<T>(isnan(fused) ? fused : fmin(fused, below_one<T>()));
}

}  // namespace rescore

cudaError_t gaussian_rescore(DType dtype, const void* cholesky, const void* findable_logit, const uint8_t* active,
                             const void* score, const void* box_wh, const void* image_wh, double alpha, int num,
                             int keypoints, void* out_score, void* out_log_mean_trace, void* out_covariance,
                             cudaStream_t stream) {
  if (num < 0 || keypoints < 0) return cudaErrorInvalidValue;
  if (num == 0) return cudaSuccess;
  const int blocks = (num + rescore::kThreads - 1) / rescore::kThreads;
  RFKP_DISPATCH_DTYPE(dtype, {
    rescore::rescore_kernel<scalar_t><<<blocks, rescore::kThreads, 0, stream>>>(
        static_cast<const scalar_t*>(cholesky), static_cast<const scalar_t*>(findable_logit), active,
        static_cast<const scalar_t*>(score), static_cast<const scalar_t*>(box_wh),
        static_cast<const scalar_t*>(image_wh), static_cast<acc_t<scalar_t>>(alpha), num, keypoints,
        static_cast<scalar_t*>(out_score), static_cast<scalar_t*>(out_log_mean_trace),
        static_cast<scalar_t*>(out_covariance));
    return cudaGetLastError();
  });
  return cudaErrorInvalidValue;
}

}  // namespace rfkp
