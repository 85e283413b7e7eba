// Mixture-of-experts pieces on the CPU around the expert matrix products: SwiGLU, the
// routed experts run on the rows routed to them, and the weighted combine (DeepSeek-V4's
// MoE after the router of ops/cpu/moe_route.h). The CUDA ops of the same roles are in
// ops/cuda/moe.h.
#pragma once

#include <cstdint>
#include <functional>

namespace kiln::ops::cpu {

// out[i] = silu(g') * u' for i < n, with g' = min(g, limit), u' = clamp(u, -limit, limit)
// when limit > 0 (else unclamped); silu(v) = v / (1 + exp(-v)). out may alias g.
void swiglu(const float* g, const float* u, int64_t n, float limit, float* out);

// expert(e, x, rows, pair, y): y [rows, H] = expert e's FFN of x [rows, H] (contiguous);
// row i is the pair t * K + k given in pair[i].
using ExpertFn = std::function<void(int64_t e, const float* x, int64_t rows, const int64_t* pair, float* y)>;

// Routed experts: for each expert e < E in ascending order, the rows t with idx[t, k] == e
// (t then k ascending) are gathered from x [T, H] and run through expert(e, ...) in one
// call; output row (t, k) lands in ye[t * K + k] ([T * K, H]).
void moe_experts(const float* x, int64_t T, int64_t H, const int64_t* idx, int64_t K, int64_t E,
                 const ExpertFn& expert, float* ye);

// out[t, :] = sum of wt[t, k] * ye[t * K + k, :] over k in ascending order of (idx[t, k], k),
// accumulated from 0 as acc += y * w (wt null: acc += y); then + shared[t, :] when shared
// is not null.
void moe_combine(const float* ye, const int64_t* idx, const float* wt, int64_t T, int64_t K, int64_t H,
                 const float* shared, float* out);

}  // namespace kiln::ops::cpu
