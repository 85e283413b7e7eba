// The premise of the warpgroup row-tile kernels (wgmma.cuh), as a launchable check for
// tests/gpu/test_wgmma_cuda.cpp: the same f16 products chained over K = 128 (8 k16 steps
// into one fp32 accumulator from zero) by mma.sync.m16n8k16 per warp and by wgmma m64n8k16
// per warpgroup. Kernels that multiply a prompt's rows on wgmma and a decode step's on
// mma.sync are batch-invariant only if the two give the same bits.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace kiln::ops::cuda {

inline constexpr int kWgmmaCheckM = 64, kWgmmaCheckN = 8, kWgmmaCheckK = 128;

// For t < trials: a [t][64][128] and b [t][8][128] f16 bit patterns (row-major, k
// contiguous); d_mma and d_wgmma [t][64][8] fp32, D = A . B^T. Launches on `stream`.
void wgmma_agreement(const uint16_t* a, const uint16_t* b, int trials, float* d_mma, float* d_wgmma, cudaStream_t stream);

}  // namespace kiln::ops::cuda
