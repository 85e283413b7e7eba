// Capturing a sequence of launches as an instantiated CUDA graph (the forward's passes and
// the DSpark drafter's block and Markov steps; each caches the result by its shape).
#pragma once

#include <functional>

#include <cuda_runtime.h>

namespace kiln::ops::cuda {

// What a captured graph holds: kernel launches, and every other node (copies, memsets).
struct GraphNodes {
  int kernels = 0;
  int others = 0;
};

// Captures what `enqueue` launches on `stream` (thread-local capture mode) and returns the
// instantiated graph, which the caller owns (cudaGraphExecDestroy); `nodes`, when given,
// receives its node counts. If `enqueue` throws, the capture is ended and its graph freed
// before the exception goes on.
cudaGraphExec_t capture_graph(cudaStream_t stream, const std::function<void()>& enqueue, GraphNodes* nodes = nullptr);

}  // namespace kiln::ops::cuda
