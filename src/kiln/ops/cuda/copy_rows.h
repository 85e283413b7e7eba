// Row copies and scaling on the GPU, with the row choice read from device memory (so a
// captured graph follows the current step): the MTP block's input streams are gathered
// from the main model's (or its own previous) output rows.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace kiln::ops::cuda {

// dst[r, :width] = src[idx[r], :width] for r < R (idx: device int32 [R]; rows ld apart).
void gather_rows(const float* src, int64_t ld_src, const int32_t* idx, int R, int width, float* dst, int64_t ld_dst,
                 cudaStream_t stream);

// x[r, c] *= factor for r < R, c < n (rows ld apart); bf16_out: the products rounded to bf16.
void scale_rows(float* x, int64_t ld, int R, int n, float factor, cudaStream_t stream, bool bf16_out = false);

}  // namespace kiln::ops::cuda
