// The anchor for prefill throughput (issue 14): cuBLASLt's dense FP8 GEMM (e4m3 x e4m3,
// fp32 accumulation, bf16 output, per-tensor scales of 1) at a given shape, timed on the
// device. Prefill tok/s times the model's FLOPs per token, divided by this, is how close
// kiln's prefill comes to what the tensor cores give a plain FP8 GEMM on the same GPU.
#pragma once

namespace kiln::ops::cuda {

struct Fp8GemmPeak {
  int m = 0, n = 0, k = 0;
  double ms = 0;          // median of the timed calls
  double flops_per_s = 0;  // 2 m n k / ms
};

// D[m, n] = A[m, k] B[n, k]^T with cuBLASLt's heuristic algorithm; `reps` timed calls after
// warm-up. Error(IO) naming the cuBLASLt status when the GPU or library cannot run it.
Fp8GemmPeak measure_fp8_gemm_peak(int m, int n, int k, int reps);

}  // namespace kiln::ops::cuda
