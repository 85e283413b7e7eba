// Device helpers of DeepSeek's act_quant (ops/act_quant.h) shared by the kernels that
// quantize activations: the act_quant kernel itself (act_quant.cu) and the tensor-core
// linear that quantizes its input in-kernel at decode sizes (quant_linear_mma.cu).
#pragma once

#include <cuda_fp8.h>

#include "kiln/ops/act_quant.h"

namespace kiln::ops::cuda {

// The e4m3 code of v in a block of scale sc (round to nearest even, saturating).
__device__ __forceinline__ __nv_fp8_storage_t e4m3_code(float v, float sc) {
  return __nv_cvt_float_to_fp8(act_quant_clamp(v / sc), __NV_SATFINITE, __NV_E4M3);
}

}  // namespace kiln::ops::cuda
