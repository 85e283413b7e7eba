#include "kiln/ops/cpu/norm.h"

#include <cmath>

#include "kiln/ops/cpu/vec.h"

namespace kiln::ops::cpu {

float rms_scale(const float* x, int64_t n, float eps) {
  const float mean = sumsq(x, n) / static_cast<float>(n);
  return 1.0f / std::sqrt(mean + eps);
}

void rmsnorm(const float* x, int64_t ldx, int64_t rows, int64_t n, const float* weight, float eps, float* y,
             int64_t ldy) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    float* yr = y + r * ldy;
    const float s = rms_scale(xr, n, eps);
    if (weight != nullptr) {
      for (int64_t i = 0; i < n; ++i) yr[i] = weight[i] * (xr[i] * s);
    } else {
      for (int64_t i = 0; i < n; ++i) yr[i] = xr[i] * s;
    }
  }
}

}  // namespace kiln::ops::cpu
