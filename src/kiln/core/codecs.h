// Scalar codecs for every element format kiln reads. Decoding is exact (every code maps
// to the float it denotes); encoding rounds to nearest, ties to even, and saturates
// where the format has no infinity (e4m3 -> +-448, e2m1 -> +-6).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kiln/core/dtype.h"

namespace kiln {

float bf16_to_f32(uint16_t v);
uint16_t f32_to_bf16(float f);  // RNE; NaN stays NaN (quiet)

float f16_to_f32(uint16_t v);
uint16_t f32_to_f16(float f);  // RNE; overflow -> inf

// fp8 e4m3fn (OCP): bias 7, no infinities, S.1111.111 = NaN, max normal 448.
float e4m3_to_f32(uint8_t v);
uint8_t f32_to_e4m3(float f);  // RNE, saturating to +-448; NaN -> 0x7F

// fp8 e5m2: bias 15, IEEE-like (inf and NaN).
float e5m2_to_f32(uint8_t v);

// e8m0 (UE8M0): 2^(v-127); 0xFF = NaN. 0x00 = 2^-127.
float e8m0_to_f32(uint8_t v);
// The e8m0 code of a power of two 2^e, e in [-127, 127]; for other values the
// exponent of the next power of two up (ceil(log2(f))), clamped. f <= 0 or NaN -> 0xFF.
uint8_t f32_to_e8m0_ceil(float f);

// e2m1 (FP4): one nibble, bit 3 = sign; magnitudes {0, .5, 1, 1.5, 2, 3, 4, 6}.
float e2m1_to_f32(uint8_t nibble);
uint8_t f32_to_e2m1(float f);  // RNE on the e2m1 grid, saturating to +-6
// Packed e2m1 pairs: byte j holds element 2j in its low nibble, element 2j+1 in its high.
inline float e2m1_packed_at(const uint8_t* bytes, int64_t i) {
  uint8_t b = bytes[i >> 1];
  return e2m1_to_f32((i & 1) ? (b >> 4) : (b & 0x0F));
}

// ue4m3: unsigned e4m3 (NVFP4 group scales). Bias 7, 7 value bits; the top bit of the
// byte must be 0 (a set sign bit is reported by validators, decoded here as NaN).
float ue4m3_to_f32(uint8_t v);

// One scale value stored as dtype dt at p (F32, BF16, F16, E8M0 / U8 as e8m0, F8_E4M3), as
// the float it denotes; 0 for a dtype that is not a scale format.
float scale_to_f32(DType dt, const std::byte* p);

}  // namespace kiln
