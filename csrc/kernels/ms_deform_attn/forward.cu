// Multi-scale deformable attention forward, plain and fused (see ms_deform_attn.h for the contract).
//
// One thread per output element (b, q, h, d). Consecutive threads hold consecutive channels of one head,
// so the four corner reads of every sample are coalesced across the warp, and the per-sample scalars
// (location, weight, logits) are the same address for all threads of a head (a broadcast).
// Any D works; nothing is staged in shared memory.
#include "ms_deform_attn.h"
#include "ms_deform_attn_device.cuh"

namespace rfkp {
namespace msda {

template <typename T, bool kFused>
__global__ void forward_kernel(Params<T> p, T* __restrict__ output, int64_t total) {
  using A = acc_t<T>;
  const MsdaDims d = p.dims;
  const int num_samples = d.levels * d.points;
  const int64_t stride = static_cast<int64_t>(d.heads) * d.channels;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(idx % d.channels);
    const int64_t bqh = idx / d.channels;
    const int h = static_cast<int>(bqh % d.heads);
    const int64_t bq = bqh / d.heads;
    const int64_t b = bq / d.queries;
    const T* weights = p.weights + bqh * num_samples;
    A wmax = 0, inv_sum = 1;
    if (kFused) softmax_stats(weights, num_samples, wmax, inv_sum);
    const T* value_bh = p.value + b * d.num_value * stride + static_cast<int64_t>(h) * d.channels + c;
    A acc = 0;
    for (int l = 0; l < d.levels; ++l) {
      const Level lv = load_level(p.spatial_shapes, p.level_start_index, l, d.num_value);
      const T* base = value_bh + lv.start * stride;
      for (int pt = 0; pt < d.points; ++pt) {
        const int j = l * d.points + pt;
        A x, y, dx, dy, ox, oy;
        sample_location<kFused>(p, bq, bqh * num_samples + j, l, lv, x, y, dx, dy, ox, oy);
        const Corners<A> cr = corners(x, y, lv);
        if (!cr.any) continue;
        A w = to_acc(weights[j]);
        if (kFused) w = exp(w - wmax) * inv_sum;
        A v[4];
        load_corners(base, stride, cr, v);
        acc += w * (cr.cw[0] * v[0] + cr.cw[1] * v[1] + cr.cw[2] * v[2] + cr.cw[3] * v[3]);
      }
    }
    output[idx] = from_acc<T>(acc);
  }
}

template <typename T, bool kFused>
cudaError_t launch_forward(const Params<T>& p, void* output, cudaStream_t stream) {
  const MsdaDims& d = p.dims;
  const int64_t total = static_cast<int64_t>(d.batch) * d.queries * d.heads * d.channels;
  if (total == 0) return cudaSuccess;
  const int64_t blocks_needed = (total + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(blocks_needed < 65535 * 64 ? blocks_needed : 65535 * 64);
  forward_kernel<T, kFused><<<blocks, kThreads, 0, stream>>>(p, static_cast<T*>(output), total);
  return cudaGetLastError();
}

}  // namespace msda

cudaError_t ms_deform_attn_forward(DType dtype, const void* value, const int64_t* spatial_shapes,
                                   const int64_t* level_start_index, const void* sampling_locations,
                                   const void* attention_weights, void* output, MsdaDims dims,
                                   cudaStream_t stream) {
  RFKP_DISPATCH_DTYPE(dtype, {
    const msda::Params<scalar_t> p{static_cast<const scalar_t*>(value),
                                   spatial_shapes,
                                   level_start_index,
                                   static_cast<const scalar_t*>(sampling_locations),
                                   static_cast<const scalar_t*>(attention_weights),
                                   nullptr,
                                   0,
                                   0,
                                   dims};
    return msda::launch_forward<scalar_t, false>(p, output, stream);
  });
  return cudaErrorInvalidValue;
}

cudaError_t ms_deform_attn_fused_forward(DType dtype, const void* value, const int64_t* spatial_shapes,
                                         const int64_t* level_start_index, const void* reference,
                                         int reference_levels, int reference_dim,
                                         const void* sampling_offsets, const void* attention_logits,
                                         void* output, MsdaDims dims, cudaStream_t stream) {
  if ((reference_levels != 1 && reference_levels != dims.levels) || (reference_dim != 2 && reference_dim != 4)) {
    return cudaErrorInvalidValue;
  }
  RFKP_DISPATCH_DTYPE(dtype, {
    const msda::Params<scalar_t> p{static_cast<const scalar_t*>(value),
                                   spatial_shapes,
                                   level_start_index,
                                   static_cast<const scalar_t*>(sampling_offsets),
                                   static_cast<const scalar_t*>(attention_logits),
                                   static_cast<const scalar_t*>(reference),
                                   reference_levels,
                                   reference_dim,
                                   dims};
    return msda::launch_forward<scalar_t, true>(p, output, stream);
  });
  return cudaErrorInvalidValue;
}

}  // namespace rfkp
