#include "kiln/ops/cuda/graph_capture.h"

#include <vector>

#include "kiln/ops/cuda/check.h"

namespace kiln::ops::cuda {

cudaGraphExec_t capture_graph(cudaStream_t stream, const std::function<void()>& enqueue, GraphNodes* nodes) {
  cudaGraph_t graph = nullptr;
  KILN_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  try {
    enqueue();
  } catch (...) {
    cudaStreamEndCapture(stream, &graph);
    if (graph) cudaGraphDestroy(graph);
    throw;
  }
  KILN_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  if (nodes) {
    size_t n = 0;
    cudaError_t err = cudaGraphGetNodes(graph, nullptr, &n);
    std::vector<cudaGraphNode_t> all(n);
    if (err == cudaSuccess && n > 0) err = cudaGraphGetNodes(graph, all.data(), &n);
    *nodes = GraphNodes{};
    for (size_t i = 0; err == cudaSuccess && i < n; ++i) {
      cudaGraphNodeType type{};
      err = cudaGraphNodeGetType(all[i], &type);
      ++(type == cudaGraphNodeTypeKernel ? nodes->kernels : nodes->others);
    }
    if (err != cudaSuccess) cudaGraphDestroy(graph);
    KILN_CUDA_CHECK(err);
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  KILN_CUDA_CHECK(err);
  return exec;
}

}  // namespace kiln::ops::cuda
