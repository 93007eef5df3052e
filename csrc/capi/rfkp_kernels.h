/* rfkp kernels: C ABI of the shared library (librfkp_kernels.so), loaded from Python with ctypes.
 *
 * Every entry point takes raw device pointers, int dims, a dtype code (0 float32, 1 float16, 2 bfloat16,
 * 3 float64) and a cudaStream_t passed as void*. It returns 0 on success; otherwise a nonzero code
 * (RFKP_EINVAL for a rejected argument, or the cudaError_t value of a failed launch) and
 * rfkp_last_error() describes the failure of the calling thread. No C++ exception crosses this boundary.
 * Launches are asynchronous on `stream`; nothing here synchronises.
 *
 * Shapes and conventions are those of csrc/kernels/ms_deform_attn/ms_deform_attn.h and
 * csrc/kernels/gaussian_rescore/gaussian_rescore.h; all buffers are dense row-major.
 */
#ifndef RFKP_CAPI_RFKP_KERNELS_H_
#define RFKP_CAPI_RFKP_KERNELS_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RFKP_CAPI_VERSION 1
#define RFKP_EINVAL 100000

int rfkp_capi_version(void);
const char* rfkp_last_error(void);

int rfkp_ms_deform_attn_forward(int dtype, const void* value, const int64_t* spatial_shapes,
                                const int64_t* level_start_index, const void* sampling_locations,
                                const void* attention_weights, void* output, int batch, int num_value, int heads,
                                int channels, int levels, int queries, int points, void* stream);

int rfkp_ms_deform_attn_backward(int dtype, const void* value, const int64_t* spatial_shapes,
                                 const int64_t* level_start_index, const void* sampling_locations,
                                 const void* attention_weights, const void* grad_output, void* grad_value_acc,
                                 void* grad_sampling_locations, void* grad_attention_weights, int batch,
                                 int num_value, int heads, int channels, int levels, int queries, int points,
                                 void* stream);

int rfkp_ms_deform_attn_fused_forward(int dtype, const void* value, const int64_t* spatial_shapes,
                                      const int64_t* level_start_index, const void* reference,
                                      int reference_levels, int reference_dim, const void* sampling_offsets,
                                      const void* attention_logits, void* output, int batch, int num_value,
                                      int heads, int channels, int levels, int queries, int points, void* stream);

int rfkp_ms_deform_attn_fused_backward(int dtype, const void* value, const int64_t* spatial_shapes,
                                       const int64_t* level_start_index, const void* reference,
                                       int reference_levels, int reference_dim, const void* sampling_offsets,
                                       const void* attention_logits, const void* grad_output,
                                       void* grad_value_acc, void* grad_sampling_offsets,
                                       void* grad_attention_logits, void* grad_reference_acc, int batch,
                                       int num_value, int heads, int channels, int levels, int queries,
                                       int points, void* stream);

int rfkp_gaussian_rescore(int dtype, const void* cholesky, const void* findable_logit, const uint8_t* active,
                          const void* score, const void* box_wh, const void* image_wh, double alpha, int num,
                          int keypoints, void* out_score, void* out_log_mean_trace, void* out_covariance, void* stream);

#ifdef __cplusplus
}
#endif

#endif /* RFKP_CAPI_RFKP_KERNELS_H_ */
