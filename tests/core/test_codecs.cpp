// Exhaustive tests of the scalar codecs. Every decoder is checked code by code against a
// formula evaluated here in double (sign * 2^(exp - bias) * (1 + m / 2^M), subnormals
// sign * 2^(1 - bias) * m / 2^M), and where possible against a second method (bit
// reinterpretation, the compiler's _Float16). Encoders are checked for round trips of
// every code, round-to-nearest-even at every midpoint, and saturation.
#include "kiln/core/codecs.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace kiln {
namespace {

// ---------------------------------------------------------------------------
// Independent reference model of a small binary float format.

struct Format {
  int ebits;
  int mbits;
  int bias;
  // How the all-ones exponent is used.
  enum class Top { IEEE, E4M3FN, Normal } top;
};

constexpr Format kBF16{8, 7, 127, Format::Top::IEEE};
constexpr Format kF16{5, 10, 15, Format::Top::IEEE};
constexpr Format kE4M3{4, 3, 7, Format::Top::E4M3FN};
constexpr Format kE5M2{5, 2, 15, Format::Top::IEEE};
constexpr Format kE2M1{2, 1, 1, Format::Top::Normal};

int total_bits(const Format& f) { return 1 + f.ebits + f.mbits; }

bool ref_is_nan(const Format& f, uint32_t code) {
  const uint32_t exp = (code >> f.mbits) & ((1u << f.ebits) - 1);
  const uint32_t man = code & ((1u << f.mbits) - 1);
  const uint32_t exp_max = (1u << f.ebits) - 1;
  switch (f.top) {
    case Format::Top::IEEE: return exp == exp_max && man != 0;
    case Format::Top::E4M3FN: return exp == exp_max && man == (1u << f.mbits) - 1;
    case Format::Top::Normal: return false;
  }
  return false;
}

// The value of `code` (not NaN), in double.
double ref_value(const Format& f, uint32_t code) {
  const int nb = total_bits(f);
  const bool neg = (code >> (nb - 1)) & 1;
  const uint32_t exp = (code >> f.mbits) & ((1u << f.ebits) - 1);
  const uint32_t man = code & ((1u << f.mbits) - 1);
  const double frac = static_cast<double>(man) / std::ldexp(1.0, f.mbits);
  double mag;
  if (f.top == Format::Top::IEEE && exp == (1u << f.ebits) - 1) {
    mag = std::numeric_limits<double>::infinity();
  } else if (exp == 0) {
    mag = std::ldexp(frac, 1 - f.bias);
  } else {
    mag = std::ldexp(1.0 + frac, static_cast<int>(exp) - f.bias);
  }
  return neg ? -mag : mag;
}

uint32_t f32_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}
float f32_from_bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// Exact equality including the sign of zero.
void expect_same(float got, double want, uint32_t code) {
  ASSERT_FALSE(std::isnan(got)) << "code 0x" << std::hex << code;
  EXPECT_EQ(static_cast<double>(got), want) << "code 0x" << std::hex << code;
  EXPECT_EQ(std::signbit(got), std::signbit(want)) << "code 0x" << std::hex << code;
}

template <typename Decode>
void check_decoder_exhaustive(const Format& f, Decode decode) {
  const uint32_t n = 1u << total_bits(f);
  for (uint32_t c = 0; c < n; ++c) {
    const float got = decode(c);
    if (ref_is_nan(f, c)) {
      EXPECT_TRUE(std::isnan(got)) << "code 0x" << std::hex << c;
    } else {
      expect_same(got, ref_value(f, c), c);
    }
  }
}

// Positive, non-NaN codes in increasing value order (code order = value order).
std::vector<uint32_t> positive_codes(const Format& f, bool include_inf) {
  std::vector<uint32_t> out;
  const uint32_t n = 1u << (total_bits(f) - 1);
  for (uint32_t c = 0; c < n; ++c) {
    if (ref_is_nan(f, c)) continue;
    if (!include_inf && std::isinf(ref_value(f, c))) continue;
    out.push_back(c);
  }
  return out;
}

