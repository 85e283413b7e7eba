#include "kiln/ops/cuda/check.h"
#include "kiln/ops/cuda/launch.cuh"
#include "kiln/ops/dequant_fp8_block.h"

namespace kiln::ops::cuda {
namespace {

// e4m3fn: bias 7, no infinities, S.1111.111 = NaN.
__device__ __forceinline__ float e4m3_to_float(uint8_t v) {
  const uint32_t sign = (v & 0x80u) << 24;
  const uint32_t exp = (v >> 3) & 0xFu, man = v & 0x7u;
  float mag;
  if ((v & 0x7Fu) == 0x7Fu) {
    mag = __int_as_float(0x7FC00000);
  } else if (exp == 0) {
    mag = ldexpf(static_cast<float>(man), -9);  // subnormal: m/8 * 2^-6
  } else {
    mag = __int_as_float(static_cast<int>(((exp + 120u) << 23) | (man << 20)));
  }
  return __int_as_float(__float_as_int(mag) | static_cast<int>(sign));
}

__device__ __forceinline__ float e8m0_to_float(uint8_t v) {
  if (v == 0xFFu) return __int_as_float(0x7FC00000);
  if (v == 0) return ldexpf(1.0f, -127);
  return __int_as_float(static_cast<int>(static_cast<uint32_t>(v) << 23));
}

__global__ void dequant_kernel(const uint8_t* __restrict__ q, const uint8_t* __restrict__ scale, int64_t rows,
                               int64_t cols, int64_t block_n, int64_t block_k, int64_t scale_cols,
                               float* __restrict__ out) {
  await_previous_grid();
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    out[i] = e4m3_to_float(q[i]) * e8m0_to_float(scale[(r / block_n) * scale_cols + c / block_k]);
  }
}

}  // namespace

void dequant_fp8_block_e8m0(const uint8_t* q, const uint8_t* scale, const Fp8BlockShape& s, float* out, void* stream) {
  const int64_t n = s.rows * s.cols;
  if (n == 0) return;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((n + threads - 1) / threads, 65535);
  launch_kernel(dequant_kernel, static_cast<unsigned>(blocks), threads, 0, static_cast<cudaStream_t>(stream),
                q, scale, s.rows, s.cols, s.block_n, s.block_k, s.scale_cols(), out);
}

}  // namespace kiln::ops::cuda
