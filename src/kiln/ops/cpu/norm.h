// RMS normalisation over the last dimension, as transformers' DeepseekV4RMSNorm
// (w * x * rsqrt(mean(x^2) + eps)) and DeepseekV4UnweightedRMSNorm (no weight).
#pragma once

#include <cstdint>

namespace kiln::ops::cpu {

// rows of n floats, ld apart; in place allowed (x == y). weight may be null (unweighted).
void rmsnorm(const float* x, int64_t ldx, int64_t rows, int64_t n, const float* weight, float eps, float* y,
             int64_t ldy);

inline void rmsnorm(const float* x, int64_t rows, int64_t n, const float* weight, float eps, float* y) {
  rmsnorm(x, n, rows, n, weight, eps, y, n);
}

// 1 / sqrt(mean(x^2) + eps) of one row.
float rms_scale(const float* x, int64_t n, float eps);

}  // namespace kiln::ops::cpu
