#include "kiln/ops/cuda/fp8_gemm_peak.h"

#include <cublasLt.h>
#include <cuda_runtime.h>

#include "kiln/core/error.h"
#include "kiln/ops/cuda/check.h"
#include "kiln/ops/cuda/cublas_check.h"
#include "kiln/ops/cuda/event_timing.h"

namespace kiln::ops::cuda {

Fp8GemmPeak measure_fp8_gemm_peak(int m, int n, int k, int reps) {
  if (m < 16 || n < 16 || k < 16 || m % 16 || n % 16 || k % 16 || reps < 1)
    fail(ErrorKind::Usage, "FP8 GEMM anchor {}x{}x{} ({} reps): sizes must be multiples of 16", m, n, k, reps);
  Fp8GemmPeak r{m, n, k, 0.0, 0.0};
  const size_t a_bytes = static_cast<size_t>(m) * k, b_bytes = static_cast<size_t>(n) * k;
  const size_t d_bytes = static_cast<size_t>(m) * n * 2, ws_bytes = size_t{64} << 20;
  void *a = nullptr, *b = nullptr, *d = nullptr, *ws = nullptr;
  KILN_CUDA_CHECK(cudaMalloc(&a, a_bytes));
  KILN_CUDA_CHECK(cudaMalloc(&b, b_bytes));
  KILN_CUDA_CHECK(cudaMalloc(&d, d_bytes));
  KILN_CUDA_CHECK(cudaMalloc(&ws, ws_bytes));
  // 0x38 is e4m3 1.0: finite products, so the timing is of real arithmetic.
  KILN_CUDA_CHECK(cudaMemset(a, 0x38, a_bytes));
  KILN_CUDA_CHECK(cudaMemset(b, 0x38, b_bytes));
  cublasLtHandle_t h = nullptr;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, ld = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  auto cleanup = [&] {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (ld) cublasLtMatrixLayoutDestroy(ld);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (desc) cublasLtMatmulDescDestroy(desc);
    if (h) cublasLtDestroy(h);
    cudaFree(a);
    cudaFree(b);
    cudaFree(d);
    cudaFree(ws);
  };
  try {
    KILN_CUBLAS_CHECK(cublasLtCreate(&h));
    // Column-major view: D^T [n, m] = B [n, k] (stored [k, n] col-major, transposed) x A^T
    // (A [m, k] row-major = [k, m] col-major): the "TN" layout FP8 requires.
    KILN_CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t tr = CUBLAS_OP_T, nt = CUBLAS_OP_N;
    KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &tr, sizeof(tr)));
    KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &nt, sizeof(nt)));
    KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&la, CUDA_R_8F_E4M3, k, n, k));
    KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_8F_E4M3, k, m, k));
    KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&ld, CUDA_R_16BF, n, m, n));
    KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    KILN_CUBLAS_CHECK(
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes, sizeof(ws_bytes)));
    cublasLtMatmulHeuristicResult_t heur{};
    int found = 0;
    KILN_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(h, desc, la, lb, ld, ld, pref, 1, &heur, &found));
    if (found == 0) fail(ErrorKind::IO, "cuBLASLt FP8 GEMM anchor: no algorithm for {}x{}x{} on this GPU", m, n, k);
    const float alpha = 1.0f, beta = 0.0f;
    auto call = [&] {
      KILN_CUBLAS_CHECK(
          cublasLtMatmul(h, desc, &alpha, b, la, a, lb, &beta, d, ld, d, ld, &heur.algo, ws, ws_bytes, nullptr));
    };
    for (int i = 0; i < 3; ++i) call();  // warm-up
    r.ms = median_event_ms(reps, call);
    r.flops_per_s = 2.0 * m * static_cast<double>(n) * k / (r.ms * 1e-3);
  } catch (...) {
    cleanup();
    throw;
  }
  cleanup();
  return r;
}

}  // namespace kiln::ops::cuda
