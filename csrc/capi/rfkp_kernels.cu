// C ABI over the framework-free launchers: argument checks, error codes and a per-thread error message.
#include "rfkp_kernels.h"

#include <cuda_runtime_api.h>

#include <cstdio>
#include <exception>

#include "../kernels/gaussian_rescore/gaussian_rescore.h"
#include "../kernels/ms_deform_attn/ms_deform_attn.h"

namespace {

thread_local char g_last_error[512] = "";

int fail(const char* where, const char* what) {
  std::snprintf(g_last_error, sizeof(g_last_error), "%s: %s", where, what);
  return RFKP_EINVAL;
}

int finish(const char* where, cudaError_t status) {
  if (status == cudaSuccess) {
    g_last_error[0] = '\0';
    return 0;
  }
  std::snprintf(g_last_error, sizeof(g_last_error), "%s: %s (%s)", where, cudaGetErrorString(status),
                cudaGetErrorName(status));
  return static_cast<int>(status);
}

// Checks shared by the deformable-attention entry points; returns nullptr when the dims are valid.
const char* check_msda(int dtype, const rfkp::MsdaDims& d) {
  if (!rfkp::is_valid_dtype(dtype)) return "dtype code must be 0 (f32), 1 (f16), 2 (bf16) or 3 (f64)";
  if (d.batch < 0 || d.num_value < 0 || d.heads < 0 || d.channels < 0 || d.queries < 0) {
    return "batch, num_value, heads, channels and queries must be >= 0";
  }
  if (d.levels < 1 || d.points < 1) return "levels and points must be >= 1";
  return nullptr;
}

const char* check_reference(int reference_levels, int reference_dim, int levels) {
  if (reference_levels != 1 && reference_levels != levels) return "reference_levels must be 1 or levels";
  if (reference_dim != 2 && reference_dim != 4) return "reference_dim must be 2 (points) or 4 (boxes)";
  return nullptr;
}

}  // namespace

