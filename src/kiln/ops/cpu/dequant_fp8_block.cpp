#include "kiln/ops/dequant_fp8_block.h"

#include "kiln/core/codecs.h"

namespace kiln::ops::cpu {

void dequant_fp8_block_e8m0(const uint8_t* q, const uint8_t* scale, const Fp8BlockShape& s, float* out) {
  const int64_t sc = s.scale_cols();
  for (int64_t r = 0; r < s.rows; ++r) {
    const uint8_t* srow = scale + (r / s.block_n) * sc;
    for (int64_t c = 0; c < s.cols; ++c) {
      out[r * s.cols + c] = e4m3_to_f32(q[r * s.cols + c]) * e8m0_to_f32(srow[c / s.block_k]);
    }
  }
}

}  // namespace kiln::ops::cpu
