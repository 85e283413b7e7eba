// Shared pieces of the quantizers: amax, float encodings, scale decoding and rounding up.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "kiln/core/codecs.h"
#include "kiln/core/error.h"
#include "kiln/quant/quantize.h"
#include "kiln/quant/scale_fit.h"

namespace kiln::quant {

float amax(std::span<const float> w) {
  float m = 0.0f;
  m = detail::amax_of(w.data(), static_cast<int64_t>(w.size()));
  return m;
}

bool all_finite(std::span<const float> w) {
  for (float x : w) {
    if (!std::isfinite(x)) return false;
  }
  return true;
}

QTensor encode_floats(std::span<const float> v, std::vector<int64_t> shape, DType dtype) {
  QTensor t;
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.bytes.resize(v.size() * dtype_size(dtype));
  switch (dtype) {
    case DType::F32:
      if (!v.empty()) std::memcpy(t.bytes.data(), v.data(), v.size() * 4);
      break;
    case DType::BF16:
    case DType::F16:
      for (size_t i = 0; i < v.size(); ++i) {
        const uint16_t h = dtype == DType::BF16 ? f32_to_bf16(v[i]) : f32_to_f16(v[i]);
        std::memcpy(t.bytes.data() + 2 * i, &h, 2);
      }
      break;
    default:
      fail(ErrorKind::Usage, "encode_floats: {} is not F32, BF16 or F16", dtype_name(dtype));
  }
  return t;
}

float decode_scale(DType dtype, const std::byte* p) {
  switch (dtype) {
    case DType::F32: {
      float f;
      std::memcpy(&f, p, 4);
      return f;
    }
    case DType::BF16:
    case DType::F16: {
      uint16_t h;
      std::memcpy(&h, p, 2);
      return dtype == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
    }
    case DType::F8_E8M0:
    case DType::U8: return e8m0_to_f32(static_cast<uint8_t>(*p));
    case DType::F8_E4M3: return e4m3_to_f32(static_cast<uint8_t>(*p));
    default: fail(ErrorKind::Usage, "decode_scale: {} is not a scale dtype", dtype_name(dtype));
  }
}

float round_up_to(DType dtype, float x) {
  switch (dtype) {
    case DType::F32: return x;
    case DType::BF16: {
      uint16_t h = f32_to_bf16(x);
      while (bf16_to_f32(h) < x) ++h;  // positive finite: the next code is the next value up
      return bf16_to_f32(h);
    }
    case DType::F16: {
      uint16_t h = f32_to_f16(x);
      while (f16_to_f32(h) < x) ++h;
      return f16_to_f32(h);
    }
    default: fail(ErrorKind::Usage, "round_up_to: {} is not F32, BF16 or F16", dtype_name(dtype));
  }
}

}  // namespace kiln::quant
