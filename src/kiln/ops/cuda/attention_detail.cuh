// Small device helpers shared by the attention-state kernels (attention.cu, compressor.cu,
// indexer.cu). Kept out of attention.h so the host-only header stays C++17/C++20 clean.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace kiln::ops::cuda::attn_detail {

// Butterfly sum over a full warp: every lane ends with the same total (so any lane may
// use it without a broadcast). The association differs from the CPU's vec.h dot, which
// is why the tests compare with a relative tolerance rather than bit for bit.
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Row of position p in a ring of `cap` rows: positions are never negative here.
__device__ __forceinline__ int64_t ring_row(int64_t p, int cap) { return p % cap; }

}  // namespace kiln::ops::cuda::attn_detail
