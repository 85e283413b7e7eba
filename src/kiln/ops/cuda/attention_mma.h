// The tensor-core attention kernel of AttnNumerics::Bf16 (ops/cuda/attention.h attention(),
// which picks it): an internal header between attention.cu and attention_mma.cu.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "kiln/ops/cuda/attention.h"

namespace kiln::ops::cuda::attn_detail {

// Launches the kernel over grid (rows.R, head groups of device::kAttnMmaHeads, splits):
// each block walks its row's keys in chunks of `chunk` (a multiple of
// device::kAttnMmaKeyTile) and merges the chunks' states in order into o; with splits > 1,
// block z takes chunk z alone and writes its (m, l, o) to `part` as the CUDA-core kernel
// does, for attention_combine. The caller has checked the arguments and that
// device::attention_mma_fits(ring.dim).
void launch_attention_mma(const StepRows& rows, const float* q, int64_t ldq, int heads, float scale, const float* sink,
                          const WindowRing& ring, int window, AttnKeys keys, const CompressorRing& comp,
                          const int32_t* sel, const int32_t* nsel, int topk, int chunk, int splits, float* o, int64_t ldo,
                          float* part, cudaStream_t stream);

}  // namespace kiln::ops::cuda::attn_detail
