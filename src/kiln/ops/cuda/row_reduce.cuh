// Block-wide fp32 sums for the one-block-per-row kernels (norm, mHC). The association is
// fixed by the block shape (lane tree within a warp, then warps in order), so a row's
// result never depends on the other rows in the launch or on timing.
#pragma once

namespace kiln::ops::cuda {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum of v over the block, returned to every thread. blockDim.x must be a multiple of 32
// (at most 1024); scratch is 32 floats of shared memory. Every thread must call it. The
// leading barrier lets callers reuse scratch between calls.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  return warp_sum(lane < nw ? scratch[lane] : 0.0f);
}

// The best (value, index) pair over a warp, every lane returning it: `better(v, i, bv, bi)`
// says whether (v, i) beats (bv, bi) (argmax and top-k selection with their tie rules).
template <typename Better>
__device__ __forceinline__ void warp_best(float& bv, int& bi, Better better) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (better(ov, oi, bv, bi)) {
      bv = ov;
      bi = oi;
    }
  }
}

}  // namespace kiln::ops::cuda