// For every pair of adjacent positive finite codes (lo, lo+1) and both signs:
// the midpoint encodes to the even code; a hair below / above goes to lo / hi.
// Midpoints of all formats tested here are exact in f32.
template <typename Encode>
void check_rne_midpoints(const Format& f, Encode encode, bool include_inf_neighbour) {
  const std::vector<uint32_t> codes = positive_codes(f, include_inf_neighbour);
  const uint32_t sign_bit = 1u << (total_bits(f) - 1);
  for (size_t i = 0; i + 1 < codes.size(); ++i) {
    const uint32_t lo = codes[i], hi = codes[i + 1];
    ASSERT_EQ(hi, lo + 1);
    double vhi = ref_value(f, hi);
    if (std::isinf(vhi)) {
      // Midpoint between the largest finite value and the next step beyond it.
      vhi = ref_value(f, lo) + (ref_value(f, lo) - ref_value(f, lo - 1));
    }
    const double mid_d = (ref_value(f, lo) + vhi) / 2;
    const float mid = static_cast<float>(mid_d);
    ASSERT_EQ(static_cast<double>(mid), mid_d) << "midpoint not exact in f32";
    const uint32_t even = (lo & 1u) ? hi : lo;
    for (int s = 0; s < 2; ++s) {
      const float sg = s ? -1.0f : 1.0f;
      const uint32_t sb = s ? sign_bit : 0;
      EXPECT_EQ(encode(sg * mid), sb | even) << "midpoint " << mid << " between 0x" << std::hex << lo;
      EXPECT_EQ(encode(sg * std::nextafter(mid, 0.0f)), sb | lo) << "below midpoint " << mid;
      EXPECT_EQ(encode(sg * std::nextafter(mid, std::numeric_limits<float>::infinity())), sb | hi) << "above midpoint " << mid;
    }
  }
}

template <typename Encode, typename Decode>
void check_round_trip(const Format& f, Encode encode, Decode decode) {
  const uint32_t n = 1u << total_bits(f);
  for (uint32_t c = 0; c < n; ++c) {
    if (ref_is_nan(f, c)) continue;
    EXPECT_EQ(encode(decode(c)), c) << "code 0x" << std::hex << c;
  }
}

// Reference encoder: nearest finite code by exhaustive search, ties to the even code,
// values beyond the largest finite code clamp to it (for saturating formats).
uint32_t ref_encode_saturating(const Format& f, const std::vector<uint32_t>& codes, float x) {
  const double a = std::fabs(static_cast<double>(x));
  uint32_t best = codes[0];
  double best_err = std::fabs(ref_value(f, best) - a);
  for (uint32_t c : codes) {
    const double err = std::fabs(ref_value(f, c) - a);
    if (err < best_err || (err == best_err && (c & 1u) == 0)) {
      best = c;
      best_err = err;
    }
  }
  return (std::signbit(x) ? 1u << (total_bits(f) - 1) : 0u) | best;
}

// ---------------------------------------------------------------------------
// bf16

TEST(CodecsTest, Bf16DecodeAllCodes) {
  check_decoder_exhaustive(kBF16, [](uint32_t c) { return bf16_to_f32(static_cast<uint16_t>(c)); });
  // Second method: a bf16 is the top half of an f32.
  for (uint32_t c = 0; c < 65536; ++c) {
    const float want = f32_from_bits(c << 16);
    const float got = bf16_to_f32(static_cast<uint16_t>(c));
    EXPECT_EQ(f32_bits(got), f32_bits(want)) << c;
  }
}

TEST(CodecsTest, Bf16RoundTripAllCodes) {
  check_round_trip(
      kBF16, [](float x) -> uint32_t { return f32_to_bf16(x); },
      [](uint32_t c) { return bf16_to_f32(static_cast<uint16_t>(c)); });
}

TEST(CodecsTest, Bf16RneMidpoints) {
  check_rne_midpoints(kBF16, [](float x) -> uint32_t { return f32_to_bf16(x); }, true);
}

