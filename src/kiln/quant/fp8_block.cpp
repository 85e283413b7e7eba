// fp8_block: e4m3 weight with one scale per block_n x block_k block (artifact-formats.md §1a/b).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kiln/core/codecs.h"
#include "kiln/core/error.h"
#include "kiln/quant/fast_codecs.h"
#include "kiln/quant/parallel.h"
#include "kiln/quant/quantize.h"
#include "kiln/quant/scale_fit.h"

namespace kiln::quant {

using detail::cdiv;

Fp8BlockQuant quantize_fp8_block(std::span<const float> w, int64_t n, int64_t k, const Fp8BlockOptions& o) {
  detail::check_shape(w, n, k, "quantize_fp8_block");
  if (o.block_n <= 0 || o.block_k <= 0) fail(ErrorKind::Usage, "quantize_fp8_block: block {}x{}", o.block_n, o.block_k);
  const DType sd = o.scale_dtype;
  if (sd != DType::F8_E8M0 && sd != DType::U8 && sd != DType::F32 && sd != DType::BF16 && sd != DType::F16) {
    fail(ErrorKind::Usage, "quantize_fp8_block: scale dtype {} (expected F8_E8M0, F32, BF16 or F16)", dtype_name(sd));
  }
  const bool pow2 = sd == DType::F8_E8M0 || sd == DType::U8;
  const int64_t gr = cdiv(n, o.block_n), gc = cdiv(k, o.block_k);
  Fp8BlockQuant r;
  r.weight.dtype = DType::F8_E4M3;
  r.weight.shape = {n, k};
  r.weight.bytes.resize(static_cast<size_t>(n * k));
  std::vector<float> scales(static_cast<size_t>(gr * gc));
  std::vector<uint8_t> codes(pow2 ? scales.size() : 0);
  auto* q = reinterpret_cast<uint8_t*>(r.weight.bytes.data());
  const float* wp = w.data();
  const int64_t bn = o.block_n, bk = o.block_k;
  parallel_for(gr, o.threads, n * k, [&, wp, q, bn, bk, pow2, n, k, gc](int64_t b0, int64_t b1) {
    for (int64_t bi = b0; bi < b1; ++bi) {
      const int64_t r0 = bi * bn, r1 = std::min(n, r0 + bn);
      for (int64_t bj = 0; bj < gc; ++bj) {
        const int64_t c0 = bj * bk, c1 = std::min(k, c0 + bk);
        float m = 0.0f;
        for (int64_t i = r0; i < r1; ++i)
          m = std::max(m, detail::amax_of(wp + i * k + c0, c1 - c0));
        float s = 1.0f;
        const size_t si = static_cast<size_t>(bi * gc + bj);
        if (pow2) {
          uint8_t code = 127;
          if (m > 0.0f) {
            code = f32_to_e8m0_ceil(m / 448.0f);
            // m / 448 may round down onto a power of two the exact quotient exceeds.
            while (code < 254 && m / e8m0_to_f32(code) > 448.0f) ++code;
          }
          codes[si] = code;
          s = e8m0_to_f32(code);
        } else if (m > 0.0f) {
          s = detail::fit_scale(m, 448.0f, sd);
        }
        scales[si] = s;
        const float inv = 1.0f / s;  // exact for a power of two
        for (int64_t i = r0; i < r1; ++i) {
          const float* wr = wp + i * k;
          uint8_t* qr = q + i * k;
          for (int64_t j = c0; j < c1; ++j) {
            qr[j] = fast::e4m3(pow2 ? wr[j] * inv : wr[j] / s);
          }
          // Near FLT_MAX, rounding up could dequantize to infinity: round toward zero instead.
          if (m > 1e38f) {
            for (int64_t j = c0; j < c1; ++j)
              if (!std::isfinite(e4m3_to_f32(qr[j]) * s)) --qr[j];
          }
        }
      }
    }
  });
  if (pow2) {
    r.scale.dtype = sd;
    r.scale.shape = {gr, gc};
    r.scale.bytes.resize(codes.size());
    if (!codes.empty()) std::memcpy(r.scale.bytes.data(), codes.data(), codes.size());
  } else {
    r.scale = encode_floats(scales, {gr, gc}, sd);
  }
  return r;
}

}  // namespace kiln::quant
