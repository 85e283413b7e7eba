// Manifold-constrained hyper-connections (mHC) of DeepSeek-V4, as transformers 5.17's
// DeepseekV4HyperConnection / DeepseekV4HyperHead / DeepseekV4DecoderLayer compute them.
// Streams X are [T, n, H] (n = hc_mult) fp32.
#pragma once

#include <cstdint>

#include "kiln/ops/hyper_connection_params.h"

namespace kiln::ops::cpu {

class ThreadPool;

using ops::HcParams;  // ops/hyper_connection_params.h

// pre-mix: flat = X[t] / rms(X[t]); m = fn . flat;
//   pre  = sigmoid(m[0:n] * scale0 + base[0:n]) + hc_eps
//   post = 2 * sigmoid(m[n:2n] * scale1 + base[n:2n])
//   comb = softmax_rows(m[2n:].view(n,n) * scale2 + base[2n:]) + hc_eps
//   comb /= colsum + hc_eps; then (iters - 1) times: comb /= rowsum + eps; comb /= colsum + eps
//   collapsed[t] = sum_i pre_i X[t, i]
// Outputs: collapsed [T, H], post [T, n], comb [T, n, n] (comb[i][j]: input stream i ->
// output stream j).
void hc_pre(const HcParams& p, const float* X, int64_t T, float* collapsed, float* post, float* comb, ThreadPool* pool);

// X'[t, j] = post[t, j] * y[t] + sum_i comb[t, i, j] * X[t, i]   (in place into X allowed: no)
void hc_post(int64_t n, int64_t H, const float* X, int64_t T, const float* y, const float* post, const float* comb,
             float* out);

// Final collapse (no Sinkhorn): pre = sigmoid(fn . flat * scale + base) + hc_eps;
// h[t] = sum_i pre_i X[t, i]. fn [n, n*H], base [n].
void hc_head(int64_t n, int64_t H, const float* fn, const float* base, float scale, float hc_eps, float norm_eps,
             const float* X, int64_t T, float* h, ThreadPool* pool);

// The mean over the streams (a DSpark drafter's target features, DeepSeek's h.mean(dim=2)):
// out[t, d] = (sum_i X[t, i, d], i ascending from 0) / n; out rows ld_out apart.
void hc_stream_mean(int64_t n, int64_t H, const float* X, int64_t T, float* out, int64_t ld_out);

}  // namespace kiln::ops::cpu
