// wgmma_agreement.h: one block of 128 threads per trial; warp w computes rows 16 w.. with
// mma.sync and, as part of the warpgroup, the same rows with wgmma (A from the same
// registers, B from shared memory in wgmma.cuh's K-major core matrices).
#include <cuda_fp16.h>

#include "kiln/ops/cuda/check.h"
#include "kiln/ops/cuda/mma_sync.cuh"
#include "kiln/ops/cuda/wgmma.cuh"
#include "kiln/ops/cuda/wgmma_agreement.h"

namespace kiln::ops::cuda {
namespace {

constexpr int M = kWgmmaCheckM, N = kWgmmaCheckN, K = kWgmmaCheckK;

__device__ __forceinline__ void wgmma_m64n8k16_f16(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                                   uint64_t b) {
  asm volatile("wgmma.mma_async.sync.aligned.m64n8k16.f32.f16.f16 {%0,%1,%2,%3}, {%4,%5,%6,%7}, %8, 1, 1, 1, 0;\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(b));
}

__global__ void __launch_bounds__(128) agreement_kernel(const uint16_t* __restrict__ a, const uint16_t* __restrict__ b,
                                                        float* __restrict__ d_mma, float* __restrict__ d_wgmma) {
  const int trial = blockIdx.x;
  a += static_cast<int64_t>(trial) * M * K;
  b += static_cast<int64_t>(trial) * N * K;
  __shared__ __align__(128) uint16_t sb[N * K];  // core matrix of k chunk c at c * 64 elements
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  for (int i = tid; i < N * K; i += 128) sb[(i % K / 8) * 64 + (i / K) * 8 + i % 8] = b[i];
  fence_proxy_async_smem();
  __syncthreads();
  auto pair = [](const uint16_t* p) { return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 16); };
  const uint16_t* r0 = a + (warp * 16 + g) * K;
  const uint16_t* r1 = r0 + 8 * K;
  const uint16_t* col = b + g * K;
  float dm[4] = {0.0f, 0.0f, 0.0f, 0.0f}, dw[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int s = 0; s < K / 16; ++s) {
    const int k = s * 16 + 2 * t;
    uint32_t a[1][4] = {{pair(r0 + k), pair(r1 + k), pair(r0 + k + 8), pair(r1 + k + 8)}};
    mma_f16(a[0][0], a[0][1], a[0][2], a[0][3], pair(col + k), pair(col + k + 8), dm);
    wgmma_fence();
    wgmma_m64n8k16_f16(dw, a[0][0], a[0][1], a[0][2], a[0][3], wgmma_desc(sb + s * 2 * 64, 128, 128));
    wgmma_commit_wait(dw, a);
  }
  const int64_t o = static_cast<int64_t>(trial) * M * N;
  const int row0 = warp * 16 + g, row1 = row0 + 8;
  d_mma[o + row0 * N + 2 * t] = dm[0], d_mma[o + row0 * N + 2 * t + 1] = dm[1];
  d_mma[o + row1 * N + 2 * t] = dm[2], d_mma[o + row1 * N + 2 * t + 1] = dm[3];
  d_wgmma[o + row0 * N + 2 * t] = dw[0], d_wgmma[o + row0 * N + 2 * t + 1] = dw[1];
  d_wgmma[o + row1 * N + 2 * t] = dw[2], d_wgmma[o + row1 * N + 2 * t + 1] = dw[3];
}

}  // namespace

void wgmma_agreement(const uint16_t* a, const uint16_t* b, int trials, float* d_mma, float* d_wgmma, cudaStream_t stream) {
  agreement_kernel<<<trials, 128, 0, stream>>>(a, b, d_mma, d_wgmma);
  KILN_CUDA_CHECK_LAUNCH();
}

}  // namespace kiln::ops::cuda
