// Branch-free round-to-nearest-even encoders for the quantizers' inner loops. They equal
// kiln::f32_to_e4m3 / f32_to_e2m1 (core/codecs.h) for every finite input (tested
// against them in tests/quant); the core encoders branch per element and dominate a
// quantization pass otherwise.
#pragma once

#include <bit>
#include <cstdint>

namespace kiln::quant::fast {

// e4m3fn, saturating at +-448. x finite.
inline uint8_t e4m3(float x) {
  const uint32_t b = std::bit_cast<uint32_t>(x);
  const uint32_t sign = (b >> 24) & 0x80u;
  const uint32_t a = b & 0x7FFFFFFFu;
  // Normal range (|x| >= 2^-6): round the mantissa to 3 bits, rebias 127 -> 7.
  uint32_t normal = ((a + 0x7FFFFu + ((a >> 20) & 1u)) >> 20);
  normal = normal > (120u << 3) ? normal - (120u << 3) : 0u;
  // Subnormal range: |x| * 2^9 rounded to an integer (0..8) by the 2^23 magic number.
  const float scaled = std::bit_cast<float>(a) * 512.0f + 8388608.0f;
  const uint32_t sub = std::bit_cast<uint32_t>(scaled) - 0x4B000000u;
  uint32_t m = a < 0x3C800000u ? sub : normal;  // 0x3C800000 = 2^-6
  m = m > 0x7Eu ? 0x7Eu : m;
  return static_cast<uint8_t>(sign | m);
}

// e2m1 nibble (bit 3 = sign), saturating at +-6. x finite.
inline uint8_t e2m1(float x) {
  const uint32_t b = std::bit_cast<uint32_t>(x);
  const uint32_t sign = (b >> 28) & 0x8u;
  const uint32_t a = b & 0x7FFFFFFFu;
  // Normal range (|x| >= 1): round the mantissa to 1 bit, rebias 127 -> 1.
  uint32_t normal = ((a + 0x1FFFFFu + ((a >> 22) & 1u)) >> 22);
  normal = normal > (126u << 1) ? normal - (126u << 1) : 0u;
  // Subnormal range: |x| * 2 rounded to 0, 1 or 2.
  const float scaled = std::bit_cast<float>(a) * 2.0f + 8388608.0f;
  const uint32_t sub = std::bit_cast<uint32_t>(scaled) - 0x4B000000u;
  uint32_t m = a < 0x3F800000u ? sub : normal;  // 0x3F800000 = 1.0
  m = m > 7u ? 7u : m;
  return static_cast<uint8_t>(sign | m);
}

}  // namespace kiln::quant::fast
