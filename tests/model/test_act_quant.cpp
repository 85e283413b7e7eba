// DeepSeek's 1 x 128 activation quantizer on the CPU (ops/act_quant.h) against values
// computed by hand and kiln's e4m3 codec (core/codecs.h) as the oracle: the power-of-two
// scale rule, the 1e-4 floor of an all-zero block, the top of the e4m3 range (448, never
// the NaN code), round-to-nearest-even for normals and subnormals, the bf16 input path and
// both scale layouts. The CUDA quantizer is checked bitwise against this one (tests/gpu).
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <random>
#include <vector>

#include "kiln/core/codecs.h"
#include "kiln/core/error.h"
#include "kiln/ops/act_quant.h"

namespace kiln::ops {
namespace {

constexpr int64_t B = kActQuantBlock;

struct Quantized {
  std::vector<uint8_t> q;
  std::vector<float> s;  // row-major [M, K/128]
};

Quantized quantize(const std::vector<float>& x, int64_t M, int64_t K) {
  Quantized r{std::vector<uint8_t>(static_cast<size_t>(M * K)), std::vector<float>(static_cast<size_t>(M * K / B))};
  cpu::act_quant(x.data(), K, M, K, r.q.data(), K, r.s.data(), ActScaleLayout{K / B, 1});
  return r;
}

// One block of 128 values: `head` first, the rest zero.
std::vector<float> block(std::initializer_list<float> head) {
  std::vector<float> x(B, 0.0f);
  size_t i = 0;
  for (float v : head) x[i++] = v;
  return x;
}

// The rule in exact arithmetic: 2^ceil(log2(max(amax, 1e-4) / 448)) (agrees with the
// fp32 product except within 2^-24 of a power of two, which the values here avoid).
float exact_scale(float amax) {
  const double a = std::max<double>(amax, static_cast<double>(1e-4f));
  return static_cast<float>(std::exp2(std::ceil(std::log2(a / 448.0))));
}

TEST(ActQuant, PowerOfTwoScale) {
  // amax 1: 1/448 lies in (2^-9, 2^-8], so s = 2^-8 and x / s = 256 x.
  auto r = quantize(block({1.0f, -0.5f, 0x1p-8f, 0.75f}), 1, B);
  EXPECT_EQ(r.s[0], 0x1p-8f);
  EXPECT_EQ(r.q[0], 0x78);  // 256 = 2^8: exponent field 8 + 7 = 15
  EXPECT_EQ(r.q[1], 0xF0);  // -128
  EXPECT_EQ(r.q[2], 0x38);  // 1
  EXPECT_EQ(r.q[3], 0x74);  // 192 = 1.5 x 2^7
  // amax 3: 3/448 in (2^-8, 2^-7] -> s = 2^-7, 3 -> 384 = 1.5 x 2^8.
  r = quantize(block({3.0f}), 1, B);
  EXPECT_EQ(r.s[0], 0x1p-7f);
  EXPECT_EQ(r.q[0], 0x7C);
  // Exactly 448 x 2^j keeps s = 2^j; one ulp more doubles it.
  for (int j : {-20, -3, 0, 5, 40}) {
    const float a = std::ldexp(448.0f, j);
    r = quantize(block({a}), 1, B);
    EXPECT_EQ(r.s[0], std::ldexp(1.0f, j)) << j;
    EXPECT_EQ(r.q[0], 0x7E) << j;
    r = quantize(block({std::nextafter(a, 1e38f)}), 1, B);
    EXPECT_EQ(r.s[0], std::ldexp(1.0f, j + 1)) << j;
  }
  // Magnitudes from 1e-3 to 1e30, away from the powers of two: the exact rule.
  for (float a : {1e-3f, 0.37f, 5.1f, 1000.0f, 123456.0f, 1e30f}) {
    r = quantize(block({a}), 1, B);
    EXPECT_EQ(r.s[0], exact_scale(a)) << a;
    EXPECT_EQ(std::bit_cast<uint32_t>(r.s[0]) & 0x7FFFFFu, 0u) << a;  // a power of two
  }
  EXPECT_EQ(act_quant_scale(5.1f), 0x1p-6f);  // 5.1 / 448 = 0.0114 in (2^-7, 2^-6]
}

TEST(ActQuant, TopOfTheRangeIs448NeverNaN) {
  // With s = 1 (amax 448): 440 and 432 (a tie between 416 and 448, 448 even) round up to
  // the largest finite code, 424 down to 416 (0x7D).
  auto r = quantize(block({448.0f, -448.0f, 440.0f, 432.0f, 424.0f}), 1, B);
  EXPECT_EQ(r.s[0], 1.0f);
  EXPECT_EQ(r.q[0], 0x7E);
  EXPECT_EQ(r.q[1], 0xFE);
  EXPECT_EQ(r.q[2], 0x7E);
  EXPECT_EQ(r.q[3], 0x7E);
  EXPECT_EQ(r.q[4], 0x7D);
  // amax 447: 447/448 < 1 -> s = 1, and 447 rounds up to 448.
  r = quantize(block({-447.0f}), 1, B);
  EXPECT_EQ(r.s[0], 1.0f);
  EXPECT_EQ(r.q[0], 0xFE);
  // The clamp in front of the rounding (DeepSeek's T.clamp) saturates, NaN passes through.
  EXPECT_EQ(act_quant_clamp(1000.0f), 448.0f);
  EXPECT_EQ(act_quant_clamp(-1e30f), -448.0f);
  EXPECT_EQ(act_quant_clamp(447.5f), 447.5f);
  EXPECT_TRUE(std::isnan(act_quant_clamp(NAN)));
  // Random blocks over 60 binades: the scale keeps |x / s| <= 448, so no code is NaN.
  std::mt19937 g(7);
  std::normal_distribution<float> nd;
  std::uniform_int_distribution<int> ex(-30, 30);
  const int64_t M = 64, K = 1024;
  std::vector<float> x(static_cast<size_t>(M * K));
  for (int64_t i = 0; i < M * K; i += B) {
    const float mag = std::ldexp(1.0f, ex(g));
    for (int64_t j = 0; j < B; ++j) x[static_cast<size_t>(i + j)] = nd(g) * mag;
  }
  r = quantize(x, M, K);
  for (size_t i = 0; i < x.size(); ++i) ASSERT_NE(r.q[i] & 0x7F, 0x7F) << i;
}

TEST(ActQuant, ZeroBlockUsesTheFloor) {
  // amax 0 -> max(0, 1e-4) / 448 = 2.2e-7 in (2^-23, 2^-22]: s = 2^-22, all codes zero,
  // -0 keeps its sign.
  auto r = quantize(block({0.0f, -0.0f}), 1, B);
  EXPECT_EQ(r.s[0], 0x1p-22f);
  EXPECT_EQ(r.q[0], 0x00);
  EXPECT_EQ(r.q[1], 0x80);
  for (int64_t i = 2; i < B; ++i) EXPECT_EQ(r.q[static_cast<size_t>(i)], 0x00);
  // Below the floor the scale stays 2^-22: 1e-6 / 2^-22 = 4.19 -> 4 (0x48).
  r = quantize(block({1e-6f}), 1, B);
  EXPECT_EQ(r.s[0], 0x1p-22f);
  EXPECT_EQ(r.q[0], 0x48);
}

TEST(ActQuant, RoundsToNearestEven) {
  // s = 1 (amax 448). Normals: spacing 2 in [16, 32): 17 is a tie -> 16 (even mantissa),
  // 19 -> 20, 17.5 -> 18. Subnormals: spacing 2^-9: 2^-10 -> 0, 3 x 2^-10 -> 2^-8 (m = 2),
  // 5 x 2^-10 -> 2 x 2^-9 (tie to even), 2^-11 -> 0, -3 x 2^-10 -> -2^-8.
  auto r = quantize(block({448.0f, 17.0f, 19.0f, 17.5f, 0x1p-10f, 0x3p-10f, 0x5p-10f, 0x1p-11f, -0x3p-10f}), 1, B);
  ASSERT_EQ(r.s[0], 1.0f);
  const uint8_t want[] = {0x7E, 0x58, 0x5A, 0x59, 0x00, 0x02, 0x02, 0x00, 0x82};
  for (size_t i = 0; i < std::size(want); ++i) EXPECT_EQ(r.q[i], want[i]) << i;
  // Random values: each code is the codec's (oracle) rounding of x / s, and decodes to
  // within half an e4m3 step of it.
  std::mt19937 g(11);
  std::normal_distribution<float> nd;
  const int64_t M = 9, K = 512;
  std::vector<float> x(static_cast<size_t>(M * K));
  for (auto& v : x) v = nd(g) * 3.0f;
  r = quantize(x, M, K);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t c = 0; c < K; ++c) {
      const size_t i = static_cast<size_t>(m * K + c);
      const float sc = r.s[static_cast<size_t>(m * (K / B) + c / B)];
      ASSERT_EQ(r.q[i], f32_to_e4m3(x[i] / sc)) << m << ", " << c;
      const float v = x[i] / sc, d = e4m3_to_f32(r.q[i]);
      const float step = std::fabs(v) < 0x1p-6f ? 0x1p-9f : std::ldexp(1.0f, std::ilogb(v) - 3);
      ASSERT_LE(std::fabs(d - v), step / 2) << m << ", " << c;
    }
  }
}

