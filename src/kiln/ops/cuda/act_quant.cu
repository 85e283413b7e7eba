// DeepSeek's 1 x 128 activation quantizer (ops/act_quant.h) on the GPU: one warp per
// 128-column block, four consecutive values per lane; amax by a butterfly of fmaxf (max is
// exact, so the order does not matter), the scale by act_quant_scale, the codes by the
// hardware's round-to-nearest-even, saturating e4m3 conversion. Bitwise the CPU's.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "kiln/ops/act_quant.h"
#include "kiln/ops/cuda/bf16_round.cuh"
#include "kiln/ops/cuda/check.h"
#include "kiln/ops/cuda/launch.cuh"

namespace kiln::ops::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float load(const float* p) { return *p; }
__device__ __forceinline__ float load(const uint16_t* p) { return __uint_as_float(static_cast<uint32_t>(*p) << 16); }

// The act_quant scale of a warp's 128 values, four per lane (amax by a butterfly of fmaxf).
__device__ __forceinline__ float warp_block_scale(const float (&v)[4]) {
  float amax = 0.0f;
#pragma unroll
  for (int j = 0; j < 4; ++j) amax = fmaxf(amax, fabsf(v[j]));
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, off));
  return act_quant_scale(amax);
}

// The e4m3 code of v in a block of scale sc (round to nearest even, saturating).
__device__ __forceinline__ __nv_fp8_storage_t e4m3_code(float v, float sc) {
  return __nv_cvt_float_to_fp8(act_quant_clamp(v / sc), __NV_SATFINITE, __NV_E4M3);
}

template <typename T>
__global__ void act_quant_kernel(const T* __restrict__ x, int64_t ldx, int64_t blocks, int64_t blocks_per_row,
                                 uint8_t* __restrict__ q, int64_t ldq, float* __restrict__ s, int64_t s_row,
                                 int64_t s_block) {
  await_previous_grid();
  const int64_t w = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x & 31);
  if (w >= blocks) return;  // whole warps leave together (blockDim is a multiple of 32)
  const int64_t m = w / blocks_per_row, b = w % blocks_per_row;
  const T* xb = x + m * ldx + b * kActQuantBlock + lane * 4;
  float v[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) v[j] = load(xb + j);
  const float sc = warp_block_scale(v);
  uint8_t* qb = q + m * ldq + b * kActQuantBlock + lane * 4;
#pragma unroll
  for (int j = 0; j < 4; ++j)
    qb[j] = static_cast<uint8_t>(e4m3_code(v[j], sc));
  if (lane == 0) s[m * s_row + b * s_block] = sc;
}

template <typename T>
void launch(const T* x, int64_t ldx, int64_t M, int64_t K, uint8_t* q, int64_t ldq, float* s, ActScaleLayout sl,
            cudaStream_t stream, const char* what) {
  if (M < 0 || K <= 0 || K % kActQuantBlock != 0)
    fail(ErrorKind::Usage, "{}: [{}, {}] (K must be a positive multiple of {})", what, M, K, kActQuantBlock);
  const int64_t blocks = M * (K / kActQuantBlock);
  if (blocks == 0) return;
  const int64_t grid = (blocks + kThreads / 32 - 1) / (kThreads / 32);
  if (grid > 0x7FFFFFFF) fail(ErrorKind::Usage, "{}: [{}, {}] is too large", what, M, K);
  launch_kernel(act_quant_kernel<T>, static_cast<unsigned>(grid), kThreads, 0, stream,
                x, ldx, blocks, K / kActQuantBlock, q, ldq, s, sl.row_stride, sl.block_stride);
}

// act_fake_quant: one warp per (row, block of 128 columns), a last partial block masked.
__global__ void fake_quant_kernel(const float* __restrict__ x, int64_t ldx, int64_t blocks, int64_t blocks_per_row,
                                  int64_t K, float* __restrict__ y, int64_t ldy) {
  await_previous_grid();
  const int64_t w = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x & 31);
  if (w >= blocks) return;
  const int64_t m = w / blocks_per_row, c0 = (w % blocks_per_row) * kActQuantBlock + lane * 4;
  float v[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) v[j] = c0 + j < K ? x[m * ldx + c0 + j] : 0.0f;
  const float sc = warp_block_scale(v);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    if (c0 + j >= K) break;
    y[m * ldy + c0 + j] = __half2float(__half(__nv_cvt_fp8_to_halfraw(e4m3_code(v[j], sc), __NV_E4M3))) * sc;
  }
}

__global__ void round_bf16_kernel(const float* __restrict__ x, int64_t ldx, int64_t M, int64_t K, float* __restrict__ y,
                                  int64_t ldy) {
  await_previous_grid();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= M * K) return;
  const int64_t m = i / K, c = i % K;
  y[m * ldy + c] = bf16_round(x[m * ldx + c]);
}

unsigned grid_of(int64_t threads, const char* what) {
  const int64_t g = (threads + kThreads - 1) / kThreads;
  if (g > 0x7FFFFFFF) fail(ErrorKind::Usage, "{}: too large", what);
  return static_cast<unsigned>(g);
}

}  // namespace

void act_fake_quant(const float* x, int64_t ldx, int64_t M, int64_t K, float* y, int64_t ldy, cudaStream_t stream) {
  if (M < 0 || K <= 0) fail(ErrorKind::Usage, "cuda::act_fake_quant: [{}, {}] (K must be positive)", M, K);
  const int64_t bpr = (K + kActQuantBlock - 1) / kActQuantBlock, blocks = M * bpr;
  if (blocks == 0) return;
  launch_kernel(fake_quant_kernel, grid_of(blocks * 32, "cuda::act_fake_quant"), kThreads, 0, stream,
                x, ldx, blocks, bpr, K, y, ldy);
}

void round_bf16(const float* x, int64_t ldx, int64_t M, int64_t K, float* y, int64_t ldy, cudaStream_t stream) {
  if (M < 0 || K < 0) fail(ErrorKind::Usage, "cuda::round_bf16: [{}, {}]", M, K);
  if (M * K == 0) return;
  launch_kernel(round_bf16_kernel, grid_of(M * K, "cuda::round_bf16"), kThreads, 0, stream, x, ldx, M, K, y, ldy);
}

void act_quant(const float* x, int64_t ldx, int64_t M, int64_t K, uint8_t* q, int64_t ldq, float* s,
               ActScaleLayout sl, cudaStream_t stream) {
  launch(x, ldx, M, K, q, ldq, s, sl, stream, "cuda::act_quant");
}

void act_quant_bf16(const uint16_t* x, int64_t ldx, int64_t M, int64_t K, uint8_t* q, int64_t ldq, float* s,
                    ActScaleLayout sl, cudaStream_t stream) {
  launch(x, ldx, M, K, q, ldq, s, sl, stream, "cuda::act_quant_bf16");
}

}  // namespace kiln::ops::cuda
