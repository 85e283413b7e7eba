#include "kiln/ops/cuda/event_timing.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

#include "kiln/ops/cuda/check.h"

namespace kiln::ops::cuda {

float median_event_ms(int reps, const std::function<void()>& call) {
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  KILN_CUDA_CHECK(cudaEventCreate(&e0));
  KILN_CUDA_CHECK(cudaEventCreate(&e1));
  std::vector<float> ms;
  try {
    for (int r = 0; r < reps; ++r) {
      KILN_CUDA_CHECK(cudaEventRecord(e0));
      call();
      KILN_CUDA_CHECK(cudaEventRecord(e1));
      KILN_CUDA_CHECK(cudaEventSynchronize(e1));
      float t = 0;
      KILN_CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
      ms.push_back(t);
    }
  } catch (...) {
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    throw;
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  std::sort(ms.begin(), ms.end());
  return ms.empty() ? 0.0f : ms[ms.size() / 2];
}

}  // namespace kiln::ops::cuda
