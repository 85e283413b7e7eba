#include "kiln/quant/dequantize.h"

#include <cstring>

#include "kiln/core/codecs.h"
#include "kiln/core/error.h"
#include "kiln/quant/parallel.h"
#include "kiln/quant/quantize.h"

namespace kiln::quant {
namespace {

// A little-endian 32-bit word at p (packed int4 codes and zero points, g_idx entries).
uint32_t word_at(const std::byte* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

}  // namespace

std::vector<float> dequantize(const HostQuantLinear& m, int threads) {
  const int64_t n = m.n, k = m.k;
  std::vector<float> out(static_cast<size_t>(n * k));
  float* w = out.data();
  const std::byte* q = m.weight.data;
  const std::byte* s = m.scale.data;
  std::function<void(int64_t, int64_t)> rows;
  switch (m.scheme) {
    case SchemeKind::BF16:
      rows = [&](int64_t r0, int64_t r1) {
        const size_t es = dtype_size(m.weight_dtype);
        for (int64_t i = r0 * k; i < r1 * k; ++i) w[i] = decode_scale(m.weight_dtype, q + static_cast<size_t>(i) * es);
      };
      break;
    case SchemeKind::FP8Block:
      rows = [&](int64_t r0, int64_t r1) {
        const size_t es = dtype_size(m.scale_dtype);
        const int64_t scols = (k + m.block_k - 1) / m.block_k;
        for (int64_t r = r0; r < r1; ++r) {
          for (int64_t c = 0; c < k; ++c) {
            const int64_t at = (r / m.block_n) * scols + c / m.block_k;
            const float scale = decode_scale(m.scale_dtype, s + static_cast<size_t>(at) * es);
            w[r * k + c] = e4m3_to_f32(static_cast<uint8_t>(q[r * k + c])) * scale;
          }
        }
      };
      break;
    case SchemeKind::MXFP4:
    case SchemeKind::NVFP4:
      rows = [&](int64_t r0, int64_t r1) {
        const size_t es = dtype_size(m.scale_dtype);
        const int64_t g = m.block_k, scols = (k + g - 1) / g;
        const auto* qb = reinterpret_cast<const uint8_t*>(q);
        for (int64_t r = r0; r < r1; ++r) {
          for (int64_t c = 0; c < k; ++c) {
            const float scale = decode_scale(m.scale_dtype, s + static_cast<size_t>(r * scols + c / g) * es);
            w[r * k + c] = e2m1_packed_at(qb + r * (k / 2), c) * scale * m.global;
          }
        }
      };
      break;
    case SchemeKind::Int4Group:
      rows = [&](int64_t r0, int64_t r1) {
        const size_t es = dtype_size(m.scale_dtype);
        const int64_t words = (k + 7) / 8, groups = m.scale_cols, g = m.block_k;
        const bool zp = !m.zero_point.empty(), act_order = !m.g_idx.empty();
        for (int64_t r = r0; r < r1; ++r) {
          for (int64_t c = 0; c < k; ++c) {
            const uint32_t word = word_at(q + 4 * (r * words + c / 8));
            const int u = static_cast<int>((word >> (4 * (c % 8))) & 0xF);
            const int64_t grp = act_order ? static_cast<int32_t>(word_at(m.g_idx.data + 4 * c)) : c / g;
            if (grp < 0 || grp >= groups) fail_invalid("{}: g_idx[{}] = {} is outside [0, {})", m.name, c, grp, groups);
            int z = 8;
            if (zp) {
              const uint32_t zw = word_at(m.zero_point.data + 4 * ((r / 8) * groups + grp));
              z = static_cast<int>((zw >> (4 * (r % 8))) & 0xF);
            }
            w[r * k + c] = static_cast<float>(u - z) * decode_scale(m.scale_dtype, s + static_cast<size_t>(r * groups + grp) * es);
          }
        }
      };
      break;
  }
  parallel_for(n, threads, n * k, rows);
  return out;
}

}  // namespace kiln::quant
