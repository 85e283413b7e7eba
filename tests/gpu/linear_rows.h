// Shared by the GPU tests of the deepseek-precision linears (test_gpu_precision.cpp,
// test_mma_linear_cuda.cpp): random activation rows with outliers, host <-> device copies,
// NaN poisoning, and a product computed one row at a time (the batch-invariance baseline).
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "kiln/ops/cuda/check.h"

namespace kiln::gpu_test {

// M x K normal values, every 97th one 30x larger (some outliers per 128-block).
inline std::vector<float> random_rows(int64_t M, int64_t K, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(M * K));
  for (size_t i = 0; i < x.size(); ++i) x[i] = nd(rng) * (i % 97 == 0 ? 30.0f : 1.0f);
  return x;
}

inline std::vector<float> download(const float* d, size_t n) {
  std::vector<float> h(n);
  KILN_CUDA_CHECK(cudaMemcpy(h.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost));
  return h;
}

inline void upload(float* d, const std::vector<float>& h) {
  KILN_CUDA_CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice));
}

inline void poison(float* d, size_t n) { upload(d, std::vector<float>(n, std::numeric_limits<float>::quiet_NaN())); }

// [M, n] outputs of run(m, y), which writes row m's n outputs to device y (poisoned first).
inline std::vector<float> each_row_alone(int M, int64_t n, float* dy, const std::function<void(int, float*)>& run) {
  std::vector<float> out(static_cast<size_t>(M * n));
  for (int m = 0; m < M; ++m) {
    poison(dy, static_cast<size_t>(n));
    run(m, dy);
    const auto r = download(dy, static_cast<size_t>(n));
    std::copy(r.begin(), r.end(), out.begin() + m * n);
  }
  return out;
}

}  // namespace kiln::gpu_test
