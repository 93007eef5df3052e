// Device building blocks shared by the plain and fused deformable-attention kernels.
#pragma once

#include <cstdint>

#include "../common/dtype.cuh"
#include "ms_deform_attn.h"

namespace rfkp {
namespace msda {

constexpr int kThreads = 256;

// Pointers of one launch. For the plain op `coords` are sampling locations and `weights` attention
// weights; for the fused op they are raw offsets and raw logits and `reference` is set.
template <typename T>
struct Params {
  const T* value;
  const int64_t* spatial_shapes;
  const int64_t* level_start_index;
  const T* coords;   // (B, Q, H, L, P, 2)
  const T* weights;  // (B, Q, H, L, P)
  const T* reference;  // (B, Q, Lr, R), fused only
  int reference_levels;
  int reference_dim;
  MsdaDims dims;
};

// One level: its size and where it starts in value; `ok` is false when it does not fit in S.
struct Level {
  int height;
  int width;
  int64_t start;
  bool ok;
};

__device__ __forceinline__ Level load_level(const int64_t* spatial_shapes, const int64_t* level_start_index,
                                            int level, int num_value) {
  Level lv;
  const int64_t h = spatial_shapes[2 * level];
  const int64_t w = spatial_shapes[2 * level + 1];
  lv.start = level_start_index[level];
  lv.ok = h > 0 && w > 0 && lv.start >= 0 && lv.start + h * w <= num_value;
  lv.height = lv.ok ? static_cast<int>(h) : 0;
  lv.width = lv.ok ? static_cast<int>(w) : 0;
  return lv;
}

// Softmax statistics over the L * P logits of one (b, q, h): max and 1 / sum(exp(x - max)).
template <typename T, typename A>
__device__ __forceinline__ void softmax_stats(const T* logits, int count, A& max_out, A& inv_sum_out) {
  A m = -INFINITY;
  for (int j = 0; j < count; ++j) m = fmax(m, static_cast<A>(to_acc(logits[j])));
  A s = 0;
  for (int j = 0; j < count; ++j) s += exp(static_cast<A>(to_acc(logits[j])) - m);
  max_out = m;
  inv_sum_out = A(1) / s;
}

// Location of sample j = (l, p) of one (b, q, h), and d(location) / d(coordinate) per axis
// (1 for the plain op, the offset scale for the fused op). `bqh` is (b * Q + q) * H + h, `bq` is b * Q + q.
template <bool kFused, typename T, typename A>
__device__ __forceinline__ void sample_location(const Params<T>& p, int64_t bq, int64_t sample_index, int level,
                                                const Level& lv, A& x, A& y, A& dx, A& dy, A& ox, A& oy) {
  ox = to_acc(p.coords[2 * sample_index]);
  oy = to_acc(p.coords[2 * sample_index + 1]);
  if (!kFused) {
    x = ox;
    y = oy;
    dx = 1;
    dy = 1;
    return;
  }
  const int ref_level = p.reference_levels == 1 ? 0 : level;
  const T* ref = p.reference + (bq * p.reference_levels + ref_level) * p.reference_dim;
  const A rx = to_acc(ref[0]);
  const A ry = to_acc(ref[1]);
  if (p.reference_dim == 2) {
    // Same operation order as the reference: ref + offset / (w, h).
    const A w = static_cast<A>(lv.width), h = static_cast<A>(lv.height);
    x = rx + ox / w;
    y = ry + oy / h;
    dx = A(1) / w;
    dy = A(1) / h;
  } else {
    // ref_xy + offset / P * ref_wh * 0.5
    const A np = static_cast<A>(p.dims.points);
    const A rw = to_acc(ref[2]), rh = to_acc(ref[3]);
    x = rx + ox / np * rw * A(0.5);
    y = ry + oy / np * rh * A(0.5);
    dx = rw * A(0.5) / np;
    dy = rh * A(0.5) / np;
  }
}

// Bilinear corners of a sampling location on an h x w map (align_corners=False):
// pixel coordinates im = loc * size - 0.5; corner c has weight cw[c] and flat index idx[c] in the level,
// or idx[c] = -1 when it lies outside (zero padding).
template <typename A>
struct Corners {
  int idx[4];
  A cw[4];
  A lh, lw;      // fractional parts
  bool any;      // false: every corner is outside, the sample is zero
};

template <typename A>
__device__ __forceinline__ Corners<A> corners(A x, A y, const Level& lv) {
  Corners<A> c;
  const A h_im = y * static_cast<A>(lv.height) - A(0.5);
  const A w_im = x * static_cast<A>(lv.width) - A(0.5);
  c.any = lv.ok && h_im > A(-1) && w_im > A(-1) && h_im < static_cast<A>(lv.height) &&
          w_im < static_cast<A>(lv.width);
  if (!c.any) {
    for (int k = 0; k < 4; ++k) {
      c.idx[k] = -1;
      c.cw[k] = 0;
    }
    c.lh = 0;
    c.lw = 0;
    return c;
  }
  const int h_low = static_cast<int>(floor(h_im));
  const int w_low = static_cast<int>(floor(w_im));
  const int h_high = h_low + 1;
  const int w_high = w_low + 1;
  c.lh = h_im - static_cast<A>(h_low);
  c.lw = w_im - static_cast<A>(w_low);
  const A hh = A(1) - c.lh, hw = A(1) - c.lw;
  const bool top = h_low >= 0, bottom = h_high <= lv.height - 1;
  const bool left = w_low >= 0, right = w_high <= lv.width - 1;
  c.idx[0] = (top && left) ? h_low * lv.width + w_low : -1;
  c.idx[1] = (top && right) ? h_low * lv.width + w_high : -1;
  c.idx[2] = (bottom && left) ? h_high * lv.width + w_low : -1;
  c.idx[3] = (bottom && right) ? h_high * lv.width + w_high : -1;
  c.cw[0] = hh * hw;
  c.cw[1] = hh * c.lw;
  c.cw[2] = c.lh * hw;
  c.cw[3] = c.lh * c.lw;
  return c;
}

// Value of the four corners for one channel; `base` points at value[b, level start, h, d] and
// `stride` = H * D is the distance between spatial positions.
template <typename T, typename A>
__device__ __forceinline__ void load_corners(const T* base, int64_t stride, const Corners<A>& c, A v[4]) {
  for (int k = 0; k < 4; ++k) v[k] = c.idx[k] >= 0 ? static_cast<A>(to_acc(base[c.idx[k] * stride])) : A(0);
}

}  // namespace msda
}  // namespace rfkp
