// A device array for the GPU tests and the op harness: a copy of a host vector, or n
// poisoned elements (all bits set: NaN as float, -1 as int32), freed on scope exit.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include <cuda_runtime.h>

#include "kiln/ops/cuda/check.h"

namespace kiln::test {

template <typename T>
class Dev {
 public:
  explicit Dev(const std::vector<T>& h) : n_(h.size()) {
    KILN_CUDA_CHECK(cudaMalloc(&p_, std::max<size_t>(n_, 1) * sizeof(T)));
    if (n_ > 0) KILN_CUDA_CHECK(cudaMemcpy(p_, h.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  explicit Dev(size_t n) : n_(n) {
    KILN_CUDA_CHECK(cudaMalloc(&p_, std::max<size_t>(n_, 1) * sizeof(T)));
    KILN_CUDA_CHECK(cudaMemset(p_, 0xFF, std::max<size_t>(n_, 1) * sizeof(T)));
  }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  ~Dev() { cudaFree(p_); }
  T* get() const { return p_; }
  size_t size() const { return n_; }
  int64_t bytes() const { return static_cast<int64_t>(n_ * sizeof(T)); }
  std::vector<T> host() const {
    KILN_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<T> h(n_);
    if (n_ > 0) KILN_CUDA_CHECK(cudaMemcpy(h.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace kiln::test
