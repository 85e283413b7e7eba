// FP4 (e2m1) schemes: MXFP4 (E8M0 per 32) and NVFP4 (e4m3 per 16 + fp32 global), both
// packed two values per byte, element 2j in the low nibble of byte j (artifact-formats.md §0).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kiln/core/codecs.h"
#include "kiln/core/error.h"
#include "kiln/quant/fast_codecs.h"
#include "kiln/quant/parallel.h"
#include "kiln/quant/quantize.h"
#include "kiln/quant/scale_fit.h"

namespace kiln::quant {

using detail::cdiv;

namespace {

// e2m1 code of x, stepped toward zero if code * scale (as a loader multiplies) would overflow.
// `big`: the block's largest magnitude is near FLT_MAX (only then can that happen).
inline uint8_t e2m1_finite(float x, bool big, float scale, float global = 1.0f) {
  uint8_t c = fast::e2m1(x);
  if (big && !std::isfinite(e2m1_to_f32(c) * scale * global)) --c;  // magnitude > 0 here
  return c;
}

}  // namespace

Mxfp4Quant quantize_mxfp4(std::span<const float> w, int64_t n, int64_t k, const Mxfp4Options& o) {
  detail::check_shape(w, n, k, "quantize_mxfp4");
  if (k % 2 != 0) fail(ErrorKind::Usage, "quantize_mxfp4: input width {} is odd (two e2m1 values per byte)", k);
  if ((o.weight_dtype != DType::I8 && o.weight_dtype != DType::U8) ||
      (o.scale_dtype != DType::F8_E8M0 && o.scale_dtype != DType::U8)) {
    fail(ErrorKind::Usage, "quantize_mxfp4: weight {} / scale {} (expected I8|U8 / F8_E8M0|U8)",
         dtype_name(o.weight_dtype), dtype_name(o.scale_dtype));
  }
  const int64_t groups = cdiv(k, 32);
  Mxfp4Quant r;
  r.weight.dtype = o.weight_dtype;
  r.weight.shape = {n, k / 2};
  r.weight.bytes.resize(static_cast<size_t>(n * (k / 2)));
  r.scale.dtype = o.scale_dtype;
  r.scale.shape = {n, groups};
  r.scale.bytes.resize(static_cast<size_t>(n * groups));
  const float* wp = w.data();
  auto* qb = reinterpret_cast<uint8_t*>(r.weight.bytes.data());
  auto* sb = reinterpret_cast<uint8_t*>(r.scale.bytes.data());
  parallel_for(n, o.threads, n * k, [wp, qb, sb, n, k, groups](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float* row = wp + i * k;
      uint8_t* qrow = qb + i * (k / 2);
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t c0 = g * 32, c1 = std::min(k, c0 + 32);  // both even: pairs stay in the group
        const float m = detail::amax_of(row + c0, c1 - c0);
        uint8_t code = 127;
        if (m > 0.0f) {
          code = f32_to_e8m0_ceil(m / 6.0f);
          while (code < 254 && m / e8m0_to_f32(code) > 6.0f) ++code;
        }
        sb[i * groups + g] = code;
        const float s = e8m0_to_f32(code), inv = 1.0f / s;  // powers of two: exact
        const bool big = m > 1e37f;
        for (int64_t j = c0; j < c1; j += 2) {
          qrow[j / 2] = static_cast<uint8_t>(e2m1_finite(row[j] * inv, big, s) | (e2m1_finite(row[j + 1] * inv, big, s) << 4));
        }
      }
    }
    (void)n;
  });
  return r;
}

float nvfp4_global_for(float a) { return a > 0.0f ? a / (6.0f * 448.0f) : 1.0f; }

Nvfp4Quant quantize_nvfp4(std::span<const float> w, int64_t n, int64_t k, float global, Nvfp4Convention conv,
                          int threads) {
  detail::check_shape(w, n, k, "quantize_nvfp4");
  if (k % 16 != 0) fail(ErrorKind::Usage, "quantize_nvfp4: input width {} is not a multiple of 16", k);
  if (!(global > 0.0f) || !std::isfinite(global)) fail(ErrorKind::Usage, "quantize_nvfp4: global scale {}", global);
  Nvfp4Quant r;
  // The multiplier a loader derives from what is stored: ModelOpt stores it, compressed-
  // tensors stores its reciprocal (which the loader inverts back, not always exactly).
  float stored = global;
  if (conv == Nvfp4Convention::CompressedTensors) {
    stored = 1.0f / global;
    r.multiplier = 1.0f / stored;
    r.global_scale = encode_floats(std::span<const float>(&stored, 1), {1}, DType::F32);
  } else {
    r.multiplier = global;
    r.global_scale = encode_floats(std::span<const float>(&stored, 1), {}, DType::F32);
  }
  const float g = r.multiplier;
  const int64_t groups = k / 16;
  r.weight.dtype = DType::U8;
  r.weight.shape = {n, k / 2};
  r.weight.bytes.resize(static_cast<size_t>(n * (k / 2)));
  r.scale.dtype = DType::F8_E4M3;
  r.scale.shape = {n, groups};
  r.scale.bytes.resize(static_cast<size_t>(n * groups));
  const float* wp = w.data();
  auto* qb = reinterpret_cast<uint8_t*>(r.weight.bytes.data());
  auto* sb = reinterpret_cast<uint8_t*>(r.scale.bytes.data());
  parallel_for(n, threads, n * k, [wp, qb, sb, k, groups, g](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float* row = wp + i * k;
      uint8_t* qrow = qb + i * (k / 2);
      for (int64_t b = 0; b < groups; ++b) {
        const int64_t c0 = b * 16;
        const float m = detail::amax_of(row + c0, 16);
        uint8_t code = 0x38;  // 1.0 for an all-zero block
        if (m > 0.0f) {
          code = f32_to_e4m3(m / (6.0f * g));
          if ((code & 0x7F) == 0) code = 0x01;  // keep a nonzero block representable
        }
        sb[i * groups + b] = code;
        const float sc = e4m3_to_f32(code), s = sc * g;
        const bool big = m > 1e37f;
        for (int64_t j = c0; j < c0 + 16; j += 2) {
          qrow[j / 2] = static_cast<uint8_t>(e2m1_finite(row[j] / s, big, sc, g) | (e2m1_finite(row[j + 1] / s, big, sc, g) << 4));
        }
      }
    }
  });
  return r;
}

}  // namespace kiln::quant
