// An owning device allocation of n elements of T (cudaMalloc, freed in the destructor),
// for host code that keeps buffers for the life of a model or a state.
#pragma once

#include <cstddef>
#include <utility>
#include <vector>

#include <cuda_runtime.h>

#include "kiln/ops/cuda/check.h"

namespace kiln::ops::cuda {

// cudaMemset and a cudaMemcpy from pageable host memory may return before the device has
// written the bytes, and they run on the legacy default stream, which the engine's
// non-blocking streams (compute, upload workers) do not wait for. Every synchronous-looking
// fill or upload of a long-lived buffer therefore ends with this: without it a forward
// built right after its buffers could read them before they are zeroed or filled (a race
// seen on H100: the first pass's logits differed; compute-sanitizer, which serialises,
// hid it).
inline void settle_legacy_stream() { KILN_CUDA_CHECK(cudaStreamSynchronize(cudaStreamLegacy)); }

template <typename T>
class DeviceArray {
 public:
  DeviceArray() = default;
  explicit DeviceArray(size_t n, bool zero = true) : n_(n) {
    if (n) {
      KILN_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p_), n * sizeof(T)));
      if (zero) {
        KILN_CUDA_CHECK(cudaMemset(p_, 0, n * sizeof(T)));
        settle_legacy_stream();
      }
    }
  }
  explicit DeviceArray(const std::vector<T>& host) : DeviceArray(host.size(), false) { upload(host.data(), host.size()); }
  DeviceArray(DeviceArray&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(n_, o.n_);
    return *this;
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() {
    if (p_) cudaFree(p_);  // nothing to report from a destructor
  }
  void upload(const T* src, size_t n) {
    if (n > n_) fail(ErrorKind::Usage, "DeviceArray: upload of {} elements into {}", n, n_);
    if (n) {
      KILN_CUDA_CHECK(cudaMemcpy(p_, src, n * sizeof(T), cudaMemcpyHostToDevice));
      settle_legacy_stream();
    }
  }
  std::vector<T> download(size_t n) const {
    if (n > n_) fail(ErrorKind::Usage, "DeviceArray: download of {} elements from {}", n, n_);
    std::vector<T> out(n);
    if (n) KILN_CUDA_CHECK(cudaMemcpy(out.data(), p_, n * sizeof(T), cudaMemcpyDeviceToHost));
    return out;
  }
  T* get() const { return p_; }
  size_t size() const { return n_; }
  bool empty() const { return n_ == 0; }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace kiln::ops::cuda
