// Internal to quant/: choosing a float scale so that the block maximum fits the grid.
#pragma once

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "kiln/core/codecs.h"
#include "kiln/core/error.h"
#include "kiln/quant/quantize.h"

namespace kiln::quant::detail {

// The next representable value of float dtype `dtype` above s (s >= 0 finite).
inline float next_up(DType dtype, float s) {
  switch (dtype) {
    case DType::BF16: return bf16_to_f32(static_cast<uint16_t>(f32_to_bf16(s) + 1));
    case DType::F16: return f16_to_f32(static_cast<uint16_t>(f32_to_f16(s) + 1));
    default: return std::nextafter(s, std::numeric_limits<float>::infinity());
  }
}

// The smallest stored scale s (a value of `dtype`) with fl(amax / s) <= qmax, starting from
// amax / qmax rounded up. amax > 0 and finite. Throws Error(Invalid) when the dtype cannot
// hold it (F16 overflow).
inline float fit_scale(float amax, float qmax, DType dtype) {
  float s = round_up_to(dtype, amax / qmax);
  if (s == 0.0f) s = next_up(dtype, 0.0f);
  while (std::isfinite(s) && amax / s > qmax) s = next_up(dtype, s);
  if (!std::isfinite(s)) {
    fail_invalid("a block of largest magnitude {} needs a scale of {} / {}, beyond the range of {}", amax, amax, qmax,
                 dtype_name(dtype));
  }
  return s;
}

// Largest |p[i]| of n finite values (0 for none). Compares magnitudes as integers (the
// order of non-negative floats' bit patterns is their numeric order), which vectorizes.
inline float amax_of(const float* p, int64_t n) {
  uint32_t m = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t b;
    std::memcpy(&b, p + i, 4);
    b &= 0x7FFFFFFFu;
    m = b > m ? b : m;
  }
  return std::bit_cast<float>(m);
}

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline void check_shape(std::span<const float> w, int64_t n, int64_t k, const char* what) {
  if (n < 0 || k < 0 || static_cast<uint64_t>(n) * static_cast<uint64_t>(k) != w.size()) {
    fail(ErrorKind::Usage, "{}: {} values do not form a [{}, {}] matrix", what, w.size(), n, k);
  }
}

}  // namespace kiln::quant::detail
