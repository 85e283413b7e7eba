// Timing of CUDA work for the benchmarks: `calls` calls captured in one CUDA graph, the
// graph replayed 7 times after a warm-up, the median per call.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <functional>
#include <vector>

#include "kiln/ops/cuda/check.h"

namespace kiln::bench {

// Median seconds per call of `calls` calls of call(i, stream), captured in a graph.
inline double time_graph_calls(const std::function<void(int, cudaStream_t)>& call, int calls, cudaStream_t st) {
  cudaGraph_t g;
  cudaGraphExec_t ge;
  KILN_CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < calls; ++i) call(i, st);
  KILN_CUDA_CHECK(cudaStreamEndCapture(st, &g));
  KILN_CUDA_CHECK(cudaGraphInstantiate(&ge, g, 0));
  cudaEvent_t e0, e1;
  KILN_CUDA_CHECK(cudaEventCreate(&e0));
  KILN_CUDA_CHECK(cudaEventCreate(&e1));
  KILN_CUDA_CHECK(cudaGraphLaunch(ge, st));  // warm-up
  std::vector<float> ms;
  for (int r = 0; r < 7; ++r) {
    KILN_CUDA_CHECK(cudaEventRecord(e0, st));
    KILN_CUDA_CHECK(cudaGraphLaunch(ge, st));
    KILN_CUDA_CHECK(cudaEventRecord(e1, st));
    KILN_CUDA_CHECK(cudaEventSynchronize(e1));
    float t = 0;
    KILN_CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  KILN_CUDA_CHECK(cudaEventDestroy(e0));
  KILN_CUDA_CHECK(cudaEventDestroy(e1));
  KILN_CUDA_CHECK(cudaGraphExecDestroy(ge));
  KILN_CUDA_CHECK(cudaGraphDestroy(g));
  return ms[ms.size() / 2] * 1e-3 / calls;
}

}  // namespace kiln::bench
