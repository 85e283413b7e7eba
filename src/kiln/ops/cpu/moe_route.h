// MoE routing on the CPU, DeepSeek-V4's Gate (inference/model.py) for each score function:
//   s = score(logits)                      sqrtsoftplus | softmax over the row | sigmoid
//   experts: hash layers tid2eid[token], else the K highest s + bias (bias for selection
//            only; exact ties to the lowest expert id, in descending order)
//   weights: w_k = s_{e_k} / (sum_k s_{e_k} + 1e-20)   (sqrtsoftplus, sigmoid: renormalised)
//            w_k = s_{e_k}                             (softmax: the probabilities as they are)
//            then w_k *= routed_scaling.
// The 1e-20 is transformers' (DeepSeek divides by the plain sum); in fp32 it changes the
// quotient only when the sum is below ~1e-13. The reference for ops/cuda/moe.h moe_route.
#pragma once

#include <cstdint>

#include "kiln/core/scoring.h"

namespace kiln::ops::cpu {

// T rows of E gate logits (contiguous). Hash routing when tid2eid ([vocab, K]) is given,
// with tokens[t] the row's token id; score routing otherwise, with bias [E]. Writes idx
// [T, K] and wt [T, K]; leaves logits untouched.
void moe_route(ScoringFunc f, const float* logits, int64_t T, int64_t E, int64_t K, const float* bias,
               const int32_t* tid2eid, const int32_t* tokens, float routed_scaling, int64_t* idx, float* wt);

}  // namespace kiln::ops::cpu
