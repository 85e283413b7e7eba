// Prepared linear weights for the CPU kernels: W [out, in] held either in fp32 or in its
// on-disk quantized form (bf16/f16, fp8_block, int4_group, nvfp4, mxfp4), with the row
// decoder chosen once when the weight is prepared. The kernels decode a tile of rows
// into an fp32 scratch (each value by the same expression the load-time dequantizer
// uses, so it is the same float) and then run the fp32 kernel's dot products of fixed
// association over it: y is bitwise equal to dequantize-then-ops::cpu::linear, for any
// T, row strides or thread count.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "kiln/core/dtype.h"
#include "kiln/core/scheme_kind.h"
#include "kiln/ops/linear_numerics.h"

namespace kiln::ops::cpu {

class ThreadPool;

// The quantized form of one [out, in] matrix, in its scheme (core/scheme_kind.h). The
// decoder is derived from the scheme: BF16 takes `weight_dtype` apart (BF16 or F16 codes;
// F32, the default, is no quantized form: the weight stays fp32), MXFP4 and NVFP4 share
// one e2m1 decoder (their scale codes differ only in scale_lut). Fields by scheme:
//   BF16       codes: 2 bytes per value, row-major.
//   FP8Block   codes: one e4m3 byte per value; scales: fp32 [ceil(out/block_n), scale_cols]
//              (block_n x block_k blocks, partial last blocks allowed); w = e4m3 * scale.
//   Int4Group  codes: ceil(in/8) little-endian uint32 words per row, 8 nibbles each, least
//              significant first; scales: fp32 [out, scale_cols]; zeros: [out, scale_cols]
//              nibble values (empty = symmetric, 8); g_idx: group of each input column
//              (empty = c / block_k); w = float(u - z) * scale.
//   MXFP4/     codes: in/2 bytes per row, element 2j in the low nibble of byte j (e2m1);
//   NVFP4      scale_codes: [out, scale_cols] bytes decoded by scale_lut (e4m3 for NVFP4,
//              e8m0 for MXFP4); w = (e2m1 * scale) * global (global = 1 for MXFP4).
struct QuantWeight {
  SchemeKind scheme = SchemeKind::BF16;
  DType weight_dtype = DType::F32;  // BF16 scheme: BF16 or F16 codes (F32: no quantized form)
  std::vector<uint8_t> codes;
  int64_t row_bytes = 0;
  std::vector<float> scales;
  std::vector<uint8_t> scale_codes;
  std::array<float, 256> scale_lut{};
  std::vector<uint8_t> zeros;
  std::vector<int32_t> g_idx;
  int64_t block_n = 1, block_k = 0, scale_cols = 0;
  float global = 1.0f;

  uint64_t bytes() const;  // resident bytes of the arrays above
};

// Writes rows [r0, r1) of W, dequantized, to out [(r1 - r0), in].
using DecodeRowsFn = void (*)(const QuantWeight& q, int64_t in, int64_t r0, int64_t r1, float* out);

// The decoder for q's scheme on this CPU, chosen once (quant_decode.h; nullptr for an fp32 weight).
DecodeRowsFn decoder_for(const QuantWeight& q);

// What a tensor-parallel rank does with its share of a layer's output (model/tensor_parallel.h):
// keep it (Local: a whole layer, or a column-parallel one whose rows the rank uses alone),
// sum it over the ranks (Sum: a row-parallel layer, each rank a part of the inputs), or
// gather every rank's columns (Gather: the vocabulary-parallel head; into rank 0's output
// only, the rank that writes a pass's outputs: the others' output is left untouched).
enum class RankOutput : uint8_t { Local, Sum, Gather };

// y = x W^T for one nn.Linear-shaped weight. decode == nullptr: W is `w` in fp32;
// otherwise W is `q`, decoded by `decode` (set by prepare(), never chosen per call).
struct PreparedLinear {
  int64_t out = 0, in = 0;
  std::vector<float> w;
  QuantWeight q;
  DecodeRowsFn decode = nullptr;
  // The scheme the weight is stored in on disk (also when it is held dequantized), and
  // how the model's ops treat this layer's input and output (ops/linear_numerics.h; set
  // for the precision the model is loaded in, exact by default).
  SchemeKind stored = SchemeKind::BF16;
  LinearNumerics numerics;
  RankOutput rank_output = RankOutput::Local;

  bool quantized() const { return decode != nullptr; }
  // Whether the stored form holds exactly out x in values.
  bool complete() const;
  uint64_t bytes() const;  // resident bytes of the weight
  // Makes `qw` the weight and binds its decoder, after checking every array against
  // [out, in] (a kiln::Error naming `what` otherwise); the fp32 `w` is released.
  void prepare(QuantWeight qw, std::string_view what);
  // Rows [r0, r1) as fp32 (decoded or copied).
  std::vector<float> dequantized_rows(int64_t r0, int64_t r1) const;
};

// One product of a batch: y[t, o] = x[t, :] . W[row0 + o, :] for o in [0, rows).
struct LinearJob {
  const PreparedLinear* w = nullptr;
  const float* x = nullptr;
  int64_t ldx = 0;
  float* y = nullptr;
  int64_t ldy = 0;
  int64_t row0 = 0, rows = 0;
};

// Runs all jobs over the same T tokens in one pass of the pool (their rows are split
// across threads together), e.g. an expert's gate and up projections, each weight with
// its own format and scales. Results equal running each job alone.
void linear(std::span<const LinearJob> jobs, int64_t T, ThreadPool* pool);

// y [T, out] = x [T, in] W^T, contiguous rows.
void linear(const PreparedLinear& w, const float* x, int64_t T, float* y, ThreadPool* pool);

}  // namespace kiln::ops::cpu
