// What the row-tile kernels share (quant_linear_mma.cu's mma_linear_rows_kernel,
// moe_grouped.cu's grouped_rows_kernel): 8 warps, each a 16-row tile over all inputs, walk
// the input ranges that the per-tile kernels give to separate warps, and keep each finished
// range's sums in a lane-private shared slot, added to the earlier ranges' in range order:
// the order in which the per-tile kernels add their warps' sums, so the bits are the same.
#pragma once

#include <cuda_runtime.h>

#include <mutex>
#include <set>

#include "kiln/ops/cuda/check.h"

namespace kiln::ops::cuda {

inline constexpr int kRowTileWarps = 8;   // 16-row tiles per block
inline constexpr int kRowTileGroups = 8;  // token (or pair) groups of 8 a warp holds
// Floats of the slots of a block: [warp][group][4][lane].
inline constexpr int kRowTileDoneFloats = kRowTileWarps * kRowTileGroups * 4 * 32;

// The slot of accumulator i of group t of a warp's lane: [warp][group][4][lane] floats.
__device__ __forceinline__ int row_tile_slot(int warp, int t, int i, int lane) {
  return ((warp * kRowTileGroups + t) * 4 + i) * 32 + lane;
}

// A range has ended: its sums (acc, groups below `groups`) go into the slots (the first
// range's as they are, later ones added in order), and acc starts again from zero.
__device__ __forceinline__ void fold_range(float* done, int warp, int lane, float (&acc)[kRowTileGroups][4], int groups,
                                           bool first) {
#pragma unroll
  for (int t = 0; t < kRowTileGroups; ++t) {
    if (t >= groups) break;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float& slot = done[row_tile_slot(warp, t, i, lane)];
      slot = first ? acc[t][i] : __fadd_rn(slot, acc[t][i]);
      acc[t][i] = 0.0f;
    }
  }
}

// Runs f once per CUDA device (the current one at the call) for the life of the process:
// the row-tile kernels' shared-memory opt-in, made when a layer is prepared.
class OncePerDevice {
 public:
  template <class F>
  void operator()(F&& f) {
    int dev = 0;
    KILN_CUDA_CHECK(cudaGetDevice(&dev));
    const std::lock_guard<std::mutex> lock(mu_);
    if (done_.insert(dev).second) f();
  }

 private:
  std::mutex mu_;
  std::set<int> done_;
};

}  // namespace kiln::ops::cuda
