// RMS normalisation on the GPU (ops/cpu/norm.h): y = w * (x * rsqrt(mean(x^2) + eps)),
// unweighted when weight is null. In place allowed (x == y).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace kiln::ops::cuda {

// rows rows of n floats, ldx / ldy apart. bf16_out: each output rounded to bf16 (nearest
// even) as it is written, bitwise round_bf16 after the norm.
void rmsnorm(const float* x, int64_t ldx, int rows, int n, const float* weight, float eps, float* y, int64_t ldy,
             cudaStream_t stream, bool bf16_out = false);

}  // namespace kiln::ops::cuda
