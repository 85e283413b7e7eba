// RMS norm, one block per row: a block-wide sum of squares, then the scaled write. The
// scale is formed exactly as ops::cpu::rms_scale (mean = sumsq / n, 1 / sqrt(mean + eps));
// only the association of the sum of squares differs from the CPU's 16-lane order.
#include "kiln/ops/cuda/bf16_round.cuh"
#include "kiln/ops/cuda/check.h"
#include "kiln/ops/cuda/launch.cuh"
#include "kiln/ops/cuda/norm.h"
#include "kiln/ops/cuda/row_reduce.cuh"

namespace kiln::ops::cuda {
namespace {

// Each thread's values (at most kHeld: the launcher gives rows of up to 4 * 1024 values
// 4 per thread) and their weights are loaded before the block's sum, so the output needs no
// second read of x or a read of the weight after the barrier; longer rows read again.
constexpr int kHeld = 4;

__global__ void rmsnorm_kernel(const float* x, int64_t ldx, int n, const float* __restrict__ weight, float eps, float* y,
                               int64_t ldy, bool bf16_out) {
  await_previous_grid();
  __shared__ float scratch[32];
  const float* xr = x + static_cast<int64_t>(blockIdx.x) * ldx;
  float* yr = y + static_cast<int64_t>(blockIdx.x) * ldy;
  const bool held = n <= kHeld * static_cast<int>(blockDim.x);
  float xv[kHeld], wv[kHeld];
  float ss = 0.0f;
  if (held) {
#pragma unroll
    for (int j = 0; j < kHeld; ++j) {
      const int i = threadIdx.x + j * static_cast<int>(blockDim.x);
      xv[j] = i < n ? xr[i] : 0.0f;
      wv[j] = weight != nullptr && i < n ? weight[i] : 1.0f;
    }
#pragma unroll
    for (int j = 0; j < kHeld; ++j)
      if (threadIdx.x + j * static_cast<int>(blockDim.x) < n) ss = __fadd_rn(ss, __fmul_rn(xv[j], xv[j]));
  } else {
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss = __fadd_rn(ss, __fmul_rn(xr[i], xr[i]));
  }
  // block_sum ends with every thread past a barrier after all reads of x, so writing y
  // in place (y == x) below cannot race with another thread's sum.
  ss = block_sum(ss, scratch);
  const float s = 1.0f / sqrtf(ss / static_cast<float>(n) + eps);
  if (held) {
#pragma unroll
    for (int j = 0; j < kHeld; ++j) {
      const int i = threadIdx.x + j * static_cast<int>(blockDim.x);
      if (i < n)
        yr[i] = bf16_round_if(weight != nullptr ? __fmul_rn(wv[j], __fmul_rn(xv[j], s)) : __fmul_rn(xv[j], s), bf16_out);
    }
  } else if (weight != nullptr) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) yr[i] = bf16_round_if(__fmul_rn(weight[i], __fmul_rn(xr[i], s)), bf16_out);
  } else {
    for (int i = threadIdx.x; i < n; i += blockDim.x) yr[i] = bf16_round_if(__fmul_rn(xr[i], s), bf16_out);
  }
}

}  // namespace

void rmsnorm(const float* x, int64_t ldx, int rows, int n, const float* weight, float eps, float* y, int64_t ldy,
             cudaStream_t stream, bool bf16_out) {
  if (rows < 0 || n <= 0) fail(ErrorKind::Usage, "cuda::rmsnorm: {} rows of {} values; expected rows >= 0 and n > 0", rows, n);
  if (rows == 0) return;
  if (x == nullptr || y == nullptr) fail(ErrorKind::Usage, "cuda::rmsnorm: null input or output pointer");
  if (ldx < n || ldy < n) fail(ErrorKind::Usage, "cuda::rmsnorm: row strides {} / {} are below the row length {}", ldx, ldy, n);
  // Enough threads that each handles a few values, at least one warp.
  int threads = 32;
  while (threads < 1024 && threads * 4 < n) threads *= 2;
  launch_kernel(rmsnorm_kernel, static_cast<unsigned>(rows), threads, 0, stream,
                x, ldx, n, weight, eps, y, ldy, bf16_out);
}

}  // namespace kiln::ops::cuda