TEST(ActQuant, Bf16InputAndScaleLayouts) {
  // bf16 rows quantize as their fp32 values; MN-major scales ({1, ld}) hold the row-major
  // ones; strides past K leave the gaps alone.
  std::mt19937 g(3);
  std::normal_distribution<float> nd;
  const int64_t M = 5, K = 384, ldx = K + 8, ldq = K + 16, ld = 8;
  std::vector<uint16_t> xb(static_cast<size_t>(M * ldx));
  std::vector<float> xf(static_cast<size_t>(M * ldx));
  for (size_t i = 0; i < xb.size(); ++i) {
    xb[i] = f32_to_bf16(nd(g) * std::ldexp(1.0f, static_cast<int>(i / B % 7) - 3));
    xf[i] = bf16_to_f32(xb[i]);
  }
  std::vector<uint8_t> qf(static_cast<size_t>(M * ldq), 0xAA), qb(qf);
  std::vector<float> sf(static_cast<size_t>(M * K / B)), sb(static_cast<size_t>(K / B * ld), -1.0f);
  cpu::act_quant(xf.data(), ldx, M, K, qf.data(), ldq, sf.data(), ActScaleLayout{K / B, 1});
  cpu::act_quant_bf16(xb.data(), ldx, M, K, qb.data(), ldq, sb.data(), ActScaleLayout{1, ld});
  EXPECT_EQ(qf, qb);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t c = K; c < ldq; ++c) EXPECT_EQ(qf[static_cast<size_t>(m * ldq + c)], 0xAA);
    for (int64_t b = 0; b < K / B; ++b) EXPECT_EQ(sf[static_cast<size_t>(m * (K / B) + b)], sb[static_cast<size_t>(b * ld + m)]);
  }
  for (int64_t b = 0; b < K / B; ++b)
    for (int64_t m = M; m < ld; ++m) EXPECT_EQ(sb[static_cast<size_t>(b * ld + m)], -1.0f);
}

TEST(ActQuant, KMustBeWholeBlocks) {
  std::vector<float> x(200, 1.0f);
  std::vector<uint8_t> q(200);
  std::vector<float> s(2);
  EXPECT_THROW(cpu::act_quant(x.data(), 200, 1, 200, q.data(), 200, s.data(), ActScaleLayout{2, 1}), Error);
  EXPECT_THROW(cpu::act_quant(x.data(), 0, 1, 0, q.data(), 0, s.data(), ActScaleLayout{1, 1}), Error);
  EXPECT_NO_THROW(cpu::act_quant(x.data(), 128, 0, 128, q.data(), 128, s.data(), ActScaleLayout{1, 1}));
}

}  // namespace
}  // namespace kiln::ops
