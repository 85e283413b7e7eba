// AVX2 row decoders for quant_linear.cpp, chosen at prepare time when the CPU has AVX2
// (the build itself targets baseline x86-64). Each value is produced by the same float
// operations, in the same order, as the portable decoders (so the same bits): e4m3 by bit
// through f16 (vcvtph2ps, exact) then x 256 x scale; bf16 by a shift; e2m1 and int4 through per-group tables of exactly
// (e2m1 * scale) * global and float(u - z) * scale, looked up 8 at a time with vpermps.
// Only multiplications happen here, so no contraction into FMA can change a result.
#include "kiln/ops/cpu/quant_decode.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kiln/core/codecs.h"

namespace kiln::ops::cpu {
namespace {

#define KILN_AVX2 __attribute__((target("avx2")))

#define KILN_AVX2_F16C __attribute__((target("avx2,f16c")))

// Eight e4m3 bytes -> the exact floats, through f16: S.EEEE.MMM moved to f16's
// S.0EEEE.MMM0000000 is the same value x 2^-8 (bias 7 vs 15; subnormals map to f16
// subnormals), converted exactly by vcvtph2ps, then x 256 (exact). NaN codes
// (S.1111.111) have no such form: the caller checks `nan` (a movemask, 0 = none).
KILN_AVX2_F16C inline __m256 e4m3x8(const uint8_t* p, int& nan) {
  const __m128i w = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  const __m128i mag = _mm_and_si128(w, _mm_set1_epi16(0x7F));
  nan = _mm_movemask_epi8(_mm_cmpeq_epi16(mag, _mm_set1_epi16(0x7F)));
  const __m128i h = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(w, _mm_set1_epi16(0x80)), 8), _mm_slli_epi16(mag, 7));
  return _mm256_mul_ps(_mm256_cvtph_ps(h), _mm256_set1_ps(256.0f));
}

KILN_AVX2_F16C void decode_fp8_avx2(const QuantWeight& q, int64_t in, int64_t r0, int64_t r1, float* out) {
  const int64_t bk = q.block_k;
  for (int64_t r = r0; r < r1; ++r, out += in) {
    const uint8_t* c = q.codes.data() + r * q.row_bytes;
    const float* s = q.scales.data() + (r / q.block_n) * q.scale_cols;
    for (int64_t b = 0, gi = 0; b < in; b += bk, ++gi) {
      const float sc = s[gi];
      const __m256 sv = _mm256_set1_ps(sc);
      const int64_t e = std::min(in, b + bk);
      int64_t i = b;
      for (; i + 8 <= e; i += 8) {
        int nan;
        const __m256 v = e4m3x8(c + i, nan);
        if (nan != 0) {
          for (int j = 0; j < 8; ++j) out[i + j] = e4m3_to_f32(c[i + j]) * sc;
        } else {
          _mm256_storeu_ps(out + i, _mm256_mul_ps(v, sv));
        }
      }
      for (; i < e; ++i) out[i] = e4m3_to_f32(c[i]) * sc;
    }
  }
}

// bf16 -> f32 is the 16 bits moved up (bf16_to_f32).
KILN_AVX2 void decode_bf16_avx2(const QuantWeight& q, int64_t in, int64_t r0, int64_t r1, float* out) {
  const uint8_t* p = q.codes.data() + r0 * q.row_bytes;
  const int64_t n = (r1 - r0) * in;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 * i)));
    _mm256_storeu_ps(out + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
  }
  for (; i < n; ++i) {
    uint16_t v;
    std::memcpy(&v, p + 2 * i, 2);
    out[i] = bf16_to_f32(v);
  }
}

// Eight nibbles of a little-endian 32-bit word, element j = bits 4j..4j+3.
KILN_AVX2 inline __m256i nibbles8(uint32_t w) {
  return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(w)), _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28)),
                          _mm256_set1_epi32(0xF));
}

// t[n] for n = nibble: lo holds t[0..7], hi t[8..15]; bit 3 picks the half.
KILN_AVX2 inline __m256 lookup16(__m256i n, __m256 lo, __m256 hi) {
  const __m256 a = _mm256_permutevar8x32_ps(lo, n), b = _mm256_permutevar8x32_ps(hi, n);
  return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(n, 28)));
}

