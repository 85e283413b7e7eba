// Rounding an fp32 value to the nearest bf16 (ties to even) and back: the activation
// rounding of the deepseek precision, as round_bf16 (act_quant.h) applies it to a whole
// tensor. Kernels that write an activation use it on the store so that no separate
// rounding launch follows them; the result is the same bits.
#pragma once

#include <cuda_bf16.h>

namespace kiln::ops::cuda {

__device__ __forceinline__ float bf16_round(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }
__device__ __forceinline__ float bf16_round_if(float v, bool round) { return round ? bf16_round(v) : v; }

}  // namespace kiln::ops::cuda
