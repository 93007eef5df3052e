// Multi-scale deformable attention: launchers (host API, framework-free).
//
// Every launcher takes a CUDA stream, raw device pointers and int dims, so the same code serves the
// Python library (csrc/capi) and TensorRT plugins. All tensors are dense, row-major (C-contiguous).
//
// Shapes (Deformable-DETR convention), dtype T in {float, half, bfloat16, double} chosen by `dtype`:
//   value               (B, S, H, D) T, S = sum over levels of h_l * w_l, levels flattened row-major
//   spatial_shapes      (L, 2) int64 (h_l, w_l)
//   level_start_index   (L,) int64, offset of each level in S
//   sampling_locations  (B, Q, H, L, P, 2) T, normalised (x, y); (0, 0) is the top-left image corner
//   attention_weights   (B, Q, H, L, P) T
//   output              (B, Q, H * D) T
// Sampling is bilinear with zero padding and align_corners=False (pixel centres at (i + 0.5) / size).
// Sums are carried in float (double for double inputs). A level whose extent does not fit in S
// contributes zero instead of reading out of bounds.
//
// Fused variant: the kernel builds the sampling locations and the softmax itself.
//   reference           (B, Q, Lr, R) T with Lr in {1, L} (1: shared by all levels) and R in {2, 4}:
//                       R = 2 points (x, y): loc = ref + offset / (w_l, h_l)
//                       R = 4 boxes (cx, cy, w, h): loc = ref_xy + offset / P * ref_wh * 0.5
//   sampling_offsets    (B, Q, H, L, P, 2) T, raw
//   attention_logits    (B, Q, H, L, P) T, raw; softmax over the L * P samples of each (b, q, h)
//
// Backward outputs. Gradients that are scattered (value, reference) go to caller-zeroed accumulation
// buffers of float (double for double inputs) because they are summed with atomics; the caller casts
// them to T. Gradients that have one writer per element are written directly in T.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../common/dtype.h"

namespace rfkp {

struct MsdaDims {
  int batch;      // B
  int num_value;  // S
  int heads;      // H
  int channels;   // D, per head
  int levels;     // L
  int queries;    // Q
  int points;     // P
};

cudaError_t ms_deform_attn_forward(DType dtype, const void* value, const int64_t* spatial_shapes,
                                   const int64_t* level_start_index, const void* sampling_locations,
                                   const void* attention_weights, void* output, MsdaDims dims,
                                   cudaStream_t stream);

// grad_value_acc (B, S, H, D) accumulation type, zeroed by the caller;
// grad_sampling_locations (B, Q, H, L, P, 2) T; grad_attention_weights (B, Q, H, L, P) T.
cudaError_t ms_deform_attn_backward(DType dtype, const void* value, const int64_t* spatial_shapes,
                                    const int64_t* level_start_index, const void* sampling_locations,
                                    const void* attention_weights, const void* grad_output,
                                    void* grad_value_acc, void* grad_sampling_locations,
                                    void* grad_attention_weights, MsdaDims dims, cudaStream_t stream);

cudaError_t ms_deform_attn_fused_forward(DType dtype, const void* value, const int64_t* spatial_shapes,
                                         const int64_t* level_start_index, const void* reference,
                                         int reference_levels, int reference_dim,
                                         const void* sampling_offsets, const void* attention_logits,
                                         void* output, MsdaDims dims, cudaStream_t stream);

// grad_value_acc (B, S, H, D) and grad_reference_acc (B, Q, Lr, R) accumulation type, zeroed by the
// caller (grad_reference_acc may be null to skip it); grad_sampling_offsets (B, Q, H, L, P, 2) T;
// grad_attention_logits (B, Q, H, L, P) T.
cudaError_t ms_deform_attn_fused_backward(DType dtype, const void* value, const int64_t* spatial_shapes,
                                          const int64_t* level_start_index, const void* reference,
                                          int reference_levels, int reference_dim,
                                          const void* sampling_offsets, const void* attention_logits,
                                          const void* grad_output, void* grad_value_acc,
                                          void* grad_sampling_offsets, void* grad_attention_logits,
                                          void* grad_reference_acc, MsdaDims dims, cudaStream_t stream);

}  // namespace rfkp
