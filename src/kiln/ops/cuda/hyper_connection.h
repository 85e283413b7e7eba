// Manifold-constrained hyper-connections on the GPU, the same maths as
// ops/cpu/hyper_connection.h (read it for the formulas). Streams X are [R, n, H] fp32,
// contiguous. All parameters are device pointers; nothing allocates or synchronises.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "kiln/ops/hyper_connection_params.h"

namespace kiln::ops::cuda {

using ops::HcParams;  // ops/hyper_connection_params.h (device pointers, workspace set)

// The mix products fn . X[t] (24 rows over n*H columns for V4) are split over
// hc_mix_splits(n*H) blocks per row, so one row does not stream fn through one
// multiprocessor; their partial sums land in the workspace and are added in split order.
int hc_mix_splits(int width);
int64_t hc_pre_workspace_floats(int R, int n, int hidden);

// collapsed [R, H], post [R, n], comb [R, n, n] as cpu::hc_pre (up to the association of
// the mix sums: m = (sum of the splits' partial fn . x) * rsqrt(mean(x^2) + eps)).
// bf16_out: collapsed rounded to bf16 as it is written (post and comb stay fp32).
void hc_pre(const HcParams& p, const float* X, int R, float* collapsed, float* post, float* comb, cudaStream_t stream,
            bool bf16_out = false);

// out [R, n, H] = cpu::hc_post (out must not alias X); bf16_out: rounded to bf16 as written.
void hc_post(int n, int H, const float* X, int R, const float* y, const float* post, const float* comb, float* out,
             cudaStream_t stream, bool bf16_out = false);

// h [R, H] as cpu::hc_head: fn [n, n*H], base [n] (device), scale a host float;
// bf16_out: h rounded to bf16 as it is written.
void hc_head(int n, int H, const float* fn, const float* base, float scale, float hc_eps, float norm_eps, const float* X,
             int R, float* h, cudaStream_t stream, bool bf16_out = false);

// out [R, H] (rows ld_out apart) = cpu::hc_stream_mean: per value the streams summed in
// ascending order from 0, then divided by n (bitwise the CPU's).
void hc_stream_mean(int n, int H, const float* X, int R, float* out, int64_t ld_out, cudaStream_t stream);

}  // namespace kiln::ops::cuda
