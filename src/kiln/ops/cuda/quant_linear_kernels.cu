// Kernel selection and the x staging kernel; the linear kernels themselves are compiled
// one scheme per file (quant_linear_<scheme>.cu, from quant_linear_kernels.cuh).
#include <algorithm>

#include <cuda_bf16.h>

#include "kiln/ops/cuda/check.h"
#include "kiln/ops/cuda/launch.cuh"
#include "kiln/ops/cuda/quant_linear_detail.h"

namespace kiln::ops::cuda::detail {

LaunchFn launcher_bf16(int mt, int rw);
LaunchFn launcher_fp8_block(int mt, int rw);
LaunchFn launcher_int4_group(int mt, int rw);
LaunchFn launcher_mxfp4(int mt, int rw);
LaunchFn launcher_nvfp4(int mt, int rw);
IndexedLaunchFn indexed_launcher_bf16(int rw);
IndexedLaunchFn indexed_launcher_fp8_block(int rw);
IndexedLaunchFn indexed_launcher_int4_group(int rw);
IndexedLaunchFn indexed_launcher_mxfp4(int rw);
IndexedLaunchFn indexed_launcher_nvfp4(int rw);

namespace {

__global__ void pad_rows_kernel(const float* __restrict__ src, int64_t ldx, int64_t k, int64_t kp,
                                float* __restrict__ dst) {
  await_previous_grid();
  const int m = blockIdx.y;
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < kp;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[m * kp + c] = c < k ? src[m * ldx + c] : 0.0f;
}

// hi = bf16(x) (round to nearest even), lo = bf16(x - hi); columns k .. kp-1 zero.
__global__ void split_bf16_kernel(const float* __restrict__ x, int64_t ldx, int64_t k, int64_t kp, uint16_t* __restrict__ hi,
                                  uint16_t* __restrict__ lo) {
  await_previous_grid();
  const int m = blockIdx.y;
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < kp;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float v = c < k ? x[m * ldx + c] : 0.0f;
    const __nv_bfloat16 h = __float2bfloat16_rn(v);
    const __nv_bfloat16 l = __float2bfloat16_rn(v - __bfloat162float(h));
    hi[m * kp + c] = __bfloat16_as_ushort(h);
    lo[m * kp + c] = __bfloat16_as_ushort(l);
  }
}

}  // namespace

void launch_split_bf16(const float* x, int64_t ldx, int M, int64_t k, int64_t kp, uint16_t* hi, uint16_t* lo,
                       cudaStream_t stream) {
  const unsigned bx = static_cast<unsigned>(std::min<int64_t>((kp + 255) / 256, 1024));
  launch_kernel(split_bf16_kernel, dim3(bx, static_cast<unsigned>(M)), 256, 0, stream, x, ldx, k, kp, hi, lo);
}

LaunchFn select_launcher(SchemeKind s, int mt, int rw) {
  switch (s) {
    case SchemeKind::BF16: return launcher_bf16(mt, rw);
    case SchemeKind::FP8Block: return launcher_fp8_block(mt, rw);
    case SchemeKind::Int4Group: return launcher_int4_group(mt, rw);
    case SchemeKind::MXFP4: return launcher_mxfp4(mt, rw);
    case SchemeKind::NVFP4: return launcher_nvfp4(mt, rw);
  }
  return nullptr;
}

IndexedLaunchFn select_indexed_launcher(SchemeKind s, int rw) {
  switch (s) {
    case SchemeKind::BF16: return indexed_launcher_bf16(rw);
    case SchemeKind::FP8Block: return indexed_launcher_fp8_block(rw);
    case SchemeKind::Int4Group: return indexed_launcher_int4_group(rw);
    case SchemeKind::MXFP4: return indexed_launcher_mxfp4(rw);
    case SchemeKind::NVFP4: return indexed_launcher_nvfp4(rw);
  }
  return nullptr;
}

void launch_pad_rows(const float* src, int64_t ldx, int M, int64_t k, int64_t kp, float* dst, cudaStream_t stream) {
  const unsigned bx = static_cast<unsigned>(std::min<int64_t>((kp + 255) / 256, 1024));
  launch_kernel(pad_rows_kernel, dim3(bx, static_cast<unsigned>(M)), 256, 0, stream, src, ldx, k, kp, dst);
}

}  // namespace kiln::ops::cuda::detail
