#include "kiln/ops/cuda/copy_rows.h"
#include "kiln/ops/cuda/launch.cuh"

#include <algorithm>

#include "kiln/ops/cuda/bf16_round.cuh"
#include "kiln/ops/cuda/check.h"

namespace kiln::ops::cuda {
namespace {

__global__ void gather_rows_kernel(const float* __restrict__ src, int64_t ld_src, const int32_t* __restrict__ idx,
                                   int width, float* __restrict__ dst, int64_t ld_dst) {
  await_previous_grid();
  const int r = blockIdx.y;
  const float* s = src + static_cast<int64_t>(idx[r]) * ld_src;
  float* d = dst + r * ld_dst;
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < width; c += gridDim.x * blockDim.x) d[c] = s[c];
}

__global__ void scale_rows_kernel(float* __restrict__ x, int64_t ld, int n, float factor, bool bf16_out) {
  await_previous_grid();
  float* row = x + blockIdx.y * ld;
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < n; c += gridDim.x * blockDim.x)
    row[c] = bf16_round_if(row[c] * factor, bf16_out);
}

unsigned blocks_for(int width) { return static_cast<unsigned>(std::min((width + 255) / 256, 64)); }

}  // namespace

void gather_rows(const float* src, int64_t ld_src, const int32_t* idx, int R, int width, float* dst, int64_t ld_dst,
                 cudaStream_t stream) {
  if (R <= 0 || width <= 0) return;
  if (!src || !idx || !dst) fail(ErrorKind::Usage, "gather_rows: null pointer");
  launch_kernel(gather_rows_kernel, dim3(blocks_for(width), static_cast<unsigned>(R)), 256, 0, stream,
                src, ld_src, idx, width, dst, ld_dst);
}

void scale_rows(float* x, int64_t ld, int R, int n, float factor, cudaStream_t stream, bool bf16_out) {
  if (R <= 0 || n <= 0) return;
  if (!x) fail(ErrorKind::Usage, "scale_rows: null pointer");
  launch_kernel(scale_rows_kernel, dim3(blocks_for(n), static_cast<unsigned>(R)), 256, 0, stream,
                x, ld, n, factor, bf16_out);
}

}  // namespace kiln::ops::cuda