KILN_AVX2 void decode_fp4_avx2(const QuantWeight& q, int64_t in, int64_t r0, int64_t r1, float* out) {
  float e2m1[16];
  for (int i = 0; i < 16; ++i) e2m1[i] = e2m1_to_f32(static_cast<uint8_t>(i));
  const __m256 v_lo = _mm256_loadu_ps(e2m1), v_hi = _mm256_loadu_ps(e2m1 + 8);
  const int64_t g = q.block_k;
  const __m256 glv = _mm256_set1_ps(q.global);
  alignas(32) float t[16];
  for (int64_t r = r0; r < r1; ++r, out += in) {
    const uint8_t* c = q.codes.data() + r * q.row_bytes;
    const uint8_t* s = q.scale_codes.data() + r * q.scale_cols;
    for (int64_t b = 0, gi = 0; b < in; b += g, ++gi) {
      const float sc = q.scale_lut[s[gi]];
      const __m256 sv = _mm256_set1_ps(sc);
      const __m256 t_lo = _mm256_mul_ps(_mm256_mul_ps(v_lo, sv), glv), t_hi = _mm256_mul_ps(_mm256_mul_ps(v_hi, sv), glv);
      const int64_t e = std::min(in, b + g);
      int64_t i = b;
      if ((i & 7) != 0 || e - i < 8) {
        _mm256_store_ps(t, t_lo);
        _mm256_store_ps(t + 8, t_hi);
        for (; i < e && ((i & 7) != 0 || e - i < 8); ++i) out[i] = t[(c[i >> 1] >> (4 * (i & 1))) & 0xF];
      }
      for (; i + 8 <= e; i += 8) {
        uint32_t w;
        std::memcpy(&w, c + (i >> 1), 4);
        _mm256_storeu_ps(out + i, lookup16(nibbles8(w), t_lo, t_hi));
      }
      if (i < e) {
        _mm256_store_ps(t, t_lo);
        _mm256_store_ps(t + 8, t_hi);
        for (; i < e; ++i) out[i] = t[(c[i >> 1] >> (4 * (i & 1))) & 0xF];
      }
    }
  }
}

KILN_AVX2 void decode_int4_avx2(const QuantWeight& q, int64_t in, int64_t r0, int64_t r1, float* out) {
  const int64_t g = q.block_k;
  alignas(32) float t[16];
  for (int64_t r = r0; r < r1; ++r, out += in) {
    const uint8_t* c = q.codes.data() + r * q.row_bytes;
    const float* s = q.scales.data() + r * q.scale_cols;
    const uint8_t* z = q.zeros.empty() ? nullptr : q.zeros.data() + r * q.scale_cols;
    for (int64_t b = 0, gi = 0; b < in; b += g, ++gi) {
      const int64_t grp = gi;
      const int zp = z ? z[grp] : 8;
      const __m256 sv = _mm256_set1_ps(s[grp]);
      const __m256i u = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
      const __m256i zv = _mm256_set1_epi32(zp);
      const __m256 t_lo = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(u, zv)), sv);
      const __m256 t_hi = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(8)), zv)), sv);
      _mm256_store_ps(t, t_lo);
      _mm256_store_ps(t + 8, t_hi);
      const int64_t e = std::min(in, b + g);
      int64_t i = b;
      auto nib = [&](int64_t k) {
        uint32_t w;
        std::memcpy(&w, c + 4 * (k / 8), 4);
        return (w >> (4 * (k & 7))) & 0xF;
      };
      for (; i < e && (i & 7) != 0; ++i) out[i] = t[nib(i)];
      for (; i + 8 <= e; i += 8) {
        uint32_t w;
        std::memcpy(&w, c + 4 * (i / 8), 4);
        _mm256_storeu_ps(out + i, lookup16(nibbles8(w), t_lo, t_hi));
      }
      for (; i < e; ++i) out[i] = t[nib(i)];
    }
  }
}

}  // namespace

bool cpu_has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  return yes;
}

DecodeRowsFn avx2_decoder(const QuantWeight& q) {
  if (!cpu_has_avx2()) return nullptr;
  switch (q.scheme) {
    case SchemeKind::BF16: return q.weight_dtype == DType::BF16 ? decode_bf16_avx2 : nullptr;
    case SchemeKind::FP8Block: return decode_fp8_avx2;
    case SchemeKind::MXFP4:
    case SchemeKind::NVFP4: return decode_fp4_avx2;
    case SchemeKind::Int4Group: return q.g_idx.empty() ? decode_int4_avx2 : nullptr;
  }
  return nullptr;
}

}  // namespace kiln::ops::cpu

#else

namespace kiln::ops::cpu {
bool cpu_has_avx2() { return false; }
DecodeRowsFn avx2_decoder(const QuantWeight&) { return nullptr; }
}  // namespace kiln::ops::cpu

#endif
