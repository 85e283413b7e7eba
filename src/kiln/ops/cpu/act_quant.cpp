// DeepSeek's 1 x 128 activation quantizer (ops/act_quant.h), the CPU reference.
#include "kiln/ops/act_quant.h"

#include <algorithm>
#include <bit>
#include <cmath>

#include "kiln/core/codecs.h"
#include "kiln/core/error.h"

namespace kiln::ops::cpu {
namespace {

inline float load(const float* p) { return *p; }
inline float load(const uint16_t* p) { return std::bit_cast<float>(static_cast<uint32_t>(*p) << 16); }  // bf16

// The act_quant scale of n values (their amax by fmax, as the GPU: a NaN is dropped).
float block_scale(const float* v, int64_t n) {
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) amax = std::fmax(amax, std::fabs(v[i]));
  return act_quant_scale(amax);
}

// The e4m3 code of v in a block of scale sc.
uint8_t block_code(float v, float sc) { return f32_to_e4m3(act_quant_clamp(v / sc)); }

template <typename T>
void quantize_rows(const T* x, int64_t ldx, int64_t M, int64_t K, uint8_t* q, int64_t ldq, float* s, ActScaleLayout sl,
                   const char* what) {
  if (M < 0 || K <= 0 || K % kActQuantBlock != 0)
    fail(ErrorKind::Usage, "{}: [{}, {}] (K must be a positive multiple of {})", what, M, K, kActQuantBlock);
  float v[kActQuantBlock];
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t b = 0; b < K / kActQuantBlock; ++b) {
      const T* xb = x + m * ldx + b * kActQuantBlock;
      for (int64_t i = 0; i < kActQuantBlock; ++i) v[i] = load(xb + i);
      const float sc = block_scale(v, kActQuantBlock);
      uint8_t* qb = q + m * ldq + b * kActQuantBlock;
      for (int64_t i = 0; i < kActQuantBlock; ++i) qb[i] = block_code(v[i], sc);
      s[m * sl.row_stride + b * sl.block_stride] = sc;
    }
  }
}

}  // namespace

void act_quant(const float* x, int64_t ldx, int64_t M, int64_t K, uint8_t* q, int64_t ldq, float* s,
               ActScaleLayout sl) {
  quantize_rows(x, ldx, M, K, q, ldq, s, sl, "act_quant");
}

void act_quant_bf16(const uint16_t* x, int64_t ldx, int64_t M, int64_t K, uint8_t* q, int64_t ldq, float* s,
                    ActScaleLayout sl) {
  quantize_rows(x, ldx, M, K, q, ldq, s, sl, "act_quant_bf16");
}

void act_fake_quant(const float* x, int64_t ldx, int64_t M, int64_t K, float* y, int64_t ldy) {
  if (M < 0 || K <= 0) fail(ErrorKind::Usage, "act_fake_quant: [{}, {}] (K must be positive)", M, K);
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * ldx;
    float* yr = y + m * ldy;
    for (int64_t b0 = 0; b0 < K; b0 += kActQuantBlock) {
      const int64_t b1 = std::min(K, b0 + kActQuantBlock);
      const float sc = block_scale(xr + b0, b1 - b0);
      for (int64_t i = b0; i < b1; ++i) yr[i] = e4m3_to_f32(block_code(xr[i], sc)) * sc;
    }
  }
}

void round_bf16(const float* x, int64_t ldx, int64_t M, int64_t K, float* y, int64_t ldy) {
  if (M < 0 || K < 0) fail(ErrorKind::Usage, "round_bf16: [{}, {}]", M, K);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t i = 0; i < K; ++i) y[m * ldy + i] = bf16_to_f32(f32_to_bf16(x[m * ldx + i]));
  }
}

}  // namespace kiln::ops::cpu