TEST(CodecsTest, Bf16NaNAndInf) {
  for (uint32_t c = 0; c < 65536; ++c) {
    if (!ref_is_nan(kBF16, c)) continue;
    const uint16_t e = f32_to_bf16(bf16_to_f32(static_cast<uint16_t>(c)));
    EXPECT_TRUE(std::isnan(bf16_to_f32(e)));
    EXPECT_EQ(e & 0x8000u, c & 0x8000u);
    EXPECT_NE(e & 0x0040u, 0u) << "NaN must be quiet";
  }
  // A NaN whose payload lives only in the low 16 bits must not become inf.
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(f32_from_bits(0x7F800001u)))));
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(f32_from_bits(0xFF800001u)))));
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_EQ(f32_to_bf16(-std::numeric_limits<float>::infinity()), 0xFF80);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7F80);  // rounds up to inf
  EXPECT_EQ(f32_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3F80);
}

TEST(CodecsTest, Bf16EncodeRandomMatchesReference) {
  // Reference: pick the nearer of truncation and truncation + 1 ulp, computed in double.
  std::mt19937 rng(1234);
  for (int i = 0; i < 2000000; ++i) {
    const uint32_t bits = rng();
    const float x = f32_from_bits(bits);
    if (std::isnan(x) || std::isinf(x)) continue;
    const uint32_t t = bits >> 16;
    const double lo = bf16_to_f32(static_cast<uint16_t>(t));
    const double hi_code_val = ref_value(kBF16, (t + 1) & 0xFFFF);
    const double d_lo = std::fabs(static_cast<double>(x) - lo);
    double d_hi = std::fabs(static_cast<double>(x) - hi_code_val);
    if (std::isinf(hi_code_val)) d_hi = std::fabs(std::ldexp(1.0, 128) - std::fabs(static_cast<double>(x)));
    uint32_t want = (d_lo < d_hi || (d_lo == d_hi && (t & 1u) == 0)) ? t : t + 1;
    ASSERT_EQ(f32_to_bf16(x), want) << "x bits 0x" << std::hex << bits;
  }
}

// ---------------------------------------------------------------------------
// f16

TEST(CodecsTest, F16DecodeAllCodes) {
  check_decoder_exhaustive(kF16, [](uint32_t c) { return f16_to_f32(static_cast<uint16_t>(c)); });
}

#if defined(__FLT16_MAX__)
TEST(CodecsTest, F16DecodeMatchesCompilerFloat16) {
  for (uint32_t c = 0; c < 65536; ++c) {
    const uint16_t h = static_cast<uint16_t>(c);
    _Float16 v;
    std::memcpy(&v, &h, 2);
    const float want = static_cast<float>(v);
    const float got = f16_to_f32(h);
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << c;
    } else {
      EXPECT_EQ(f32_bits(got), f32_bits(want)) << c;
    }
  }
}

TEST(CodecsTest, F16EncodeMatchesCompilerFloat16) {
  // A stride through every f32 bit pattern plus random ones.
  auto check = [](uint32_t bits) {
    const float x = f32_from_bits(bits);
    const _Float16 h = static_cast<_Float16>(x);
    uint16_t want;
    std::memcpy(&want, &h, 2);
    const uint16_t got = f32_to_f16(x);
    if (std::isnan(x)) {
      ASSERT_TRUE(std::isnan(f16_to_f32(got)));
    } else {
      ASSERT_EQ(got, want) << "x bits 0x" << std::hex << bits;
    }
  };
  for (uint64_t b = 0; b <= 0xFFFFFFFFull; b += 1021) check(static_cast<uint32_t>(b));
  std::mt19937 rng(99);
  for (int i = 0; i < 1000000; ++i) check(rng());
  // Dense around the f16 subnormal / normal boundary and the overflow threshold.
  for (uint32_t b = 0x33000000u; b < 0x39000000u; b += 61) check(b);
  for (uint32_t b = 0x477F0000u; b < 0x47810000u; ++b) check(b);
}
#endif

