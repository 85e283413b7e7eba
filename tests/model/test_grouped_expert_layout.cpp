// The grouped expert kernels' repacked layouts (ops/grouped_expert_layout.h): the fills,
// which take whole records by pointer arithmetic, write the bytes of the byte maps for any
// range, every kind; and the byte maps place every stored byte exactly once.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

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

}  // namespace
}  // namespace kiln::ops::grouped_layout
