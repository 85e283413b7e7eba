// DeepSeek's activation quantizer for its FP8 linears (inference/kernel.py `act_quant` with
// scale_fmt = "ue8m0", i.e. round_scale): each row is cut into blocks of 128 columns; a
// block whose largest magnitude is amax gets the power-of-two scale
//     s = 2^ceil(log2(max(amax, 1e-4) * (1/448)))        (fp32 product, exponent from its bits)
// and every x of the block becomes the e4m3 code of clamp(x / s, -448, 448), rounded to
// nearest, ties to even. x / s is exact (s is a power of two), so the dequantized value
// e4m3(q) * s is x rounded to e4m3 precision (or the block's saturated 448 s). An all-zero
// block gets s = 2^-22 (from the 1e-4 floor) and zero codes; -0 codes as 0x80.
//
// The CPU version is the reference; the CUDA version computes the same bits (tests/gpu).
// Inputs must be finite (a NaN is dropped from amax and codes as 0x7F; inf gives s = inf).
#pragma once

#include <cstdint>
#include <cstring>

#ifdef KILN_HAVE_CUDA
#include <cuda_runtime.h>
#endif

#if defined(__CUDACC__)
#define KILN_ACT_QUANT_HD __host__ __device__
#else
#define KILN_ACT_QUANT_HD
#endif

namespace kiln::ops {

inline constexpr int64_t kActQuantBlock = 128;  // columns per scale
inline constexpr float kE4M3Max = 448.0f;

// Where the scale of row m, block b goes: s[m * row_stride + b * block_stride].
//   {K / 128, 1}: [M, K/128] row-major, DeepSeek's own layout;
//   {1, ld}: [K/128, ld] (MN-major), what cuda::Fp8BlockGemm reads (ld >= M, ld % 4 == 0).
struct ActScaleLayout {
  int64_t row_stride = 0;
  int64_t block_stride = 1;
};

// The scale of a block whose largest |x| is amax (DeepSeek's fast_round_scale).
KILN_ACT_QUANT_HD inline float act_quant_scale(float amax) {
  const float a = amax > 1e-4f ? amax : 1e-4f;  // T.max(amax, 1e-4)
  const float t = a * (1.0f / kE4M3Max);        // amax * fp8_max_inv
  uint32_t bits;
  std::memcpy(&bits, &t, 4);
  const int e = static_cast<int>((bits >> 23) & 0xFFu) - 127 + ((bits & 0x7FFFFFu) != 0 ? 1 : 0);
  const uint32_t sbits = static_cast<uint32_t>(e + 127) << 23;
  float s;
  std::memcpy(&s, &sbits, 4);
  return s;
}

// x / s clamped to the e4m3 range (NaN passes through); the caller rounds it to e4m3.
KILN_ACT_QUANT_HD inline float act_quant_clamp(float v) {
  return v > kE4M3Max ? kE4M3Max : (v < -kE4M3Max ? -kE4M3Max : v);
}

namespace cpu {
// x: M rows of K values, ldx apart (fp32, or bf16 bit patterns); q: e4m3 codes, rows ldq
// bytes apart; scales as `sl` says. K must be a positive multiple of 128 (kiln::Error,
// Usage, otherwise). Rows are independent: a row's codes and scales do not depend on M.
void act_quant(const float* x, int64_t ldx, int64_t M, int64_t K, uint8_t* q, int64_t ldq, float* s,
               ActScaleLayout sl);
void act_quant_bf16(const uint16_t* x, int64_t ldx, int64_t M, int64_t K, uint8_t* q, int64_t ldq, float* s,
                    ActScaleLayout sl);
}  // namespace cpu

// The activation transforms of a linear's input and output in `deepseek` precision
// (ops/linear_numerics.h), values kept in fp32:
//   act_fake_quant: y = e4m3(clamp(x / s)) * s per row and block of 128 columns, s as
//     act_quant computes it; unlike act_quant any K > 0 is accepted, a last partial block
//     being a block of its own. y may alias x (same ld).
//   round_bf16: y = x rounded to bf16 (nearest, ties to even; NaN stays NaN). y may alias x.
// Rows x (M) of K values, ldx / ldy floats apart. CPU and CUDA give the same bits.
namespace cpu {
void act_fake_quant(const float* x, int64_t ldx, int64_t M, int64_t K, float* y, int64_t ldy);
void round_bf16(const float* x, int64_t ldx, int64_t M, int64_t K, float* y, int64_t ldy);
}  // namespace cpu

#ifdef KILN_HAVE_CUDA
namespace cuda {
// act_fake_quant and round_bf16 on the GPU (device pointers), launched on `stream`; M = 0
// is a no-op; capturable.
void act_fake_quant(const float* x, int64_t ldx, int64_t M, int64_t K, float* y, int64_t ldy, cudaStream_t stream);
void round_bf16(const float* x, int64_t ldx, int64_t M, int64_t K, float* y, int64_t ldy, cudaStream_t stream);

// The same on the GPU (device pointers; a warp per 128-column block). Launches on
// `stream`, checks the launch, never allocates or synchronises (capturable). M = 0 is a
// no-op; negative sizes, or K not a multiple of 128, throw kiln::Error (Usage).
void act_quant(const float* x, int64_t ldx, int64_t M, int64_t K, uint8_t* q, int64_t ldq, float* s,
               ActScaleLayout sl, cudaStream_t stream);
void act_quant_bf16(const uint16_t* x, int64_t ldx, int64_t M, int64_t K, uint8_t* q, int64_t ldq, float* s,
                    ActScaleLayout sl, cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace kiln::ops
