// int4_group: compressed-tensors pack-quantized, 4 bits (artifact-formats.md §1c): eight
// values per int32 along k, element i in bits [4*(i%8), +4) (least significant first),
// stored unsigned as q + 8; zero points (asymmetric) packed the same way along n.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kiln/core/error.h"
#include "kiln/quant/parallel.h"
#include "kiln/quant/quantize.h"
#include "kiln/quant/scale_fit.h"

namespace kiln::quant {

using detail::cdiv;

Int4Quant quantize_int4_group(std::span<const float> w, int64_t n, int64_t k, const Int4Options& o) {
  detail::check_shape(w, n, k, "quantize_int4_group");
  if (o.group <= 0) fail(ErrorKind::Usage, "quantize_int4_group: group size {}", o.group);
  const DType sd = o.scale_dtype;
  if (sd != DType::BF16 && sd != DType::F16 && sd != DType::F32) {
    fail(ErrorKind::Usage, "quantize_int4_group: scale dtype {} (expected BF16, F16 or F32)", dtype_name(sd));
  }
  const int64_t groups = cdiv(k, o.group), words = cdiv(k, 8);
  std::vector<uint32_t> packed(static_cast<size_t>(n * words), 0u);  // padding nibbles stay 0
  std::vector<float> scales(static_cast<size_t>(n * groups));
  std::vector<uint32_t> zp;
  if (!o.symmetric) zp.assign(static_cast<size_t>(cdiv(n, 8) * groups), 0u);
  // Rows in multiples of 8: eight rows share each zero-point word.
  parallel_for(n, o.threads, n * k, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float* row = w.data() + i * k;
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t c0 = g * o.group, c1 = std::min(k, c0 + o.group);
        float s = 1.0f;
        int z = 0;  // signed zero point
        if (o.symmetric) {
          float m = 0.0f;
          m = detail::amax_of(row + c0, c1 - c0);
          if (m > 0.0f) s = detail::fit_scale(m, 7.5f, sd);
        } else {
          float lo = 0.0f, hi = 0.0f;
          for (int64_t j = c0; j < c1; ++j) {
            lo = std::min(lo, row[j]);
            hi = std::max(hi, row[j]);
          }
          // (hi - lo) / 15 as half-range / 7.5: hi - lo itself may overflow float.
          const float half_range = hi / 2.0f - lo / 2.0f;
          if (half_range > 0.0f) s = detail::fit_scale(half_range, 7.5f, sd);
          z = static_cast<int>(std::clamp(-8.0f - std::nearbyint(lo / s), -8.0f, 7.0f));
          zp[static_cast<size_t>((i / 8) * groups + g)] |= static_cast<uint32_t>(z + 8) << (4 * (i % 8));
        }
        scales[static_cast<size_t>(i * groups + g)] = s;
        for (int64_t j = c0; j < c1; ++j) {
          float q = std::clamp(std::nearbyint(row[j] / s) + static_cast<float>(z), -8.0f, 7.0f);
          // Near FLT_MAX, (q - z) * s may overflow: step toward the zero point instead.
          if (!std::isfinite((q - static_cast<float>(z)) * s)) q += q > static_cast<float>(z) ? -1.0f : 1.0f;
          const uint32_t u = static_cast<uint32_t>(static_cast<int>(q) + 8);
          packed[static_cast<size_t>(i * words + j / 8)] |= u << (4 * (j % 8));
        }
      }
    }
  }, 8);
  Int4Quant r;
  r.packed.dtype = DType::I32;
  r.packed.shape = {n, words};
  r.packed.bytes.resize(packed.size() * 4);
  if (!packed.empty()) std::memcpy(r.packed.bytes.data(), packed.data(), packed.size() * 4);
  r.scale = encode_floats(scales, {n, groups}, sd);
  r.shape.dtype = DType::I64;
  r.shape.shape = {2};
  r.shape.bytes.resize(16);
  const int64_t nk[2] = {n, k};
  std::memcpy(r.shape.bytes.data(), nk, 16);
  if (!o.symmetric) {
    QTensor z;
    z.dtype = DType::I32;
    z.shape = {cdiv(n, 8), groups};
    z.bytes.resize(zp.size() * 4);
    if (!zp.empty()) std::memcpy(z.bytes.data(), zp.data(), zp.size() * 4);
    r.zero_point = std::move(z);
  }
  return r;
}

}  // namespace kiln::quant
