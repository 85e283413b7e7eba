// Exact dequantization: one stored linear module (core/stored_linear.h) to fp32 [n, k]
// row-major, each element by its scheme's formula (docs/quantization.md):
//   bf16        the stored BF16 / F16 / F32 value;
//   fp8_block   e4m3 x its block's scale (E8M0, U8-as-E8M0, F32, BF16 or F16);
//   mxfp4       e2m1 x 2^(s - 127);
//   nvfp4       (e2m1 x e4m3 group scale) x global multiplier;
//   int4_group  (u - 8, or u - zero point) x group scale, the group from g_idx when present.
// This is the CPU reference's definition of every scheme: the CPU kernels decode to these
// floats bit for bit, and `kiln quantize` reads quantized sources through it.
#pragma once

#include <vector>

#include "kiln/core/stored_linear.h"

namespace kiln::quant {

// Rows are split over `threads` threads (0 = all cores); the floats do not depend on it.
// Throws kiln::Error (naming w.name) for a g_idx entry outside the scale's groups.
std::vector<float> dequantize(const HostQuantLinear& w, int threads = 1);

}  // namespace kiln::quant
