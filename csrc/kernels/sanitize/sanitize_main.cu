// Standalone driver for compute-sanitizer (memcheck, racecheck, initcheck): runs every launcher on odd
// shapes, every dtype, locations inside, on the border and far outside the maps, plus empty launches.
// It checks only that launches succeed; numerical parity is tested from Python against the reference.
//
// Build and run (GPU machine):
//   nvcc -std=c++17 -O1 -lineinfo -o sanitize csrc/kernels/sanitize/sanitize_main.cu \
//        csrc/kernels/ms_deform_attn/forward.cu csrc/kernels/ms_deform_attn/backward.cu \
//        csrc/kernels/gaussian_rescore/gaussian_rescore.cu
//   compute-sanitizer --tool memcheck --error-exitcode 1 ./sanitize
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../gaussian_rescore/gaussian_rescore.h"
#include "../ms_deform_attn/ms_deform_attn.h"

namespace {

#define CHECK(expr)                                                                                    \
  do {                                                                                                 \
    const cudaError_t status_ = (expr);                                                                \
    if (status_ != cudaSuccess) {                                                                      \
      std::fprintf(stderr, "%s:%d %s -> %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(status_)); \
      std::exit(1);                                                                                    \
    }                                                                                                  \
  } while (0)

size_t element_size(rfkp::DType t) {
  return t == rfkp::DType::kFloat64 ? 8 : (t == rfkp::DType::kFloat32 ? 4 : 2);
}

// A device buffer of `count` elements filled with bit patterns of values in [lo, hi) (each dtype written
// from float through a host conversion that is exact enough for a memory check).
void* random_buffer(rfkp::DType t, size_t count, float lo, float hi, unsigned seed) {
  std::vector<unsigned char> host(count * element_size(t));
  std::srand(seed);
  for (size_t i = 0; i < count; ++i) {
    const float v = lo + (hi - lo) * (static_cast<float>(std::rand()) / RAND_MAX);
    if (t == rfkp::DType::kFloat64) {
      reinterpret_cast<double*>(host.data())[i] = v;
    } else if (t == rfkp::DType::kFloat32) {
      reinterpret_cast<float*>(host.data())[i] = v;
    } else {
      uint32_t bits;
      std::memcpy(&bits, &v, 4);
      uint16_t out;
      if (t == rfkp::DType::kBFloat16) {
        out = static_cast<uint16_t>(bits >> 16);
      } else {  // float -> half for small normal values (truncating the mantissa)
        const uint32_t sign = (bits >> 16) & 0x8000u;
        const int exponent = static_cast<int>((bits >> 23) & 0xff) - 127 + 15;
        const uint32_t mantissa = (bits >> 13) & 0x3ffu;
        out = static_cast<uint16_t>(exponent <= 0 ? sign : (sign | (static_cast<uint32_t>(exponent) << 10) | mantissa));
      }
      reinterpret_cast<uint16_t*>(host.data())[i] = out;
    }
  }
  void* dev = nullptr;
  CHECK(cudaMalloc(&dev, host.size() == 0 ? 1 : host.size()));
  if (!host.empty()) CHECK(cudaMemcpy(dev, host.data(), host.size(), cudaMemcpyHostToDevice));
  return dev;
}

void* zeros(size_t bytes) {
  void* dev = nullptr;
  CHECK(cudaMalloc(&dev, bytes == 0 ? 1 : bytes));
  CHECK(cudaMemset(dev, 0, bytes == 0 ? 1 : bytes));
  return dev;
}

void run_msda(rfkp::DType t, const rfkp::MsdaDims& d, int reference_levels, int reference_dim) {
  // Levels 3x5 and 2x2 (or the first levels of that list), flattened row-major.
  const int64_t all_shapes[6] = {3, 5, 2, 2, 1, 7};
  std::vector<int64_t> shapes(all_shapes, all_shapes + 2 * d.levels), starts(d.levels);
  int64_t s = 0;
  for (int l = 0; l < d.levels; ++l) {
    starts[l] = s;
    s += shapes[2 * l] * shapes[2 * l + 1];
  }
  if (s != d.num_value) {
    std::fprintf(stderr, "bad test dims\n");
    std::exit(1);
  }
  int64_t* dev_shapes = static_cast<int64_t*>(zeros(shapes.size() * 8));
  int64_t* dev_starts = static_cast<int64_t*>(zeros(starts.size() * 8));
  CHECK(cudaMemcpy(dev_shapes, shapes.data(), shapes.size() * 8, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(dev_starts, starts.data(), starts.size() * 8, cudaMemcpyHostToDevice));
  const size_t n_value = static_cast<size_t>(d.batch) * d.num_value * d.heads * d.channels;
  const size_t n_samples = static_cast<size_t>(d.batch) * d.queries * d.heads * d.levels * d.points;
  const size_t n_out = static_cast<size_t>(d.batch) * d.queries * d.heads * d.channels;
  const size_t n_ref = static_cast<size_t>(d.batch) * d.queries * reference_levels * reference_dim;
  const size_t es = element_size(t);
  const size_t acc = t == rfkp::DType::kFloat64 ? 8 : 4;
  void* value = random_buffer(t, n_value, -1.f, 1.f, 1);
  void* locations = random_buffer(t, 2 * n_samples, -0.6f, 1.6f, 2);  // inside, border and outside
  void* weights = random_buffer(t, n_samples, 0.f, 1.f, 3);
  void* reference = random_buffer(t, n_ref, -0.2f, 1.2f, 4);
  void* offsets = random_buffer(t, 2 * n_samples, -8.f, 8.f, 5);
  void* grad_out = random_buffer(t, n_out, -1.f, 1.f, 6);
  void* out = zeros(n_out * es);
  void* grad_value = zeros(n_value * acc);
  void* grad_coords = zeros(2 * n_samples * es);
  void* grad_weights = zeros(n_samples * es);
  void* grad_reference = zeros(n_ref * acc);
  CHECK(rfkp::ms_deform_attn_forward(t, value, dev_shapes, dev_starts, locations, weights, out, d, nullptr));
  CHECK(rfkp::ms_deform_attn_backward(t, value, dev_shapes, dev_starts, locations, weights, grad_out, grad_value,
                                      grad_coords, grad_weights, d, nullptr));
  CHECK(rfkp::ms_deform_attn_fused_forward(t, value, dev_shapes, dev_starts, reference, reference_levels,
                                           reference_dim, offsets, weights, out, d, nullptr));
  CHECK(rfkp::ms_deform_attn_fused_backward(t, value, dev_shapes, dev_starts, reference, reference_levels,
                                            reference_dim, offsets, weights, grad_out, grad_value, grad_coords,
                                            grad_weights, grad_reference, d, nullptr));
  CHECK(cudaDeviceSynchronize());
  for (void* p : {static_cast<void*>(dev_shapes), static_cast<void*>(dev_starts), value, locations, weights,
                  reference, offsets, grad_out, out, grad_value, grad_coords, grad_weights, grad_reference}) {
    CHECK(cudaFree(p));
  }
}

void run_rescore(rfkp::DType t, int num, int keypoints) {
  const size_t nk = static_cast<size_t>(num) * keypoints;
  void* chol = random_buffer(t, 3 * nk, -2.f, 2.f, 7);
  void* findable = random_buffer(t, nk, -4.f, 4.f, 8);
  void* score = random_buffer(t, num, 0.f, 1.f, 9);
  void* box = random_buffer(t, 2 * num, 0.01f, 1.f, 10);
  void* image = random_buffer(t, 2 * num, 100.f, 1000.f, 11);
  std::vector<uint8_t> active_host(nk);
  for (size_t i = 0; i < nk; ++i) active_host[i] = static_cast<uint8_t>(i % 3 != 0);
  uint8_t* active = static_cast<uint8_t*>(zeros(nk));
  if (nk) CHECK(cudaMemcpy(active, active_host.data(), nk, cudaMemcpyHostToDevice));
  const size_t es = element_size(t);
  void* out_score = zeros(num * es);
  void* out_log_mean_trace = zeros(num * es);
  void* out_cov = zeros(4 * nk * es);
  CHECK(rfkp::gaussian_rescore(t, chol, findable, active, score, box, image, 0.2, num, keypoints, out_score,
                               out_log_mean_trace, out_cov, nullptr));
  CHECK(cudaDeviceSynchronize());
  for (void* p :
       {chol, findable, score, box, image, static_cast<void*>(active), out_score, out_log_mean_trace, out_cov}) {
    CHECK(cudaFree(p));
  }
}

}  // namespace

int main() {
  const rfkp::DType dtypes[4] = {rfkp::DType::kFloat32, rfkp::DType::kFloat16, rfkp::DType::kBFloat16,
                                 rfkp::DType::kFloat64};
  for (rfkp::DType t : dtypes) {
    for (int channels : {4, 30, 32, 71}) {
      // B, S, H, D, L, Q, P
      run_msda(t, rfkp::MsdaDims{2, 19, 3, channels, 2, 5, 3}, 1, 4);
      run_msda(t, rfkp::MsdaDims{1, 26, 2, channels, 3, 7, 2}, 3, 2);
    }
    run_msda(t, rfkp::MsdaDims{0, 19, 3, 8, 2, 5, 3}, 2, 2);  // empty batch
    run_msda(t, rfkp::MsdaDims{2, 15, 2, 8, 1, 0, 2}, 1, 4);  // no queries
    run_rescore(t, 37, 17);
    run_rescore(t, 0, 17);
    run_rescore(t, 5, 0);
  }
  std::printf("sanitize: all launches completed\n");
  return 0;
}
