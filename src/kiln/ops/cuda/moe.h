// Mixture-of-experts pieces on the GPU around the expert matrix products
// (ops/quant_linear.h QuantLinearSet): routing, SwiGLU and the weighted combine, the
// same maths as ops/cpu/moe.h (moe_experts, moe_combine). No host synchronisation.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "kiln/core/scoring.h"
#include "kiln/ops/cuda/step_rows.h"

namespace kiln::ops::cuda {

// Routing for every row, DeepSeek's Gate as ops/cpu/moe_route.h computes it: scores s_e of
// logits[r, e] (e < E, rows ldl apart) by `f`: sqrt(softplus), sigmoid, or softmax over
// the row (max and sum reduced across the warp, so not the CPU's summation order). Hash
// routing (tid2eid != null, [vocab, K]): experts tid2eid[tok[r] * K + k]. Score routing
// (bias != null, [E]): the K highest s_e + bias_e, exact ties to the lowest e, in
// descending order of s_e + bias_e. Weights w_k = s_{e_k} / (sum_k s_{e_k} + 1e-20) *
// routed_scaling (sum in k order), or for softmax w_k = s_{e_k} * routed_scaling. Writes
// idx [R, K] (int32) and wt [R, K].
void moe_route(const StepRows& rows, ScoringFunc f, const float* logits, int64_t ldl, int E, int K, const float* bias,
               const int32_t* tid2eid, float routed_scaling, int32_t* idx, float* wt, cudaStream_t stream);

// out[i, c] = silu(g') * u' with g' = min(g, limit), u' = clamp(u, -limit, limit) when
// limit > 0 (else unclamped); silu(v) = v / (1 + exp(-v)). rows x I values, rows ld apart
// in g, u and out (out may alias g). row_weight (not null): times row_weight[i] (fp32
// product); bf16_out: then rounded to bf16 (nearest even), as DeepSeek's Expert feeds w2.
void swiglu(const float* g, const float* u, int64_t ld, int rows, int I, float limit, float* out, int64_t ldo,
            cudaStream_t stream, const float* row_weight = nullptr, bool bf16_out = false);

// out[r, :] = sum over k in ascending order of expert id idx[r, k] of wt[r, k] * y[r * K + k, :]
// (accumulated from 0 as acc += y * w; wt null: acc += y), then + shared[r, :] when shared
// is not null.
// y: [R * K, H] rows ldy apart; shared, out: [R, H] contiguous. bf16_out: the sums rounded
// to bf16 as they are written.
void moe_combine(const float* y, int64_t ldy, const int32_t* idx, const float* wt, int R, int K, int H,
                 const float* shared, float* out, cudaStream_t stream, bool bf16_out = false);

}  // namespace kiln::ops::cuda