TEST(CodecsTest, F16RoundTripAllCodes) {
  check_round_trip(
      kF16, [](float x) -> uint32_t { return f32_to_f16(x); },
      [](uint32_t c) { return f16_to_f32(static_cast<uint16_t>(c)); });
}

TEST(CodecsTest, F16RneMidpoints) {
  check_rne_midpoints(kF16, [](float x) -> uint32_t { return f32_to_f16(x); }, true);
}

TEST(CodecsTest, F16OverflowAndUnderflow) {
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7BFF);
  EXPECT_EQ(f32_to_f16(65519.996f), 0x7BFF);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7C00);  // tie with the step beyond -> even = inf
  EXPECT_EQ(f32_to_f16(1e9f), 0x7C00);
  EXPECT_EQ(f32_to_f16(-1e9f), 0xFC00);
  EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::infinity()), 0x7C00);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);  // tie -> even (zero)
  EXPECT_EQ(f32_to_f16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  EXPECT_EQ(f32_to_f16(-std::ldexp(1.0f, -26)), 0x8000);
  EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(f32_to_f16(std::nextafter(std::ldexp(1.0f, -14), 0.0f)), 0x0400);  // rounds up to min normal
  const uint16_t nan = f32_to_f16(std::numeric_limits<float>::quiet_NaN());
  EXPECT_TRUE(std::isnan(f16_to_f32(nan)));
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(f32_from_bits(0x7F800001u)))));
}

// ---------------------------------------------------------------------------
// fp8 e4m3fn

