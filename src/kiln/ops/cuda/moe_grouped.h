// The routed experts of one projection on tensor cores, grouped by expert: DeepSeek's
// `fp4_gemm` / `fp8_gemm` numerics (the `deepseek` precision, ops/linear_numerics.h) for
// MXFP4 experts and FP8 experts with 128 x 128 blocks; NVFP4 and int4 experts (no FP4 or
// int4 tensor cores on sm_90) take the bf16 input with weights decoded to bf16 in
// registers (forward_bf16 below).
//
//   y[i, :] = bf16( W_{e_i} . x_i )   for every (token, expert) pair i, e_i = expert[i]
//
// x_i: the row i / x_div of FP8 activations quantized by act_quant (e4m3 codes [rows, k],
// fp32 scales [rows, k / 128], DeepSeek's layout). W: MXFP4 (e2m1 codes, an E8M0 scale per 32
// inputs), repacked at load into the order mma.sync's A fragment reads, so a warp loads 256
// contiguous bytes per 32-input step; the e2m1 codes become e4m3 in registers (exact: every
// e2m1 value is an e4m3 value); FP8 weights are repacked the same way, 16 bytes per lane and
// step. Per pair, per 128-input block b, per 32-input step s: d = the tensor core's
// 16 x 8 x 32 e4m3 product (rows x pairs), and
//     block_b = (((d_0 w_0 + d_1 w_1) + d_2 w_2) + d_3 w_3)  (MXFP4: w_s = 2^(e - 127), exact;
//                                                            FP8: w_s = 1)
//     acc     = fma(block_b, sa_b * sw_b, acc) over the blocks of a K-slice, in order
//               (sw_b: FP8's 128 x 128 block scale; 1 for MXFP4),
//     y       = bf16(((acc_0 + acc_1) + acc_2) + acc_3)           (the CTA's 4 K-slices)
// so a pair's result is fixed by the shapes alone: it does not depend on which or how many
// other pairs share the launch (batch invariance), nor on their order.
//
// One call: a sort of the pairs by expert (one block, no host synchronisation), then one
// launch over (16-row tiles, active experts); each CTA streams its 16 rows of one expert
// once for every 8 of that expert's pairs. With kRowTilesMinPairsPerExpert pairs per expert
// or more on average (a prompt) and n a multiple of 128, MXFP4 and FP8 experts launch over
// (128-row tiles, active experts) instead: 8 warps, each a 16-row tile over all k in the 4
// K-slices' order, share each 128-input block of 64 pairs' inputs staged in shared memory,
// with the same sums in the same order (the same bits). Capturable in a CUDA graph.
#pragma once

#include <cstdint>
#include <memory>

#include <cuda_runtime.h>

#include "kiln/ops/quant_linear.h"

namespace kiln::ops::cuda {

class DeviceUploader;

struct GroupedExpertsImpl;

class GroupedExperts {
 public:
  // The most experts a set may have (the sort kernel's per-expert counters in shared memory).
  static constexpr int kMaxExperts = 1024;
  // From this many pairs per expert (P / count) MXFP4 and FP8 experts take the row-tile kernel.
  static constexpr int kRowTilesMinPairsPerExpert = 8;
  // Whether these experts run here: all MXFP4 (E8M0 scales per 32, n a multiple of 16) or
  // all FP8 with 128 x 128 blocks (n a multiple of 128) — FP8 activations, forward() — or all
  // NVFP4 (E4M3 scales per 16) or all int4 without act order (groups of a multiple of 16
  // inputs) — bf16 activations, forward_bf16() — of one [n, k] with k a multiple of 128, n
  // of 16, and the device sm_90.
  static bool supports(const HostQuantLinear* weights, int count);
  // Whether experts of this scheme take FP8 activations (MXFP4, FP8) or the input as it is
  // in bf16 terms (NVFP4, int4).
  static bool takes_fp8_input(SchemeKind s) { return s == SchemeKind::MXFP4 || s == SchemeKind::FP8Block; }
  // Validates (errors name the module), allocates and enqueues the repacked weights and
  // scales through `up` (null: copied now). max_pairs: the largest P forward() takes. A
  // content error (an FP8 weight holding the e4m3 NaN code) is thrown by up.finish(), as
  // QuantLinear's.
  static GroupedExperts prepare(const HostQuantLinear* weights, int count, int max_pairs, DeviceUploader* up);

  GroupedExperts();
  GroupedExperts(GroupedExperts&&) noexcept;
  GroupedExperts& operator=(GroupedExperts&&) noexcept;
  ~GroupedExperts();

  // y rows ldy floats apart (ldy >= n); xq rows k bytes apart, xs rows k / 128 floats
  // apart; expert[i] outside [0, count) writes nothing for pair i. 1 <= P <= max_pairs.
  // Scratch (device, the caller's; calls sharing it must not overlap): order [P] and meta
  // [2 * count + 2] int32.
  void forward(const uint8_t* xq, const float* xs, int x_div, const int32_t* expert, int P, float* y, int64_t ldy,
               int32_t* order, int32_t* meta, cudaStream_t stream) const;

  // NVFP4 / int4 experts: y[i] = bf16(W_{e_i} . x_{i / x_div}) with the fp32 rows x (ldx apart,
  // even; x 8-byte aligned) carried exactly as three bf16 terms: per 16-input step the
  // tensor core's sums of exact products, times the row's scale (NVFP4: E4M3 per 16, then
  // the global multiplier on the sum; int4: (u - z) per group), accumulated in fp32 in
  // order, over four K-slices added in order, as forward(). Same scratch as forward().
  void forward_bf16(const float* x, int64_t ldx, int x_div, const int32_t* expert, int P, float* y, int64_t ldy,
                    int32_t* order, int32_t* meta, cudaStream_t stream) const;
  bool fp8_input() const;
  // The kernel family bound at load, in words. MXFP4 sets whose every 128-input block's four
  // step exponents lie within grouped_layout::kMxfp4FoldMaxShift of a reference (after
  // ignoring all-zero steps) decode each step's codes times 2^-shift into e4m3 exactly and
  // accumulate the block on the tensor core ("scales folded into the codes"); others scale
  // each 32-input step's product on the CUDA cores ("per-32 scales").
  const char* describe() const;

  int64_t n() const;
  int64_t k() const;
  // Device bytes: the repacked weights and scales of every expert.
  int64_t device_bytes() const;

 private:
  std::unique_ptr<GroupedExpertsImpl> impl_;
};

}  // namespace kiln::ops::cuda