extern "C" {

int rfkp_capi_version(void) { return RFKP_CAPI_VERSION; }

const char* rfkp_last_error(void) { return g_last_error; }

int rfkp_ms_deform_attn_forward(int dtype, const void* value, const int64_t* spatial_shapes,
                                const int64_t* level_start_index, const void* sampling_locations,
                                const void* attention_weights, void* output, int batch, int num_value, int heads,
                                int channels, int levels, int queries, int points, void* stream) {
  static const char* kWhere = "rfkp_ms_deform_attn_forward";
  try {
    const rfkp::MsdaDims d{batch, num_value, heads, channels, levels, queries, points};
    if (const char* why = check_msda(dtype, d)) return fail(kWhere, why);
    return finish(kWhere, rfkp::ms_deform_attn_forward(static_cast<rfkp::DType>(dtype), value, spatial_shapes,
                                                       level_start_index, sampling_locations, attention_weights,
                                                       output, d, static_cast<cudaStream_t>(stream)));
  } catch (const std::exception& e) {
    return fail(kWhere, e.what());
  } catch (...) {
    return fail(kWhere, "unknown exception");
  }
}

int rfkp_ms_deform_attn_backward(int dtype, const void* value, const int64_t* spatial_shapes,
                                 const int64_t* level_start_index, const void* sampling_locations,
                                 const void* attention_weights, const void* grad_output, void* grad_value_acc,
                                 void* grad_sampling_locations, void* grad_attention_weights, int batch,
                                 int num_value, int heads, int channels, int levels, int queries, int points,
                                 void* stream) {
  static const char* kWhere = "rfkp_ms_deform_attn_backward";
  try {
    const rfkp::MsdaDims d{batch, num_value, heads, channels, levels, queries, points};
    if (const char* why = check_msda(dtype, d)) return fail(kWhere, why);
    return finish(kWhere, rfkp::ms_deform_attn_backward(
                              static_cast<rfkp::DType>(dtype), value, spatial_shapes, level_start_index,
                              sampling_locations, attention_weights, grad_output, grad_value_acc,
                              grad_sampling_locations, grad_attention_weights, d, static_cast<cudaStream_t>(stream)));
  } catch (const std::exception& e) {
    return fail(kWhere, e.what());
  } catch (...) {
    return fail(kWhere, "unknown exception");
  }
}

int rfkp_ms_deform_attn_fused_forward(int dtype, const void* value, const int64_t* spatial_shapes,
                                      const int64_t* level_start_index, const void* reference,
                                      int reference_levels, int reference_dim, const void* sampling_offsets,
                                      const void* attention_logits, void* output, int batch, int num_value,
                                      int heads, int channels, int levels, int queries, int points, void* stream) {
  static const char* kWhere = "rfkp_ms_deform_attn_fused_forward";
  try {
    const rfkp::MsdaDims d{batch, num_value, heads, channels, levels, queries, points};
    if (const char* why = check_msda(dtype, d)) return fail(kWhere, why);
    if (const char* why = check_reference(reference_levels, reference_dim, levels)) return fail(kWhere, why);
    return finish(kWhere, rfkp::ms_deform_attn_fused_forward(
                              static_cast<rfkp::DType>(dtype), value, spatial_shapes, level_start_index, reference,
                              reference_levels, reference_dim, sampling_offsets, attention_logits, output, d,
                              static_cast<cudaStream_t>(stream)));
  } catch (const std::exception& e) {
    return fail(kWhere, e.what());
  } catch (...) {
    return fail(kWhere, "unknown exception");
  }
}

int rfkp_ms_deform_attn_fused_backward(int dtype, const void* value, const int64_t* spatial_shapes,
                                       const int64_t* level_start_index, const void* reference,
                                       int reference_levels, int reference_dim, const void* sampling_offsets,
                                       const void* attention_logits, const void* grad_output,
                                       void* grad_value_acc, void* grad_sampling_offsets,
                                       void* grad_attention_logits, void* grad_reference_acc, int batch,
                                       int num_value, int heads, int channels, int levels, int queries,
                                       int points, void* stream) {
  static const char* kWhere = "rfkp_ms_deform_attn_fused_backward";
  try {
    const rfkp::MsdaDims d{batch, num_value, heads, channels, levels, queries, points};
    if (const char* why = check_msda(dtype, d)) return fail(kWhere, why);
    if (const char* why = check_reference(reference_levels, reference_dim, levels)) return fail(kWhere, why);
    return finish(kWhere, rfkp::ms_deform_attn_fused_backward(
                              static_cast<rfkp::DType>(dtype), value, spatial_shapes, level_start_index, reference,
                              reference_levels, reference_dim, sampling_offsets, attention_logits, grad_output,
                              grad_value_acc, grad_sampling_offsets, grad_attention_logits, grad_reference_acc, d,
                              static_cast<cudaStream_t>(stream)));
  } catch (const std::exception& e) {
    return fail(kWhere, e.what());
  } catch (...) {
    return fail(kWhere, "unknown exception");
  }
}

int rfkp_gaussian_rescore(int dtype, const void* cholesky, const void* findable_logit, const uint8_t* active,
                          const void* score, const void* box_wh, const void* image_wh, double alpha, int num,
                          int keypoints, void* out_score, void* out_log_mean_trace, void* out_covariance,
                          void* stream) {
  static const char* kWhere = "rfkp_gaussian_rescore";
  try {
    if (!rfkp::is_valid_dtype(dtype)) return fail(kWhere, "dtype code must be 0, 1, 2 or 3");
    if (num < 0 || keypoints < 0) return fail(kWhere, "num and keypoints must be >= 0");
    return finish(kWhere, rfkp::gaussian_rescore(static_cast<rfkp::DType>(dtype), cholesky, findable_logit, active,
                                                 score, box_wh, image_wh, alpha, num, keypoints, out_score,
                                                 out_log_mean_trace, out_covariance,
                                                 static_cast<cudaStream_t>(stream)));
  } catch (const std::exception& e) {
    return fail(kWhere, e.what());
  } catch (...) {
    return fail(kWhere, "unknown exception");
  }
}

}  // extern "C"