TEST(CodecsTest, E4M3DecodeAllCodes) {
  check_decoder_exhaustive(kE4M3, [](uint32_t c) { return e4m3_to_f32(static_cast<uint8_t>(c)); });
  EXPECT_TRUE(std::isnan(e4m3_to_f32(0x7F)));
  EXPECT_TRUE(std::isnan(e4m3_to_f32(0xFF)));
  EXPECT_EQ(e4m3_to_f32(0x7E), 448.0f);
  EXPECT_EQ(e4m3_to_f32(0xFE), -448.0f);
  EXPECT_EQ(e4m3_to_f32(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(e4m3_to_f32(0x08), std::ldexp(1.0f, -6));
  EXPECT_EQ(e4m3_to_f32(0x38), 1.0f);
  EXPECT_EQ(e4m3_to_f32(0x78), 256.0f);  // exponent 15 is a normal binade, no inf
  int nans = 0;
  for (int c = 0; c < 256; ++c) nans += std::isnan(e4m3_to_f32(static_cast<uint8_t>(c)));
  EXPECT_EQ(nans, 2);
}

TEST(CodecsTest, E4M3RoundTripAllCodes) {
  check_round_trip(
      kE4M3, [](float x) -> uint32_t { return f32_to_e4m3(x); },
      [](uint32_t c) { return e4m3_to_f32(static_cast<uint8_t>(c)); });
}

TEST(CodecsTest, E4M3RneMidpoints) {
  check_rne_midpoints(kE4M3, [](float x) -> uint32_t { return f32_to_e4m3(x); }, false);
}

TEST(CodecsTest, E4M3Saturation) {
  EXPECT_EQ(f32_to_e4m3(1e9f), 0x7E);
  EXPECT_EQ(f32_to_e4m3(-1e9f), 0xFE);
  EXPECT_EQ(f32_to_e4m3(464.0f), 0x7E);  // midpoint 448 / 480 must not produce NaN 0x7F
  EXPECT_EQ(f32_to_e4m3(479.0f), 0x7E);
  EXPECT_EQ(f32_to_e4m3(480.0f), 0x7E);
  EXPECT_EQ(f32_to_e4m3(std::numeric_limits<float>::max()), 0x7E);
  EXPECT_EQ(f32_to_e4m3(std::numeric_limits<float>::infinity()), 0x7E);
  EXPECT_EQ(f32_to_e4m3(-std::numeric_limits<float>::infinity()), 0xFE);
  EXPECT_EQ(f32_to_e4m3(std::numeric_limits<float>::quiet_NaN()), 0x7F);
  EXPECT_EQ(f32_to_e4m3(-std::numeric_limits<float>::quiet_NaN()), 0x7F);
  EXPECT_EQ(f32_to_e4m3(std::ldexp(1.0f, -10)), 0x00);  // tie min subnormal / zero -> zero
  EXPECT_EQ(f32_to_e4m3(std::nextafter(std::ldexp(1.0f, -10), 1.0f)), 0x01);
  EXPECT_EQ(f32_to_e4m3(-std::ldexp(1.0f, -20)), 0x80);
  EXPECT_EQ(f32_to_e4m3(std::numeric_limits<float>::denorm_min()), 0x00);
}

TEST(CodecsTest, E4M3EncodeMatchesBruteForce) {
  const std::vector<uint32_t> codes = positive_codes(kE4M3, false);
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> wide(-600.0f, 600.0f);
  std::uniform_real_distribution<float> expo(-14.0f, 10.0f);
  for (int i = 0; i < 200000; ++i) {
    const float x = (i & 1) ? wide(rng) : std::copysign(std::exp2(expo(rng)), wide(rng));
    ASSERT_EQ(f32_to_e4m3(x), ref_encode_saturating(kE4M3, codes, x)) << x;
  }
}

// ---------------------------------------------------------------------------
// fp8 e5m2

TEST(CodecsTest, E5M2DecodeAllCodes) {
  check_decoder_exhaustive(kE5M2, [](uint32_t c) { return e5m2_to_f32(static_cast<uint8_t>(c)); });
  EXPECT_EQ(e5m2_to_f32(0x7C), std::numeric_limits<float>::infinity());
  EXPECT_EQ(e5m2_to_f32(0xFC), -std::numeric_limits<float>::infinity());
  EXPECT_EQ(e5m2_to_f32(0x7B), 57344.0f);
  EXPECT_EQ(e5m2_to_f32(0x01), std::ldexp(1.0f, -16));
  for (int c : {0x7D, 0x7E, 0x7F, 0xFD, 0xFE, 0xFF}) EXPECT_TRUE(std::isnan(e5m2_to_f32(static_cast<uint8_t>(c))));
  // Second method: e5m2 is the top byte of an f16.
  for (uint32_t c = 0; c < 256; ++c) {
    const float a = e5m2_to_f32(static_cast<uint8_t>(c));
    const float b = f16_to_f32(static_cast<uint16_t>(c << 8));
    if (std::isnan(b)) {
      EXPECT_TRUE(std::isnan(a)) << c;
    } else {
      EXPECT_EQ(f32_bits(a), f32_bits(b)) << c;
    }
  }
}

// ---------------------------------------------------------------------------
// e8m0

TEST(CodecsTest, E8M0DecodeAllCodes) {
  EXPECT_TRUE(std::isnan(e8m0_to_f32(0xFF)));
  EXPECT_EQ(static_cast<double>(e8m0_to_f32(0x00)), std::ldexp(1.0, -127));
  EXPECT_EQ(e8m0_to_f32(127), 1.0f);
  EXPECT_EQ(static_cast<double>(e8m0_to_f32(254)), std::ldexp(1.0, 127));
  for (int c = 0; c < 255; ++c) {
    const float v = e8m0_to_f32(static_cast<uint8_t>(c));
    EXPECT_EQ(static_cast<double>(v), std::ldexp(1.0, c - 127)) << c;
    EXPECT_EQ(static_cast<double>(v), std::pow(2.0, c - 127)) << c;
  }
}

TEST(CodecsTest, E8M0CeilEncode) {
  for (int c = 0; c < 255; ++c) {
    const float p = e8m0_to_f32(static_cast<uint8_t>(c));
    EXPECT_EQ(f32_to_e8m0_ceil(p), c) << "exact power 2^" << c - 127;
    if (c < 254) {
      EXPECT_EQ(f32_to_e8m0_ceil(std::nextafter(p, 1e38f)), c + 1) << "just above 2^" << c - 127;
    }
    if (c > 0) {
      EXPECT_EQ(f32_to_e8m0_ceil(std::nextafter(p, 0.0f)), c) << "just below 2^" << c - 127;
    }
  }
  EXPECT_EQ(f32_to_e8m0_ceil(0.0f), 0xFF);
  EXPECT_EQ(f32_to_e8m0_ceil(-0.0f), 0xFF);
  EXPECT_EQ(f32_to_e8m0_ceil(-1.0f), 0xFF);
  EXPECT_EQ(f32_to_e8m0_ceil(std::numeric_limits<float>::quiet_NaN()), 0xFF);
  EXPECT_EQ(f32_to_e8m0_ceil(-std::numeric_limits<float>::infinity()), 0xFF);
  EXPECT_EQ(f32_to_e8m0_ceil(std::numeric_limits<float>::infinity()), 0xFE);
  EXPECT_EQ(f32_to_e8m0_ceil(std::numeric_limits<float>::max()), 0xFE);  // 2^128 clamps to 2^127
  EXPECT_EQ(f32_to_e8m0_ceil(std::numeric_limits<float>::denorm_min()), 0x00);
  EXPECT_EQ(f32_to_e8m0_ceil(3.0f), 129);
  EXPECT_EQ(f32_to_e8m0_ceil(0.75f), 127);
  EXPECT_EQ(f32_to_e8m0_ceil(1.0f), 127);
  // Against ceil(log2(x)) computed with frexp in double, over random positive floats.
  std::mt19937 rng(5);
  for (int i = 0; i < 500000; ++i) {
    const float x = f32_from_bits(rng() & 0x7FFFFFFFu);
    if (std::isnan(x) || std::isinf(x) || x == 0.0f) continue;
    int fe;
    const double m = std::frexp(static_cast<double>(x), &fe);  // x = m * 2^fe, m in [0.5, 1)
    const int e = (m == 0.5) ? fe - 1 : fe;                     // ceil(log2(x))
    const int want = std::min(254, std::max(0, e + 127));
    ASSERT_EQ(f32_to_e8m0_ceil(x), want) << x;
  }
}

// ---------------------------------------------------------------------------
// e2m1

TEST(CodecsTest, E2M1DecodeAllNibbles) {
  check_decoder_exhaustive(kE2M1, [](uint32_t c) { return e2m1_to_f32(static_cast<uint8_t>(c)); });
  const float mags[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  for (int c = 0; c < 16; ++c) {
    const float want = (c & 8) ? -mags[c & 7] : mags[c & 7];
    EXPECT_EQ(e2m1_to_f32(static_cast<uint8_t>(c)), want) << c;
    EXPECT_EQ(std::signbit(e2m1_to_f32(static_cast<uint8_t>(c))), (c & 8) != 0) << c;
  }
}

TEST(CodecsTest, E2M1RoundTripAndRne) {
  check_round_trip(
      kE2M1, [](float x) -> uint32_t { return f32_to_e2m1(x); },
      [](uint32_t c) { return e2m1_to_f32(static_cast<uint8_t>(c)); });
  check_rne_midpoints(kE2M1, [](float x) -> uint32_t { return f32_to_e2m1(x); }, false);
  // The ties spelled out: each goes to the code with an even mantissa bit.
  EXPECT_EQ(f32_to_e2m1(0.25f), 0x0);
  EXPECT_EQ(f32_to_e2m1(0.75f), 0x2);  // 1.0
  EXPECT_EQ(f32_to_e2m1(1.25f), 0x2);  // 1.0
  EXPECT_EQ(f32_to_e2m1(1.75f), 0x4);  // 2.0
  EXPECT_EQ(f32_to_e2m1(2.5f), 0x4);   // 2.0
  EXPECT_EQ(f32_to_e2m1(3.5f), 0x6);   // 4.0
  EXPECT_EQ(f32_to_e2m1(5.0f), 0x6);   // 4.0
  EXPECT_EQ(f32_to_e2m1(-5.0f), 0xE);
}

TEST(CodecsTest, E2M1Saturation) {
  EXPECT_EQ(f32_to_e2m1(100.0f), 0x7);
  EXPECT_EQ(e2m1_to_f32(f32_to_e2m1(100.0f)), 6.0f);
  EXPECT_EQ(f32_to_e2m1(-100.0f), 0xF);
  EXPECT_EQ(f32_to_e2m1(7.0f), 0x7);
  EXPECT_EQ(f32_to_e2m1(8.0f), 0x7);
  EXPECT_EQ(f32_to_e2m1(1e30f), 0x7);
  EXPECT_EQ(f32_to_e2m1(std::numeric_limits<float>::infinity()), 0x7);
  EXPECT_EQ(f32_to_e2m1(-std::numeric_limits<float>::infinity()), 0xF);
  EXPECT_EQ(f32_to_e2m1(-0.0f), 0x8);
  EXPECT_EQ(f32_to_e2m1(-0.1f), 0x8);
  EXPECT_EQ(f32_to_e2m1(1e-30f), 0x0);
  EXPECT_EQ(f32_to_e2m1(std::numeric_limits<float>::quiet_NaN()), 0x0);
  const std::vector<uint32_t> codes = positive_codes(kE2M1, false);
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> d(-8.0f, 8.0f);
  for (int i = 0; i < 100000; ++i) {
    const float x = d(rng);
    ASSERT_EQ(f32_to_e2m1(x), ref_encode_saturating(kE2M1, codes, x)) << x;
  }
}

TEST(CodecsTest, E2M1PackedNibbleOrder) {
  // Element 2j in the low nibble, 2j+1 in the high nibble.
  const uint8_t bytes[3] = {0x72, 0xF1, 0x0C};
  EXPECT_EQ(e2m1_packed_at(bytes, 0), 1.0f);   // 0x2
  EXPECT_EQ(e2m1_packed_at(bytes, 1), 6.0f);   // 0x7
  EXPECT_EQ(e2m1_packed_at(bytes, 2), 0.5f);   // 0x1
  EXPECT_EQ(e2m1_packed_at(bytes, 3), -6.0f);  // 0xF
  EXPECT_EQ(e2m1_packed_at(bytes, 4), -2.0f);  // 0xC
  EXPECT_EQ(e2m1_packed_at(bytes, 5), 0.0f);   // 0x0
  for (int b = 0; b < 256; ++b) {
    const uint8_t byte = static_cast<uint8_t>(b);
    EXPECT_EQ(e2m1_packed_at(&byte, 0), e2m1_to_f32(byte & 0x0F));
    EXPECT_EQ(e2m1_packed_at(&byte, 1), e2m1_to_f32(byte >> 4));
  }
  // Encoding a pair and packing it low-first decodes back in order.
  const float vals[2] = {-1.5f, 3.0f};
  const uint8_t packed = static_cast<uint8_t>(f32_to_e2m1(vals[0]) | (f32_to_e2m1(vals[1]) << 4));
  EXPECT_EQ(packed, 0x5B);
  EXPECT_EQ(e2m1_packed_at(&packed, 0), vals[0]);
  EXPECT_EQ(e2m1_packed_at(&packed, 1), vals[1]);
}

// ---------------------------------------------------------------------------
// ue4m3

TEST(CodecsTest, UE4M3DecodeAllCodes) {
  for (uint32_t c = 0; c < 256; ++c) {
    const float got = ue4m3_to_f32(static_cast<uint8_t>(c));
    if (c >= 0x7F) {
      EXPECT_TRUE(std::isnan(got)) << "code 0x" << std::hex << c;  // sign bit set, or 0x7F
    } else {
      expect_same(got, ref_value(kE4M3, c), c);  // unsigned: same bits as e4m3's positive half
      EXPECT_EQ(f32_bits(got), f32_bits(e4m3_to_f32(static_cast<uint8_t>(c))));
    }
  }
  EXPECT_EQ(ue4m3_to_f32(0x7E), 448.0f);
  EXPECT_EQ(ue4m3_to_f32(0x00), 0.0f);
  EXPECT_FALSE(std::signbit(ue4m3_to_f32(0x00)));
}

}  // namespace
}  // namespace kiln
