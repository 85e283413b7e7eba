// The repacked weight layouts of the grouped expert kernels (ops/cuda/moe_grouped.cu has
// the layouts in words): where each byte of a repacked buffer comes from in the stored
// weight [n, k], and fills that write a range of it. Pure C++ (no CUDA), so CI tests the
// fills against the byte maps; the CUDA upload (ops/cuda/moe_grouped.cpp) runs the fills
// on its reader threads.
//
// A buffer is a sequence of records, one per (16-row tile, k step, lane): lane (g, t) =
// (lane / 4, lane % 4) holds rows r0 = 16 tile + g and r1 = r0 + 8.
//   MXFP4 (e2m1 pairs, k / 2 bytes a row): 8-byte records per 32-input step s: bytes
//     [16s + 2t, +1] of r0, then of r1, then [16s + 8 + 2t, +1] of r0 and of r1.
//   FP8 (e4m3, k bytes a row): 16-byte records per 32-input step s: bytes [32s + 4t, +3]
//     of r0, of r1, then [32s + 16 + 4t, +3] of r0 and of r1.
//   NVFP4 / int4 (two 4-bit codes a byte along k, k / 2 bytes a row): 16-byte records per
//     64-input chunk c: for j = 0..3, bytes 32c + 8j + t of r0, of r1, then 32c + 8j + 4 + t
//     of r0 and of r1 (mma.m16n8k16's a0..a3 of step 4c + j, two codes each).
// The fills take whole records by pointer arithmetic and the partial records at either end
// byte by byte; both give the byte maps' bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace kiln::ops::grouped_layout {

enum class Kind { MXFP4, FP8, Nibbles };

struct SourceByte {
  uint64_t row = 0, col = 0;  // col: the byte's column in the stored row
};

inline constexpr uint64_t record_bytes(Kind kind) { return kind == Kind::MXFP4 ? 8 : 16; }
// Inputs one record covers per row pair: a 32-input step, or (NVFP4 / int4) a 64-input chunk.
inline constexpr uint64_t record_inputs(Kind kind) { return kind == Kind::Nibbles ? 64 : 32; }
inline constexpr uint64_t row_bytes(Kind kind, uint64_t k) { return kind == Kind::FP8 ? k : k / 2; }

// Byte i of the repacked buffer of a weight with k inputs per row: its stored position.
inline SourceByte source_of(Kind kind, uint64_t k, uint64_t i) {
  const uint64_t R = record_bytes(kind), steps = k / record_inputs(kind);
  const uint64_t rec = i / R, b = i % R, lane = rec % 32, s = (rec / 32) % steps, tile = rec / (32 * steps);
  const uint64_t r0 = tile * 16 + lane / 4, t = lane % 4;
  switch (kind) {
    case Kind::MXFP4: return {r0 + ((b / 2) % 2) * 8, 16 * s + 2 * t + (b >= 4 ? 8 : 0) + b % 2};
    case Kind::FP8: return {r0 + ((b / 4) % 2) * 8, 32 * s + 4 * t + (b >= 8 ? 16 : 0) + b % 4};
    case Kind::Nibbles: {
      const uint64_t j = b / 4, reg = b % 4;
      return {r0 + (reg % 2) * 8, 32 * s + 8 * j + t + (reg >= 2 ? 4 : 0)};
    }
  }
  return {};
}

// Bytes [off, off + len) of the repacked buffer of `src` (rows of row_bytes(kind, k)).
inline void fill(Kind kind, const std::byte* src, uint64_t k, uint64_t off, uint64_t len, std::byte* dst) {
  const uint64_t R = record_bytes(kind), steps = k / record_inputs(kind), rb = row_bytes(kind, k);
  const uint64_t end = off + len;
  auto one = [&](uint64_t i) {
    const SourceByte p = source_of(kind, k, i);
    return src[p.row * rb + p.col];
  };
  uint64_t i = off;
  for (; i < end && i % R != 0; ++i) *dst++ = one(i);
  if (i + R <= end) {
    const uint64_t rec = i / R;
    uint64_t lane = rec % 32, s = (rec / 32) % steps, tile = rec / (32 * steps);
    for (; i + R <= end; i += R, dst += R) {
      const uint64_t t = lane % 4;
      const std::byte* a = src + (tile * 16 + lane / 4) * rb;  // row r0
      const std::byte* c = a + 8 * rb;                          // row r1
      switch (kind) {
        case Kind::MXFP4: {
          const uint64_t x = 16 * s + 2 * t;
          dst[0] = a[x], dst[1] = a[x + 1], dst[2] = c[x], dst[3] = c[x + 1];
          dst[4] = a[x + 8], dst[5] = a[x + 9], dst[6] = c[x + 8], dst[7] = c[x + 9];
          break;
        }
        case Kind::FP8: {
          const uint64_t x = 32 * s + 4 * t;
          for (int q = 0; q < 4; ++q) {
            dst[q] = a[x + q], dst[4 + q] = c[x + q];
            dst[8 + q] = a[x + 16 + q], dst[12 + q] = c[x + 16 + q];
          }
          break;
        }
        case Kind::Nibbles: {
          const uint64_t x = 32 * s + t;
          for (int j = 0; j < 4; ++j) {
            dst[4 * j] = a[x + 8 * j], dst[4 * j + 1] = c[x + 8 * j];
            dst[4 * j + 2] = a[x + 8 * j + 4], dst[4 * j + 3] = c[x + 8 * j + 4];
          }
          break;
        }
      }
      if (++lane == 32) {
        lane = 0;
        if (++s == steps) s = 0, ++tile;
      }
    }
  }
  for (; i < end; ++i) *dst++ = one(i);
}

