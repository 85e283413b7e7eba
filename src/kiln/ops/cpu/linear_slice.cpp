#include "kiln/ops/cpu/linear_slice.h"

#include <cstring>
#include <numeric>
#include <utility>

#include "kiln/core/error.h"

namespace kiln::ops::cpu {

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The 4-bit value at column c of a row packed two per byte (element 2j in the low nibble).
uint8_t nibble_of_bytes(const uint8_t* row, int64_t c) { return (row[c >> 1] >> (4 * (c & 1))) & 0xF; }
// The same for int4_group's little-endian 32-bit words, 8 nibbles each, least significant first.
uint8_t nibble_of_words(const uint8_t* row, int64_t c) {
  uint32_t v;
  std::memcpy(&v, row + 4 * (c / 8), 4);
  return static_cast<uint8_t>((v >> (4 * (c % 8))) & 0xFu);
}

}  // namespace

PreparedLinear slice_linear(const PreparedLinear& l, int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                            std::string_view what) {
  if (r0 < 0 || r1 > l.out || r0 >= r1 || c0 < 0 || c1 > l.in || c0 >= c1) {
    fail(ErrorKind::Usage, "{}: slice rows [{}, {}) columns [{}, {}) is not inside its [{}, {}]", what, r0, r1, c0,
         c1, l.out, l.in);
  }
  const int64_t out = r1 - r0, in = c1 - c0;
  PreparedLinear s;
  s.out = out;
  s.in = in;
  s.stored = l.stored;
  s.numerics = l.numerics;
  s.rank_output = l.rank_output;
  if (!l.quantized()) {
    s.w.resize(static_cast<size_t>(out * in));
    for (int64_t r = 0; r < out; ++r) {
      std::memcpy(s.w.data() + r * in, l.w.data() + (r0 + r) * l.in + c0, static_cast<size_t>(in) * sizeof(float));
    }
    return s;
  }
  const QuantWeight& q = l.q;
  QuantWeight n;
  n.scheme = q.scheme;
  n.weight_dtype = q.weight_dtype;
  n.scale_lut = q.scale_lut;
  n.global = q.global;
  n.block_n = q.block_n;
  n.block_k = q.block_k;
  n.scale_cols = q.scale_cols;
  const uint8_t* codes = q.codes.data();
  switch (q.scheme) {
    case SchemeKind::BF16:
      n.codes.resize(static_cast<size_t>(out * 2 * in));
      for (int64_t r = 0; r < out; ++r) {
        std::memcpy(n.codes.data() + r * 2 * in, codes + (r0 + r) * q.row_bytes + 2 * c0, static_cast<size_t>(2 * in));
      }
      break;
    case SchemeKind::FP8Block: {
      n.codes.resize(static_cast<size_t>(out * in));
      for (int64_t r = 0; r < out; ++r) {
        std::memcpy(n.codes.data() + r * in, codes + (r0 + r) * q.row_bytes + c0, static_cast<size_t>(in));
      }
      n.block_n = std::gcd(q.block_n, r0);
      n.block_k = std::gcd(q.block_k, c0);
      n.scale_cols = ceil_div(in, n.block_k);
      const int64_t srows = ceil_div(out, n.block_n);
      n.scales.resize(static_cast<size_t>(srows * n.scale_cols));
      for (int64_t i = 0; i < srows; ++i) {
        for (int64_t j = 0; j < n.scale_cols; ++j) {
          n.scales[static_cast<size_t>(i * n.scale_cols + j)] =
              q.scales[static_cast<size_t>(((r0 + i * n.block_n) / q.block_n) * q.scale_cols + (c0 + j * n.block_k) / q.block_k)];
        }
      }
      break;
    }
    case SchemeKind::Int4Group: {
      const int64_t words = ceil_div(in, 8);
      n.codes.assign(static_cast<size_t>(out * 4 * words), 0);
      for (int64_t r = 0; r < out; ++r) {
        const uint8_t* src = codes + (r0 + r) * q.row_bytes;
        uint8_t* dst = n.codes.data() + r * 4 * words;
        for (int64_t c = 0; c < in; ++c) {
          uint32_t v;
          std::memcpy(&v, dst + 4 * (c / 8), 4);
          v |= static_cast<uint32_t>(nibble_of_words(src, c0 + c)) << (4 * (c % 8));
          std::memcpy(dst + 4 * (c / 8), &v, 4);
        }
      }
      // Groups: whole scale rows kept, columns mapped by g_idx, unless the slice starts on
      // a group boundary of a plain grouping (then its own groups, as stored).
      int64_t first = 0;
      if (q.g_idx.empty() && c0 % q.block_k == 0) {
        first = c0 / q.block_k;
        n.scale_cols = ceil_div(in, q.block_k);
      } else {
        n.g_idx.resize(static_cast<size_t>(in));
        for (int64_t c = 0; c < in; ++c) {
          n.g_idx[static_cast<size_t>(c)] =
              q.g_idx.empty() ? static_cast<int32_t>((c0 + c) / q.block_k) : q.g_idx[static_cast<size_t>(c0 + c)];
        }
      }
      n.scales.resize(static_cast<size_t>(out * n.scale_cols));
      if (!q.zeros.empty()) n.zeros.resize(n.scales.size());
      for (int64_t r = 0; r < out; ++r) {
        for (int64_t j = 0; j < n.scale_cols; ++j) {
          const size_t from = static_cast<size_t>((r0 + r) * q.scale_cols + first + j);
          const size_t to = static_cast<size_t>(r * n.scale_cols + j);
          n.scales[to] = q.scales[from];
          if (!q.zeros.empty()) n.zeros[to] = q.zeros[from];
        }
      }
      break;
    }
    case SchemeKind::MXFP4:
    case SchemeKind::NVFP4: {
      if (in % 2 != 0) fail(ErrorKind::Usage, "{}: a slice of {} packed e2m1 columns is odd", what, in);
      n.codes.assign(static_cast<size_t>(out * in / 2), 0);
      for (int64_t r = 0; r < out; ++r) {
        const uint8_t* src = codes + (r0 + r) * q.row_bytes;
        uint8_t* dst = n.codes.data() + r * in / 2;
        for (int64_t c = 0; c < in; ++c) dst[c >> 1] |= static_cast<uint8_t>(nibble_of_bytes(src, c0 + c) << (4 * (c & 1)));
      }
      n.block_k = std::gcd(q.block_k, c0);
      n.scale_cols = ceil_div(in, n.block_k);
      n.scale_codes.resize(static_cast<size_t>(out * n.scale_cols));
      for (int64_t r = 0; r < out; ++r) {
        for (int64_t j = 0; j < n.scale_cols; ++j) {
          n.scale_codes[static_cast<size_t>(r * n.scale_cols + j)] =
              q.scale_codes[static_cast<size_t>((r0 + r) * q.scale_cols + (c0 + j * n.block_k) / q.block_k)];
        }
      }
      break;
    }
  }
  s.prepare(std::move(n), what);
  return s;
}

}  // namespace kiln::ops::cpu
