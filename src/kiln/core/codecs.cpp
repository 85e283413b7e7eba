// Scalar element codecs. 8-bit and 4-bit decoders are table lookups (tables built at
// compile time from the bit layout); 16-bit decoders are a few integer operations.
// Encoders share one integer round-to-nearest-even routine on the float's bits.
#include "kiln/core/codecs.h"

#include <cstring>

#include <array>
#include <bit>
#include <cstdint>

namespace kiln {
namespace {

constexpr uint32_t kF32QuietNaN = 0x7FC00000u;

constexpr float f32_from_bits(uint32_t b) { return std::bit_cast<float>(b); }
constexpr uint32_t f32_bits(float f) { return std::bit_cast<uint32_t>(f); }

// 2^e for e in the normal f32 range [-126, 127].
constexpr float pow2(int e) { return f32_from_bits(static_cast<uint32_t>(e + 127) << 23); }

// Decodes a small IEEE-like float: `ebits` exponent bits, `mbits` mantissa bits, `bias`.
// The caller handles codes that denote NaN / infinity.
constexpr float decode_small(uint32_t code, int ebits, int mbits, int bias) {
  const uint32_t sign = (code >> (ebits + mbits)) & 1u;
  const uint32_t exp = (code >> mbits) & ((1u << ebits) - 1u);
  const uint32_t man = code & ((1u << mbits) - 1u);
  float mag;
  if (exp == 0) {
    // Subnormal: man * 2^(1 - bias - mbits); exact in f32 for every format used here.
    mag = static_cast<float>(man) * pow2(1 - bias - mbits);
  } else {
    const uint32_t f32_exp = static_cast<uint32_t>(static_cast<int>(exp) - bias + 127);
    mag = f32_from_bits((f32_exp << 23) | (man << (23 - mbits)));
  }
  return sign ? -mag : mag;
}

constexpr std::array<float, 256> make_e4m3_table() {
  std::array<float, 256> t{};
  for (uint32_t c = 0; c < 256; ++c) {
    t[c] = ((c & 0x7Fu) == 0x7Fu) ? f32_from_bits(kF32QuietNaN | ((c & 0x80u) << 24))
                                  : decode_small(c, 4, 3, 7);
  }
  return t;
}

constexpr std::array<float, 256> make_e5m2_table() {
  std::array<float, 256> t{};
  for (uint32_t c = 0; c < 256; ++c) {
    const uint32_t sign = (c & 0x80u) << 24;
    if ((c & 0x7Cu) == 0x7Cu) {  // exponent all ones
      t[c] = (c & 0x03u) ? f32_from_bits(sign | kF32QuietNaN) : f32_from_bits(sign | 0x7F800000u);
    } else {
      t[c] = decode_small(c, 5, 2, 15);
    }
  }
  return t;
}

constexpr std::array<float, 256> make_e8m0_table() {
  std::array<float, 256> t{};
  t[0] = f32_from_bits(0x00400000u);  // 2^-127: an f32 subnormal
  for (uint32_t c = 1; c < 255; ++c) t[c] = f32_from_bits(c << 23);
  t[255] = f32_from_bits(kF32QuietNaN);
  return t;
}

constexpr std::array<float, 256> make_ue4m3_table() {
  std::array<float, 256> t{};
  for (uint32_t c = 0; c < 256; ++c) {
    t[c] = (c >= 0x7Fu) ? f32_from_bits(kF32QuietNaN) : decode_small(c, 4, 3, 7);
  }
  return t;
}

constexpr std::array<float, 16> make_e2m1_table() {
  std::array<float, 16> t{};
  for (uint32_t c = 0; c < 16; ++c) t[c] = decode_small(c, 2, 1, 1);
  return t;
}

constexpr std::array<float, 256> kE4M3 = make_e4m3_table();
constexpr std::array<float, 256> kE5M2 = make_e5m2_table();
constexpr std::array<float, 256> kE8M0 = make_e8m0_table();
constexpr std::array<float, 256> kUE4M3 = make_ue4m3_table();
constexpr std::array<float, 16> kE2M1 = make_e2m1_table();

static_assert(kE4M3[0x7E] == 448.0f);
static_assert(kE4M3[0x01] == 0.001953125f);  // 2^-9
static_assert(kE2M1[0x7] == 6.0f && kE2M1[0x1] == 0.5f && kE2M1[0xF] == -6.0f);
static_assert(kE5M2[0x7B] == 57344.0f);
static_assert(kE8M0[127] == 1.0f);

// Shifts v right by s bits (0 <= s <= 31) rounding to nearest, ties to even.
constexpr uint32_t shift_rne(uint32_t v, int s) {
  if (s == 0) return v;
  const uint32_t q = v >> s;
  const uint32_t rem = v & ((1u << s) - 1u);
  const uint32_t half = 1u << (s - 1);
  return (rem > half || (rem == half && (q & 1u))) ? q + 1 : q;
}

// Magnitude code (no sign bit) of the finite float with absolute bits `a` in a format
// with `mbits` mantissa bits and exponent bias `bias`, rounded to nearest even. Not
// saturated: the result may exceed the format's largest code (callers clamp). The
// exponent field is unbounded above, so a carry out of the mantissa lands correctly.
constexpr uint32_t encode_mag(uint32_t a, int mbits, int bias) {
  const int fexp = static_cast<int>(a >> 23);
  if (fexp == 0) return 0;  // f32 zero or subnormal: far below every target's smallest step
  const int e = fexp - 127;
  if (e >= 1 - bias) {
    // Normal in the target (or above its range): rebias the exponent, round the mantissa.
    // e + bias <= 127 + 15, so the rebiased word cannot overflow.
    const uint32_t v = (static_cast<uint32_t>(e + bias) << 23) | (a & 0x7FFFFFu);
    return shift_rne(v, 23 - mbits);
  }
  // Subnormal in the target: value = m * 2^(e - 23), step = 2^(1 - bias - mbits).
  const uint32_t m = (a & 0x7FFFFFu) | 0x800000u;
  int s = 24 - bias - mbits - e;  // > 23 - mbits here
  if (s > 31) s = 31;             // m < 2^24 < half of 2^31: rounds to 0 either way
  return shift_rne(m, s);
}

}  // namespace

// ---- bf16 ----

float bf16_to_f32(uint16_t v) { return f32_from_bits(static_cast<uint32_t>(v) << 16); }

uint16_t f32_to_bf16(float f) {
  const uint32_t b = f32_bits(f);
  if ((b & 0x7FFFFFFFu) > 0x7F800000u) {  // NaN: keep sign and top payload, force quiet
    return static_cast<uint16_t>((b >> 16) | 0x0040u);
  }
  const uint32_t lsb = (b >> 16) & 1u;
  return static_cast<uint16_t>((b + 0x7FFFu + lsb) >> 16);  // overflow carries to inf
}

// ---- f16 ----

float f16_to_f32(uint16_t v) {
  const uint32_t sign = (static_cast<uint32_t>(v) & 0x8000u) << 16;
  const uint32_t exp = (v >> 10) & 0x1Fu;
  const uint32_t man = v & 0x3FFu;
  if (exp == 0x1F) return f32_from_bits(sign | 0x7F800000u | (man << 13) | (man ? 0x400000u : 0u));
  if (exp == 0) {
    const float mag = static_cast<float>(man) * pow2(-24);
    return sign ? -mag : mag;
  }
  return f32_from_bits(sign | ((exp + 112u) << 23) | (man << 13));
}

uint16_t f32_to_f16(float f) {
  const uint32_t b = f32_bits(f);
  const uint32_t sign = (b >> 16) & 0x8000u;
  const uint32_t a = b & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return static_cast<uint16_t>(sign | 0x7E00u | ((a >> 13) & 0x3FFu));
  if (a == 0x7F800000u) return static_cast<uint16_t>(sign | 0x7C00u);
  uint32_t m = encode_mag(a, 10, 15);
  if (m > 0x7C00u) m = 0x7C00u;
  return static_cast<uint16_t>(sign | m);
}

// ---- fp8 e4m3fn ----

float e4m3_to_f32(uint8_t v) { return kE4M3[v]; }

uint8_t f32_to_e4m3(float f) {
  const uint32_t b = f32_bits(f);
  const uint32_t sign = (b >> 24) & 0x80u;
  const uint32_t a = b & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return 0x7F;
  uint32_t m = (a == 0x7F800000u) ? 0x7Eu : encode_mag(a, 3, 7);
  if (m > 0x7Eu) m = 0x7Eu;  // saturate at 448 (0x7F would be NaN)
  return static_cast<uint8_t>(sign | m);
}

// ---- fp8 e5m2 ----

float e5m2_to_f32(uint8_t v) { return kE5M2[v]; }

// ---- e8m0 ----

float e8m0_to_f32(uint8_t v) { return kE8M0[v]; }

uint8_t f32_to_e8m0_ceil(float f) {
  const uint32_t b = f32_bits(f);
  if (!(f > 0.0f)) return 0xFF;  // <= 0 or NaN
  const uint32_t fexp = b >> 23;  // sign is 0 here
  const uint32_t man = b & 0x7FFFFFu;
  if (fexp == 0xFF) return 0xFE;  // +inf: clamp to 2^127
  int e;                          // ceil(log2(f))
  if (fexp == 0) {
    // f32 subnormal: f = man * 2^-149 < 2^-126. ceil(log2) is -127 only for f == 2^-127
    // and below (clamped); anything in (2^-127, 2^-126) gives -126.
    e = (man > 0x400000u) ? -126 : -127;
  } else {
    e = static_cast<int>(fexp) - 127 + (man != 0 ? 1 : 0);
  }
  int code = e + 127;
  if (code < 0) code = 0;
  if (code > 254) code = 254;
  return static_cast<uint8_t>(code);
}

// ---- e2m1 ----

float e2m1_to_f32(uint8_t nibble) { return kE2M1[nibble & 0x0Fu]; }

uint8_t f32_to_e2m1(float f) {
  const uint32_t b = f32_bits(f);
  const uint32_t sign = (b >> 28) & 0x8u;
  const uint32_t a = b & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return 0;  // no NaN in e2m1: NaN encodes as +0
  uint32_t m = (a == 0x7F800000u) ? 0x7u : encode_mag(a, 1, 1);
  if (m > 0x7u) m = 0x7u;  // saturate at 6
  return static_cast<uint8_t>(sign | m);
}

// ---- ue4m3 ----

float ue4m3_to_f32(uint8_t v) { return kUE4M3[v]; }

float scale_to_f32(DType dt, const std::byte* p) {
  uint16_t h;
  switch (dt) {
    case DType::F32: {
      float f;
      std::memcpy(&f, p, 4);
      return f;
    }
    case DType::BF16: std::memcpy(&h, p, 2); return bf16_to_f32(h);
    case DType::F16: std::memcpy(&h, p, 2); return f16_to_f32(h);
    case DType::F8_E8M0:
    case DType::U8: return e8m0_to_f32(static_cast<uint8_t>(*p));
    case DType::F8_E4M3: return e4m3_to_f32(static_cast<uint8_t>(*p));
    default: return 0.0f;
  }
}

}  // namespace kiln
