// Per-scheme weight quantizers: fp32 [n, k] row-major (n = out features, k = in
// features, packed and grouped along k) to the exact on-disk tensors of each scheme
// (artifact-formats.md §1). Each quantizer rounds to nearest (ties to even) on its grid
// after dividing by the scale it stores, so dequantize(quantize(w)) differs from w by at
// most half a grid step at each element's magnitude (see docs/quantization.md for the
// bounds the round-trip tests check). Shapes need not be multiples of the block: a
// partial last block (or group) takes its scale from the elements it has.
//
// Scale rules (zero blocks always get scale 1.0: any scale encodes all-zero exactly):
//  - fp8_block E8M0: s = 2^ceil(log2(amax/448)) (DeepSeek's ue8m0 rule), so |w|/s <= 448.
//  - fp8_block F32 / BF16 / F16: s = amax/448 rounded up to the next value of the scale
//    dtype if needed, so that |w|/s <= 448 (no saturation).
//  - mxfp4: s = 2^ceil(log2(amax/6)) (DeepSeek-V4's FP4 rule, as its fp4 act_quant): the
//    block maximum maps inside the e2m1 range [-6, 6]; OCP's floor(log2(amax)) - 2 would
//    clip the top of the block instead.
//  - nvfp4 (ModelOpt): global g = amax/(6*448) (weight_scale_2); per-16 block scale
//    e4m3(block_amax/(6*g)) (round to nearest; a nonzero block whose scale would round to
//    0 gets the smallest e4m3 subnormal); elements w/(scale*g) rounded to e2m1.
//    compressed-tensors stores the reciprocal 1/g as weight_global_scale.
//  - int4_group (compressed-tensors): symmetric s = amax/7.5 (q in [-8, 7], so +amax maps to
//    7.5 and is clamped to 7, -amax to -8); asymmetric s = (max(hi,0) - min(lo,0))/15 and
//    zero point zp = clamp(-8 - round(lo/s), -8, 7). Scales rounded up to the scale dtype.
// Near FLT_MAX an element whose rounded code would dequantize to infinity takes the next
// code toward zero instead (its error then stays below one grid step).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "kiln/core/dtype.h"

namespace kiln::quant {

// One on-disk tensor: dtype, shape and little-endian bytes.
struct QTensor {
  DType dtype = DType::U8;
  std::vector<int64_t> shape;
  std::vector<std::byte> bytes;
};

// Largest |x| of the span (0 for an empty span). NaN/inf are the caller's to reject.
float amax(std::span<const float> w);
// True when every value is finite.
bool all_finite(std::span<const float> w);

// Float values to a float dtype (F32, BF16 or F16; BF16/F16 round to nearest even).
QTensor encode_floats(std::span<const float> v, std::vector<int64_t> shape, DType dtype);
// The float value a stored scale of `dtype` decodes to (F32, BF16, F16, F8_E8M0, U8-as-E8M0, F8_E4M3).
float decode_scale(DType dtype, const std::byte* p);
// The smallest value of float dtype `dtype` (F32, BF16, F16) that is >= x (x > 0 finite).
float round_up_to(DType dtype, float x);

// ---- fp8_block: e4m3 weight [n, k] + scale grid [ceil(n/bn), ceil(k/bk)].
struct Fp8BlockOptions {
  int64_t block_n = 128;
  int64_t block_k = 128;
  DType scale_dtype = DType::F8_E8M0;  // F8_E8M0 (power-of-two rule), F32, BF16 or F16 (amax/448)
  int threads = 0;                     // 0 = all cores (output does not depend on it)
};
struct Fp8BlockQuant {
  QTensor weight;  // F8_E4M3 [n, k]
  QTensor scale;   // scale_dtype [ceil(n/bn), ceil(k/bk)]
};
Fp8BlockQuant quantize_fp8_block(std::span<const float> w, int64_t n, int64_t k, const Fp8BlockOptions& o = {});

// ---- mxfp4: e2m1 pairs [n, k/2] (low nibble = even element) + E8M0 scale per 32 along k.
struct Mxfp4Options {
  DType weight_dtype = DType::I8;       // I8 (DeepSeek native) or U8 (compressed-tensors weight_packed)
  DType scale_dtype = DType::F8_E8M0;   // F8_E8M0 (native .scale) or U8 (compressed-tensors)
  int threads = 0;
};
struct Mxfp4Quant {
  QTensor weight;  // [n, k/2]
  QTensor scale;   // [n, ceil(k/32)]
};
// k must be even (two values per byte): Error(Usage) otherwise.
Mxfp4Quant quantize_mxfp4(std::span<const float> w, int64_t n, int64_t k, const Mxfp4Options& o = {});

// ---- nvfp4: e2m1 pairs [n, k/2] U8 + e4m3 scale per 16 along k + one fp32 global.
enum class Nvfp4Convention {
  ModelOpt,          // weight_scale_2 = g (multiplier), F32 shape []
  CompressedTensors  // weight_global_scale = 1/g (divisor), F32 shape [1]
};
// ModelOpt's global multiplier for a tensor (or a fused pair) of largest magnitude `amax`:
// amax / (6 * 448); 1.0 when amax is 0.
float nvfp4_global_for(float amax);
struct Nvfp4Quant {
  QTensor weight;        // U8 [n, k/2]
  QTensor scale;         // F8_E4M3 [n, k/16]
  QTensor global_scale;  // ModelOpt: weight_scale_2 F32 []; CT: weight_global_scale F32 [1]
  float multiplier = 1;  // the global multiplier a loader derives from global_scale
};
// k must be a multiple of 16: Error(Usage) otherwise. `global` is the multiplier
// (nvfp4_global_for(amax) of this tensor, or of the pair it shares a global with).
Nvfp4Quant quantize_nvfp4(std::span<const float> w, int64_t n, int64_t k, float global,
                          Nvfp4Convention conv = Nvfp4Convention::ModelOpt, int threads = 0);

// ---- int4_group (compressed-tensors pack-quantized, 4 bits).
struct Int4Options {
  int64_t group = 128;
  bool symmetric = true;
  DType scale_dtype = DType::BF16;  // BF16 (the original weight dtype), F16 or F32
  int threads = 0;
};
struct Int4Quant {
  QTensor packed;                     // I32 [n, ceil(k/8)]: 8 values per word, LSB first, stored q + 8
  QTensor scale;                      // scale_dtype [n, ceil(k/group)]
  QTensor shape;                      // I64 [2] = (n, k)
  std::optional<QTensor> zero_point;  // asymmetric: I32 [ceil(n/8), groups], packed along n, zp + 8
};
Int4Quant quantize_int4_group(std::span<const float> w, int64_t n, int64_t k, const Int4Options& o = {});

}  // namespace kiln::quant