// ---- MXFP4 scales: per step, or folded into the codes ----
//
// The grouped kernels take an MXFP4 set's per-32 E8M0 scales one of two ways, chosen at load
// for the whole set. The scale buffer is [n / 16 tiles][k / 128 blocks][16 rows] 32-bit
// words either way.
//   Per step: the word holds the block's four step exponents (byte j: step j); each step's
//     product is scaled by 2^(e_j - 127) on the CUDA cores.
//   Folded (mxfp4_fold_word): the word holds a reference exponent e_ref and each step's
//     shift d_j = e_ref - e_j <= kMxfp4FoldMaxShift; the kernel decodes step j's e2m1 codes
//     to the e4m3 values code x 2^-d_j (kMxfp4FoldTable), exactly, so the block's four steps
//     accumulate on the tensor core and the block's sum is scaled by 2^(e_ref - 127) once.
// e2m1 magnitudes {0, .5, 1, 1.5, 2, 3, 4, 6} times 2^-d are e4m3 values for d <= 8 (the
// smallest, 2^-9 and 3 x 2^-9 at d = 8, are e4m3 subnormals); 2^-10 is not.
inline constexpr uint32_t kMxfp4FoldMaxShift = 8;
// Per shift d, the e4m3 codes of magnitudes 0 .. 7 times 2^-d as two byte-permute words
// (byte c of the pair: magnitude code c).
inline constexpr uint32_t kMxfp4FoldTable[kMxfp4FoldMaxShift + 1][2] = {
    {0x3C383000u, 0x4C484440u}, {0x34302800u, 0x44403C38u}, {0x2C282000u, 0x3C383430u},
    {0x24201800u, 0x34302C28u}, {0x1C181000u, 0x2C282420u}, {0x14100800u, 0x24201C18u},
    {0x0C080400u, 0x1C181410u}, {0x06040200u, 0x14100C08u}, {0x03020100u, 0x0C080604u}};

// Block b (inputs [128 b, 128 b + 128)) of one stored MXFP4 row: codes_row its k / 2 bytes of
// e2m1 pairs, scales_row its k / 32 E8M0 bytes. Whether it folds, and its folded word: bits
// 0-7 e_ref, bits 8 + 4 j .. 11 + 4 j step j's shift. e_ref is the largest step exponent
// when the four are within kMxfp4FoldMaxShift of it; otherwise the largest among the steps
// holding a nonzero code (127 if none does), and an all-zero step gets shift 0 (its codes
// decode to zero under any shift). A NaN scale (255) never folds.
inline bool mxfp4_fold_word(const std::byte* codes_row, const std::byte* scales_row, uint64_t b, uint32_t& word) {
  uint32_t e[4], lo = 255, hi = 0;
  for (int j = 0; j < 4; ++j) {
    e[j] = static_cast<uint32_t>(scales_row[4 * b + static_cast<uint64_t>(j)]);
    if (e[j] == 255) return false;
    lo = e[j] < lo ? e[j] : lo;
    hi = e[j] > hi ? e[j] : hi;
  }
  bool nonzero[4] = {true, true, true, true};
  uint32_t ref = hi;
  if (hi - lo > kMxfp4FoldMaxShift) {
    ref = 0;
    bool any = false;
    for (int j = 0; j < 4; ++j) {
      const std::byte* c = codes_row + 64 * b + 16 * static_cast<uint64_t>(j);
      bool nz = false;
      for (int i = 0; i < 16 && !nz; ++i) nz = (static_cast<uint32_t>(c[i]) & 0x77u) != 0;
      nonzero[j] = nz;
      if (nz) ref = e[j] > ref ? e[j] : ref, any = true;
    }
    if (!any) ref = 127;
  }
  word = ref;
  for (int j = 0; j < 4; ++j) {
    const uint32_t d = nonzero[j] ? ref - e[j] : 0;
    if (d > kMxfp4FoldMaxShift) return false;
    word |= d << (8 + 4 * j);
  }
  return true;
}

// Whether every one of a row's nb blocks folds (mxfp4_fold_word returns true for each), the
// load-time scan's test: blocks whose four exponents lie within the fold (the common case)
// are settled from their scale bytes alone, ~2.4x faster than building every word.
inline bool mxfp4_row_folds(const std::byte* codes_row, const std::byte* scales_row, uint64_t nb) {
  auto mx = [](uint32_t a, uint32_t b) { return a > b ? a : b; };
  auto mn = [](uint32_t a, uint32_t b) { return a < b ? a : b; };
  for (uint64_t b = 0; b < nb; ++b) {
    uint32_t v = 0;  // the block's four exponents, one load
    std::memcpy(&v, scales_row + 4 * b, 4);
    const uint32_t e0 = v & 0xFFu, e1 = (v >> 8) & 0xFFu, e2 = (v >> 16) & 0xFFu, e3 = v >> 24;
    const uint32_t hi = mx(mx(e0, e1), mx(e2, e3)), lo = mn(mn(e0, e1), mn(e2, e3));
    if (hi != 255 && hi - lo <= kMxfp4FoldMaxShift) continue;
    uint32_t word = 0;
    if (!mxfp4_fold_word(codes_row, scales_row, b, word)) return false;
  }
  return true;
}

}  // namespace kiln::ops::grouped_layout
