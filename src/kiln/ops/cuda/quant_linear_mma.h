// Internal to the CUDA linear layers: the batch-invariant tensor-core products of the
// `deepseek` precision (ops/linear_numerics.h) over a prepared BF16 or FP8-block weight
// (QuantLinearImpl's row layout, quant_linear_detail.h), one kernel for every row count.
//
// Operands, by the weight and what the layer does to its input:
//   Bf16W_SplitX  bf16 weight; the fp32 input is split into three bf16 values whose sum is
//                 the input exactly (every normal fp32 value), so every product is exact in
//                 fp32;
//   Fp8W_SplitX   fp8_block weight (e4m3 codes, exact in bf16) times the split input, each
//                 128-input block's sum scaled by the weight's block scale into the output;
//   Fp8W_Fp8X     fp8_block weight times the input as act_quant's e4m3 codes (DeepSeek's FP8
//                 GEMM): each 128-input block's sum times (activation scale x weight scale);
//   Bf16W_Bf16X,  a layer whose input is bf16 (LinearInput::Bf16: wo_a, the indexer's
//   Fp8W_Bf16X    weights_proj): the input rounded to bf16 as it is loaded, one term, so
//                 on bf16 values the same products as the split (a third of the mmas).
//
// Batch invariance: every output element is one fixed sequence of mma.sync steps over its
// inputs (the weight's rows on the mma's M side, tokens on its N side, 8 per group, so
// a token's column never meets another token's), split over `kwarps` warps in contiguous
// input ranges whose sums are added in warp order. `kwarps` depends on the weight's shape
// and the GPU only; the tokens per launch change nothing in any sum.
#pragma once

#include <cstdint>
#include <string>

#include <cuda_runtime.h>

#include "kiln/ops/cuda/quant_linear_detail.h"
#include "kiln/ops/linear_numerics.h"

namespace kiln::ops::cuda::detail {

enum class MmaOperands : uint8_t { Bf16W_SplitX, Fp8W_SplitX, Fp8W_Fp8X, Bf16W_Bf16X, Fp8W_Bf16X };

// The bf16 weight kinds (64-input chunks) and the FP8 ones (128-input blocks).
constexpr bool mma_bf16_weight(MmaOperands o) { return o == MmaOperands::Bf16W_SplitX || o == MmaOperands::Bf16W_Bf16X; }

struct MmaPlan {
  MmaOperands ops = MmaOperands::Bf16W_SplitX;
  int kwarps = 1;       // warps splitting the inputs of one 16-row tile: 1, 2, 4 or 8
  bool round_bf16 = false;  // outputs rounded to bf16 (nearest even) as they are written
  int row_tile_min_rows = 65;  // from this many rows a launch takes the row-tile kernel
};

// Whether the tensor-core path takes a weight of this scheme and shape; sets `ops` from the
// layer's input kind (Fp8Block: Fp8W_Fp8X; Bf16: the Bf16X kinds; Fp32: the split ones).
//   BF16: k a multiple of 64 (no Fp8Block input). FP8Block: 128-input blocks (block_k 128),
//   block_n a multiple of 16, k a multiple of 128.
// n must be at most 65535 x 16 (tiles along grid.y).
bool mma_supported(SchemeKind scheme, int64_t n, int64_t k, int block_n, int block_k, LinearInput input, MmaOperands* ops);

// The plan of a supported weight on a GPU with `sms` multiprocessors: warps per tile so
// that one token's launch has about 8 warps per multiprocessor, and the row count from which
// the row-tile kernel runs (the same bits either way): kMmaRowTileMinRows, or
// kMmaWideRowTileMinRows on a weight wide enough that its 128-row tiles alone fill the GPU
// twice over (the LM head), where the kernel below, each warp reading its tokens' inputs
// from L2 for its own 16 rows, was bound by those reads at 64 rows.
MmaPlan mma_plan(MmaOperands ops, int64_t n, int64_t k, int sms, bool round_bf16);

// "mma bf16 x3 kwarps=4" etc.
std::string mma_describe(const MmaPlan& plan);

// Operands of one launch. Rows [g * group_rows, (g + 1) * group_rows) of the weight read x
// + g * x_group_stride (a plain product: group_rows = n, x_group_stride = 0); group_rows is
// a multiple of 16.
struct MmaArgs {
  const LinearParams* p = nullptr;  // the prepared weight (w, scale, scale_ld, block_n, n, kc)
  int64_t k = 0;
  // SplitX: fp32 x [M, k], rows ldx floats apart (ldx and x_group_stride multiples of 4,
  // x 16-byte aligned). Fp8W_Fp8X: e4m3 codes xq [M, k] (rows k bytes apart) and scales
  // xs [k / 128, xs_ld] (MN-major, act_quant's ActScaleLayout{1, xs_ld}).
  const float* x = nullptr;
  int64_t ldx = 0;
  const uint8_t* xq = nullptr;
  const float* xs = nullptr;
  int64_t xs_ld = 0;
  int64_t group_rows = 0, x_group_stride = 0;
  int M = 0;
  float* y = nullptr;  // fp32 [M, n], rows ldy floats apart
  int64_t ldy = 0;
};

// From this many rows (MmaPlan::row_tile_min_rows: kMmaWideRowTileMinRows on a weight wide
// enough, mma_plan) a launch takes the row-tile kernel (8 warps, each a 16-row tile over all
// inputs, reading the tokens' inputs from one shared-memory copy), which gives every output
// the same bits as the kernel below it (quant_linear_mma.cu).
inline constexpr int kMmaRowTileMinRows = 65;
inline constexpr int kMmaWideRowTileMinRows = 33;
// Lets the row-tile kernels take their shared memory (over the 48 KB a launch gets without
// opting in) on the current device; once per device, called when a plan is made at load.
void mma_allow_row_tiles();

void launch_mma_linear(const MmaPlan& plan, const MmaArgs& a, cudaStream_t stream);

}  // namespace kiln::ops::cuda::detail
