// Inline fp32 vector helpers for the CPU reference kernels. Reductions use a fixed
// association (16 lanes, then a fixed horizontal order, then the scalar tail) so a result
// depends only on its inputs, never on how a caller batches or threads the work; that
// is what makes prefill, chunked prefill and one-token decode bitwise identical.
// GCC/Clang vector extensions vectorise without -ffast-math on any target.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace kiln::ops::cpu {

typedef float f32x4 __attribute__((vector_size(16)));

inline f32x4 load4(const float* p) {
  f32x4 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store4(float* p, f32x4 v) { std::memcpy(p, &v, sizeof v); }

// Fixed horizontal order over the 16 lanes of four accumulators.
inline float hsum16(f32x4 a, f32x4 b, f32x4 c, f32x4 d) {
  const f32x4 v = (a + b) + (c + d);
  return (v[0] + v[2]) + (v[1] + v[3]);
}

// sum_i a[i] * b[i]: 16 lanes over blocks of 16, then blocks of 4 into the first lanes,
// a fixed horizontal sum, then the scalar tail.
inline float dot(const float* a, const float* b, int64_t n) {
  f32x4 c0 = {}, c1 = {}, c2 = {}, c3 = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    c0 += load4(a + i) * load4(b + i);
    c1 += load4(a + i + 4) * load4(b + i + 4);
    c2 += load4(a + i + 8) * load4(b + i + 8);
    c3 += load4(a + i + 12) * load4(b + i + 12);
  }
  for (; i + 4 <= n; i += 4) c0 += load4(a + i) * load4(b + i);
  float s = hsum16(c0, c1, c2, c3);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// sum_i a[i]^2
inline float sumsq(const float* a, int64_t n) { return dot(a, a, n); }

// y[i] += s * x[i]
inline void axpy(float s, const float* x, float* y, int64_t n) {
  int64_t i = 0;
  const f32x4 sv = {s, s, s, s};
  for (; i + 4 <= n; i += 4) store4(y + i, load4(y + i) + sv * load4(x + i));
  for (; i < n; ++i) y[i] += s * x[i];
}

// y[i] *= s
inline void scale(float s, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] *= s;
}

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }
inline float silu(float x) { return x / (1.0f + std::exp(-x)); }
// torch.nn.functional.softplus with beta 1, threshold 20.
inline float softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }

}  // namespace kiln::ops::cpu
