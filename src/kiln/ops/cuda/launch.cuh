// Kernel launches with programmatic dependent launch (PDL, sm_90).
//
// Every kernel of the forward is launched through `launch_kernel` and starts with
// `await_previous_grid()`. With PDL a kernel may be scheduled while the kernel before it in
// the stream is still running; it then waits in `griddepcontrol.wait` until that kernel has
// finished and its writes are visible, and only then lets the next kernel be scheduled
// (`griddepcontrol.launch_dependents`). The gap between two dependent kernels (the launch of
// the second after the first drains) overlaps the first one's tail instead, which is most of
// a small kernel's cost in a batch-1 decode graph. Nothing about the arithmetic changes: every
// kernel still reads its inputs after the kernel before it has completed, so the bits are
// those of a plain launch.
//
// Rules that keep this correct:
// - `await_previous_grid()` is the first statement of every kernel launched here, before any
//   read of an activation and before any write (a write could race a read of the kernel
//   before), and before any early return: a kernel that exits without waiting would let the
//   kernel after it start before the one before it finished.
// - Only immutable data (weights) may be touched before it.
// Work in the stream that is not one of these kernels (copies, library kernels) keeps its
// ordinary full dependency.
//
// `KILN_PDL=0` in the environment launches without the attribute, for measuring the
// difference in one run; `set_pdl_enabled` does the same from code (tests). A captured graph
// keeps the launches it was captured with.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "kiln/ops/cuda/check.h"

namespace kiln::ops::cuda {

// Whether launches carry the PDL attribute: true unless KILN_PDL=0, set_pdl_enabled(false),
// or a PdlScope(false) is open on this thread.
bool pdl_enabled();
void set_pdl_enabled(bool on);

// Launches on this thread while it lives carry PDL only if `on` (and pdl_enabled() allows it):
// the forward opens one per pass, off for passes of many rows (GpuForward::enqueue).
class PdlScope {
 public:
  explicit PdlScope(bool on);
  ~PdlScope();
  PdlScope(const PdlScope&) = delete;
  PdlScope& operator=(const PdlScope&) = delete;

 private:
  bool prev_;
};

template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = pdl_enabled() ? 1 : 0;
  KILN_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

// Waits for the kernel before in the stream to complete (a no-op without PDL), then lets the
// next one be scheduled.
__device__ __forceinline__ void await_previous_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

}  // namespace kiln::ops::cuda
