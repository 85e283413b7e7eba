// Small per-row kernels of the GPU forward: embedding gather, the MTP block's input,
// greedy argmax. Device pointers; nothing allocates or synchronises.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "kiln/ops/cuda/step_rows.h"

namespace kiln::ops::cuda {

// X[r, i, :] = embed[tok[r], :] for every stream i < n (embed [vocab, H] fp32, X [R, n, H]).
void embed_streams(const StepRows& rows, const float* embed, int H, int n, float* X, cudaStream_t stream);

// e[r, :] = embed[tok[r], :] (e [R, H]).
void embed_rows(const StepRows& rows, const float* embed, int H, float* e, cudaStream_t stream);

// X[r, i, :] = ep[r, :] + hp[r, i, :] (the MTP block's input; X may alias hp).
void add_broadcast_streams(const float* ep, const float* hp, int R, int n, int H, float* X, cudaStream_t stream);

// out[r] = index of the largest logits[r, v], v < V (rows ld apart), ties to the lowest v;
// NaN is never chosen over a number.
void argmax_rows(const float* logits, int64_t ld, int R, int V, int32_t* out, cudaStream_t stream);

// out[r] = argmax_rows of the row a[r, :] + b[r, :] (rows lda, ldb apart), each sum one
// fp32 rounding as add_broadcast_streams makes it, without writing the sums.
void argmax_rows_of_sum(const float* a, int64_t lda, const float* b, int64_t ldb, int R, int V, int32_t* out,
                        cudaStream_t stream);

}  // namespace kiln::ops::cuda
