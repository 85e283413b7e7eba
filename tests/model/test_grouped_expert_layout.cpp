// The grouped expert kernels' repacked layouts (ops/grouped_expert_layout.h): the fills,
// which take whole records by pointer arithmetic, write the bytes of the byte maps for any
// range, every kind; and the byte maps place every stored byte exactly once.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "kiln/core/codecs.h"
#include "kiln/ops/grouped_expert_layout.h"

namespace kiln::ops::grouped_layout {
namespace {

TEST(GroupedExpertLayout, FillsEqualTheByteMapsOverAnyRange) {
  std::mt19937 g(7);
  for (const Kind kind : {Kind::MXFP4, Kind::FP8, Kind::Nibbles}) {
    for (const uint64_t n : {16u, 48u}) {
      for (const uint64_t k : {128u, 384u}) {
        SCOPED_TRACE(testing::Message() << "kind " << static_cast<int>(kind) << " n " << n << " k " << k);
        const uint64_t rb = row_bytes(kind, k), total = n * rb;
        std::vector<std::byte> src(total);
        for (auto& b : src) b = static_cast<std::byte>(g());
        std::vector<std::byte> want(total);
        for (uint64_t i = 0; i < total; ++i) {
          const SourceByte p = source_of(kind, k, i);
          ASSERT_LT(p.row, n);
          ASSERT_LT(p.col, rb);
          want[i] = src[p.row * rb + p.col];
        }
        // The whole buffer, then ranges starting and ending inside records.
        std::vector<std::byte> got(total);
        fill(kind, src.data(), k, 0, total, got.data());
        EXPECT_EQ(got, want);
        std::uniform_int_distribution<uint64_t> at(0, total);
        for (int r = 0; r < 200; ++r) {
          uint64_t a = at(g), b = at(g);
          if (a > b) std::swap(a, b);
          std::vector<std::byte> part(b - a, std::byte{0xEE});
          fill(kind, src.data(), k, a, b - a, part.data());
          ASSERT_TRUE(std::equal(part.begin(), part.end(), want.begin() + static_cast<ptrdiff_t>(a)))
              << "bytes [" << a << ", " << b << ")";
        }
      }
    }
  }
}

// The per-byte maps the upload used before the fills (ops/cuda/moe_grouped.cpp, validated
// by the GPU kernels' tests), written as they were: the byte maps must be the same.
std::byte previous_byte(Kind kind, const std::byte* w, uint64_t k, uint64_t i) {
  if (kind == Kind::MXFP4) {
    const uint64_t S = k / 32, half = k / 2;
    const uint64_t rec = i / 8, byte = i % 8, lane = rec % 32, s = (rec / 32) % S, tile = rec / (32 * S);
    const uint64_t g = lane / 4, t = lane % 4;
    const uint64_t row = tile * 16 + g + ((byte / 2) % 2 ? 8 : 0);
    const uint64_t col = 32 * s + 4 * t + (byte >= 4 ? 16 : 0);
    return w[row * half + col / 2 + byte % 2];
  }
  if (kind == Kind::FP8) {
    const uint64_t S = k / 32;
    const uint64_t rec = i / 16, byte = i % 16, lane = rec % 32, s = (rec / 32) % S, tile = rec / (32 * S);
    const uint64_t g = lane / 4, t = lane % 4, reg = byte / 4;
    const uint64_t row = tile * 16 + g + (reg % 2 ? 8 : 0);
    const uint64_t col = 32 * s + 4 * t + (reg >= 2 ? 16 : 0) + byte % 4;
    return w[row * k + col];
  }
  const uint64_t C = k / 64;
  const uint64_t rec = i / 16, byte = i % 16, lane = rec % 32, c = (rec / 32) % C, tile = rec / (32 * C);
  const uint64_t g = lane / 4, t = lane % 4, j = byte / 4;
  uint32_t out = 0;
  for (uint64_t h = 0; h < 2; ++h) {
    const uint64_t nib = 2 * (byte % 4) + h, reg = nib / 2;
    const uint64_t row = tile * 16 + g + (reg % 2 ? 8 : 0);
    const uint64_t col = 16 * (4 * c + j) + 2 * t + (reg >= 2 ? 8 : 0) + nib % 2;
    const auto src = static_cast<uint32_t>(w[row * (k / 2) + col / 2]);
    out |= ((col % 2 ? src >> 4 : src) & 0xFu) << (4 * h);
  }
  return static_cast<std::byte>(out);
}

TEST(GroupedExpertLayout, ByteMapsAreThoseTheKernelsWereValidatedWith) {
  std::mt19937 g(11);
  for (const Kind kind : {Kind::MXFP4, Kind::FP8, Kind::Nibbles}) {
    const uint64_t n = 48, k = 384, rb = row_bytes(kind, k);
    std::vector<std::byte> src(n * rb);
    for (auto& b : src) b = static_cast<std::byte>(g());
    for (uint64_t i = 0; i < n * rb; ++i) {
      const SourceByte p = source_of(kind, k, i);
      ASSERT_EQ(src[p.row * rb + p.col], previous_byte(kind, src.data(), k, i)) << "kind " << static_cast<int>(kind) << " byte " << i;
    }
  }
}

TEST(GroupedExpertLayout, EveryStoredByteIsPlacedOnce) {
  for (const Kind kind : {Kind::MXFP4, Kind::FP8, Kind::Nibbles}) {
    const uint64_t n = 32, k = 256, rb = row_bytes(kind, k);
    std::vector<int> seen(n * rb, 0);
    for (uint64_t i = 0; i < n * rb; ++i) {
      const SourceByte p = source_of(kind, k, i);
      ++seen[p.row * rb + p.col];
    }
    for (uint64_t j = 0; j < seen.size(); ++j) ASSERT_EQ(seen[j], 1) << "kind " << static_cast<int>(kind) << " byte " << j;
  }
}

// Byte c of shift d's table: the e4m3 code the folded decode gives magnitude code c.
uint8_t fold_table_code(uint32_t d, uint32_t c) {
  return static_cast<uint8_t>(kMxfp4FoldTable[d][c / 4] >> (8 * (c % 4)));
}

// The folded MXFP4 decode: byte c of shift d's table is the e4m3 code of e2m1 magnitude c
// times 2^-d, exactly, for every shift the fold allows.
TEST(GroupedExpertLayout, Mxfp4FoldTableIsE2m1TimesTheShiftExactly) {
  for (uint32_t d = 0; d <= kMxfp4FoldMaxShift; ++d) {
    for (uint32_t c = 0; c < 8; ++c) {
      EXPECT_EQ(e4m3_to_f32(fold_table_code(d, c)),
                std::ldexp(e2m1_to_f32(static_cast<uint8_t>(c)), -static_cast<int>(d)))
          << "shift " << d << " magnitude code " << c;
    }
  }
  // One more shift would not be exact: 0.5 x 2^-9 is below e4m3's smallest subnormal.
  EXPECT_NE(e4m3_to_f32(f32_to_e4m3(std::ldexp(0.5f, -9))), std::ldexp(0.5f, -9));
}

// The folded scale word of a block: its four step exponents as a reference and shifts, each
// step's codes times 2^(e_ref - shift - 127) equal to the stored value; the steps holding
// only zeros do not count; spreads past the table, or a NaN scale, do not fold.
TEST(GroupedExpertLayout, Mxfp4FoldWordKeepsEveryStoredValue) {
  std::mt19937 g(11);
  const uint64_t k = 256, S = k / 32;
  std::vector<std::byte> codes(k / 2), scales(S);
  auto check = [&](uint64_t b, const uint32_t word) {
    const uint32_t ref = word & 0xFFu;
    for (uint64_t j = 0; j < 4; ++j) {
      const uint32_t d = (word >> (8 + 4 * j)) & 0xFu;
      ASSERT_LE(d, kMxfp4FoldMaxShift);
      for (uint64_t i = 0; i < 32; ++i) {
        const uint64_t x = 128 * b + 32 * j + i;
        const auto nib = static_cast<uint8_t>((static_cast<uint32_t>(codes[x / 2]) >> (4 * (x % 2))) & 0xFu);
        const double stored = std::ldexp(static_cast<double>(e2m1_to_f32(nib)),
                                         static_cast<int>(static_cast<uint32_t>(scales[4 * b + j])) - 127);
        const double mag = e4m3_to_f32(fold_table_code(d, nib & 7u));
        const double folded = (nib & 8u ? -1.0 : 1.0) * std::ldexp(mag, static_cast<int>(ref) - 127);
        ASSERT_EQ(folded, stored) << "block " << b << " step " << j << " input " << i;
      }
    }
  };
  for (auto& c : codes) c = static_cast<std::byte>(g());
  uint32_t word = 0;
  // Spreads 0..8 fold (the reference is the largest exponent).
  for (uint32_t spread = 0; spread <= kMxfp4FoldMaxShift; ++spread) {
    const uint32_t e[4] = {120 + spread, 120 + spread / 2, 120, 120 + spread};
    for (uint64_t j = 0; j < 4; ++j) scales[4 + j] = static_cast<std::byte>(e[j]);
    ASSERT_TRUE(mxfp4_fold_word(codes.data(), scales.data(), 1, word)) << spread;
    EXPECT_EQ(word & 0xFFu, 120 + spread);
    check(1, word);
  }
  // A spread of 9 with codes everywhere does not fold.
  for (uint64_t j = 0; j < 4; ++j) scales[j] = static_cast<std::byte>(130);
  scales[3] = static_cast<std::byte>(121);
  for (uint64_t i = 48; i < 64; ++i) codes[i] = std::byte{0x12};
  EXPECT_FALSE(mxfp4_fold_word(codes.data(), scales.data(), 0, word));
  // The far step holding only (signed) zeros folds, with shift 0 and the others' reference.
  for (uint64_t i = 48; i < 64; ++i) codes[i] = (i % 2) ? std::byte{0x88} : std::byte{0x08};
  ASSERT_TRUE(mxfp4_fold_word(codes.data(), scales.data(), 0, word));
  EXPECT_EQ(word & 0xFFu, 130u);
  EXPECT_EQ((word >> 20) & 0xFu, 0u);
  check(0, word);
  // The near steps all zero too: the reference is the nonzero one's.
  for (uint64_t i = 0; i < 48; ++i) codes[i] = std::byte{0};
  for (uint64_t i = 48; i < 64; ++i) codes[i] = std::byte{0x31};
  ASSERT_TRUE(mxfp4_fold_word(codes.data(), scales.data(), 0, word));
  EXPECT_EQ(word & 0xFFu, 121u);
  check(0, word);
  // A NaN scale never folds.
  scales[0] = static_cast<std::byte>(255);
  EXPECT_FALSE(mxfp4_fold_word(codes.data(), scales.data(), 0, word));
}

// The scan's row test agrees with building every block's word, over rows of random spreads,
// zero steps and NaN scales.
TEST(GroupedExpertLayout, Mxfp4RowFoldsAgreesWithEveryBlocksWord) {
  std::mt19937 g(13);
  const uint64_t k = 512, S = k / 32, NB = k / 128;
  std::vector<std::byte> codes(k / 2), scales(S);
  int folds = 0, not_folds = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    const uint32_t spread = g() % 12;
    for (auto& e : scales) e = static_cast<std::byte>(110 + g() % (spread + 1));
    if (g() % 50 == 0) scales[g() % S] = static_cast<std::byte>(255);
    for (auto& c : codes) c = static_cast<std::byte>(g());
    if (g() % 4 == 0)  // one step of zeros (either sign)
      for (uint64_t i = 0, s = g() % S; i < 16; ++i) codes[16 * s + i] = static_cast<std::byte>((g() % 2) ? 0x88 : 0x00);
    bool want = true;
    uint32_t word = 0;
    for (uint64_t b = 0; b < NB; ++b) want = want && mxfp4_fold_word(codes.data(), scales.data(), b, word);
    ASSERT_EQ(mxfp4_row_folds(codes.data(), scales.data(), NB), want) << "trial " << trial;
    (want ? folds : not_folds) += 1;
  }
  EXPECT_GT(folds, 100);
  EXPECT_GT(not_folds, 100);
}

}  // namespace
}  // namespace kiln::ops::grouped_layout
