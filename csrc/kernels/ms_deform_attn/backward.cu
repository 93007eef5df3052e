// Multi-scale deformable attention backward, plain and fused (see ms_deform_attn.h for the contract).
//
// A team of `team` lanes (a power of two, min(32, next_pow2(D))) handles one (b, q, h); lanes stride over
// the D channels. For every sample (l, p) each lane accumulates its channels' share of
//   d loss / d weight   = sum_d grad_out[d] * sample[d]
//   d loss / d location = sum_d grad_out[d] * weight * d sample[d] / d location
// and the team reduces them with warp shuffles; lane 0 writes them (one writer, no atomics).
// d loss / d value is a scatter: several samples of many queries land on the same value element, so it is
// accumulated with atomicAdd into a float (double) buffer. The fused reference gradient is a sum over
// heads and points and uses atomics too (H * L * P adds per query, negligible contention).
//
// Fused softmax backward: grad_logit_j = w_j * (g_j - s) with s = sum_j w_j g_j = <grad_out, output>.
// s is computed in a first pass over the samples (gathers only, in float), so no per-sample buffer is
// needed for any number of levels and points.
#include <climits>

#include "ms_deform_attn.h"
#include "ms_deform_attn_device.cuh"

namespace rfkp {
namespace msda {

template <typename T, bool kFused>
__global__ void backward_kernel(Params<T> p, const T* __restrict__ grad_output, acc_t<T>* grad_value,
                                T* __restrict__ grad_coords, T* __restrict__ grad_weights,
                                acc_t<T>* grad_reference, int team_log2, int64_t num_teams) {
  using A = acc_t<T>;
  const MsdaDims d = p.dims;
  const int team = 1 << team_log2;
  const int lane = static_cast<int>(threadIdx.x) & (team - 1);
  int64_t bqh = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> team_log2;
  // Every lane of the warp must reach the shuffles: a team past the end re-reads the last one and writes
  // nothing.
  const bool valid = bqh < num_teams;
  if (!valid) bqh = num_teams - 1;
  const int num_samples = d.levels * d.points;
  const int64_t stride = static_cast<int64_t>(d.heads) * d.channels;
  const int h = static_cast<int>(bqh % d.heads);
  const int64_t bq = bqh / d.heads;
  const int64_t b = bq / d.queries;
  const int64_t value_offset = b * d.num_value * stride + static_cast<int64_t>(h) * d.channels;
  const T* go = grad_output + bqh * d.channels;
  const T* weights = p.weights + bqh * num_samples;

  A wmax = 0, inv_sum = 1, s = 0;
  if (kFused) {
    softmax_stats(weights, num_samples, wmax, inv_sum);
    for (int l = 0; l < d.levels; ++l) {
      const Level lv = load_level(p.spatial_shapes, p.level_start_index, l, d.num_value);
      const T* base = p.value + value_offset + lv.start * stride;
      for (int pt = 0; pt < d.points; ++pt) {
        const int j = l * d.points + pt;
        A x, y, dx, dy, ox, oy;
        sample_location<kFused>(p, bq, bqh * num_samples + j, l, lv, x, y, dx, dy, ox, oy);
        const Corners<A> cr = corners(x, y, lv);
        if (!cr.any) continue;
        const A w = exp(static_cast<A>(to_acc(weights[j])) - wmax) * inv_sum;
        for (int c = lane; c < d.channels; c += team) {
          A v[4];
          load_corners(base + c, stride, cr, v);
          const A sample = cr.cw[0] * v[0] + cr.cw[1] * v[1] + cr.cw[2] * v[2] + cr.cw[3] * v[3];
          s += w * static_cast<A>(to_acc(go[c])) * sample;
        }
      }
    }
    s = team_sum(s, team);
  }

  for (int l = 0; l < d.levels; ++l) {
    const Level lv = load_level(p.spatial_shapes, p.level_start_index, l, d.num_value);
    const T* base = p.value + value_offset + lv.start * stride;
    A* grad_base = grad_value + value_offset + lv.start * stride;
    for (int pt = 0; pt < d.points; ++pt) {
      const int j = l * d.points + pt;
      const int64_t sample_index = bqh * num_samples + j;
      A x, y, dx, dy, ox, oy;
      sample_location<kFused>(p, bq, sample_index, l, lv, x, y, dx, dy, ox, oy);
      const Corners<A> cr = corners(x, y, lv);
      A w = to_acc(weights[j]);
      if (kFused) w = exp(w - wmax) * inv_sum;
      A gw = 0, gx = 0, gy = 0;
      if (cr.any) {
        const A hh = A(1) - cr.lh, hw = A(1) - cr.lw;
        for (int c = lane; c < d.channels; c += team) {
          A v[4];
          load_corners(base + c, stride, cr, v);
          const A g = to_acc(go[c]);
          gw += g * (cr.cw[0] * v[0] + cr.cw[1] * v[1] + cr.cw[2] * v[2] + cr.cw[3] * v[3]);
          const A gwt = g * w;
          gx += gwt * (hh * (v[1] - v[0]) + cr.lh * (v[3] - v[2]));  // d sample / d lw
          gy += gwt * (hw * (v[2] - v[0]) + cr.lw * (v[3] - v[1]));  // d sample / d lh
          if (valid) {
            for (int k = 0; k < 4; ++k) {
              if (cr.idx[k] >= 0) atomicAdd(grad_base + cr.idx[k] * stride + c, gwt * cr.cw[k]);
            }
          }
        }
      }
      gw = team_sum(gw, team);
      gx = team_sum(gx, team) * static_cast<A>(lv.width);   // d w_im / d x = width
      gy = team_sum(gy, team) * static_cast<A>(lv.height);  // d h_im / d y = height
      if (!valid || lane != 0) continue;
      if (!kFused) {
        grad_coords[2 * sample_index] = from_acc<T>(gx);
        grad_coords[2 * sample_index + 1] = from_acc<T>(gy);
        grad_weights[sample_index] = from_acc<T>(gw);
        continue;
      }
      // An unusable level has gx = gy = 0 but may have an infinite offset scale.
      const bool used = cr.any;
      grad_coords[2 * sample_index] = from_acc<T>(used ? gx * dx : A(0));
      grad_coords[2 * sample_index + 1] = from_acc<T>(used ? gy * dy : A(0));
      grad_weights[sample_index] = from_acc<T>(w * (gw - s));
      if (grad_reference != nullptr && used) {
        const int ref_level = p.reference_levels == 1 ? 0 : l;
        A* gref = grad_reference + (bq * p.reference_levels + ref_level) * p.reference_dim;
        atomicAdd(gref, gx);
        atomicAdd(gref + 1, gy);
        if (p.reference_dim == 4) {
          const A half_over_points = A(0.5) / static_cast<A>(d.points);
          atomicAdd(gref + 2, gx * ox * half_over_points);
          atomicAdd(gref + 3, gy * oy * half_over_points);
        }
      }
    }
  }
}

inline int team_log2_for(int channels) {
  int log2 = 0;
  while ((1 << log2) < channels && log2 < 5) ++log2;
  return log2;
}

template <typename T, bool kFused>
cudaError_t launch_backward(const Params<T>& p, const void* grad_output, void* grad_value_acc, void* grad_coords,
                            void* grad_weights, void* grad_reference_acc, cudaStream_t stream) {
  const MsdaDims& d = p.dims;
  const int64_t num_teams = static_cast<int64_t>(d.batch) * d.queries * d.heads;
  if (num_teams == 0 || d.channels == 0) return cudaSuccess;
  const int team_log2 = team_log2_for(d.channels);
  const int64_t threads = num_teams << team_log2;
  const int64_t blocks = (threads + kThreads - 1) / kThreads;
  if (blocks > INT_MAX) return cudaErrorInvalidConfiguration;
  backward_kernel<T, kFused><<<static_cast<int>(blocks), kThreads, 0, stream>>>(
      p, static_cast<const T*>(grad_output), static_cast<acc_t<T>*>(grad_value_acc), static_cast<T*>(grad_coords),
      static_cast<T*>(grad_weights), static_cast<acc_t<T>*>(grad_reference_acc), team_log2, num_teams);
  return cudaGetLastError();
}

}  // namespace msda

cudaError_t ms_deform_attn_backward(DType dtype, const void* value, const int64_t* spatial_shapes,
                                    const int64_t* level_start_index, const void* sampling_locations,
                                    const void* attention_weights, const void* grad_output,
                                    void* grad_value_acc, void* grad_sampling_locations,
                                    void* grad_attention_weights, MsdaDims dims, cudaStream_t stream) {
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
    return msda::launch_backward<scalar_t, false>(p, grad_output, grad_value_acc, grad_sampling_locations,
                                                  grad_attention_weights, nullptr, stream);
  });
  return cudaErrorInvalidValue;
}

cudaError_t ms_deform_attn_fused_backward(DType dtype, const void* value, const int64_t* spatial_shapes,
                                          const int64_t* level_start_index, const void* reference,
                                          int reference_levels, int reference_dim,
                                          const void* sampling_offsets, const void* attention_logits,
                                          const void* grad_output, void* grad_value_acc,
                                          void* grad_sampling_offsets, void* grad_attention_logits,
                                          void* grad_reference_acc, MsdaDims dims, cudaStream_t stream) {
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
    return msda::launch_backward<scalar_t, true>(p, grad_output, grad_value_acc, grad_sampling_offsets,
                                                 grad_attention_logits, grad_reference_acc, stream);
  });
  return cudaErrorInvalidValue;
}

}  // namespace rfkp
