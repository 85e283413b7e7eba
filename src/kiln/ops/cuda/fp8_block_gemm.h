// The FP8 block-scaled GEMM of DeepSeek-V3/V4 inference on Hopper tensor cores (CUTLASS's
// warp-specialized blockwise-scaled FP8 kernel, fp8_block_gemm_cutlass.cu):
//
//   y[m, n] = sum over K-blocks b of (A[m, b] . W[n, b]) * sa[m, b] * sw[n / 128, b]
//
// A: activations as e4m3 codes [M, K] with one fp32 scale per row per 128 columns (the
// output of ops/act_quant.h: DeepSeek's act_quant, power-of-two scales); W: an fp8_block
// weight [N, K] with 128 x 128 block scales (E8M0, U8-as-E8M0, F32, BF16 or F16 on disk,
// converted to fp32 once at prepare). Each 128-long block product is summed by the tensor
// cores and scaled into an fp32 accumulator (see the test for what that costs in
// precision); y is fp32.
//
// Built only with KILN_CUTLASS (KILN_HAVE_CUTLASS=1). No CUTLASS type appears here.
#pragma once

#include <cstdint>
#include <memory>

#include <cuda_runtime.h>

#include "kiln/ops/quant_linear.h"

namespace kiln::ops::cuda {

struct Fp8BlockGemmImpl;

class Fp8BlockGemm {
 public:
  // The smallest activation-scale stride run() accepts for M rows (M rounded up to 4:
  // the kernel loads a tile's scales with TMA, which needs 16-byte strides).
  static int64_t min_scale_ld(int M) { return (static_cast<int64_t>(M) + 3) / 4 * 4; }

  // Validates and uploads `w` (scheme FP8Block, 128 x 128 blocks, n and k multiples of
  // 128; synchronously) and fixes the kernel configuration and its workspace for up to
  // max_m rows. Throws kiln::Error naming w.name on anything else (another scheme or
  // block size, shapes, sizes, dtypes, an e4m3 NaN code in the weight), and when the
  // current device is not sm_90 (H100/H200).
  static Fp8BlockGemm prepare(const HostQuantLinear& w, int max_m);
  // The GEMM over a weight already on the device (not owned; it must outlive the object
  // and may still be in flight to the device: nothing is read here): e4m3 codes [n, k]
  // row-major, fp32 block scales [n / 128, k / 128] row-major (ops::cuda::QuantLinear's
  // prepared fp8_block layout for 128 x 128 blocks and k a multiple of 16). n, k positive
  // multiples of 128. `name` names the weight in errors.
  static Fp8BlockGemm bind(const uint8_t* w, const float* w_scales, int64_t n, int64_t k, int max_m, const char* name);

  Fp8BlockGemm();
  Fp8BlockGemm(Fp8BlockGemm&&) noexcept;
  Fp8BlockGemm& operator=(Fp8BlockGemm&&) noexcept;
  ~Fp8BlockGemm();

  // y[m, :] for m < M (1 <= M <= max_m). Device pointers:
  //   a         e4m3 codes [M, k], rows k bytes apart, 16-byte aligned;
  //   a_scales  fp32, the scale of row m and K-block b at a_scales[b * scale_ld + m]
  //             (MN-major, DeepGEMM's layout: the scales of one K-block for all rows are
  //             contiguous); scale_ld >= min_scale_ld(M) and a multiple of 4, 16-byte
  //             aligned (act_quant with ActScaleLayout{1, scale_ld} writes this). All
  //             scale_ld x k/128 floats are read; those of rows >= M may hold anything;
  //   y         fp32 [M, n], rows ldy floats apart, ldy >= n and a multiple of 4,
  //             16-byte aligned. Rows >= M and the columns past n are not written.
  // Launches on `stream`; no allocation, no synchronisation, capturable in a CUDA graph.
  // A given call always sums in the same order (no split-K, no atomics): deterministic.
  // Bad arguments throw kiln::Error (Usage) before anything is launched.
  void run(cudaStream_t stream, const uint8_t* a, const float* a_scales, int64_t scale_ld, int M, float* y,
           int64_t ldy) const;

  int64_t n() const;
  int64_t k() const;
  int max_m() const;
  // Bytes of weight + fp32 scales one call reads.
  int64_t weight_bytes() const;
  // "cutlass sm90 fp8 blockwise 128x128x128 cooperative, persistent, 132 SMs".
  const char* describe() const;

 private:
  static Fp8BlockGemm configure(std::unique_ptr<Fp8BlockGemmImpl> impl, const uint8_t* w, const float* sw, int64_t n,
                                int64_t k, int max_m, const char* name);
  std::unique_ptr<Fp8BlockGemmImpl> impl_;
};

}  // namespace kiln::ops::cuda
